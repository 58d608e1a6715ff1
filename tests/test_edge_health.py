"""The daemon's health: every thread it needs is watched; a dead one fails `/healthz`, stops the
systemd watchdog and ends the process with a status systemd restarts. And `/healthz` answers while
a scrape stalls. Real mosquitto, real onnxruntime; faults are injected inside the threads."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from conftest import ROOT, Mosquitto, free_port
from paho.mqtt.enums import CallbackAPIVersion

from edge.config import EdgeConfig
from edge.metrics import Metrics, MetricsServer
from edge.service import FAILED_EXIT, Service, load_model
from edge.transport import Transport

pytestmark = pytest.mark.broker


def healthz(port: int) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body) of /healthz."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def wait_health(port: int, pred: Any, timeout: float = 20.0) -> tuple[int, dict[str, Any]]:
    """Poll /healthz until `pred(status, body)` holds (or the time is up); the last answer."""
    deadline = time.monotonic() + timeout
    while True:
        got = healthz(port)
        if pred(*got) or time.monotonic() > deadline:
            return got
        time.sleep(0.05)


def raise_injected(*args: Any, **kwargs: Any) -> None:
    raise RuntimeError("injected fault")


@pytest.mark.parametrize("where", ["reconnect loop", "message callback"])
def test_dead_mqtt_thread_fails_healthz_and_stops_the_watchdog(
    own_broker: Mosquitto, models: dict[str, Path], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, where: str,
) -> None:
    """An exception inside the MQTT supervisor's reconnect loop (after the broker went away), or
    inside the message callback on paho's network thread: /healthz names the dead thread, and
    the daemon pings no watchdog and stops with FAILED_EXIT."""
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.settimeout(0.0)
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
    monkeypatch.setenv("WATCHDOG_USEC", "400000")  # a ping every 0.2 s while healthy
    if where == "reconnect loop":
        monkeypatch.setattr(Transport, "_wait_before_retry", raise_injected)
    else:
        monkeypatch.setattr(Service, "enqueue", raise_injected)
    cid = f"h{uuid.uuid4().hex[:8]}"
    port = free_port()
    cfg = EdgeConfig(model=str(models["step"]), broker=own_broker.url,
                     subscribe=(f"{cid}/+/temp",), client_id=cid, metrics_port=port)
    model, freq = load_model(cfg)
    service = Service(cfg, model, freq)
    service.start()
    try:
        code, body = wait_health(port, lambda code, body: code == 200)
        assert code == 200 and body["threads"] == {"worker": True, "mqtt": True,
                                                   "metrics": True}, body
        if where == "reconnect loop":
            own_broker.stop()  # the supervisor's next step is the (failing) reconnect
        else:
            pub = mqtt.Client(CallbackAPIVersion.VERSION2)
            pub.connect(own_broker.host, own_broker.port)
            pub.publish(f"{cid}/s/temp", json.dumps({"ts": 0, "temp": 50.0}), qos=1)
            pub.disconnect()
        code, body = wait_health(port, lambda code, body: not body["threads"]["mqtt"])
        assert code == 503 and body["ok"] is False, body
        assert body["threads"] == {"worker": True, "mqtt": False, "metrics": True}, body
    finally:
        status = service.serve()  # returns at once: a thread is dead
    assert status == FAILED_EXIT
    sent: list[str] = []
    while True:
        try:
            sent += notify.recv(4096).decode().split("\n")
        except BlockingIOError:
            break
    notify.close()
    assert "READY=1" in sent and "STOPPING=1" in sent
    assert "WATCHDOG=1" not in sent


# The real daemon, with its reconnect loop made to fail the way an unexpected bug would.
FAULTY_DAEMON = """
import sys
from edge import transport
def fail(self, why):
    raise RuntimeError("injected fault in the reconnect loop")
transport.Transport._wait_before_retry = fail
from edge.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_daemon_exits_for_a_restart_when_its_mqtt_supervisor_dies(
    own_broker: Mosquitto, models: dict[str, Path], tmp_path: Path, collector_factory: Any,
) -> None:
    """The broker goes away and the reconnect loop raises: instead of living on unconnected
    (and fed to systemd's watchdog), the daemon exits with status 1, which the unit restarts."""
    cid = f"h{uuid.uuid4().hex[:8]}"
    col = collector_factory(own_broker, [f"statecast/status/{cid}"])
    log = tmp_path / "daemon.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-c", FAULTY_DAEMON, "--model", str(models["step"]),
             "--broker", own_broker.url, "--subscribe", f"{cid}/+/temp", "--client-id", cid,
             "--state-dir", str(tmp_path / "state")],
            stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT,
        )
    try:
        assert col.wait_status(cid, "online", 0), log.read_text()
        own_broker.stop()
        try:
            status = proc.wait(30)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the daemon lived on: {log.read_text()[-3000:]}") from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    text = log.read_text()
    assert status == FAILED_EXIT == 1, text
    assert "The MQTT supervisor failed" in text and "The mqtt thread died" in text, text


def test_healthz_answers_while_a_scrape_stalls() -> None:
    """One client connects and sends nothing (or half a request): /healthz and /metrics still
    answer, and the server still stops."""
    server = MetricsServer(Metrics("m"), "127.0.0.1", 0, lambda: {"ok": True})
    server.start()
    silent = socket.create_connection(("127.0.0.1", server.port))
    half = socket.create_connection(("127.0.0.1", server.port))
    half.sendall(b"GET /metrics HTTP/1.1\r\n")
    try:
        assert healthz(server.port) == (200, {"ok": True})
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=10) as r:
            assert b'statecast_edge_model_info{model_id="m"} 1' in r.read()
        server.stop()  # with both clients still stalled
        assert not server.alive()
    finally:
        silent.close()
        half.close()
        server.stop()
