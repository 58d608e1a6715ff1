"""The proof before writing: inputs the model can meet, a tolerance relative to the output's size,
the user's own inputs (`--sample`), and a wrong graph still refused.

Every reference here is computed by Keras in this file, never by the exporter.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import export_models as em
import numpy as np
import pytest

from edge import StepModel
from export.cli import main

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:keras")
slow = pytest.mark.slow


def refused(capsys: pytest.CaptureFixture[str], argv: list[str], status: int = 2) -> str:
    assert main(argv) == status
    err = capsys.readouterr().err.strip()
    assert err.startswith("statecast-export: ")
    assert "Traceback" not in err and len(err.splitlines()) == 1
    return err


def windows(series: np.ndarray, length: int) -> np.ndarray:
    return np.stack([series[i : i + length] for i in range(len(series) - length + 1)])


@pytest.fixture(scope="module")
def tutorial(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    """The tutorial encoder–decoder, trained on its ramp / 300, saved as a .keras file."""
    model = em.trained_tutorial()
    return model, em.save(model, tmp_path_factory.mktemp("tutorial"), "tutorial")


@pytest.fixture(scope="module")
def stacked(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny plain model built for windows of 5 steps of 3 features."""
    return em.save(em.randomize(em.relu_stacked(), seed=3), tmp_path_factory.mktemp("stacked"),
                   "stacked")


# -- tolerance: absolute and relative to what Keras gives -----------------------------------------

def test_tolerance_is_absolute_plus_relative_to_keras() -> None:
    from export.verify import compare

    ref = np.array([0.5, 2e4, -3.0])

    def off(*delta: float) -> np.ndarray:
        return ref + np.array(delta)

    ok = compare(off(5e-5, 0.15, -9e-5), ref, tol=1e-4, rtol=1e-5, compared=3)
    assert ok.ok and ok.max_abs == pytest.approx(0.15)  # 0.15 on 2e4 is within 1e-5 of it
    bad = compare(off(2e-4, 0.0, 0.0), ref, tol=1e-4, rtol=1e-5, compared=3)
    assert not bad.ok
    assert bad.worst_err == pytest.approx(2e-4) and bad.worst_ref == 0.5
    big = compare(off(0.0, 0.5, 0.0), ref, tol=1e-4, rtol=1e-5, compared=3)
    assert not big.ok and big.worst_ref == 2e4 and big.allowed == pytest.approx(0.2001)
    assert not compare(off(np.nan, 0, 0), ref, tol=1e-4, rtol=1e-5, compared=3).ok
    assert not compare(ref, off(0, np.inf, 0), tol=1e-4, rtol=1e-5, compared=3).ok


# -- the tutorial model: compared on what it was built for -----------------------------------------

