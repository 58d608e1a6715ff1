"""Reliability end to end: crashes, broker faults, floods and hostile input against a real
mosquitto and the daemon as a subprocess (issue 7)."""

from __future__ import annotations

import json
import random
import signal
import socket
import threading
import time
import urllib.request
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from conftest import Collector, Daemon, Mosquitto, free_port
from paho.mqtt.enums import CallbackAPIVersion

from edge.model import StepModel
from edge.state import StateStore

pytestmark = pytest.mark.broker

T0 = datetime(2011, 1, 1)


def series(stream: int, n: int) -> list[tuple[str, float]]:
    """(ISO ts, value) for one synthetic stream: a daily cycle with a per-stream phase."""
    return [
        ((T0 + timedelta(hours=i)).isoformat(), round(50 + 10 * np.sin(i / 3.8 + stream), 3))
        for i in range(n)
    ]


def reference(model: Path, values: list[float]) -> tuple[np.ndarray, list[np.ndarray]]:
    m = StepModel(model)
    ys, state = m.run_sequence(np.array(values, np.float32).reshape(-1, 1))
    return ys, state


def args(model: Path, broker: Mosquitto, cid: str, *extra: str) -> list[str]:
    return ["--model", str(model), "--broker", broker.url, "--subscribe", f"{cid}/+/temp",
            "--publish", f"{cid}-out/{{stream}}", "--errors", f"{cid}-err/{{stream}}",
            "--client-id", cid, *extra]


def publisher(broker: Mosquitto, client_id: str = "", persistent: bool = False) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                         clean_session=not persistent if client_id else True)
    client.max_inflight_messages_set(100)
    client.max_queued_messages_set(0)
    client.reconnect_delay_set(0.05, 0.5)
    client.connect(broker.host, broker.port, keepalive=10)
    client.loop_start()
    return client


def wait_online(col: Collector, cid: str, mark: int, d: Daemon, timeout: float = 30.0) -> None:
    assert col.wait_status(cid, "online", mark, timeout=timeout), d.log()[-3000:]


def metrics(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def predictions_by_key(col: Collector, prefix: str) -> dict[tuple[str, str], list[list[float]]]:
    got: dict[tuple[str, str], list[list[float]]] = {}
    for p in col.json(prefix):
        got.setdefault((p["stream"], p["ts"]), []).append(p["forecast"])
    return got


def check_exactly(
    got: dict[tuple[str, str], list[list[float]]], model: Path,
    sent: dict[str, list[tuple[str, float]]],
) -> None:
    """Every (stream, ts) published has one value (re-publications are identical) and the
    values are those of one uninterrupted run over everything sent."""
    want_keys = {(s, ts) for s, rows in sent.items() for ts, _ in rows}
    assert set(got) == want_keys, (len(set(got)), len(want_keys))
    for key, forecasts in got.items():
        assert all(f == forecasts[0] for f in forecasts), f"{key} published different values"
    for s, rows in sent.items():
        want, _ = reference(model, [v for _, v in rows])
        mine = np.array([got[(s, ts)][0] for ts, _ in rows])
        np.testing.assert_allclose(mine, want, atol=1e-6, rtol=0)


# -- 1. exactly-once effect under SIGKILL -----------------------------------------------------


def test_sigkill_at_random_moments_steps_each_observation_once(
    broker: Mosquitto, models: dict[str, Path], tmp_path: Path, daemon_factory: Any,
    collector_factory: Any,
) -> None:
    """A publisher streams 3 sensors at QoS 1 while the daemon is killed with SIGKILL at random
    moments 24 times and restarted each time; afterwards the distinct (stream, ts) predictions
    and the final states equal those of one uninterrupted run."""
    cid = f"k{uuid.uuid4().hex[:8]}"
    state = tmp_path / "state"
    rng = random.Random(7)
    kills = 24
    streams = [f"s{i}" for i in range(3)]
    rows = {s: series(i, 2000) for i, s in enumerate(streams)}
    sent: dict[str, list[tuple[str, float]]] = {s: [] for s in streams}
    col = collector_factory(broker, [f"{cid}-out/#", f"{cid}-err/#", f"statecast/status/{cid}"])
    argv = args(models["step"], broker, cid, "--state-dir", str(state))

    mark = col.mark()
    d = daemon_factory(*argv)
    wait_online(col, cid, mark, d)  # the persistent session exists from here on
    pub = publisher(broker)
    done = threading.Event()

    def publish() -> None:
        i = 0
        while not done.is_set() and i < 2000:
            for s in streams:
                ts, v = rows[s][i]
                pub.publish(f"{cid}/{s}/temp", json.dumps({"ts": ts, "temp": v}), qos=1)
                sent[s].append((ts, v))
            i += 1
            time.sleep(0.004)

    thread = threading.Thread(target=publish, name="test-publisher")
    thread.start()
    try:
        for _ in range(kills):
            time.sleep(rng.uniform(0.0, 0.4))
            d.stop(signal.SIGKILL)
            mark = col.mark()
            d = daemon_factory(*argv)
            wait_online(col, cid, mark, d)
    finally:
        done.set()
        thread.join()
    n = sum(len(v) for v in sent.values())
    assert n > 300
    deadline = time.monotonic() + 60
    while len(predictions_by_key(col, f"{cid}-out/")) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    assert d.stop() == 0
    pub.disconnect()
    pub.loop_stop()
    check_exactly(predictions_by_key(col, f"{cid}-out/"), models["step"], sent)
    assert {e["reason"] for e in col.json(f"{cid}-err/")} <= {"duplicate", "out_of_order"}
    # the final states on disk equal an uninterrupted run's
    m = StepModel(models["step"])
    store = StateStore(m.manifest.model_id, m.zero_state())
    assert store.load(state) == len(streams)
    for s in streams:
        _, want = reference(models["step"], [v for _, v in sent[s]])
        for x, y in zip(store.streams[s].state, want, strict=True):
            np.testing.assert_allclose(x, y, atol=1e-6, rtol=0)
        assert store.streams[s].count == len(sent[s])
