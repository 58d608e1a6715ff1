"""Keras → `export.export_model` → `statecast-edge` over mosquitto → the same numbers as Keras."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import Collector, Mosquitto
from test_edge_daemon import daemon_args, publisher, start

from edge.model import StepModel

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def test_exported_keras_model_through_the_daemon(
    broker: Mosquitto, tmp_path: Path, daemon_factory: Any, collector_factory: Any
) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    import export

    model = keras.Sequential(
        [keras.Input((None, 1)), keras.layers.LSTM(8), keras.layers.Dense(1)]
    )
    rng = np.random.default_rng(3)
    model.set_weights([rng.normal(0, 0.4, w.shape).astype(np.float32)
                       for w in model.get_weights()])
    src = tmp_path / "tiny.keras"
    model.save(src)
    onnx_path = tmp_path / "tiny.onnx"
    manifest = export.export_model(src, onnx_path)
    assert manifest.kind == "step" and manifest.n_features == 1

    xs = rng.normal(0, 1, (12, 1)).astype(np.float32)
    keras_ys = np.stack([keras.ops.convert_to_numpy(model(xs[None, : t + 1], training=False))[0]
                         for t in range(len(xs))])

    cid = f"x{uuid.uuid4().hex[:8]}"
    col: Collector = collector_factory(broker, [f"{cid}-out/#", f"statecast/status/{cid}"])
    d = start(daemon_factory, col, cid, *daemon_args(onnx_path, broker, cid))
    pub = publisher(broker)
    for t, x in enumerate(xs):
        body = {"ts": f"2024-01-01T{t:02d}:00:00", "value": float(x[0])}
        pub.publish(f"{cid}/k/temp", json.dumps(body), qos=1)
    preds = col.wait_for(f"{cid}-out/", len(xs))
    pub.disconnect()
    pub.loop_stop()
    assert d.stop() == 0
    got = np.array([p["forecast"] for p in preds])
    onnx_ys, _ = StepModel(onnx_path).run_sequence(xs)
    np.testing.assert_allclose(got, onnx_ys.reshape(got.shape), atol=1e-6, rtol=0)
    np.testing.assert_allclose(got, keras_ys.reshape(got.shape), atol=1e-4, rtol=0)
