"""deploy/: the systemd unit, the Dockerfile, the compose file and install.sh.

No systemd or Docker engine runs here, so the files are checked statically, and the command
lines in them (ExecStartPre/ExecStart, ENTRYPOINT + CMD, the compose services) are run for real,
with only their paths and host names swapped for this machine's, against the shipped secured
mosquitto config.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import yaml
from conftest import PASSWORDS, ROOT, Daemon, free_port, tls_client

from edge.notify import Notifier
from edge.service import FAILED_EXIT

DEPLOY = ROOT / "deploy"
UNIT = DEPLOY / "systemd" / "statecast-edge.service"
TOML = DEPLOY / "systemd" / "edge.toml"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
COMPOSE = DEPLOY / "docker" / "compose.yaml"
EDGE = [sys.executable, "-m", "edge.cli"]
REPLAY = [sys.executable, "-m", "edge.replay"]
SEATTLE = ROOT / "examples" / "data" / "seattle-temps.csv"


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """systemd's INI dialect: sections, `Key=value`, keys may repeat, `#`/`;` comments."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None and "=" in line, f"not a unit line: {raw!r}"
        key, value = line.split("=", 1)
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        if raw.lstrip().startswith("#") and not pending:
            continue
        line = raw.rstrip()
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = (pending + line).strip()
        pending = ""
        if line:
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def swap(argv: list[str], table: dict[str, str]) -> list[str]:
    """Replace device paths and host names inside each argument."""
    out = []
    for arg in argv:
        for old, new in table.items():
            arg = arg.replace(old, new)
        out.append(arg)
    return out


def edge_toml(tmp_path: Path, model: Path, tls_port: int, ca: Path, cid: str) -> Path:
    """The shipped edge.toml with this machine's model, broker, CA, password and client id."""
    (tmp_path / "pw").write_text(PASSWORDS["edge"] + "\n")
    values = {
        "model": str(model), "broker": f"mqtts://localhost:{tls_port}", "ca_file": str(ca),
        "password_file": str(tmp_path / "pw"), "client_id": cid,
        "metrics_port": str(free_port()), "metrics_host": "127.0.0.1",
    }
    text = TOML.read_text()
    for key, value in values.items():
        literal = value if key == "metrics_port" else json.dumps(value)
        text, n = re.subn(rf"^{key} = .*$", f"{key} = {literal}", text, flags=re.M)
        assert n == 1, f"edge.toml has no single {key!r} line"
    path = tmp_path / "edge.toml"
    path.write_text(text)
    return path


