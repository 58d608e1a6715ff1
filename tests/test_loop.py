"""The whole loop a new user runs, over a real mosquitto: record live sensors → train on the
recording → export → the daemon serves it (and announces it to Home Assistant) → a model retrained
on more recording is swapped in with `reload`, and the streams' states carry over exactly."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import Mosquitto
from test_edge_record import publisher, recorders, start, wait_rows
from test_edge_reload import replace_atomically

from edge.model import StepModel
from export.cli import main as export_main
from trainer.cli import main as train_main

pytestmark = [pytest.mark.broker, pytest.mark.slow]
__all__ = ["recorders"]  # the fixture

HOUR = 3600
T0 = 1_772_323_200  # 2026-03-01T00:00:00Z


def series(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return np.round(20 + 4 * np.sin(2 * np.pi * t / 24) + rng.normal(0, 0.3, n), 2)


def train_and_export(data: Path, tmp_path: Path, name: str, epochs: int) -> Path:
    run = tmp_path / f"run-{name}"
    code = train_main([
        "--data", str(data), "--time-col", "ts", "--series-col", "stream", "--target", "temp",
        "--horizon", "3", "--lookback", "12", "--layers", "1", "--units", "6",
        "--epochs", str(epochs), "--structure", "plain", "--unit", "°C",
        "--device-class", "temperature", "--quiet", "--out", str(run)])
    assert code == 0
    model = tmp_path / f"{name}.onnx"
    assert export_main([str(run), "--out", str(model)]) == 0
    return model


def test_record_train_export_serve_reload(
    broker: Mosquitto, tmp_path: Path, recorders: Any, collector_factory: Any,
    daemon_factory: Any,
) -> None:
    cid = f"l{uuid.uuid4().hex[:8]}"
    rec_dir = tmp_path / "recorded"
    _, make = recorders
    col = collector_factory(broker, [
        f"statecast/status/{cid}-rec", f"statecast/status/{cid}", f"statecast/status/{cid}/#",
        f"{cid}-out/#", f"{cid}-err/#", "homeassistant/#"])
    pub = publisher(broker)
    temps = {"kitchen": series(400, 1), "hall": series(400, 2)}

    def send(stream: str, i: int) -> None:
        body = json.dumps({"ts": T0 + i * HOUR, "temp": float(temps[stream][i])})
        pub.publish(f"{cid}/{stream}/temp", body, qos=1).wait_for_publish(5)

    # 1. Record what the sensors publish, before there is any model.
    recorder = start(make, col, f"{cid}-rec", "--broker", broker.url, "--subscribe",
                     f"{cid}/+/temp", "--features", "temp", "--client-id", f"{cid}-rec",
                     "--out", str(rec_dir))
    for i in range(240):
        for stream in temps:
            send(stream, i)
    assert len(wait_rows(rec_dir, 480)) == 480
    assert recorder.stop() == 0

    # 2. Train on the recording and export.
    first = train_and_export(rec_dir, tmp_path, "first", epochs=2)

    # 3. The daemon serves it and tells Home Assistant about the streams.
    live = tmp_path / "live.onnx"
    shutil.copyfile(first, live)
    mark = col.mark()
    daemon = daemon_factory(
        "--model", str(live), "--broker", broker.url, "--subscribe", f"{cid}/+/temp",
        "--publish", f"{cid}-out/{{stream}}", "--errors", f"{cid}-err/{{stream}}",
        "--client-id", cid, "--state-dir", str(tmp_path / "state"), "--record", str(rec_dir),
        "--ha-discovery", "homeassistant")
    assert col.wait_status(cid, "online", mark), daemon.log()
    for i in range(240, 300):
        send("kitchen", i)
    served = col.wait_for(f"{cid}-out/kitchen", 60)
    configs = [json.loads(m) for t, m, _ in col.messages if t.startswith("homeassistant/sensor/")
               and t.endswith("/config") and m]
    assert configs, daemon.log()[-2000:]
    assert {c.get("unit_of_measurement", c.get("unit_of_meas")) for c in configs} == {"°C"}

    # 4. More recording (the daemon recorded what it served), a retrained model, a reload.
    for i in range(240, 300):
        send("hall", i)
    assert len(wait_rows(rec_dir, 600)) == 600
    second = train_and_export(rec_dir, tmp_path, "second", epochs=3)
    events_before = len(col.json(f"statecast/status/{cid}/events"))
    replace_atomically(second, live)
    events = col.wait_for(f"statecast/status/{cid}/events", events_before + 1)
    reload = [e for e in events if e.get("event") == "reload"][-1]
    assert reload["ok"] and reload["states"] == "kept", reload
    for i in range(300, 330):
        send("kitchen", i)
    preds = col.wait_for(f"{cid}-out/kitchen", 90)
    assert daemon.stop() == 0, daemon.log()[-3000:]
    pub.loop_stop()
    pub.disconnect()

    # The first 60 forecasts are the first model's, the last 30 the second's, continuing from
    # the state the first one left: exactly what stepping the two models in turn gives.
    assert len(served) >= 60 and len(preds) == 90
    ids = StepModel(first).manifest.model_id, StepModel(second).manifest.model_id
    assert ids[0] != ids[1]
    assert [p["model"] for p in preds] == [ids[0]] * 60 + [ids[1]] * 30
    xs = temps["kitchen"][240:330].astype(np.float32).reshape(-1, 1)
    before, state = StepModel(first).run_sequence(xs[:60])
    after, _ = StepModel(second).run_sequence(xs[60:], state)
    got = np.array([p["forecast"] for p in preds], dtype=np.float64)
    np.testing.assert_allclose(got, np.concatenate([before, after]).reshape(got.shape),
                               atol=1e-4, rtol=0)
