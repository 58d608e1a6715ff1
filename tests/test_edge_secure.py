"""The shipped secured mosquitto config (passwords, ACL, TLS) with the daemon over mqtts://."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
from conftest import DEPLOY, PASSWORDS, Daemon, free_port, tls_client

pytestmark = pytest.mark.broker

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
    if "--tls-insecure" in extra:
        tls = []
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


def test_password_from_the_environment(
    secure_broker: Any, models: dict[str, Path], tmp_path: Path
) -> None:
    _broker, tls_port, d = secure_broker
    viewer, got = tls_client(tls_port, "viewer", d / "ca.crt", ["forecasts/#", "statecast/#"])
    daemon = Daemon(
        ["--model", str(models["step"]), "--broker", f"mqtts://localhost:{tls_port}",
         "--subscribe", "sensors/+/temp", "--client-id", f"edge-{uuid.uuid4().hex[:6]}",
         "--username", "edge", "--ca-file", str(d / "ca.crt")],
        tmp_path / "daemon.log", env={"STATECAST_MQTT_PASSWORD": PASSWORDS["edge"]},
    )
    sensor = None
    try:
        assert wait(lambda: any(t.startswith("statecast/status/") for t, _ in got)), daemon.log()
        sensor, _ = tls_client(tls_port, "sensor", d / "ca.crt")
        sensor.publish("sensors/env1/temp", json.dumps({"ts": 0, "temp": 50.0}), qos=1)
        assert wait(lambda: any(t == "forecasts/env1" for t, _ in got)), daemon.log()
    finally:
        if sensor is not None:
            sensor.disconnect()
            sensor.loop_stop()
        assert daemon.stop() == 0
        viewer.disconnect()
        viewer.loop_stop()
    assert PASSWORDS["edge"] not in daemon.log()


def test_tls_insecure_connects_without_the_ca_and_says_so(
    secure_broker: Any, models: dict[str, Path], tmp_path: Path
) -> None:
    _broker, tls_port, d = secure_broker
    viewer, got = tls_client(tls_port, "viewer", d / "ca.crt", ["statecast/#"])
    daemon = secure_daemon(tls_port, d, models, tmp_path, PASSWORDS["edge"], "--tls-insecure",
                           scheme="mqtts", ca=None)
    try:
        assert wait(lambda: any(t.startswith("statecast/status/") for t, _ in got)), daemon.log()
    finally:
        assert daemon.stop() == 0
        viewer.disconnect()
        viewer.loop_stop()
    assert "tls_insecure is set: the broker's certificate is NOT verified" in daemon.log()


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
