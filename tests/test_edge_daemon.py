"""End to end: real mosquitto, `statecast-edge` and `statecast-replay` as subprocesses."""

from __future__ import annotations

import csv
import json
import signal
import time
import urllib.request
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from conftest import ROOT, Collector, Daemon, Mosquitto, free_port, replay
from paho.mqtt.enums import CallbackAPIVersion

from edge.model import StepModel

pytestmark = pytest.mark.broker

DATA = ROOT / "examples" / "data" / "seattle-temps.csv"
if not DATA.is_file():
    DATA = Path("/work/shared/data/seattle-temps.csv")


def seattle(n: int, offset: int = 0) -> list[tuple[str, float]]:
    with DATA.open(newline="") as fh:
        rows = list(csv.DictReader(fh))[offset : offset + n]
    return [(r["date"], float(r["temp"])) for r in rows]


def iso(date: str) -> str:
    return datetime.strptime(date, "%Y/%m/%d %H:%M").isoformat()


def expected(model: Path, temps: list[float]) -> np.ndarray:
    ys, _ = StepModel(model).run_sequence(np.array(temps, np.float32).reshape(-1, 1))
    return ys


def daemon_args(model: Path, broker: Mosquitto, cid: str, *extra: str) -> list[str]:
    return ["--model", str(model), "--broker", broker.url, "--subscribe", f"{cid}/+/temp",
            "--publish", f"{cid}-out/{{stream}}", "--errors", f"{cid}-err/{{stream}}",
            "--client-id", cid, *extra]


def start(daemon_factory: Any, collector: Collector, cid: str, *args: str) -> Daemon:
    mark = collector.mark()
    d = daemon_factory(*args)
    assert collector.wait_status(cid, "online", mark), d.log()
    return d


def publisher(broker: Mosquitto) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2)
    client.connect(broker.host, broker.port)
    client.loop_start()
    return client


def test_replay_several_streams_matches_stepmodel(
    broker: Mosquitto, models: dict[str, Path], tmp_path: Path, daemon_factory: Any,
    collector_factory: Any,
) -> None:
    cid = f"e{uuid.uuid4().hex[:8]}"
    streams = {"north": 0, "south": 2000, "east": 5000}
    n = 100
    data = tmp_path / "obs.csv"
    with data.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["station", "date", "temp"])
        series = {s: seattle(n, off) for s, off in streams.items()}
        for i in range(n):
            for s in streams:
                w.writerow([s, *series[s][i]])
    col = collector_factory(broker, [f"{cid}-out/#", f"{cid}-err/#", f"statecast/status/{cid}"])
    port = free_port()
    d = start(daemon_factory, col, cid, *daemon_args(models["step"], broker, cid),
              "--metrics-port", str(port))
    replay(broker, data, f"{cid}/{{stream}}/temp", "--time-col", "date",
           "--series-col", "station", "--features", "temp")
    preds = col.wait_for(f"{cid}-out/", n * len(streams))
    time.sleep(0.2)
    preds = col.json(f"{cid}-out/")
    assert len(preds) == n * len(streams)
    assert col.json(f"{cid}-err/") == []
    for s in streams:
        mine = [p for p in preds if p["stream"] == s]
        assert [p["ts"] for p in mine] == [iso(date) for date, _ in series[s]]
        want = expected(models["step"], [t for _, t in series[s]])
        np.testing.assert_allclose([p["forecast"] for p in mine], want, atol=1e-6, rtol=0)
        assert all(p["model"] == "test-step" for p in mine)
    deadline = time.monotonic() + 5.0  # the gauges follow at the checkpoint cadence (0.5 s)
    while True:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        text = text.decode()
        if "statecast_edge_active_streams 3" in text or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert f"statecast_edge_messages_received_total {n * len(streams)}" in text
    assert f"statecast_edge_predictions_published_total {n * len(streams)}" in text
    assert "statecast_edge_active_streams 3" in text
    assert "statecast_edge_step_seconds_count 300" in text
    health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz").read())
    assert health["ok"] is True
    assert d.stop() == 0
    assert d.log().count("MQTT reads go through a buffered socket") == 1  # the path, once