@slow
def test_tutorial_encoder_decoder_is_proved_on_windows_of_its_3_steps(
        tutorial: tuple[Any, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model, src = tutorial
    out = tmp_path / "tutorial.onnx"
    assert main([str(src), "--out", str(out)]) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "windows of 3 steps from random data" in printed and "wrote" in printed
    # the graph stepped 3 times from zero state is Keras on that 3-step window
    xs = windows(em.tutorial_series(), 3)  # [N, 3, 1], the model's real inputs
    ref = em.to_numpy(model(xs, training=False))[..., 0]  # [N, 3]
    sm = StepModel(out)
    assert sm.manifest.lookback == 3 and sm.manifest.output_shape == (1, 3)
    ys = np.stack([sm.run_sequence(w)[0][-1] for w in xs])
    np.testing.assert_allclose(ys, ref, rtol=1e-5, atol=1e-6)


def _corrupt_one_weight(build: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap export.api.build: flip the sign of the largest recurrent weight of the first LSTM."""
    from onnx import numpy_helper

    def corrupted(*args: Any, **kwargs: Any) -> Any:
        built, *rest = build(*args, **kwargs)
        init = [t for t in built.model.graph.initializer if len(t.dims) == 3][1]  # W, R, ...
        assert init.dims[1] == 4 * init.dims[2], init.name  # R: [1, 4 * units, units]
        w = numpy_helper.to_array(init).copy()
        i = int(np.argmax(np.abs(w)))
        w.flat[i] = -w.flat[i]
        init.CopyFrom(numpy_helper.from_array(w, init.name))
        return (built, *rest)

    return corrupted


@slow
def test_a_wrong_graph_of_the_tutorial_model_is_still_refused(
        tutorial: tuple[Any, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    import export.api

    _, src = tutorial
    monkeypatch.setattr(export.api, "build", _corrupt_one_weight(export.api.build))
    out = tmp_path / "wrong.onnx"
    err = refused(capsys, [str(src), "--out", str(out)], status=1)
    assert "differs from Keras" in err and "nothing was written" in err
    assert not out.exists() and not list(tmp_path.glob("*.part"))
    sample = tmp_path / "real.npy"
    np.save(sample, windows(em.tutorial_series(), 3))
    err = refused(capsys, [str(src), "--out", str(out), "--sample", str(sample)], status=1)
    assert "differs from Keras" in err
    assert not out.exists()


# -- --sample: the user's own inputs ---------------------------------------------------------------

@slow
@pytest.mark.parametrize("shape", ["windows", "series"])
def test_sample_npy_is_what_the_proof_runs_on(tutorial: tuple[Any, Path], tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str],
                                              shape: str) -> None:
    _, src = tutorial
    series = em.tutorial_series()  # [90, 1]
    sample = tmp_path / "mine.npy"
    np.save(sample, windows(series, 3) if shape == "windows" else series)
    out = tmp_path / "t.onnx"
    assert main([str(src), "--out", str(out), "--sample", str(sample)]) == 0
    printed = capsys.readouterr().out
    assert "6 windows of 3 steps from mine.npy" in printed
    assert out.is_file()


@slow
def test_sample_csv_of_a_plain_model_takes_its_numeric_columns(
        tutorial: tuple[Any, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, src = tutorial
    sample = tmp_path / "ramp.csv"
    lines = ["day,value"] + [f"d{i},{v:.6f}" for i, v in enumerate(em.tutorial_series()[:, 0])]
    sample.write_text("\n".join(lines) + "\n")
    out = tmp_path / "t.onnx"
    assert main([str(src), "--out", str(out), "--sample", str(sample)]) == 0
    assert "windows of 3 steps from ramp.csv" in capsys.readouterr().out


@slow
def test_sample_csv_of_a_run_takes_the_features_by_name(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = em.make_run(tmp_path / "run", arch="lstm", mode="stateful", seed=4)  # temp, hum
    rng = np.random.default_rng(5)
    rows = [f"{rng.uniform(0, 40):.3f},note,{rng.uniform(-5, 30):.3f}" for _ in range(30)]
    sample = tmp_path / "obs.csv"
    sample.write_text("hum,comment,temp\n" + "\n".join(rows) + "\n")
    out = tmp_path / "run.onnx"
    assert main([str(run), "--out", str(out), "--sample", str(sample)]) == 0
    assert "1 sequence of 30 steps from obs.csv" in capsys.readouterr().out
    (tmp_path / "nohum.csv").write_text("temp,other\n1,2\n3,4\n")
    err = refused(capsys, [str(run), "--out", str(tmp_path / "x.onnx"),
                           "--sample", str(tmp_path / "nohum.csv")])
    assert "no column 'hum'" in err and "temp, other" in err
    assert not (tmp_path / "x.onnx").exists()


@slow
def test_sample_sequences_of_a_model_that_takes_any_length(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = em.save(em.randomize(em.relu_vanilla(), seed=6), tmp_path, "v")  # Input((None, 3))
    sample = tmp_path / "three.npy"
    np.save(sample, np.random.default_rng(7).uniform(0, 1, (3, 20, em.F)).astype(np.float32))
    assert main([str(src), "--out", str(tmp_path / "v.onnx"), "--sample", str(sample)]) == 0
    assert "3 sequences of 20 steps from three.npy" in capsys.readouterr().out


def _write(kind: str, path: Path) -> None:
    """A bad sample for a model taking windows of 5 steps of 3 features."""
    if kind == "garbage.npy":
        path.write_bytes(b"this is not a numpy file")
    elif kind == "4d.npy":
        np.save(path, np.zeros((2, 2, 5, 3), np.float32))
    elif kind == "features.npy":
        np.save(path, np.zeros((10, 2), np.float32))
    elif kind == "short.npy":
        np.save(path, np.zeros((4, 3), np.float32))
    elif kind == "nan.npy":
        x = np.zeros((10, 3), np.float32)
        x[4, 1] = np.nan
        np.save(path, x)
    elif kind == "text.npy":
        np.save(path, np.array([["a", "b", "c"]] * 6))
    elif kind == "word.csv":
        path.write_text("a,b,c\n" + "1,2,3\n" * 2 + "\n" + "1,2,3\n" + "1,x,3\n" + "1,2,3\n" * 3)
    elif kind == "columns.csv":
        path.write_text("a,b\n" + "1,2\n" * 8)
    elif kind == "header.csv":
        path.write_text("a,b,c\n")
    elif kind == "ragged.csv":
        path.write_text("a,b,c\n1,2,3\n1,2\n")
    elif kind == "sample.txt":
        path.write_text("1 2 3\n")


@slow
@pytest.mark.parametrize(("kind", "says"), [
    ("missing.npy", "does not exist"),
    ("sample.txt", "must be a .npy array or a .csv file"),
    ("garbage.npy", "could not be read as a .npy array"),
    ("4d.npy", "expected [T, F] or [N, T, F]"),
    ("features.npy", "2 values per step but the model takes 3 features"),
    ("short.npy", "sequences of 4 steps but the model takes 5"),
    ("nan.npy", "NaN or infinite"),
    ("text.npy", "not numbers"),
    ("word.csv", "line 6 column 'b' is not a number"),  # a blank line counted
    ("columns.csv", "2 numeric columns but the model takes 3 features"),
    ("header.csv", "at least one row"),
    ("ragged.csv", "line 3 has 2 fields"),
])
def test_bad_sample_exits_2_with_one_sentence(stacked: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str], kind: str,
                                              says: str) -> None:
    sample = tmp_path / kind
    _write(kind, sample)
    out = tmp_path / "m.onnx"
    err = refused(capsys, [str(stacked), "--out", str(out), "--sample", str(sample)])
    assert says in err and str(sample) in err
    assert not out.exists()


def test_sample_with_no_verify_is_refused(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path / "m.keras"), "--out", str(tmp_path / "m.onnx"),
              "--sample", str(tmp_path / "s.npy"), "--no-verify"])
    assert exc.value.code == 2
    assert "--sample" in capsys.readouterr().err
