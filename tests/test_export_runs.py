"""Export of run folders for every trainer arch, mode and task, checked against Keras.

Run folders are made with the trainer's own model builder and random weights (see
`export_models.make_run`); one test trains a real run with statecast-train.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import export_models as em
import numpy as np
import pytest

from edge import Manifest, StepModel
from trainer.spec import RunSpec

pytestmark = [pytest.mark.slow,
              pytest.mark.filterwarnings("ignore::DeprecationWarning:keras")]

RUNS: dict[str, dict[str, Any]] = {
    "lstm_stateful_multi": dict(arch="lstm", mode="stateful", layers=2, horizon=2,
                                targets=("temp", "hum")),
    "encdec_stateful": dict(arch="encdec", mode="stateful", horizon=3),
    "lstm_window": dict(arch="lstm", mode="window", horizon=3),
    "encdec_window": dict(arch="encdec", mode="window", horizon=2, targets=("temp", "hum")),
    "bilstm_window": dict(arch="bilstm", mode="window", layers=2, horizon=2),
    "binary_stateful": dict(arch="lstm", mode="stateful", task="classify", threshold=50.0,
                            horizon=2),
    "categorical_stateful": dict(arch="lstm", mode="stateful", task="classify", horizon=1,
                                 classes=["drizzle", "rain", "sun"]),
    "binary_encdec": dict(arch="encdec", mode="stateful", task="classify", threshold=50.0,
                          horizon=2),
    # Residual runs learn the change from the current observation of each target.
    "residual_stateful_multi": dict(arch="lstm", mode="stateful", horizon=2,
                                    targets=("hum", "temp"), residual=True),
    "residual_window": dict(arch="lstm", mode="window", horizon=3, residual=True),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Any, RunSpec]]:
    import keras

    folder = tmp_path_factory.mktemp("runs")
    out = {}
    for i, (name, kw) in enumerate(RUNS.items()):
        run = em.make_run(folder / name, seed=i, **kw)
        model = keras.models.load_model(run / "model.keras", compile=False)
        out[name] = (run, model, RunSpec.load(run))
    return out


def scaled(spec: RunSpec, x: np.ndarray) -> np.ndarray:
    s = spec.scaler
    return ((x - np.asarray(s.x_mean)) / np.asarray(s.x_scale)).astype(np.float32)


def to_target_units(spec: RunSpec, raw: np.ndarray, x_now: np.ndarray | None = None
                    ) -> np.ndarray:
    """Keras output [N, ...] → y as the manifest lays it out, written from spec.py's contract.

    `x_now` ([N, F] raw) is the observation each output follows, for residual runs.
    """
    n, h = raw.shape[0], spec.horizon
    if spec.task == "classify":
        if spec.threshold is not None:
            p = raw.reshape(n, h)
            return np.stack([1 - p, p], axis=-1)
        return raw.reshape(n, h, -1)
    k = len(spec.targets)
    if spec.residual:
        assert x_now is not None
        base = x_now[:, [spec.features.index(t) for t in spec.targets]][:, None, :]
    else:
        base = np.asarray(spec.scaler.y_mean)
    y = raw.reshape(n, h, k) * np.asarray(spec.scaler.y_scale) + base
    return y[..., 0] if k == 1 else y


def tail(run: Path) -> np.ndarray:
    with np.load(run / "tail.npz") as data:
        return np.asarray(data["x"][:24], np.float32)


def export(run: Path, tmp: Path, **kw: Any) -> tuple[Path, Manifest]:
    from export import export_model

    out = tmp / f"{run.name}-{'-'.join(f'{k}{v}' for k, v in kw.items())}.onnx"
    return out, export_model(run, out, **kw)


@pytest.mark.parametrize("name", ["lstm_stateful_multi", "encdec_stateful", "binary_stateful",
                                  "categorical_stateful", "binary_encdec",
                                  "residual_stateful_multi"])
def test_stateful_run_steps_like_keras_over_the_tail(runs: Any, name: str,
                                                     tmp_path: Path) -> None:
    run, model, spec = runs[name]
    path, manifest = export(run, tmp_path)
    assert manifest.kind == "step" and manifest.mode == "stateful"
    xs = tail(run)
    ref = to_target_units(spec, em.to_numpy(model(scaled(spec, xs)[None], training=False))[0],
                          xs)
    ys, _ = StepModel(path).run_sequence(xs)
    assert ys.shape == ref.shape == (len(xs), *manifest.output_shape[1:])
    np.testing.assert_allclose(ys, ref, atol=1e-4)  # target units
    assert len(manifest.state) == 2 * spec.layers
    assert manifest.features == tuple(spec.features) and manifest.freq == "1h"
    assert manifest.max_gap == 3 and manifest.metrics["mae"] == 1.25
    if spec.task == "classify":
        assert manifest.classes == tuple(spec.classes or ())


@pytest.mark.parametrize("name", ["lstm_window", "encdec_window", "bilstm_window",
                                  "residual_window"])
def test_window_run_exports_a_window_graph_by_default(runs: Any, name: str,
                                                      tmp_path: Path) -> None:
    run, model, spec = runs[name]
    path, manifest = export(run, tmp_path)
    assert manifest.kind == "window" and manifest.lookback == spec.lookback
    assert manifest.state == () and manifest.mode == "window"
    xs = tail(run)
    windows = np.stack([xs[i : i + spec.lookback] for i in range(0, 12, 3)])
    ref = to_target_units(spec, em.to_numpy(model(scaled(spec, windows), training=False)),
                          windows[:, -1])
    sm = StepModel(path)
    ys = np.stack([sm.step(w, [])[0][0] for w in windows])
    np.testing.assert_allclose(ys, ref, atol=1e-4)


@pytest.mark.parametrize("name", ["lstm_window", "encdec_window", "residual_window"])
def test_kind_step_forces_a_step_graph_for_a_window_run(runs: Any, name: str,
                                                        tmp_path: Path) -> None:
    run, model, spec = runs[name]
    path, manifest = export(run, tmp_path, kind="step")
    assert manifest.kind == "step" and len(manifest.state) == 2
    xs = tail(run)
    sm = StepModel(path)
    for start in range(0, 12, 4):  # each window stepped from zero state = Keras on the window
        window = xs[start : start + spec.lookback]
        ref = to_target_units(spec, em.to_numpy(model(scaled(spec, window)[None],
                                                      training=False)), window[-1:])
        ys, _ = sm.run_sequence(window)
        np.testing.assert_allclose(ys[-1:], ref, atol=1e-4)


@pytest.mark.parametrize("name", ["encdec_stateful", "lstm_stateful_multi"])
def test_kind_window_for_a_stateful_run(runs: Any, name: str, tmp_path: Path) -> None:
    run, model, spec = runs[name]
    path, manifest = export(run, tmp_path, kind="window")
    assert manifest.kind == "window" and manifest.lookback == spec.lookback
    xs = tail(run)
    windows = np.stack([xs[i : i + spec.lookback] for i in range(0, 12, 4)])
    out = em.to_numpy(model(scaled(spec, windows), training=False))[:, -1]  # newest step
    ref = to_target_units(spec, out)
    sm = StepModel(path)
    ys = np.stack([sm.step(w, [])[0][0] for w in windows])
    np.testing.assert_allclose(ys, ref, atol=1e-4)


def test_bilstm_run_refuses_a_step_graph(runs: Any, tmp_path: Path) -> None:
    from export import ExportError

    run, _, _ = runs["bilstm_window"]
    with pytest.raises(ExportError, match="--kind window") as err:
        export(run, tmp_path, kind="step")
    assert err.value.status == 2
    assert not list(tmp_path.glob("*.onnx"))


def test_run_without_tail_verifies_on_random_data(tmp_path: Path) -> None:
    run = em.make_run(tmp_path / "notail", arch="lstm", mode="stateful", tail=False, seed=5)
    path, manifest = export(run, tmp_path)
    assert path.is_file() and manifest.kind == "step"


@pytest.mark.parametrize(("precision", "rel_tol"), [("fp16", 1e-2), ("int8", 1e-1)])
def test_reduced_precision_within_stated_tolerance(runs: Any, tmp_path: Path, precision: str,
                                                   rel_tol: float) -> None:
    run, model, spec = runs["lstm_stateful_multi"]
    path, manifest = export(run, tmp_path, precision=precision)
    assert manifest.precision == precision
    xs = tail(run)
    ref = to_target_units(spec, em.to_numpy(model(scaled(spec, xs)[None], training=False))[0])
    ys, _ = StepModel(path).run_sequence(xs)
    err = np.max(np.abs(ys - ref))
    assert err <= rel_tol * max(spec.scaler.y_scale), err


def test_real_trainer_run_exports_and_matches(tmp_path: Path) -> None:
    """Train a tiny run with statecast-train, export it with the CLI, step it over its tail."""
    import keras

    from export.cli import main as export_main
    from trainer.cli import main as train_main

    data = Path(__file__).resolve().parents[1] / "examples/data/seattle-temps.csv"
    run = tmp_path / "run"
    status = train_main(["--data", str(data), "--time-col", "date", "--target", "temp",
                         "--epochs", "1", "--units", "4", "--layers", "1", "--horizon", "2",
                         "--structure", "plain", "--agg", "temp=last", "--out", str(run)])
    assert status in (0, None)
    out = tmp_path / "temps.onnx"
    assert export_main([str(run), "--out", str(out)]) == 0
    spec = RunSpec.load(run)
    model = keras.models.load_model(run / "model.keras", compile=False)
    xs = tail(run)
    assert spec.residual  # the trainer's default for a target that is also a feature
    ref = to_target_units(spec, em.to_numpy(model(scaled(spec, xs)[None], training=False))[0],
                          xs)
    ys, _ = StepModel(out).run_sequence(xs)
    np.testing.assert_allclose(ys, ref, atol=1e-4)
    meta = json.loads(StepModel(out).session.get_modelmeta().custom_metadata_map["statecast"])
    assert meta["features"] == ["temp"] and meta["horizon"] == 2 and meta["freq"] == "1h"
    # the grid the trainer used travels to the daemon: origin = the first timestamp (UTC)
    assert meta["grid"] == {"origin": 1262304000.0, "aggregation": {"temp": "last"},
                            "closed": "right", "label": "right", "fill": "linear"}
    assert StepModel(out).manifest.grid is not None
