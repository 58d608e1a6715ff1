"""Reliability end to end: crashes, broker faults, floods and hostile input against a real
mosquitto and the daemon as a subprocess. Every test that a state could fail runs over both
serving modes (`batch`): a batch-1 export and a `--batch dynamic` export."""

from __future__ import annotations

import contextlib
import json
import random
import signal
import socket
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from conftest import Collector, Daemon, Mosquitto, free_port
from paho.mqtt.enums import CallbackAPIVersion

from edge.config import EdgeConfig
from edge.grid import ARRIVAL
from edge.model import StepModel
from edge.service import Processor, load_model
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


def args(model: Path, broker: Mosquitto | str, cid: str, *extra: str) -> list[str]:
    url = broker if isinstance(broker, str) else broker.url
    return ["--model", str(model), "--broker", url, "--subscribe", f"{cid}/+/temp",
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


def sigkill_while(publish: Callable[[], None], d: Daemon, restart: Callable[[], Daemon],
                  kills: int, pause: Callable[[], float],
                  done: threading.Event | None = None) -> Daemon:
    """Run `publish` in a thread and meanwhile SIGKILL the daemon `kills` times, `pause()`
    seconds apart, starting it again with `restart` each time; then set `done` (a publisher
    that watches it stops early) and wait for the publisher. Returns the daemon now running."""
    thread = threading.Thread(target=publish, name="test-publisher")
    thread.start()
    try:
        for _ in range(kills):
            time.sleep(pause())
            d.stop(signal.SIGKILL)
            d = restart()
    finally:
        if done is not None:
            done.set()
        thread.join()
    return d


def restarter(daemon_factory: Any, col: Collector, cid: str, argv: list[str]
              ) -> Callable[[], Daemon]:
    """Start the daemon with `argv` and wait until it says it is online."""
    def start() -> Daemon:
        mark = col.mark()
        d: Daemon = daemon_factory(*argv)
        wait_online(col, cid, mark, d)
        return d
    return start


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
    broker: Mosquitto, models: dict[str, Path], step_models: dict[str, Path], tmp_path: Path,
    daemon_factory: Any, collector_factory: Any,
) -> None:
    """A publisher streams 3 sensors at QoS 1 while the daemon is killed with SIGKILL at random
    moments 24 times and restarted each time (the publisher carries on while it is down);
    afterwards the distinct (stream, ts) predictions and the final states equal those of one
    uninterrupted run. With a dynamic-batch export the three streams are stepped together."""
    cid = f"k{uuid.uuid4().hex[:8]}"
    state = tmp_path / "state"
    rng = random.Random(7)
    kills = 24
    streams = [f"s{i}" for i in range(3)]
    rows = {s: series(i, 2000) for i, s in enumerate(streams)}
    sent: dict[str, list[tuple[str, float]]] = {s: [] for s in streams}
    col = collector_factory(broker, [f"{cid}-out/#", f"{cid}-err/#", f"statecast/status/{cid}"])
    argv = args(step_models["step"], broker, cid, "--state-dir", str(state))

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

    d = sigkill_while(publish, d, restarter(daemon_factory, col, cid, argv), kills,
                      lambda: rng.uniform(0.0, 0.4), done)
    n = sum(len(v) for v in sent.values())
    assert n > 300
    deadline = time.monotonic() + 60
    while len(predictions_by_key(col, f"{cid}-out/")) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    assert d.stop() == 0
    pub.disconnect()
    pub.loop_stop()
    got = predictions_by_key(col, f"{cid}-out/")
    check_exactly(got, models["step"], sent)
    redelivered = col.json(f"{cid}-err/")
    assert {e["reason"] for e in redelivered} <= {"duplicate", "out_of_order"}
    print(f"sigkill: {kills} kills, {n} observations, {sum(map(len, got.values()))} predictions "
          f"published for {len(got)} (stream, ts), {len(redelivered)} redelivered duplicates")
    # the final states on disk equal an uninterrupted run's
    m = StepModel(models["step"])
    store = StateStore(m.manifest.model_id, m.zero_state())
    assert store.load(state) == len(streams)
    for s in streams:
        _, want = reference(models["step"], [v for _, v in sent[s]])
        for x, y in zip(store.streams[s].state, want, strict=True):
            np.testing.assert_allclose(x, y, atol=1e-6, rtol=0)
        assert store.streams[s].count == len(sent[s])