@pytest.mark.parametrize("version", ["3.1.1", "5"])
def test_bad_input_is_reported_and_harmless(
    broker: Mosquitto, models: dict[str, Path], daemon_factory: Any, collector_factory: Any,
    version: str,
) -> None:
    cid = f"e{uuid.uuid4().hex[:8]}"
    col = collector_factory(broker, [f"{cid}-out/#", f"{cid}-err/#", f"statecast/status/{cid}"])
    d = start(daemon_factory, col, cid,
              *daemon_args(models["step"], broker, cid, "--mqtt-version", version))
    rows = seattle(8)
    bad = [
        (b"{nope", "malformed_json"),
        (b"\xff\xfe\xfa", "not_utf8"),
        (b'{"ts": "2011-01-01T00:00:00"}', "missing_field"),
        (b'{"ts": "2011-01-01T00:00:00", "temp": "warm"}', "not_numeric"),
        (b'{"ts": "2011-01-01T00:00:00", "temp": NaN}', "not_finite"),
        (b'{"ts": "2011-01-01T00:00:00", "temp": Infinity}', "not_finite"),
        (b'{"ts": "tomorrow", "temp": 1}', "bad_ts"),
        (json.dumps({"ts": iso(rows[2][0]), "temp": 1.0}).encode(), "duplicate"),
        (json.dumps({"ts": iso(rows[0][0]), "temp": 1.0}).encode(), "out_of_order"),
        (b'{"ts": "2011-01-01T00:00:00", "temp": 1, "pad": "' + b"x" * 20000 + b'"}',
         "too_large"),
    ]
    pub = publisher(broker)
    for i, (date, temp) in enumerate(rows):
        pub.publish(f"{cid}/s/temp", json.dumps({"ts": iso(date), "temp": temp}), qos=1)
        if i == 2:
            for payload, _ in bad:
                pub.publish(f"{cid}/s/temp", payload, qos=1)
    preds = col.wait_for(f"{cid}-out/", len(rows))
    errors = col.wait_for(f"{cid}-err/", len(bad))
    pub.disconnect()
    pub.loop_stop()
    assert [e["reason"] for e in errors] == [r for _, r in bad]
    assert all(e["stream"] == "s" for e in errors)
    np.testing.assert_allclose(
        [p["forecast"] for p in preds], expected(models["step"], [t for _, t in rows]),
        atol=1e-6, rtol=0,
    )
    assert d.stop() == 0
    assert d.log().count("Dropped a message") == 1  # at most once per stream per minute


@pytest.mark.parametrize("version", ["3.1.1", "5"])
def test_restart_continues_exactly(
    broker: Mosquitto, models: dict[str, Path], step_models: dict[str, Path], tmp_path: Path,
    daemon_factory: Any, collector_factory: Any, version: str,
) -> None:
    """SIGTERM (offline + checkpoint), messages sent while down arrive (persistent session),
    then kill -9 after a quiet second: the forecasts are those of one uninterrupted run."""
    cid = f"e{uuid.uuid4().hex[:8]}"
    state = tmp_path / "state"
    rows = seattle(90, 100)
    data = tmp_path / "obs.csv"
    with data.open("w", newline="") as fh:
        csv.writer(fh).writerows([("date", "temp"), *rows])
    col = collector_factory(broker, [f"{cid}-out/#", f"{cid}-err/#", f"statecast/status/{cid}"])
    args = daemon_args(step_models["step"], broker, cid, "--state-dir", str(state),
                       "--mqtt-version", version)
    topic = f"{cid}/{{stream}}/temp"
    common = ("--time-col", "date", "--stream", "s")

    d = start(daemon_factory, col, cid, *args)
    replay(broker, data, topic, *common, "--count", "30")
    assert len(col.wait_for(f"{cid}-out/", 30)) == 30
    mark = col.mark()
    assert d.stop(signal.SIGTERM) == 0
    assert col.wait_status(cid, "offline", mark)
    assert list(state.glob("*.npz")), "no checkpoint after SIGTERM"

    replay(broker, data, topic, *common, "--skip", "30", "--count", "30")  # daemon is down
    d = start(daemon_factory, col, cid, *args)
    assert len(col.wait_for(f"{cid}-out/", 60)) == 60
    time.sleep(1.2)  # a quiet second: the checkpoint is written
    d.stop(signal.SIGKILL)

    d = start(daemon_factory, col, cid, *args)
    replay(broker, data, topic, *common, "--skip", "60")
    preds = col.wait_for(f"{cid}-out/", 90)
    assert d.stop() == 0
    assert col.json(f"{cid}-err/") == []
    assert [p["ts"] for p in preds] == [iso(date) for date, _ in rows]
    np.testing.assert_allclose(
        [p["forecast"] for p in preds], expected(models["step"], [t for _, t in rows]),
        atol=1e-6, rtol=0,
    )


def test_other_model_ignores_checkpoint(
    broker: Mosquitto, models: dict[str, Path], step_models: dict[str, Path], tmp_path: Path,
    daemon_factory: Any, collector_factory: Any,
) -> None:
    cid = f"e{uuid.uuid4().hex[:8]}"
    state = tmp_path / "state"
    col = collector_factory(broker, [f"{cid}-out/#", f"statecast/status/{cid}"])
    d = start(daemon_factory, col, cid,
              *daemon_args(step_models["step"], broker, cid, "--state-dir", str(state)))
    pub = publisher(broker)
    pub.publish(f"{cid}/s/temp", '{"ts": "2010-01-01T00:00:00", "temp": 40}', qos=1)
    col.wait_for(f"{cid}-out/", 1)
    assert d.stop() == 0
    d = start(daemon_factory, col, cid,
              *daemon_args(step_models["step2"], broker, cid, "--state-dir", str(state)))
    mark = col.mark()
    pub.publish(f"{cid}/s/temp", '{"ts": "2010-01-01T00:00:00", "temp": 40}', qos=1)
    (pred,) = col.wait_for(f"{cid}-out/", 1, since=mark)
    pub.disconnect()
    pub.loop_stop()
    assert d.stop() == 0
    assert "Ignoring checkpoint" in d.log()
    np.testing.assert_allclose(pred["forecast"], expected(models["step2"], [40.0])[0], atol=1e-6)


