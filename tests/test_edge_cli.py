"""The command lines: bad input exits 2 with one sentence; --check-config; no TensorFlow."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT


def run(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: PLW1510
        [sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True,
        timeout=60,
    )


def one_sentence(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_edge_bad_arguments_exit_2_with_one_sentence(models: dict[str, Path]) -> None:
    ok = ["--broker", "mqtt://127.0.0.1:1883", "--subscribe", "sensors/+/temp",
          "--publish", "forecasts/{stream}"]
    cases = {
        "does not exist": ["--model", "/nonexistent/model.onnx", *ok],
        "mqtt://HOST:PORT": ["--model", str(models["step"]), *ok[2:], "--broker", "http://x"],
        "no statecast manifest": ["--model", str(models["nomanifest"]), *ok],
        "no subscription": ["--model", str(models["step"]), "--broker", "mqtt://h:1"],
        "no model": ok,
        "wildcard": ["--model", str(models["step"]), *ok, "--publish", "out/#"],
        "invalid choice": ["--model", str(models["step"]), *ok, "--qos", "2"],
        "config file": ["--config", "/nonexistent/edge.toml", *ok],
    }
    for needle, args in cases.items():
        line = one_sentence(run("edge.cli", *args))
        assert needle in line, line


def test_edge_rejects_a_file_that_is_not_onnx(tmp_path: Path) -> None:
    bogus = tmp_path / "m.onnx"
    bogus.write_bytes(b"hello")
    line = one_sentence(run("edge.cli", "--model", str(bogus), "--subscribe", "a/+"))
    assert "not a readable ONNX model" in line


def test_check_config(models: dict[str, Path], tmp_path: Path) -> None:
    cfg = tmp_path / "edge.toml"
    cfg.write_text(
        f'model = "{models["step"]}"\nbroker = "mqtt://127.0.0.1:1"\n'
        'subscribe = ["sensors/+/temp"]\nclient_id = "x"\n'
    )
    result = run("edge.cli", "--config", str(cfg), "--check-config")
    assert result.returncode == 0, result.stderr
    assert "Configuration OK" in result.stdout and "test-step" in result.stdout
    bad = run("edge.cli", "--config", str(cfg), "--check-config", "--subscribe", "a/#/b")
    assert "'#'" in one_sentence(bad)


def test_replay_bad_arguments(tmp_path: Path) -> None:
    data = tmp_path / "d.csv"
    data.write_text("date,temp\n2010/01/01 00:00,1\n")
    base = ["--broker", "mqtt://127.0.0.1:1", "--topic", "s/{stream}/t", "--time-col", "date"]
    assert "does not exist" in one_sentence(run("edge.replay", "--data", "/nope.csv", *base))
    assert "column 'when'" in one_sentence(
        run("edge.replay", "--data", str(data), *base, "--time-col", "when")
    )
    assert "mqtt://HOST:PORT" in one_sentence(
        run("edge.replay", "--data", str(data), *base, "--broker", "tcp:/x")
    )


@pytest.mark.parametrize("module", ["edge", "edge.cli", "edge.service", "edge.replay"])
def test_edge_never_imports_tensorflow(module: str) -> None:
    code = (
        f"import sys, {module}; bad = [m for m in ('tensorflow', 'keras', 'pandas', 'tf2onnx', "
        "'onnx') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code],  # noqa: PLW1510 cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
