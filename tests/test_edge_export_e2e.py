"""Keras → `export.export_model` → `statecast-edge` over mosquitto → the same numbers as Keras."""

from __future__ import annotations

import json
import os
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import Collector, Mosquitto, free_port
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


def test_dynamic_batch_export_steps_streams_together(
    broker: Mosquitto, tmp_path: Path, daemon_factory: Any, collector_factory: Any
) -> None:
    """`--batch dynamic` export, a backlog of 24 streams drained by the daemon in batches: every
    forecast equals the batch-1 export stepped one stream at a time."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    import export

    model = keras.Sequential([keras.Input((None, 2)), keras.layers.LSTM(8, return_sequences=True),
                              keras.layers.LSTM(6), keras.layers.Dense(3)])
    rng = np.random.default_rng(4)
    model.set_weights([rng.normal(0, 0.4, w.shape).astype(np.float32)
                       for w in model.get_weights()])
    src = tmp_path / "two.keras"
    model.save(src)
    one, dyn = tmp_path / "one.onnx", tmp_path / "dyn.onnx"
    export.export_model(src, one)
    manifest = export.export_model(src, dyn, batch="dynamic")
    assert manifest.batch == "dynamic" and StepModel(dyn).dynamic_batch

    streams, steps = 24, 8
    xs = rng.normal(0, 1, (streams, steps, 2)).astype(np.float32)
    cid = f"x{uuid.uuid4().hex[:8]}"
    col: Collector = collector_factory(broker, [f"{cid}-out/#", f"{cid}-err/#",
                                                f"statecast/status/{cid}"])
    port = free_port()
    args = [*daemon_args(dyn, broker, cid), "--max-batch", "16", "--max-delay-ms", "20",
            "--metrics-port", str(port)]
    d = start(daemon_factory, col, cid, *args)
    assert d.stop() == 0  # subscribed with a persistent session: the backlog waits in mosquitto
    pub = publisher(broker)
    infos = []
    for t in range(steps):
        for s in range(streams):
            body = {"ts": 3600 * (t + 1), "x0": float(xs[s, t, 0]), "x1": float(xs[s, t, 1])}
            infos.append(pub.publish(f"{cid}/s{s}/temp", json.dumps(body), qos=1))
    for info in infos:
        info.wait_for_publish(10)
    d = start(daemon_factory, col, cid, *args)
    preds = col.wait_for(f"{cid}-out/", streams * steps, timeout=30)
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
    pub.disconnect()
    pub.loop_stop()
    assert d.stop() == 0
    assert col.json(f"{cid}-err/") == []
    assert len(preds) == streams * steps
    runs = int(metrics.decode().split("\nstatecast_edge_model_runs_total ")[1].split()[0])
    assert runs < streams * steps / 2, f"{runs} runs: the streams were not stepped together"
    alone = StepModel(one)
    for s in range(streams):
        mine = [p for p in preds if p["stream"] == f"s{s}"]
        assert [p["ts"] for p in mine] == [3600 * (t + 1) for t in range(steps)]
        want, _ = alone.run_sequence(xs[s])
        np.testing.assert_allclose([p["forecast"] for p in mine], want.reshape(steps, -1),
                                   atol=1e-6, rtol=0)