def test_broker_restart_is_survived(
    own_broker: Mosquitto, models: dict[str, Path], step_models: dict[str, Path], tmp_path: Path,
    daemon_factory: Any, collector_factory: Any,
) -> None:
    cid = f"e{uuid.uuid4().hex[:8]}"
    rows = seattle(40, 300)
    data = tmp_path / "obs.csv"
    with data.open("w", newline="") as fh:
        csv.writer(fh).writerows([("date", "temp"), *rows])
    col = collector_factory(own_broker, [f"{cid}-out/#", f"statecast/status/{cid}"])
    d = start(daemon_factory, col, cid, *daemon_args(step_models["step"], own_broker, cid))
    common = ("--time-col", "date", "--stream", "s")
    replay(own_broker, data, f"{cid}/{{stream}}/temp", *common, "--count", "20")
    assert len(col.wait_for(f"{cid}-out/", 20)) == 20
    mark = col.mark()
    own_broker.restart()
    assert col.wait_status(cid, "online", mark, connection=2), d.log()
    replay(own_broker, data, f"{cid}/{{stream}}/temp", *common, "--skip", "20")
    preds = col.wait_for(f"{cid}-out/", 40)
    assert d.stop() == 0
    assert "Reconnecting in" in d.log()
    np.testing.assert_allclose(
        [p["forecast"] for p in preds], expected(models["step"], [t for _, t in rows]),
        atol=1e-6, rtol=0,
    )


def test_window_and_classifier_models(
    broker: Mosquitto, models: dict[str, Path], daemon_factory: Any, collector_factory: Any,
) -> None:
    cid = f"e{uuid.uuid4().hex[:8]}"
    col = collector_factory(broker, [f"{cid}-out/#", f"statecast/status/{cid}"])
    d = start(daemon_factory, col, cid, *daemon_args(models["window"], broker, cid))
    pub = publisher(broker)
    rows = seattle(6)
    for date, temp in rows:
        pub.publish(f"{cid}/w/temp", json.dumps({"ts": iso(date), "temp": temp}), qos=1)
    preds = col.wait_for(f"{cid}-out/", 3)
    assert d.stop() == 0
    assert [p["ts"] for p in preds] == [iso(date) for date, _ in rows[3:]]
    d = start(daemon_factory, col, cid, *daemon_args(models["classify"], broker, cid))
    mark = col.mark()
    pub.publish(f"{cid}/c/temp", "51.5", qos=1)  # a bare number, timestamped on arrival
    (pred,) = col.wait_for(f"{cid}-out/", 1, since=mark)
    pub.disconnect()
    pub.loop_stop()
    assert d.stop() == 0
    assert set(pred["probabilities"]) == {"cold", "mild", "warm"}
    assert len(pred["at"]) == 2


def test_config_file_and_sigint(
    broker: Mosquitto, models: dict[str, Path], tmp_path: Path, daemon_factory: Any,
    collector_factory: Any,
) -> None:
    cid = f"e{uuid.uuid4().hex[:8]}"
    cfg = tmp_path / "edge.toml"
    cfg.write_text(
        f'model = "{models["window"]}"\nbroker = "{broker.url}"\n'
        f'subscribe = ["{cid}/+/obs"]\npublish = "{cid}-out/{{stream}}"\nclient_id = "{cid}"\n'
        'max_payload = 64\n[field_map]\ntemp = "t"\n'
    )
    col = collector_factory(broker, [f"{cid}-out/#", "statecast/#"])
    port = free_port()
    d = start(daemon_factory, col, cid, "--config", str(cfg), "--metrics-port", str(port))
    pub = publisher(broker)
    pub.publish(f"{cid}/w/obs", '{"ts": "2010-01-01T00:00:00", "t": 40}', qos=1)
    pub.publish(f"{cid}/w/obs", '{"ts": "2010-01-01T01:00:00", "t": 40, "x": "' + "y" * 64 + '"}',
                qos=1)
    (err,) = col.wait_for("statecast/errors/", 1)
    assert err["reason"] == "too_large"
    deadline = time.monotonic() + 10
    text = ""
    while "statecast_edge_warming_streams 1" not in text and time.monotonic() < deadline:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
        time.sleep(0.05)
    assert "statecast_edge_warming_streams 1" in text
    assert 'statecast_edge_dropped_total{reason="too_large"} 1' in text
    pub.disconnect()
    pub.loop_stop()
    mark = col.mark()
    assert d.stop(signal.SIGINT) == 0
    assert col.wait_status(cid, "offline", mark)
    assert col.json(f"{cid}-out/") == []  # still warming up: lookback 4
