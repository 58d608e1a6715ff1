"""runner + processor: one message in, one prediction or error out, on real ONNX sessions and
without a broker (the publisher is a list)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import Sink

from edge.config import EdgeConfig
from edge.model import StepModel
from edge.service import Processor, load_model


def make(model: Path, **kw: Any) -> tuple[Processor, Sink]:
    cfg = EdgeConfig(model=str(model), subscribe=("sensors/+/temp",), client_id="t", **kw)
    m, freq = load_model(cfg)
    sink = Sink()
    return Processor(cfg, m, freq, sink), sink


def msg(hour: int, temp: float, day: int = 1) -> bytes:
    return json.dumps({"ts": f"2010-03-{day:02d}T{hour:02d}:00:00", "temp": temp}).encode()


def test_step_predictions_equal_stepmodel(models: dict[str, Path]) -> None:
    proc, sink = make(models["step"])
    temps = [40.0 + i for i in range(6)]
    for h, v in enumerate(temps):
        assert proc.handle("sensors/a/temp", msg(h, v))
    ys, _ = StepModel(models["step"]).run_sequence(np.array(temps, np.float32).reshape(-1, 1))
    got = np.array([d["forecast"] for d in sink.on("forecasts/a")])
    np.testing.assert_allclose(got, ys, atol=1e-6, rtol=0)
    assert sink.on("forecasts/a")[0]["at"][0] == "2010-03-01T01:00:00"


def test_window_warms_up_then_forecasts(models: dict[str, Path]) -> None:
    proc, sink = make(models["window"])
    temps = [40.0, 41.0, 39.5, 42.0, 43.0, 44.0]
    for h, v in enumerate(temps):
        proc.handle("sensors/w/temp", msg(h, v))
    assert proc.store.warming() == 0
    preds = sink.on("forecasts/w")
    assert len(preds) == len(temps) - 3  # lookback 4
    model = StepModel(models["window"])
    for k, pred in enumerate(preds):
        window = np.array(temps[k : k + 4], np.float32).reshape(4, 1)
        y, _ = model.step(window, [])
        np.testing.assert_allclose(pred["forecast"], y[0], atol=1e-6, rtol=0)


def test_classifier_and_multi_target(models: dict[str, Path]) -> None:
    proc, sink = make(models["classify"])
    proc.handle("sensors/c/temp", msg(0, 50.0))
    (pred,) = sink.on("forecasts/c")
    assert set(pred["probabilities"]) == {"cold", "mild", "warm"}
    assert len(pred["forecast"]) == 2 and pred["forecast"][0] in ("cold", "mild", "warm")
    assert sum(p[0] for p in pred["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    proc, sink = make(models["multi"])
    proc.handle("sensors/m/temp", b'{"ts": 0, "temp": 50, "hum": 70}')
    (pred,) = sink.on("forecasts/m")
    assert np.array(pred["forecast"]).shape == (3, 2)
    assert pred["targets"] == ["temp", "hum"]


BAD = [
    (b"{nope", "malformed_json"),
    (b"\xc3\x28", "not_utf8"),
    (b'{"ts": "2010-03-01T09:00:00"}', "missing_field"),
    (b'{"ts": "2010-03-01T09:00:00", "temp": "x"}', "not_numeric"),
    (b'{"ts": "2010-03-01T09:00:00", "temp": NaN}', "not_finite"),
    (b'{"ts": "2010-03-01T09:00:00", "temp": -Infinity}', "not_finite"),
    (b'{"ts": "09:00 yesterday", "temp": 1}', "bad_ts"),
    (b'{"ts": "2010-03-01T01:00:00", "temp": 1}', "duplicate"),
    (b'{"ts": "2010-03-01T00:00:00", "temp": 1}', "out_of_order"),
    (b'{"ts": "2010-03-01T09:00:00", "temp": 1, "x": "' + b"y" * 20000 + b'"}', "too_large"),
]


def test_bad_input_never_touches_state(models: dict[str, Path]) -> None:
    clean, clean_sink = make(models["step"])
    dirty, dirty_sink = make(models["step"])
    for h in range(6):
        clean.handle("sensors/a/temp", msg(h, 40.0 + h))
        dirty.handle("sensors/a/temp", msg(h, 40.0 + h))
        if h == 1:
            for payload, _ in BAD:
                assert not dirty.handle("sensors/a/temp", payload)
    assert clean_sink.on("forecasts/") == dirty_sink.on("forecasts/")
    errors = dirty_sink.on("statecast/errors/a")
    assert [e["reason"] for e in errors] == [r for _, r in BAD]
    assert all(e["stream"] == "a" and len(e["payload"]) <= 201 for e in errors)
    assert dirty.metrics.dropped["not_finite"] == 2


def test_gap_resets_state_by_default(models: dict[str, Path]) -> None:
    proc, sink = make(models["step"])  # freq 1h, max_gap 24
    proc.handle("sensors/a/temp", msg(0, 40.0))
    proc.handle("sensors/a/temp", msg(1, 41.0))
    proc.handle("sensors/a/temp", msg(3, 42.0, day=3))  # 50 h later
    (err,) = sink.on("statecast/errors/a")
    assert err["reason"] == "gap"
    fresh, fresh_sink = make(models["step"])
    fresh.handle("sensors/a/temp", msg(3, 42.0, day=3))
    assert sink.on("forecasts/a")[-1]["forecast"] == fresh_sink.on("forecasts/a")[0]["forecast"]
    keep, keep_sink = make(models["step"], on_gap="keep")
    for h, v, d in [(0, 40.0, 1), (1, 41.0, 1), (3, 42.0, 3)]:
        keep.handle("sensors/a/temp", msg(h, v, d))
    assert keep_sink.on("forecasts/a")[-1]["forecast"] != fresh_sink.on("forecasts/a")[0][
        "forecast"
    ]
    assert keep_sink.on("statecast/errors/a")[0]["reason"] == "gap"


def test_streams_do_not_leak(models: dict[str, Path]) -> None:
    proc, sink = make(models["step"])
    solo, solo_sink = make(models["step"])
    for h in range(5):
        proc.handle("sensors/a/temp", msg(h, 40.0 + h))
        proc.handle("sensors/b/temp", msg(h, 60.0 - h))
        solo.handle("sensors/a/temp", msg(h, 40.0 + h))
    assert sink.on("forecasts/a") == solo_sink.on("forecasts/a")
    assert len(sink.on("forecasts/b")) == 5


def test_field_map_and_stream_field(models: dict[str, Path]) -> None:
    proc, sink = make(models["step"], field_map={"temp": "t"}, stream_field="dev")
    assert proc.handle("anything/x", b'{"dev": "d7", "ts": 0, "t": 50}')
    assert sink.on("forecasts/d7")