# -- 2. broker faults ---------------------------------------------------------------------------


class PersistentCollector(Collector):
    """A Collector with a persistent session, so nothing published while it is disconnected
    (during a broker restart) is missed."""

    def __init__(self, broker: Mosquitto, topics: list[str], client_id: str) -> None:
        super().__init__(broker, topics, client_id, persistent=True)


def stream_in_background(
    pub: mqtt.Client, cid: str, streams: list[str], n: int, pause: float
) -> tuple[threading.Thread, dict[str, list[tuple[str, float]]]]:
    """Publish n observations per stream from a thread, each only after the broker acknowledged
    the one before: a sensor that keeps its order across reconnects (paho alone may send a new
    message before it re-sends the unacknowledged ones, and the daemon drops a late `ts`)."""
    rows = {s: series(i, n) for i, s in enumerate(streams)}
    acked: set[int] = set()
    cond = threading.Condition()

    def on_publish(client: Any, userdata: Any, mid: int, *rest: Any) -> None:
        with cond:
            acked.add(mid)
            cond.notify_all()

    pub.on_publish = on_publish

    def run() -> None:
        for i in range(n):
            for s in streams:
                ts, v = rows[s][i]
                while not pub.is_connected():
                    time.sleep(0.01)
                info = pub.publish(f"{cid}/{s}/temp", json.dumps({"ts": ts, "temp": v}), qos=1)
                mid = info.mid
                with cond:
                    assert cond.wait_for(lambda m=mid: m in acked, timeout=60)  # type: ignore[misc]
                    acked.discard(mid)
            time.sleep(pause)

    thread = threading.Thread(target=run, name="test-publisher")
    thread.start()
    return thread, rows


