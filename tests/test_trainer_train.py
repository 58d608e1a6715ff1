"""Training for real: every arch x task x mode, state carried across batches, seeds."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.synthetic import hourly_sine, write_csv
from trainer.batches import Prepared, stateful_groups
from trainer.config import TrainConfig
from trainer.run import train
from trainer.spec import RunSpec

pytestmark = pytest.mark.slow

COMBOS = [
    ("lstm", "regress", "stateful"), ("lstm", "regress", "window"),
    ("lstm", "binary", "stateful"), ("lstm", "binary", "window"),
    ("lstm", "categorical", "stateful"), ("lstm", "categorical", "window"),
    ("encdec", "regress", "stateful"), ("encdec", "regress", "window"),
    ("encdec", "binary", "stateful"), ("encdec", "binary", "window"),
    ("encdec", "categorical", "stateful"), ("encdec", "categorical", "window"),
    ("bilstm", "regress", "window"), ("bilstm", "binary", "window"),
    ("bilstm", "categorical", "window"),
]


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_csv(hourly_sine(360), tmp_path_factory.mktemp("data") / "sine.csv")


def tiny(table: Path, out: Path, **kw: object) -> TrainConfig:
    base: dict[str, object] = dict(
        data=table, targets=["temp"], out=out, time_col="date", lookback=6, layers=1,
        units=4, epochs=1, batch_size=8, quiet=True,
    )
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(("arch", "task", "mode"), COMBOS)
def test_every_arch_task_mode_trains_and_evaluates(
    table: Path, tmp_path: Path, arch: str, task: str, mode: str
) -> None:
    kw: dict[str, object] = {"arch": arch, "mode": mode, "horizon": 1 if task == "categorical"
                             else 3}
    if task == "binary":
        kw.update(task="classify", threshold=50.0)
    elif task == "categorical":
        kw.update(task="classify", targets=["sky"], features=["temp", "hum"])
    out = tmp_path / "run"
    metrics = train(tiny(table, out, **kw), log=lambda _: None)
    for name in ("model.keras", "spec.json", "metrics.json", "history.csv", "report.png",
                 "tail.npz"):
        assert (out / name).is_file(), name
    spec = RunSpec.load(out)
    assert spec.arch == arch and spec.mode == mode
    saved = json.loads((out / "metrics.json").read_text())
    if task == "regress":
        assert {"rmse", "mae", "persistence_rmse"} <= set(saved)
        assert len(saved["per_horizon"]["rmse"]) == 3
        assert np.isfinite(saved["rmse"])
    else:
        assert spec.classes is not None
        assert 0.0 <= saved["accuracy"] <= 1.0
        assert {"log_loss", "majority_accuracy"} <= set(saved)
    assert saved == json.loads(json.dumps(metrics))
    assert len(pd.read_csv(out / "history.csv")) == 1


def test_residual_is_on_only_when_every_target_is_a_feature(table: Path, tmp_path: Path) -> None:
    metrics = train(tiny(table, tmp_path / "r", horizon=2, epochs=2, structure="plain"),
                    log=lambda _: None)
    assert RunSpec.load(tmp_path / "r").residual is True
    assert np.isfinite(metrics["rmse"])
    train(tiny(table, tmp_path / "off", residual=False), log=lambda _: None)
    assert RunSpec.load(tmp_path / "off").residual is False
    train(tiny(table, tmp_path / "other", features=["hum"]), log=lambda _: None)
    assert RunSpec.load(tmp_path / "other").residual is False


def test_same_seed_same_metrics(table: Path, tmp_path: Path) -> None:
    first = train(tiny(table, tmp_path / "a", epochs=2, seed=7), log=lambda _: None)
    second = train(tiny(table, tmp_path / "b", epochs=2, seed=7), log=lambda _: None)
    other = train(tiny(table, tmp_path / "c", epochs=2, seed=8), log=lambda _: None)
    assert first["rmse"] == second["rmse"]
    assert first["rmse"] != other["rmse"]


def test_stateful_streams_are_contiguous_across_batches() -> None:
    t = 200
    x = np.arange(t, dtype=np.float32)[:, None]
    seg = Prepared("s", x, x.copy(), x.copy(), np.arange(t), np.arange(t), 160, 180)
    groups = stateful_groups([seg], batch_size=4, lookback=5, horizon=2, arch="lstm",
                             categorical=False)
    assert len(groups) == 1
    batches = groups[0].batches(5)
    for prev, nxt in itertools.pairwise(batches):
        live = nxt[2][:, 0] > 0
        # Row i of batch k+1 starts right where row i of batch k ended.
        np.testing.assert_array_equal(nxt[0][live, 0, 0], prev[0][live, -1, 0] + 1)
    # Padding and unlabelled rows carry weight 0; every train origin is used exactly once.
    w = groups[0].w
    assert w.sum() == 160 - 2
    assert set(np.unique(groups[0].x[w > 0])) == set(range(158))


def test_stateful_training_remembers_beyond_one_lookback(tmp_path: Path) -> None:
    """The next value depends on a cue seen 7 steps earlier, longer than the lookback of 3.

    A model whose state were reset every batch (window mode) cannot recall it.
    """
    rng = np.random.default_rng(0)
    period, blocks = 8, 450
    cues = rng.choice([-1.0, 1.0], size=blocks)
    values = np.zeros((blocks, period))
    values[:, 0] = cues
    values[:, -1] = cues
    path = write_csv(pd.DataFrame({"v": values.ravel()}), tmp_path / "cue.csv")
    common = dict(data=path, targets=["v"], lookback=3, layers=1, units=16, epochs=60,
                  patience=60, learning_rate=0.01, test_frac=0.2, residual=False, quiet=True)

    def recall_error(mode: str, batch: int) -> float:
        out = tmp_path / mode
        train(TrainConfig(out=out, mode=mode, batch_size=batch, **common), log=lambda _: None)
        import keras

        from trainer.run import _sequence_outputs

        spec = RunSpec.load(out)
        model = keras.saving.load_model(out / "model.keras")
        x = ((values.ravel()[:, None] - spec.scaler.x_mean[0]) / spec.scaler.x_scale[0])
        tail = np.arange(blocks * period * 4 // 5, blocks * period - 1)
        recall = tail[(tail % period) == period - 2]  # the origin just before the echo
        truth = values.ravel()[recall + 1]
        if mode == "window":
            win = x[recall[:, None] - 2 + np.arange(3)[None, :]].astype(np.float32)
            pred = np.asarray(model.predict(win, verbose=0)).ravel()
        else:
            seg = Prepared("s", x.astype(np.float32), x, x, x, np.arange(len(x)), 0, 0)
            pred = _sequence_outputs(model, [seg])[0][recall].ravel()
        pred = pred * spec.scaler.y_scale[0] + spec.scaler.y_mean[0]
        return float(np.sqrt(np.mean((pred - truth) ** 2)))

    stateful = recall_error("stateful", 16)
    window = recall_error("window", 64)
    assert window > 0.8  # no better than guessing the cue's sign from nothing
    assert stateful < 0.5 * window
