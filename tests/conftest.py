"""Shared fixtures: a real mosquitto on a free loopback port, and small real ONNX models.

The broker (`bench/broker.py`, shared with the demo and the benchmarks) runs from a config written
to a temporary directory, with `set_tcp_nodelay true`. It is found as $STATECAST_MOSQUITTO,
`mosquitto` on PATH, or /usr/sbin/mosquitto; without one, tests marked `broker` fail and say so.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edge_models import build_model

from bench.broker import Mosquitto, find_mosquitto, free_port
from edge.manifest import Grid

GRID_ORIGIN = 1293840000.0  # 2011-01-01T00:00:00 UTC
ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy" / "mosquitto"
__all__ = [
    "DEPLOY",
    "GRID_ORIGIN",
    "PASSWORDS",
    "ROOT",
    "Collector",
    "Daemon",
    "Mosquitto",
    "Sink",
    "free_port",
    "replay",
    "tls_client",
]


@pytest.fixture(scope="session")
def mosquitto_binary() -> str:
    binary = find_mosquitto()
    if binary is None:
        pytest.fail("mosquitto not found: 'make test' installs it as root, or run "
                    "'sudo apt-get install mosquitto' (or set $STATECAST_MOSQUITTO)")
    return binary


@pytest.fixture(scope="session")
def broker(mosquitto_binary: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """One broker shared by the session; each test uses its own topics."""
    m = Mosquitto(mosquitto_binary, tmp_path_factory.mktemp("mosquitto"))
    m.start()
    yield m
    m.stop()


@pytest.fixture
def own_broker(mosquitto_binary: str, tmp_path: Path) -> Iterator[Mosquitto]:
    """A broker for one test, which may stop and restart it."""
    m = Mosquitto(mosquitto_binary, tmp_path / "mosquitto")
    m.start()
    yield m
    m.stop()


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("models")
    return {
        "step": build_model(d / "step.onnx", model_id="test-step"),
        "step2": build_model(d / "step2.onnx", model_id="test-step-other", seed=1),
        # the same two models exported with `--batch dynamic` (same weights, same ids)
        "step-dynamic": build_model(d / "step-dyn.onnx", model_id="test-step", batch="dynamic"),
        "step2-dynamic": build_model(d / "step2-dyn.onnx", model_id="test-step-other", seed=1,
                                     batch="dynamic"),
        "window": build_model(d / "window.onnx", kind="window", lookback=4, model_id="test-win"),
        "classify": build_model(
            d / "classify.onnx", task="classify", classes=("cold", "mild", "warm"), horizon=2,
            model_id="test-cls",
        ),
        "multi": build_model(
            d / "multi.onnx", features=("temp", "hum"), targets=("temp", "hum"),
            model_id="test-multi",
        ),
        "nomanifest": build_model(d / "nomanifest.onnx", manifest=False),
        # hourly models trained on a grid from 2011-01-01T00:00 (max_gap 3), both serving modes
        "grid": build_model(d / "grid.onnx", model_id="test-grid", max_gap=3,
                            grid=Grid(origin=GRID_ORIGIN)),
        "grid-dynamic": build_model(d / "grid-dyn.onnx", model_id="test-grid", max_gap=3,
                                    grid=Grid(origin=GRID_ORIGIN), batch="dynamic"),
    }


@pytest.fixture(params=["1", "dynamic"])
def batch(request: pytest.FixtureRequest) -> str:
    """Both serving modes: a batch-1 export (one stream per run) and a `--batch dynamic` export
    (the streams with a pending observation stepped together)."""
    return str(request.param)


@pytest.fixture
def grid_model(models: dict[str, Path], batch: str) -> Path:
    """The hourly grid model as exported for the serving mode `batch`."""
    return models["grid" if batch == "1" else "grid-dynamic"]


@pytest.fixture
def step_models(models: dict[str, Path], batch: str) -> dict[str, Path]:
    """`step` and `step2` as exported for the serving mode `batch` (same weights and ids)."""
    suffix = "" if batch == "1" else "-dynamic"
    return {"step": models["step" + suffix], "step2": models["step2" + suffix]}


# ---------------------------------------------------------------------------------------------
# Broker-side helpers for the end-to-end tests


class Collector:
    """A paho subscriber that records (topic, payload, retain) and re-subscribes on reconnect."""

    def __init__(self, broker: Mosquitto, topics: list[str], client_id: str = "",
                 persistent: bool = False) -> None:
        self.topics = topics
        self.lock = threading.Lock()
        self.messages: list[tuple[str, bytes, bool]] = []
        self.ready = threading.Event()
        # persistent: nothing published while it is disconnected (a broker restart) is missed
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  clean_session=not persistent)
        self.client.reconnect_delay_set(0.05 if persistent else 0.1, 0.5)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self.ready.set()
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port, keepalive=10)
        self.client.loop_start()
        assert self.ready.wait(10), "collector did not subscribe"

    def _on_connect(self, client, userdata, flags, reason, props):  # type: ignore[no-untyped-def]
        client.subscribe([(t, 1) for t in self.topics])

    def _on_message(self, client, userdata, msg):  # type: ignore[no-untyped-def]
        with self.lock:
            self.messages.append((msg.topic, msg.payload, bool(msg.retain)))

    def mark(self) -> int:
        with self.lock:
            return len(self.messages)

    def json(self, prefix: str, since: int = 0) -> list[dict]:  # type: ignore[type-arg]
        with self.lock:
            msgs = self.messages[since:]
        return [json.loads(p) for t, p, _ in msgs if t.startswith(prefix)]

    def wait_for(self, prefix: str, n: int, timeout: float = 20.0, since: int = 0) -> list[dict]:  # type: ignore[type-arg]
        deadline = time.monotonic() + timeout
        while True:
            got = self.json(prefix, since)
            if len(got) >= n or time.monotonic() > deadline:
                return got
            time.sleep(0.02)

    def wait_status(
        self, client_id: str, status: str, since: int, timeout: float = 20.0, connection: int = 0
    ) -> bool:
        """Wait for `status` on the daemon's status topic after message number `since` (and, for
        online, from its `connection`-th connection or a later one)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(d.get("status") == status and d.get("connection", 0) >= connection
                   for d in self.json(f"statecast/status/{client_id}", since)):
                return True
            time.sleep(0.02)
        return False

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Daemon:
    """`python -m edge.cli ...` as a real subprocess, logging to a file."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.log_path = log_path
        self.args = args
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "edge.cli", *args], stdout=log, stderr=subprocess.STDOUT,
                cwd=ROOT, env=None if env is None else {**os.environ, **env},
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int | None = None, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig or signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError(f"daemon did not stop: {self.log()[-3000:]}") from None


def replay(broker: Mosquitto, data: Path, topic: str, *extra: str) -> None:
    """Run `python -m edge.replay` to completion."""
    result = subprocess.run(  # noqa: PLW1510
        [sys.executable, "-m", "edge.replay", "--data", str(data), "--broker", broker.url,
         "--topic", topic, "--quiet", *extra],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr


@pytest.fixture
def collector_factory() -> Iterator[object]:
    made: list[Collector] = []

    def make(broker: Mosquitto, topics: list[str]) -> Collector:
        c = Collector(broker, topics)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator[object]:
    made: list[Daemon] = []

    def make(*args: str) -> Daemon:
        d = Daemon(list(args), tmp_path / f"daemon-{len(made)}.log")
        made.append(d)
        return d

    yield make
    for d in made:
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait(5)


# ---------------------------------------------------------------------------------------------
# The shipped secured broker config (deploy/mosquitto): passwords, ACL, a TLS listener

PASSWORDS = {"edge": "edge-pw", "sensor": "sensor-pw", "viewer": "viewer-pw"}


@pytest.fixture(scope="session")
def tls_certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private CA and a `localhost` server certificate from deploy/mosquitto/make-certs.sh:
    ca.crt, ca.key, server.crt, server.key."""
    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed ('make test' installs it as root)")
    d = tmp_path_factory.mktemp("certs")
    subprocess.run([str(DEPLOY / "make-certs.sh"), str(d), "localhost"], check=True,
                   capture_output=True)
    return d


