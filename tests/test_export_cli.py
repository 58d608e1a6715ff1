"""statecast-export's command line: exit statuses, one-sentence refusals, nothing half-written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import export_models as em
import pytest

from export.cli import main

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:keras")


def refused(capsys: pytest.CaptureFixture[str], argv: list[str], status: int = 2) -> str:
    assert main(argv) == status
    err = capsys.readouterr().err.strip()
    assert err.startswith("statecast-export: ")
    assert "Traceback" not in err and len(err.splitlines()) == 1
    return err


def test_missing_source_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    err = refused(capsys, [str(tmp_path / "nope"), "--out", str(tmp_path / "m.onnx")])
    assert "does not exist" in err
    assert not (tmp_path / "m.onnx").exists()


def test_folder_that_is_not_a_run_exits_2(capsys: pytest.CaptureFixture[str],
                                          tmp_path: Path) -> None:
    err = refused(capsys, [str(tmp_path), "--out", str(tmp_path / "m.onnx")])
    assert "not a run folder" in err


def test_unknown_file_type_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "model.txt").write_text("hello")
    err = refused(capsys, [str(tmp_path / "model.txt"), "--out", str(tmp_path / "m.onnx")])
    assert "neither a run folder nor a Keras model file" in err


def test_help_does_not_import_tensorflow() -> None:
    code = ("import sys\nfrom export.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "bad = [m for m in ('tensorflow', 'keras', 'tf2onnx') if m in sys.modules]\n"
            "assert not bad, bad\n")
    done = subprocess.run([sys.executable, "-c", code], check=False, cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "--precision" in done.stdout


@pytest.mark.slow
def test_corrupt_keras_file_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "broken.keras").write_bytes(b"not a zip file at all")
    err = refused(capsys, [str(tmp_path / "broken.keras"), "--out", str(tmp_path / "m.onnx")])
    assert "could not be read as a Keras model" in err


@pytest.mark.slow
def test_unsupported_layer_is_named(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    src = em.save(em.with_conv(), tmp_path, "conv")
    err = refused(capsys, [str(src), "--out", str(tmp_path / "m.onnx")])
    assert "'my_conv' (Conv1D) is not supported" in err
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.slow
def test_bidirectional_step_graph_refused_with_the_way_out(capsys: pytest.CaptureFixture[str],
                                                           tmp_path: Path) -> None:
    src = em.save(em.bidirectional(), tmp_path, "bi")
    err = refused(capsys, [str(src), "--out", str(tmp_path / "m.onnx")])
    assert "cannot be stepped" in err and "--kind window" in err
    assert main([str(src), "--out", str(tmp_path / "w.onnx"), "--kind", "window"]) == 0


@pytest.mark.slow
def test_bad_opset_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    src = em.save(em.relu_vanilla(), tmp_path, "v")
    err = refused(capsys, [str(src), "--out", str(tmp_path / "m.onnx"), "--opset", "7"])
    assert "--opset 7" in err


@pytest.mark.slow
def test_failed_proof_exits_1_and_writes_nothing(capsys: pytest.CaptureFixture[str],
                                                 tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import export.verify

    monkeypatch.setitem(export.verify.TOLERANCE, "fp32", -1.0)  # no graph can pass this
    src = em.save(em.randomize(em.relu_vanilla()), tmp_path, "v")
    out = tmp_path / "m.onnx"
    err = refused(capsys, [str(src), "--out", str(out)], status=1)
    assert "nothing was written" in err
    assert not out.exists() and not list(tmp_path.glob("*.part"))
    assert main([str(src), "--out", str(out), "--no-verify"]) == 0
    assert out.is_file()


@pytest.mark.slow
def test_prints_the_parity_figure_and_opset(capsys: pytest.CaptureFixture[str],
                                            tmp_path: Path) -> None:
    import onnx

    src = em.save(em.randomize(em.relu_vanilla()), tmp_path, "v")
    out = tmp_path / "m.onnx"
    assert main([str(src), "--out", str(out), "--opset", "15"]) == 0
    printed = capsys.readouterr().out
    assert "max abs error" in printed and "wrote" in printed
    assert {o.domain: o.version for o in onnx.load(str(out)).opset_import}[""] == 15
