"""Model rollout on a running daemon: file replacement, the commands topic, rejected files.

Real mosquitto, the daemon as a subprocess, real ONNX models, each test over a batch-1 and a
`--batch dynamic` export (`step_models`); expected values come from stepping the models directly
with `StepModel`.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from conftest import Collector, Daemon, Mosquitto
from edge_models import build_model
from paho.mqtt.enums import CallbackAPIVersion

from edge.model import StepModel

pytestmark = pytest.mark.broker

HOUR = 3600


def replace_atomically(src: Path | bytes, dest: Path) -> None:
    """What a deployment tool does: write beside the target, then rename over it."""
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:6]}")
    if isinstance(src, bytes):
        tmp.write_bytes(src)
    else:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dest)


class Rig:
    """A daemon on a copy of a model file, a publisher, and a collector of everything it says."""

    def __init__(self, broker: Mosquitto, model: Path, tmp_path: Path, daemon_factory: Any,
                 collector_factory: Any, *extra: str) -> None:
        self.cid = cid = f"r{uuid.uuid4().hex[:8]}"
        self.model = tmp_path / "live.onnx"
        shutil.copyfile(model, self.model)
        self.col: Collector = collector_factory(
            broker, [f"{cid}-out/#", f"{cid}-err/#", f"statecast/status/{cid}/#",
                     f"statecast/status/{cid}"])
        self.args = [
            "--model", str(self.model), "--broker", broker.url, "--subscribe", f"{cid}/+/temp",
            "--publish", f"{cid}-out/{{stream}}", "--errors", f"{cid}-err/{{stream}}",
            "--client-id", cid, *extra]
        self.factory = daemon_factory
        self.start()
        self.pub = mqtt.Client(CallbackAPIVersion.VERSION2)
        self.pub.connect(broker.host, broker.port)
        self.pub.loop_start()

    def start(self) -> None:
        mark = self.col.mark()
        self.daemon: Daemon = self.factory(*self.args)
        assert self.col.wait_status(self.cid, "online", mark), self.daemon.log()

    def send(self, stream: str, ts: int, temp: float) -> None:
        self.pub.publish(f"{self.cid}/{stream}/temp",
                         json.dumps({"ts": ts * HOUR, "temp": temp}), qos=1).wait_for_publish(5)

    def command(self, text: str) -> None:
        self.pub.publish(f"statecast/cmd/{self.cid}", text, qos=1).wait_for_publish(5)

    def predictions(self, stream: str) -> list[dict[str, Any]]:
        return [p for p in self.col.json(f"{self.cid}-out/") if p["stream"] == stream]

    def events(self) -> list[dict[str, Any]]:
        # the rollout and command events (not the drift alarms of these untrained models)
        return [e for e in self.col.json(f"statecast/status/{self.cid}/events")
                if e.get("event") != "drift"]

    def wait_event(self, n: int, timeout: float = 15.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while len(self.events()) < n and time.monotonic() < deadline:
            time.sleep(0.02)
        got = self.events()
        assert len(got) >= n, (got, self.daemon.log()[-3000:])
        return got[n - 1]

    def wait_predictions(self, stream: str, n: int) -> list[dict[str, Any]]:
        self.col.wait_for(f"{self.cid}-out/{stream}", n)
        time.sleep(0.1)  # anything extra (a duplicate) would arrive now
        return self.predictions(stream)

    def close(self) -> None:
        self.pub.disconnect()
        self.pub.loop_stop()
        assert self.daemon.stop() == 0, self.daemon.log()


def temps(n: int, seed: int = 0) -> list[float]:
    rng = np.random.default_rng(seed)
    return list(np.round(50 + 10 * np.sin(np.arange(n) / 5) + rng.normal(0, 1, n), 2))


def test_file_replaced_mid_stream_no_loss_no_duplicate_state_kept(
    broker: Mosquitto, step_models: dict[str, Path], tmp_path: Path, daemon_factory: Any,
    collector_factory: Any,
) -> None:
    models = step_models  # with a dynamic batch the daemon steps the two streams together
    rig = Rig(broker, models["step"], tmp_path, daemon_factory, collector_factory)
    series = temps(300)
    sent = threading.Event()

    def feed() -> None:
        for ts, temp in enumerate(series):
            rig.send("g1", ts, temp)
            rig.send("g2", ts, temp + 1.0)
            time.sleep(0.004)
        sent.set()

    feeder = threading.Thread(target=feed)
    feeder.start()
    rig.col.wait_for(f"{rig.cid}-out/", 60)
    replace_atomically(models["step2"], rig.model)  # same state layout, other weights
    feeder.join(30)
    assert sent.is_set()
    got_streams = {s: rig.wait_predictions(s, len(series)) for s in ("g1", "g2")}
    event = rig.wait_event(1)
    rig.close()

    assert event["event"] == "reload" and event["ok"] and event["states"] == "kept"
    assert event["model"] == "test-step-other" and event["previous"] == "test-step"
    for stream, offset in (("g1", 0.0), ("g2", 1.0)):
        preds = got_streams[stream]
        assert [p["ts"] for p in preds] == [ts * HOUR for ts in range(len(series))]
        ids = [p["model"] for p in preds]
        k = ids.count("test-step")
        assert 0 < k < len(series), "the swap did not happen in the middle of the stream"
        assert ids == ["test-step"] * k + ["test-step-other"] * (len(series) - k)
        # The new model continues from the state the old one left, exactly.
        xs = np.array(series, np.float32).reshape(-1, 1) + offset
        before, state = StepModel(models["step"]).run_sequence(xs[:k])
        after, _ = StepModel(models["step2"]).run_sequence(xs[k:], state)
        got = np.array([p["forecast"] for p in preds])
        np.testing.assert_allclose(got, np.concatenate([before, after]), atol=1e-5, rtol=0)
    status = rig.col.json(f"statecast/status/{rig.cid}")
    assert any(s.get("model") == "test-step-other" for s in status)


def test_corrupt_or_mismatched_file_is_rejected_and_old_model_serves(
    broker: Mosquitto, models: dict[str, Path], step_models: dict[str, Path], tmp_path: Path,
    daemon_factory: Any, collector_factory: Any,
) -> None:
    rig = Rig(broker, step_models["step"], tmp_path, daemon_factory, collector_factory)
    series = temps(12, seed=1)
    for ts in range(6):
        rig.send("g1", ts, series[ts])
    rig.wait_predictions("g1", 6)
    replace_atomically(b"\x08\x07 this is not an ONNX file", rig.model)
    bad = rig.wait_event(1)
    assert bad["event"] == "reload" and not bad["ok"] and bad["model"] == "test-step"
    assert "not a readable ONNX model" in bad["detail"]
    replace_atomically(models["multi"], rig.model)  # other features: the sensors cannot feed it
    wrong = rig.wait_event(2)
    assert not wrong["ok"] and "features" in wrong["detail"]
    for ts in range(6, 12):
        rig.send("g1", ts, series[ts])
    preds = rig.wait_predictions("g1", 12)
    rig.close()
    assert [p["model"] for p in preds] == ["test-step"] * 12
    want, _ = StepModel(models["step"]).run_sequence(np.array(series, np.float32).reshape(-1, 1))
    np.testing.assert_allclose([p["forecast"] for p in preds], want, atol=1e-5, rtol=0)
    assert "Rejected the new model file" in rig.daemon.log()


def test_commands_reload_reset_drop(
    broker: Mosquitto, models: dict[str, Path], step_models: dict[str, Path], tmp_path: Path,
    daemon_factory: Any, collector_factory: Any,
) -> None:
    window = build_model(tmp_path / "window.onnx", kind="window", lookback=3,
                         model_id="test-win-reload")
    rig = Rig(broker, step_models["step"], tmp_path, daemon_factory, collector_factory,
              "--state-dir", str(tmp_path / "state"))
    series = temps(20, seed=2)
    for ts in range(5):
        rig.send("a", ts, series[ts])
        rig.send("b", ts, series[ts])
    rig.wait_predictions("b", 5)

    rig.command("reset a")
    assert rig.wait_event(1) == {"event": "reset", "model": "test-step", "ok": True, "stream": "a"}
    rig.command("drop b")
    assert rig.wait_event(2)["event"] == "drop"
    rig.command("drop nosuch")
    assert rig.wait_event(3) == {"event": "drop", "model": "test-step", "ok": False,
                                 "stream": "nosuch", "detail": "unknown stream"}
    rig.command("fly away")
    assert "unknown command" in rig.wait_event(4)["detail"]
    # After the reset, 'a' steps from a zero state; after the drop, 'b' is a new stream.
    rig.send("a", 5, series[5])
    rig.send("b", 0, series[0])  # an old timestamp is fine: nothing is remembered of 'b'
    a = rig.wait_predictions("a", 6)
    b = rig.wait_predictions("b", 6)
    fresh, _ = StepModel(models["step"]).run_sequence(np.array([[series[5]]], np.float32))
    np.testing.assert_allclose(a[5]["forecast"], fresh[0], atol=1e-5, rtol=0)
    np.testing.assert_allclose(b[5]["forecast"], b[0]["forecast"], atol=1e-6, rtol=0)

    rig.command("reload")  # the file did not change
    unchanged = rig.wait_event(5)
    assert unchanged["ok"] and unchanged["states"] == "unchanged"
    shutil.copyfile(window, rig.model)  # a plain copy; then the command asks for the reload
    rig.command("reload")  # (the file watcher may get there first: then this one is a no-op)
    rig.wait_event(6)
    swapped = next(e for e in rig.events()[5:] if e["model"] == "test-win-reload")
    assert swapped["ok"] and swapped["model"] == "test-win-reload"
    assert swapped["states"] == "reset" and swapped["streams"] == 2
    for ts in range(6, 9):  # a window model publishes once it has `lookback` observations
        rig.send("a", ts, series[ts])
    a = rig.wait_predictions("a", 7)
    rig.close()
    assert len(a) == 7 and a[6]["model"] == "test-win-reload"
    y, _ = StepModel(window).step(np.array(series[6:9], np.float32).reshape(3, 1), [])
    np.testing.assert_allclose(a[6]["forecast"], y[0], atol=1e-5, rtol=0)


def test_swap_then_restart_continues_from_the_new_models_checkpoint(
    broker: Mosquitto, step_models: dict[str, Path], tmp_path: Path, daemon_factory: Any,
    collector_factory: Any,
) -> None:
    models = step_models
    rig = Rig(broker, models["step"], tmp_path, daemon_factory, collector_factory,
              "--state-dir", str(tmp_path / "state"))
    series = temps(30, seed=3)
    for ts in range(10):
        rig.send("g1", ts, series[ts])
    rig.wait_predictions("g1", 10)
    replace_atomically(models["step2"], rig.model)
    assert rig.wait_event(1)["states"] == "kept"
    for ts in range(10, 20):
        rig.send("g1", ts, series[ts])
    rig.wait_predictions("g1", 20)
    assert rig.daemon.stop() == 0
    rig.start()  # the file now holds the new model: its checkpoint is found
    for ts in range(20, 30):
        rig.send("g1", ts, series[ts])
    preds = rig.wait_predictions("g1", 30)
    rig.close()
    assert [p["ts"] for p in preds] == [ts * HOUR for ts in range(30)]
    xs = np.array(series, np.float32).reshape(-1, 1)
    before, state = StepModel(models["step"]).run_sequence(xs[:10])
    after, _ = StepModel(models["step2"]).run_sequence(xs[10:], state)
    np.testing.assert_allclose([p["forecast"] for p in preds], np.concatenate([before, after]),
                               atol=1e-5, rtol=0)


def test_reload_mid_period_keeps_the_open_period_and_the_scores(
    broker: Mosquitto, tmp_path: Path, daemon_factory: Any, collector_factory: Any, batch: str,
) -> None:
    """A sensor publishing 6 readings per period into an hourly grid model with intervals; the
    model file is replaced by one with other weights (same layout, same horizon) in the middle
    of a period. The reload keeps the open period and the scoring state: every forecast and
    every interval equals a run in which the same readings went to the first model and then,
    from the same stream states, to the second."""
    from conftest import GRID_ORIGIN
    from test_edge_score import gaussian_seed

    from edge.config import EdgeConfig
    from edge.manifest import Grid
    from edge.service import Processor, load_model

    kw: dict[str, Any] = {"max_gap": 3, "grid": Grid(origin=GRID_ORIGIN), "batch": batch,
                          "conformal": gaussian_seed(3, 2.0)}
    first = build_model(tmp_path / "g1.onnx", model_id="grid-first", **kw)
    second = build_model(tmp_path / "g2.onnx", model_id="grid-second", seed=1, **kw)
    rig = Rig(broker, first, tmp_path, daemon_factory, collector_factory,
              "--state-dir", str(tmp_path / "state"))
    rng = np.random.default_rng(5)
    readings = [(int(GRID_ORIGIN) + i * 600 + 1 + int(rng.integers(0, 500)),
                 round(float(50 + 10 * np.sin(i / 30) + rng.normal(0, 1)), 3))
                for i in range(6 * 40)]
    swap_at = 6 * 25 + 3  # half way through a period

    def send(ts: float, temp: float) -> bytes:
        body = json.dumps({"ts": ts, "temp": temp}).encode()
        rig.pub.publish(f"{rig.cid}/g/temp", body, qos=1).wait_for_publish(5)
        return body

    sent = [send(ts, v) for ts, v in readings[:swap_at]]
    # a duplicate is refused without touching the state; its error says that everything
    # before it has been processed
    sent.append(send(*readings[swap_at - 1]))
    assert rig.col.wait_for(f"{rig.cid}-err/g", 1)[0]["reason"] == "duplicate"
    replace_atomically(second, rig.model)
    event = rig.wait_event(1)
    assert event["event"] == "reload" and event["states"] == "kept", event
    after = [send(ts, v) for ts, v in readings[swap_at:]]
    preds = rig.wait_predictions("g", 39)
    rig.close()

    want: list[dict[str, Any]] = []

    def keep(topic: str, payload: bytes, qos: int) -> bool:
        doc = json.loads(payload)
        if "forecast" in doc:
            want.append(doc)
        return True

    cfg = EdgeConfig(model=str(first), subscribe=(f"{rig.cid}/+/temp",), client_id="ref")
    m1, freq = load_model(cfg)
    ref = Processor(cfg, m1, freq, keep)
    for body in sent:
        ref.handle(f"{rig.cid}/g/temp", body)
    m2, _ = load_model(EdgeConfig(model=str(second), subscribe=cfg.subscribe, client_id="ref"))
    carried = Processor(cfg, m2, freq, keep)
    for name, st in ref.store.streams.items():  # everything a stream has, copied by hand
        new = carried.store.create(name)
        new.state = [a.copy() for a in st.state]
        new.extra = {k: v.copy() for k, v in st.extra.items()}
        new.last_t, new.count = st.last_t, st.count
    ref = carried
    for body in after:
        ref.handle(f"{rig.cid}/g/temp", body)

    assert [p["period"] for p in preds] == [p["period"] for p in want]
    assert [p["model"] for p in preds].count("grid-second") == 40 - 26
    for got, exp in zip(preds, want, strict=True):
        np.testing.assert_allclose(got["forecast"], exp["forecast"], atol=1e-6, rtol=0)
        for c in ("0.8", "0.95"):
            np.testing.assert_allclose(got["intervals"][c], exp["intervals"][c], atol=1e-5,
                                       rtol=0)