def wait(pred: Any, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return False


# -- systemd -----------------------------------------------------------------------------------


def test_unit_is_a_hardened_notify_service() -> None:
    unit = parse_unit(UNIT.read_text())
    svc = {k: v[-1] for k, v in unit["Service"].items()}
    assert svc["Type"] == "notify" and int(svc["WatchdogSec"]) > 0
    assert svc["User"] == "statecast" and svc["StateDirectory"] == "statecast"
    assert svc["Restart"] == "on-failure"
    assert set(svc["RestartPreventExitStatus"].split()) >= {"2", "3"}
    assert str(FAILED_EXIT) not in svc["RestartPreventExitStatus"].split()  # a dead thread
    for key, value in [("ProtectSystem", "strict"), ("ProtectHome", "true"),
                       ("NoNewPrivileges", "true"), ("PrivateTmp", "true")]:
        assert svc[key] == value, key
    assert set(svc["RestrictAddressFamilies"].split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    assert svc["CapabilityBoundingSet"] == ""
    assert "--config /etc/statecast/edge.toml" in svc["ExecStart"]
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def test_unit_command_lines_run_here_and_speak_the_notify_protocol(
    secure_broker: Any, models: dict[str, Path], tmp_path: Path
) -> None:
    _broker, tls_port, d = secure_broker
    cid = f"unit-{uuid.uuid4().hex[:6]}"
    toml = edge_toml(tmp_path, models["step"], tls_port, d / "ca.crt", cid)
    state = tmp_path / "state"
    state.mkdir()
    svc = parse_unit(UNIT.read_text())["Service"]
    table = {"/etc/statecast/edge.toml": str(toml), "/var/lib/statecast": str(state)}

    def command(line: str) -> list[str]:
        argv = shlex.split(line)
        assert argv[0] == "/opt/statecast/bin/statecast-edge"  # where install.sh puts it
        return EDGE + swap(argv[1:], table)

    pre = subprocess.run(command(svc["ExecStartPre"][0]), check=False, capture_output=True,
                         text=True, cwd=ROOT, timeout=60)
    assert pre.returncode == 0, pre.stderr
    assert "Configuration OK" in pre.stdout

    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify_path = tmp_path / "notify.sock"
    notify.bind(str(notify_path))
    notify.settimeout(0.2)
    env = dict(os.environ, NOTIFY_SOCKET=str(notify_path), WATCHDOG_USEC="400000")
    viewer, got = tls_client(tls_port, "viewer", d / "ca.crt", ["forecasts/#", "statecast/#"])
    log = tmp_path / "daemon.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(command(svc["ExecStart"][0]), stdout=fh, stderr=subprocess.STDOUT,
                                cwd=ROOT, env=env)
    messages: list[str] = []

    def received(text: str) -> bool:
        with contextlib.suppress(TimeoutError):
            messages.append(notify.recv(4096).decode())
        return any(text in m.split("\n") for m in messages)

    try:
        assert wait(lambda: received("READY=1")), log.read_text()
        assert wait(lambda: received("WATCHDOG=1")), log.read_text()
        sensor, _ = tls_client(tls_port, "sensor", d / "ca.crt")
        sensor.publish("sensors/unit1/temp", json.dumps({"ts": 0, "temp": 48.0}), qos=1)
        assert wait(lambda: any(t == "forecasts/unit1" for t, _ in got)), log.read_text()
        sensor.disconnect()
        sensor.loop_stop()
        proc.send_signal(1)  # ExecReload: SIGHUP reloads the model file (unchanged here)
        assert wait(lambda: any(t == f"statecast/status/{cid}/events" for t, _ in got))
    finally:
        proc.terminate()
        rc = proc.wait(20)
        viewer.disconnect()
        viewer.loop_stop()
    assert rc == 0, log.read_text()
    assert wait(lambda: received("STOPPING=1"), 2.0)
    notify.close()
    assert list(state.glob("statecast-state-*.npz")), "no checkpoint in the StateDirectory"


def test_notifier_without_systemd_and_with_an_abstract_socket() -> None:
    assert not Notifier({}).enabled and not Notifier({}).send(READY="1")
    name = f"statecast-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        n = Notifier({"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "3000000"})
        assert n.watchdog_interval == 1.5
        assert n.send(READY="1", STATUS="serving")
        assert sock.recv(100) == b"READY=1\nSTATUS=serving"
    other_pid = Notifier({"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "1", "WATCHDOG_PID": "1"})
    assert other_pid.watchdog_interval is None  # the watchdog is meant for another process


# -- Docker ------------------------------------------------------------------------------------


def test_dockerfile_is_slim_non_root_and_edge_only() -> None:
    steps = dockerfile_instructions(DOCKERFILE.read_text())
    kinds = [k for k, _ in steps]
    assert steps[0] == ("FROM", "python:3.11-slim")
    run = " ".join(a for k, a in steps if k == "RUN")
    assert 'pip install --no-cache-dir ".[edge]"' in run and "tensorflow" in run
    copied = [a.split()[0] for k, a in steps if k == "COPY"]
    assert set(copied) <= {"pyproject.toml", "README.md", "edge"}  # no trainer/, no export/
    user = [a for k, a in steps if k == "USER"]
    assert user and user[-1] not in ("root", "0")
    assert kinds.index("USER") < kinds.index("ENTRYPOINT")


def _docker_argv(steps: list[tuple[str, str]]) -> list[str]:
    entry = json.loads(next(a for k, a in steps if k == "ENTRYPOINT"))
    cmd = json.loads(next(a for k, a in steps if k == "CMD"))
    assert entry[0] == "statecast-edge"
    return [*entry, *cmd]


def test_image_and_compose_command_lines_run_here(
    secure_broker: Any, models: dict[str, Path], tmp_path: Path
) -> None:
    _broker, tls_port, d = secure_broker
    steps = dockerfile_instructions(DOCKERFILE.read_text())
    argv = _docker_argv(steps)
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    assert set(services) == {"mosquitto", "edge", "replay"}
    assert services["edge"]["build"]["dockerfile"] == "deploy/docker/Dockerfile"
    mounted = services["mosquitto"]["volumes"][0].split(":")
    assert (COMPOSE.parent / mounted[0]).resolve() == (DEPLOY / "mosquitto" / "mosquitto.conf")
    assert services["replay"]["entrypoint"] == ["statecast-replay"]

    (tmp_path / "sensor-pw").write_text(PASSWORDS["sensor"] + "\n")
    (tmp_path / "edge-pw").write_text(PASSWORDS["edge"] + "\n")
    state = tmp_path / "state"
    state.mkdir()
    metrics = str(free_port())
    table = {
        "/etc/statecast/edge.toml": str(edge_toml(tmp_path, models["step"], tls_port,
                                                  d / "ca.crt", "image-edge")),
        "/var/lib/statecast": str(state), "9108": metrics,
        "mqtts://mosquitto:8883": f"mqtts://localhost:{tls_port}",
        "/run/secrets/ca.crt": str(d / "ca.crt"),
        "/run/secrets/edge-password": str(tmp_path / "edge-pw"),
        "/run/secrets/sensor-password": str(tmp_path / "sensor-pw"),
        "/models/temps.onnx": str(models["step2"]),
        "/data/seattle-temps.csv": str(SEATTLE),
    }
    viewer, got = tls_client(tls_port, "viewer", d / "ca.crt", ["forecasts/#", "statecast/#"])
    image = Daemon(swap(argv[1:], table), tmp_path / "image.log")
    # The compose service runs the image's ENTRYPOINT with its own command.
    entry = json.loads(next(a for k, a in steps if k == "ENTRYPOINT"))
    table["9108"] = str(free_port())
    composed = Daemon(swap([*entry[1:], *services["edge"]["command"]], table),
                      tmp_path / "compose.log")
    try:
        online = {"statecast/status/image-edge", "statecast/status/statecast-edge-compose"}
        assert wait(lambda: online <= {t for t, _ in got}), image.log() + composed.log()
        replay = subprocess.run(
            [*REPLAY, *swap(services["replay"]["command"], table), "--count=12"],
            check=False, capture_output=True, text=True, cwd=ROOT, timeout=60,
        )
        assert replay.returncode == 0, replay.stderr
        assert wait(lambda: sum(1 for t, _ in got if t == "forecasts/seattle") >= 24), \
            image.log() + composed.log()
    finally:
        codes = (image.stop(), composed.stop())
        viewer.disconnect()
        viewer.loop_stop()
    assert codes == (0, 0)
    models_seen = {json.loads(p)["model"] for t, p in got if t == "forecasts/seattle"}
    assert models_seen == {"test-step", "test-step-other"}  # the image's model and compose's


# -- install.sh --------------------------------------------------------------------------------


def test_install_script_parses_and_refuses_32_bit_systems() -> None:
    script = DEPLOY / "install.sh"
    assert os.access(script, os.X_OK)
    assert subprocess.run(["bash", "-n", str(script)], check=False).returncode == 0
    bad = [{"STATECAST_ARCH": "armv7l"}, {"STATECAST_ARCH": "aarch64", "STATECAST_BITS": "32"}]
    for env in bad:
        r = subprocess.run([str(script)], check=False, capture_output=True, text=True,
                           env={**os.environ, **env}, timeout=30)
        assert r.returncode == 1, r
        assert "onnxruntime" in r.stderr and "64-bit" in r.stderr, r.stderr
    text = script.read_text()
    assert "[edge]" in text and "tensorflow" in text  # the device gets the edge extra only