@pytest.fixture
def secure_broker(mosquitto_binary: str, tls_certs: Path, tmp_path: Path) -> Any:
    if shutil.which("mosquitto_passwd") is None:
        pytest.fail("mosquitto_passwd is needed ('make test' installs it as root)")
    d = tmp_path / "secure"
    d.mkdir()
    d.chmod(0o755)
    for name in ("ca.crt", "ca.key", "server.crt", "server.key"):
        shutil.copy(tls_certs / name, d / name)
    for key in ("server.key", "ca.key"):
        (d / key).chmod(0o644)  # readable by whichever user mosquitto runs as
    passwd = d / "passwd"
    for i, (user, pw) in enumerate(PASSWORDS.items()):
        flags = ["-c"] if i == 0 else []
        subprocess.run(["mosquitto_passwd", *flags, "-b", str(passwd), user, pw], check=True,
                       capture_output=True)
    passwd.chmod(0o644)
    shutil.copy(DEPLOY / "acl", d / "acl")
    plain, tls = free_port(), free_port()
    conf = (DEPLOY / "mosquitto.conf").read_text()
    conf = (conf.replace("/etc/mosquitto/statecast", str(d))
            .replace("listener 1883 127.0.0.1", f"listener {plain} 127.0.0.1")
            .replace("listener 8883", f"listener {tls} 127.0.0.1")
            .replace("persistence true", "persistence false")
            .replace("persistence_location /var/lib/mosquitto/", f"persistence_location {d}/")
            .replace("log_dest syslog", "log_dest stderr"))
    m = Mosquitto(mosquitto_binary, d / "run", port=plain)
    m.config.write_text(conf + ("user root\n" if "user root" in m.config.read_text() else ""))
    m.start()
    yield m, tls, d
    m.stop()


def tls_client(port: int, user: str, ca: Path, topics: list[str] | None = None) -> Any:
    got: list[tuple[str, bytes]] = []
    ready = threading.Event()
    c = mqtt.Client(CallbackAPIVersion.VERSION2)
    c.username_pw_set(user, PASSWORDS[user])
    c.tls_set(ca_certs=str(ca), cert_reqs=ssl.CERT_REQUIRED)
    c.on_connect = lambda cl, u, f, rc, p: (
        cl.subscribe([(t, 1) for t in topics]) if topics else ready.set()
    )
    c.on_subscribe = lambda *a: ready.set()
    c.on_message = lambda cl, u, msg: got.append((msg.topic, msg.payload))
    c.connect("localhost", port)
    c.loop_start()
    assert ready.wait(10)
    return c, got


class Sink:
    """A `publish` for a Processor under test: records (topic, decoded payload)."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, topic: str, payload: bytes, qos: int) -> bool:
        self.messages.append((topic, json.loads(payload)))
        return True

    def on(self, prefix: str) -> list[dict[str, Any]]:
        return [d for t, d in self.messages if t.startswith(prefix)]

    def by_stream(self) -> dict[str, list[tuple[str, dict[str, Any]]]]:
        out: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        for topic, doc in self.messages:
            out.setdefault(doc["stream"], []).append((topic, doc))
        return out
