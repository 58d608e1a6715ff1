"""The shipped secured mosquitto config (passwords, ACL, TLS) with the daemon over mqtts://."""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from conftest import ROOT, Daemon, Mosquitto, free_port
from paho.mqtt.enums import CallbackAPIVersion

pytestmark = pytest.mark.broker

DEPLOY = ROOT / "deploy" / "mosquitto"
PASSWORDS = {"edge": "edge-pw", "sensor": "sensor-pw", "viewer": "viewer-pw"}


@pytest.fixture
def secure_broker(mosquitto_binary: str, tmp_path: Path) -> Any:
    if shutil.which("openssl") is None or shutil.which("mosquitto_passwd") is None:
        pytest.fail("openssl and mosquitto_passwd are needed ('make test' installs them as root)")
    d = tmp_path / "secure"
    d.mkdir()
    d.chmod(0o755)
    subprocess.run([str(DEPLOY / "make-certs.sh"), str(d), "localhost"], check=True,
                   capture_output=True)
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


def wait(pred: Any, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return False


def test_daemon_over_tls_with_password_and_acl(
    secure_broker: Any, models: dict[str, Path], tmp_path: Path
) -> None:
    _broker, tls_port, d = secure_broker
    cid = f"edge-{uuid.uuid4().hex[:6]}"
    (tmp_path / "pw").write_text(PASSWORDS["edge"] + "\n")
    viewer, got = tls_client(tls_port, "viewer", d / "ca.crt",
                             ["forecasts/#", "statecast/#"])
    daemon = Daemon(
        ["--model", str(models["step"]), "--broker", f"mqtts://localhost:{tls_port}",
         "--subscribe", "sensors/+/temp", "--publish", "forecasts/{stream}", "--client-id", cid,
         "--username", "edge", "--password-file", str(tmp_path / "pw"),
         "--ca-file", str(d / "ca.crt"), "--mqtt-version", "5"],
        tmp_path / "daemon.log",
    )
    try:
        assert wait(lambda: any(t == f"statecast/status/{cid}" for t, _ in got)), daemon.log()
        sensor, _ = tls_client(tls_port, "sensor", d / "ca.crt")
        sensor.publish("sensors/g1/temp", json.dumps({"ts": 0, "temp": 50.0}), qos=1)
        assert wait(lambda: any(t == "forecasts/g1" for t, _ in got)), daemon.log()
        sensor.disconnect()
        sensor.loop_stop()
    finally:
        assert daemon.stop() == 0
        viewer.disconnect()
        viewer.loop_stop()
    pred = json.loads(next(p for t, p in got if t == "forecasts/g1"))
    assert pred["stream"] == "g1" and len(pred["forecast"]) == 3


def secure_daemon(
    tls_port: int, d: Path, models: dict[str, Path], tmp_path: Path, password: str,
    *extra: str, scheme: str = "mqtts", ca: Path | None = None,
) -> Daemon:
    (tmp_path / "pw").write_text(password + "\n")
    tls = ["--ca-file", str(ca or d / "ca.crt")] if scheme == "mqtts" else []
    return Daemon(
        ["--model", str(models["step"]), "--broker", f"{scheme}://localhost:{tls_port}",
         "--subscribe", "sensors/+/temp", "--client-id", f"edge-{uuid.uuid4().hex[:6]}",
         "--username", "edge", "--password-file", str(tmp_path / "pw"), *tls, *extra],
        tmp_path / "daemon.log",
    )


def exits_with(daemon: Daemon, timeout: float = 20.0) -> int:
    try:
        return daemon.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        daemon.proc.kill()
        raise AssertionError(f"the daemon kept running: {daemon.log()[-2000:]}") from None


def test_wrong_password_ends_with_status_3(
    secure_broker: Any, models: dict[str, Path], tmp_path: Path
) -> None:
    _broker, tls_port, d = secure_broker
    daemon = secure_daemon(tls_port, d, models, tmp_path, "wrong")
    assert exits_with(daemon) == 3
    log = daemon.log()
    assert f"statecast-edge: error: broker localhost:{tls_port} refused the credentials of " \
        "user 'edge'" in log, log
    assert "Traceback" not in log


def test_plaintext_client_on_tls_listener_fails_clearly(
    secure_broker: Any, models: dict[str, Path], tmp_path: Path
) -> None:
    _broker, tls_port, d = secure_broker
    daemon = secure_daemon(tls_port, d, models, tmp_path, PASSWORDS["edge"], scheme="mqtt")
    assert exits_with(daemon) == 3
    log = daemon.log()
    assert "statecast-edge: error:" in log and "use mqtts://" in log, log


def test_tls_client_on_plain_listener_fails_clearly(
    secure_broker: Any, models: dict[str, Path], tmp_path: Path
) -> None:
    broker, _tls_port, d = secure_broker
    daemon = secure_daemon(broker.port, d, models, tmp_path, PASSWORDS["edge"])
    assert exits_with(daemon) == 3
    log = daemon.log()
    assert "statecast-edge: error:" in log and "use mqtt://" in log, log


def test_unknown_ca_fails_the_handshake(
    secure_broker: Any, models: dict[str, Path], tmp_path: Path
) -> None:
    _broker, tls_port, d = secure_broker
    other = tmp_path / "other-ca"
    subprocess.run([str(DEPLOY / "make-certs.sh"), str(other), "localhost"], check=True,
                   capture_output=True)
    daemon = secure_daemon(tls_port, d, models, tmp_path, PASSWORDS["edge"], ca=other / "ca.crt")
    assert exits_with(daemon) == 3
    log = daemon.log()
    assert f"TLS handshake with broker localhost:{tls_port} failed" in log, log
    assert "its certificate could not be verified" in log, log


def test_acl_denied_publication_is_counted_and_survived(
    secure_broker: Any, models: dict[str, Path], tmp_path: Path
) -> None:
    _broker, tls_port, d = secure_broker
    port = free_port()
    viewer, got = tls_client(tls_port, "viewer", d / "ca.crt", ["statecast/#"])
    daemon = secure_daemon(
        tls_port, d, models, tmp_path, PASSWORDS["edge"], "--publish", "denied/{stream}",
        "--mqtt-version", "5", "--metrics-port", str(port),
    )
    sensor = None
    try:
        assert wait(lambda: any(t.startswith("statecast/status/") for t, _ in got)), daemon.log()
        sensor, _ = tls_client(tls_port, "sensor", d / "ca.crt")
        for ts in range(3):
            sensor.publish("sensors/g1/temp", json.dumps({"ts": ts, "temp": 50.0}), qos=1)
        sensor.publish("sensors/g1/temp", b"not json", qos=1)

        def denied() -> int:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
            for line in text.decode().splitlines():
                if line.startswith('statecast_edge_dropped_total{reason="publish_denied"}'):
                    return int(float(line.split()[-1]))
            return 0

        assert wait(lambda: denied() >= 3), daemon.log()
        # Still alive and still serving: the error report for the bad payload got through.
        assert wait(lambda: any(t == "statecast/errors/g1" for t, _ in got)), daemon.log()
        assert daemon.proc.poll() is None
        assert "refused a publication" in daemon.log()
    finally:
        if sensor is not None:
            sensor.disconnect()
            sensor.loop_stop()
        assert daemon.stop() == 0
        viewer.disconnect()
        viewer.loop_stop()