def wait_all(col: Collector, prefix: str, n: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while len(predictions_by_key(col, prefix)) < n and time.monotonic() < deadline:
        time.sleep(0.05)


def test_broker_restart_with_persistence_loses_nothing(
    own_broker: Mosquitto, models: dict[str, Path], step_models: dict[str, Path], tmp_path: Path,
    daemon_factory: Any,
) -> None:
    """mosquitto (persistence on) is stopped and restarted twice in the middle of a QoS 1
    stream; the daemon reconnects and every observation gets exactly its prediction."""
    own_broker.stop()
    text = own_broker.config.read_text().replace("persistence false", "persistence true")
    own_broker.config.write_text(
        text + f"persistence_location {own_broker.directory}/\nautosave_interval 1\n"
    )
    own_broker.start()
    cid = f"b{uuid.uuid4().hex[:8]}"
    col = PersistentCollector(own_broker, [f"{cid}-out/#", f"{cid}-err/#",
                                           f"statecast/status/{cid}"],
                              f"{cid}-collector")
    try:
        mark = col.mark()
        d = daemon_factory(*args(step_models["step"], own_broker, cid, "--state-dir",
                                 str(tmp_path / "state")))
        wait_online(col, cid, mark, d)
        pub = publisher(own_broker, f"{cid}-pub", persistent=True)
        streams = ["a", "b", "c"]
        thread, rows = stream_in_background(pub, cid, streams, 400, 0.005)
        for connection in (2, 3):
            time.sleep(0.6)
            mark = col.mark()
            own_broker.restart()
            wait_online(col, cid, mark, d)
            assert col.wait_status(cid, "online", mark, connection=connection), d.log()[-3000:]
        thread.join()
        wait_all(col, f"{cid}-out/", 3 * 400)
        assert d.stop() == 0
        pub.disconnect()
        pub.loop_stop()
        check_exactly(predictions_by_key(col, f"{cid}-out/"), models["step"], rows)
        assert "Reconnecting in" in d.log()
    finally:
        col.close()


class Proxy:
    """A TCP proxy between the daemon and the broker that can drop its connections, stall them
    (stop forwarding, without closing) or refuse new ones (accept and close at once)."""

    def __init__(self, broker: Mosquitto) -> None:
        self.upstream = (broker.host, broker.port)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.url = f"mqtt://127.0.0.1:{self.port}"
        self.refuse = False
        self.lock = threading.Lock()
        self.pairs: list[tuple[socket.socket, socket.socket]] = []
        self.frozen: set[socket.socket] = set()
        self.accepted = 0
        self.closing = False
        self.thread = threading.Thread(target=self._accept, name="test-proxy", daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.closing:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            self.accepted += 1
            if self.refuse:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.pairs.append((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        while True:
            if src in self.frozen:
                time.sleep(0.05)
                if self.closing:
                    return
                continue
            try:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
            except OSError:
                break
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def drop(self) -> None:
        with self.lock:
            pairs, self.pairs = self.pairs, []
        for pair in pairs:
            for s in pair:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def stall(self) -> None:
        with self.lock:
            pairs, self.pairs = self.pairs, []
        for pair in pairs:
            self.frozen.update(pair)

    def close(self) -> None:
        self.closing = True
        self.drop()
        self.server.close()
        for s in list(self.frozen):
            s.close()


def test_proxy_drops_and_stalls_reconnect_with_backoff_and_lose_nothing(
    broker: Mosquitto, models: dict[str, Path], step_models: dict[str, Path], tmp_path: Path,
    daemon_factory: Any, collector_factory: Any,
) -> None:
    """Between daemon and broker, a proxy drops the connection, then stalls it (the daemon's
    keepalive notices), then refuses connections for 2.5 s: the daemon reconnects each time,
    backs off while refused, resubscribes, and every QoS 1 observation gets its prediction."""
    cid = f"p{uuid.uuid4().hex[:8]}"
    proxy = Proxy(broker)
    cfg = tmp_path / "edge.toml"
    cfg.write_text("keepalive = 2\nreconnect_min = 0.1\nreconnect_max = 2.0\n")
    col = collector_factory(broker, [f"{cid}-out/#", f"statecast/status/{cid}"])
    try:
        mark = col.mark()
        d = daemon_factory("--config", str(cfg), *args(step_models["step"], proxy.url, cid,
                           "--state-dir", str(tmp_path / "state")))
        wait_online(col, cid, mark, d)
        pub = publisher(broker)
        streams = ["a", "b"]
        thread, rows = stream_in_background(pub, cid, streams, 1500, 0.004)
        time.sleep(0.5)
        proxy.drop()
        assert col.wait_status(cid, "online", mark, connection=2), d.log()[-3000:]
        proxy.stall()
        assert col.wait_status(cid, "online", mark, connection=3), d.log()[-3000:]
        proxy.refuse = True
        proxy.drop()
        time.sleep(2.5)
        proxy.refuse = False
        assert col.wait_status(cid, "online", mark, connection=4, timeout=30), d.log()[-3000:]
        thread.join()
        wait_all(col, f"{cid}-out/", 2 * 1500)
        assert d.stop() == 0
        pub.disconnect()
        pub.loop_stop()
    finally:
        proxy.close()
    check_exactly(predictions_by_key(col, f"{cid}-out/"), models["step"], rows)
    delays = [float(line.split("Reconnecting in ")[1].split()[0])
              for line in d.log().splitlines() if "Reconnecting in " in line]
    print(f"proxy: {2 * 1500} observations, reconnect delays {delays}")
    assert len(delays) >= 5, d.log()[-3000:]
    assert max(delays) >= 0.2  # the third attempt in a row waits at least 0.2 s (0.1·2²/2)
    assert max(delays) <= 2.0



# -- 3. floods ----------------------------------------------------------------------------------


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_qos0_flood_drops_newest_counts_and_stays_small(
    broker: Mosquitto, models: dict[str, Path], tmp_path: Path, daemon_factory: Any,
    collector_factory: Any,
) -> None:
    """60,000 QoS 0 observations as fast as one paho client sends them into a daemon with a
    200-message queue: what does not fit is dropped as `queue_full` and counted, every message
    is either taken in or counted, and the daemon's memory does not grow with the flood. (Batch-1
    export only: QoS 0 keeps no state, and the queue bound is the same in both serving modes.)"""
    cid = f"f{uuid.uuid4().hex[:8]}"
    n = 60_000
    cfg = tmp_path / "edge.toml"
    cfg.write_text("queue_size = 200\n")
    port = free_port()
    col = collector_factory(broker, [f"statecast/status/{cid}"])
    mark = col.mark()
    d = daemon_factory("--config", str(cfg), "--qos", "0", "--metrics-port", str(port),
                       *args(models["step"], broker, cid))
    wait_online(col, cid, mark, d)
    base = rss_kib(d.proc.pid)
    pub = publisher(broker)
    peak = base
    payloads = [json.dumps({"ts": 1.3e9 + i * 3600, "temp": 50.0}).encode() for i in range(n)]
    for i, payload in enumerate(payloads):
        pub.publish(f"{cid}/s{i % 10}/temp", payload, qos=0)
        if i % 5000 == 0:
            peak = max(peak, rss_kib(d.proc.pid))
    deadline = time.monotonic() + 60
    m = metrics(port)
    while time.monotonic() < deadline:
        peak = max(peak, rss_kib(d.proc.pid))
        m = metrics(port)
        taken = m["statecast_edge_messages_received_total"]
        dropped = m.get('statecast_edge_dropped_total{reason="queue_full"}', 0)
        if taken + dropped >= n and m["statecast_edge_queue_depth"] == 0:
            break
        time.sleep(0.2)
    pub.disconnect()
    pub.loop_stop()
    assert d.stop() == 0
    taken = m["statecast_edge_messages_received_total"]
    dropped = m.get('statecast_edge_dropped_total{reason="queue_full"}', 0)
    assert taken + dropped == n, m
    assert dropped > 0 and taken > 0
    assert peak - base < 40 * 1024, (base, peak)
    Path(tmp_path / "flood.json").write_text(json.dumps(
        {"sent": n, "taken": taken, "dropped": dropped, "rss_base_kib": base, "rss_peak_kib": peak}
    ))
    print(f"flood: sent {n}, taken {taken:.0f}, dropped {dropped:.0f}, RSS {base} -> {peak} KiB")


def test_qos1_flood_and_resumed_backlog_stay_small(
    broker: Mosquitto, models: dict[str, Path], step_models: dict[str, Path], tmp_path: Path,
    daemon_factory: Any, collector_factory: Any,
) -> None:
    """A publisher sends 8,000 QoS 1 observations of 4 interleaved streams as fast as it can to a
    running MQTT 5 daemon, then 8,000 more while it is down, which mosquitto pushes at once when
    the session resumes: the daemon's memory stays small and every observation gets its
    prediction, exactly.

    The queue depth is printed, not asserted: mosquitto 2.0.11 sends a manual-ack client more
    unacknowledged QoS 1 messages than its receive-maximum (1000), live and on resume."""
    cid = f"q{uuid.uuid4().hex[:8]}"
    port = free_port()
    col = collector_factory(broker, [f"{cid}-out/#", f"statecast/status/{cid}"])
    argv = [*args(step_models["step"], broker, cid, "--mqtt-version", "5", "--state-dir",
                  str(tmp_path / "state")), "--metrics-port", str(port)]
    mark = col.mark()
    d = daemon_factory(*argv)
    wait_online(col, cid, mark, d)
    pub = publisher(broker)
    n = 8000
    rows = {f"s{i}": series(i, 2 * n // 4) for i in range(4)}
    order = [(s, rows[s][i]) for i in range(2 * n // 4) for s in rows]

    def sample(until: int) -> tuple[int, int, int]:
        depth = base = peak = 0
        deadline = time.monotonic() + 60
        while len(col.json(f"{cid}-out/")) < until and time.monotonic() < deadline:
            try:
                depth = max(depth, int(metrics(port)["statecast_edge_queue_depth"]))
                rss = rss_kib(d.proc.pid)
                base, peak = base or rss, max(peak, rss)
            except OSError:
                pass
            time.sleep(0.02)
        return depth, base, peak

    infos = [pub.publish(f"{cid}/{s}/temp", json.dumps({"ts": ts, "temp": v}), qos=1)
             for s, (ts, v) in order[:n]]
    live_depth, base, peak = sample(n)
    assert d.stop() == 0  # the session stays; the backlog queues in the broker
    infos += [pub.publish(f"{cid}/{s}/temp", json.dumps({"ts": ts, "temp": v}), qos=1)
              for s, (ts, v) in order[n:]]
    for info in infos:
        info.wait_for_publish(30)
    d = daemon_factory(*argv)
    resume_depth, _, resume_peak = sample(2 * n)
    assert d.stop() == 0
    pub.disconnect()
    pub.loop_stop()
    check_exactly(predictions_by_key(col, f"{cid}-out/"), models["step"], rows)
    print(f"qos1: live queue depth <= {live_depth}, RSS {base} -> {peak} KiB; resumed backlog "
          f"of {n}: depth {resume_depth}, RSS peak {resume_peak} KiB")
    assert peak - base < 40 * 1024 and resume_peak - base < 40 * 1024, (base, peak, resume_peak)


# -- 5. eviction keeps forecasts exact ------------------------------------------------------------


def test_evicted_streams_come_back_exactly(
    step_models: dict[str, Path], models: dict[str, Path], tmp_path: Path
) -> None:
    """Five interleaved streams, at most two in memory, commits after each round and a restart
    halfway: every forecast equals an uninterrupted run's, as if nothing was ever evicted. Each
    round goes to the processor at once, so a dynamic-batch export steps the streams together."""
    cfg = EdgeConfig(model=str(step_models["step"]), subscribe=("x/+/temp",), client_id="t",
                     max_resident=2, stream_ttl=3600.0, state_dir=str(tmp_path))
    out: list[dict[str, Any]] = []

    def publish(topic: str, payload: bytes, qos: int) -> bool:
        if topic.startswith("forecasts/"):  # not the scores
            out.append(json.loads(payload))
        return True

    def processor() -> Processor:
        model, freq = load_model(cfg)
        proc = Processor(cfg, model, freq, publish)
        proc.store.load(tmp_path)
        return proc

    streams = [f"s{i}" for i in range(5)]
    rows = {s: series(i, 40) for i, s in enumerate(streams)}
    proc = processor()
    for i in range(40):
        if i == 20:
            proc = processor()  # a restart: nothing resident, everything comes from disk
            assert len(proc.store) == 2
        made = proc.handle_many([
            (f"x/{s}/temp", json.dumps({"ts": rows[s][i][0], "temp": rows[s][i][1]}).encode())
            for s in streams
        ])
        assert made == len(streams)
        proc.store.evict()
        proc.store.commit(tmp_path)
        assert len(proc.store) <= 2
    assert proc.store.restored > 0 and proc.store.evictions > 0
    got = {(p["stream"], p["ts"]): [p["forecast"]] for p in out}
    check_exactly(got, models["step"], rows)


def test_sigkill_with_a_sensor_faster_than_the_period_keeps_the_open_period(
    broker: Mosquitto, grid_model: Path, tmp_path: Path, daemon_factory: Any,
    collector_factory: Any,
) -> None:
    """Two sensors publish 6 readings per period (jittered, off the grid) into an hourly grid
    model while the daemon is killed with SIGKILL 12 times: the open period lives in the
    journaled state, so the forecasts published per (stream, period), and the final states
    (model and open period), equal one uninterrupted run's."""
    cid = f"kg{uuid.uuid4().hex[:8]}"
    state = tmp_path / "state"
    rng = random.Random(11)
    streams = ["g0", "g1"]
    n_rows = 900

    def row(s: int, i: int) -> bytes:
        offset = i * 600 + (i * 37 + 101 * s) % 300 + 1  # never on the grid
        ts = (T0 + timedelta(seconds=offset)).isoformat()
        return json.dumps({"ts": ts, "temp": round(50 + 10 * np.sin(i / 23 + s), 3)}).encode()

    sent: dict[str, list[bytes]] = {s: [] for s in streams}
    col = collector_factory(broker, [f"{cid}-out/#", f"{cid}-err/#", f"statecast/status/{cid}"])
    argv = args(grid_model, broker, cid, "--state-dir", str(state))
    mark = col.mark()
    d = daemon_factory(*argv)
    wait_online(col, cid, mark, d)
    pub = publisher(broker)
    done = threading.Event()

    def publish() -> None:
        i = 0
        while not done.is_set() and i < n_rows:
            for k, s in enumerate(streams):
                body = row(k, i)
                pub.publish(f"{cid}/{s}/temp", body, qos=1)
                sent[s].append(body)
            i += 1
            time.sleep(0.004)

    d = sigkill_while(publish, d, restarter(daemon_factory, col, cid, argv), 12,
                      lambda: rng.uniform(0.0, 0.4), done)
    # the uninterrupted run: the same messages through one processor
    cfg = EdgeConfig(model=str(grid_model), subscribe=(f"{cid}/+/temp",), client_id="ref")
    model, freq = load_model(cfg)
    want: dict[tuple[str, str], list[float]] = {}

    def keep(topic: str, payload: bytes, qos: int) -> bool:
        doc = json.loads(payload)
        if "forecast" in doc:
            want[(doc["stream"], doc["period"])] = doc["forecast"]
        return True

    ref = Processor(cfg, model, freq, keep)
    for s in streams:
        for body in sent[s]:
            ref.handle(f"{cid}/{s}/temp", body)
    n = len(want)
    assert n > 2 * 40, n  # each sensor closed dozens of periods, six readings each
    deadline = time.monotonic() + 60
    got: dict[tuple[str, str], list[list[float]]] = {}
    while time.monotonic() < deadline:
        got = {}
        for p in col.json(f"{cid}-out/"):
            got.setdefault((p["stream"], p["period"]), []).append(p["forecast"])
        if len(got) >= n:
            break
        time.sleep(0.05)
    assert d.stop() == 0
    pub.disconnect()
    pub.loop_stop()
    assert set(got) == set(want)
    for key, forecasts in got.items():
        assert all(f == forecasts[0] for f in forecasts), f"{key} published different values"
        np.testing.assert_allclose(forecasts[0], want[key], atol=1e-6, rtol=0)
    assert {e["reason"] for e in col.json(f"{cid}-err/")} <= {"duplicate", "out_of_order"}
    # the final states on disk, open period included, equal the uninterrupted run's
    store = StateStore(model.manifest.model_id, model.zero_state(),
                       extras=dict(ref.store.extras))
    assert store.load(state) == len(streams)
    for s in streams:
        mine, theirs = store.streams[s], ref.store.streams[s]
        for x, y in zip(mine.state, theirs.state, strict=True):
            np.testing.assert_allclose(x, y, atol=1e-6, rtol=0)
        for name, value in theirs.extra.items():  # all but the wall-clock arrival time
            keep = np.arange(value.size) != ARRIVAL
            np.testing.assert_allclose(mine.extra[name][keep], value[keep], atol=1e-9, rtol=0)
        assert mine.count == theirs.count and mine.last_t == theirs.last_t
    print(f"sigkill grid: {sum(map(len, sent.values()))} readings, {n} periods, "
          f"{sum(map(len, got.values()))} forecasts published")
