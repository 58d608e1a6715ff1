"""The forecaster's structure: seasonal memory, base forecast, log and calendar, from the
trainer's numpy reference through the exported graph's state tensors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from edge import EdgeError
from edge.model import StepModel
from export.api import export_model, step_latency_us
from tests.synthetic import write_csv
from trainer.cli import main as train_main
from trainer.config import TrainConfig
from trainer.run import train
from trainer.spec import RunSpec
from trainer.structure import Structure, default_seasons


def test_derived_inputs_follow_the_definition_by_hand() -> None:
    x = np.array([[1.0], [2.0], [4.0], [7.0], [11.0]])
    st = Structure(features=["v"], targets=[0], horizon=2, seasons=[3], base_lag=3, level=True)
    d = st.derive(x, None)
    # columns: level, change since the last step, change since three steps ago
    assert d[:, 0].tolist() == [1, 2, 4, 7, 11]
    assert d[:, 1].tolist() == [0, 1, 2, 3, 4]
    # before the first observation the memory holds the first value: 2-1, 4-1, then 7-1, 11-2
    assert d[:, 2].tolist() == [0, 1, 3, 6, 9]
    # base for h=1, 2: the value one season before the target (the first value before that)
    assert st.base(x)[:, :, 0].tolist() == [[1, 1], [1, 1], [1, 2], [2, 4], [4, 7]]


def test_log_and_calendar_inputs_by_hand() -> None:
    x = np.array([[np.e], [np.e**2]])
    st = Structure(features=["v"], targets=[0], horizon=1, log=True, level=False,
                   calendar=[86400.0])
    d = st.derive(x, np.array([0.0, 21600.0]))  # midnight, 6 am
    np.testing.assert_allclose(d, [[0, 0, 1], [1, 1, 0]], atol=1e-12)


def test_seasons_follow_the_grid() -> None:
    assert default_seasons("1h") == [24, 168]
    assert default_seasons("30min") == [48, 336]
    assert default_seasons("1D") == [7]
    assert default_seasons("7D") == [52]
    assert default_seasons("MS") == [12]
    assert default_seasons(None) == []


def trend_season(n: int, seed: int = 0) -> pd.DataFrame:
    """An hourly daily cycle on a rising level: the held-out tail leaves the training range."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    v = 20 + 0.05 * t + 5 * np.sin(2 * np.pi * t / 24) + rng.normal(0, 0.2, n)
    return pd.DataFrame({
        "date": pd.date_range("2024-01-01", periods=n, freq="h").strftime("%Y-%m-%d %H:%M"),
        "v": v.round(3)})


@pytest.fixture(scope="module")
def seasonal_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("structure")
    data = write_csv(trend_season(600), d / "trend.csv")
    out = d / "run"
    train(TrainConfig(data=data, targets=["v"], out=out, time_col="date", horizon=3,
                      season=24, structure="seasonal", calendar=True, lookback=12, layers=1,
                      units=8, epochs=3, batch_size=8, quiet=True), log=lambda _: None)
    return out


def test_the_run_records_its_structure(seasonal_run: Path) -> None:
    spec = RunSpec.load(seasonal_run)
    assert spec.structure is not None
    st = Structure.from_dict(spec.structure)
    assert (st.seasons, st.base_lag, st.memory) == ([24], 24, 24)
    assert st.calendar == [7 * 86400.0]  # 17 days of training rows: a week, not a year
    metrics = json.loads((seasonal_run / "metrics.json").read_text())
    assert metrics["structure"] == "seasonal24+cal+drift"
    assert st.drift


@pytest.mark.parametrize("batch", ["1", "dynamic"])
def test_the_graph_reproduces_the_trainers_held_out_forecasts(
    seasonal_run: Path, tmp_path: Path, batch: str
) -> None:
    """Stepped from a stream's first observation, the graph with its hist/seen state and time
    input gives the forecasts the trainer scored on the held-out tail."""
    m = export_model(seasonal_run, tmp_path / "m.onnx", batch=batch)
    assert [s.input for s in m.state][-2:] == ["hist", "seen"]
    assert m.time_input == "t" and m.warmup == 24
    df = pd.read_csv(seasonal_run.parent / "trend.csv")
    times = pd.to_datetime(df["date"]).to_numpy().astype("datetime64[s]").astype(np.int64)
    sm = StepModel(tmp_path / "m.onnx")
    ys, _ = sm.run_sequence(df[["v"]].to_numpy(np.float32), ts=times.astype(np.float64))
    fc = np.load(seasonal_run / "forecasts.npz")
    rows = np.searchsorted(times, fc["origin_time"].astype("datetime64[s]").astype(np.int64))
    np.testing.assert_allclose(ys[rows], fc["pred"][..., 0], rtol=1e-5, atol=1e-3)


def test_a_structured_graph_needs_the_time(seasonal_run: Path, tmp_path: Path) -> None:
    export_model(seasonal_run, tmp_path / "m.onnx")
    sm = StepModel(tmp_path / "m.onnx")
    with pytest.raises(EdgeError, match="timestamp"):
        sm.step(np.array([20.0], np.float32), sm.zero_state())


def test_step_latency_feeds_the_time_input(seasonal_run: Path, tmp_path: Path) -> None:
    export_model(seasonal_run, tmp_path / "m.onnx")
    assert step_latency_us(tmp_path / "m.onnx", repeats=5) > 0


def test_a_structured_run_refuses_a_window_graph(seasonal_run: Path, tmp_path: Path) -> None:
    from export.errors import ExportError

    with pytest.raises(ExportError, match="step graph only"):
        export_model(seasonal_run, tmp_path / "w.onnx", kind="window")


def test_a_graph_whose_memory_is_off_by_one_is_refused(seasonal_run: Path,
                                                        tmp_path: Path) -> None:
    """The proof compares the graph with Keras + the numpy structure: a base forecast read one
    slot off in the seasonal memory must fail it, the true graph must pass."""
    import onnx
    from onnx import numpy_helper

    from export.convert import run_layout
    from export.load import load_source
    from export.structure import parity_structured

    export_model(seasonal_run, tmp_path / "m.onnx", verify=False)
    proto = onnx.load(str(tmp_path / "m.onnx"))
    hit = 0
    for init in proto.graph.initializer:
        if init.name.startswith("base_pos"):
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) - 1, init.name))
            hit += 1
    assert hit == 1
    onnx.save(proto, str(tmp_path / "bad.onnx"))
    src = load_source(seasonal_run)
    layout = run_layout(src.spec)
    assert parity_structured(tmp_path / "m.onnx", src, layout, "fp32").ok
    assert not parity_structured(tmp_path / "bad.onnx", src, layout, "fp32").ok


def test_selection_reports_the_candidates_and_the_verdict(tmp_path: Path) -> None:
    data = write_csv(trend_season(400, seed=1), tmp_path / "d.csv")
    out = tmp_path / "auto"
    lines: list[str] = []
    metrics = train(TrainConfig(data=data, targets=["v"], out=out, time_col="date", horizon=2,
                                season=24, lookback=12, layers=1, units=4, epochs=2,
                                batch_size=8, quiet=True), log=lines.append)
    sel = metrics["selection"]
    names = [c["name"] for c in sel["candidates"]]
    assert names[:2] == ["plain", "seasonal24+drift"] and len(names) >= 3
    assert sel["chosen"] == min(sel["candidates"], key=lambda c: c["val_rmse"])["name"]
    assert {"persistence", "seasonal_24"} <= set(sel["val_baselines"])
    # the verdict on the held-out tail, recomputed from the forecasts themselves
    fc = np.load(out / "forecasts.npz")

    def rmse(p: np.ndarray) -> float:
        return float(np.sqrt(np.mean((p - fc["actual"]) ** 2)))

    best = min(rmse(fc["persistence"]), rmse(fc["seasonal"]))
    assert metrics["beats_best_baseline"] == (rmse(fc["pred"]) < best)
    assert any(line.startswith("candidate seasonal24+drift") for line in lines)


def test_a_model_that_loses_says_so(tmp_path: Path) -> None:
    """A random walk: persistence is the best forecast there is, and one epoch cannot beat it."""
    rng = np.random.default_rng(3)
    n = 300
    df = pd.DataFrame({"date": pd.date_range("2024-01-01", periods=n, freq="D")
                       .strftime("%Y-%m-%d"), "v": np.cumsum(rng.normal(0, 1, n)).round(3)})
    data = write_csv(df, tmp_path / "walk.csv")
    lines: list[str] = []
    metrics = train(TrainConfig(data=data, targets=["v"], out=tmp_path / "w", time_col="date",
                                horizon=1, structure="plain", lookback=6, layers=1, units=2,
                                epochs=1, batch_size=8, learning_rate=0.0001, quiet=True),
                    log=lines.append)
    assert metrics["beats_best_baseline"] is False
    assert any(line.startswith("WARNING: the model") for line in lines)
    saved = json.loads((tmp_path / "w" / "metrics.json").read_text())
    assert saved["beats_best_baseline"] is False and saved["best_baseline"]


def test_monthly_data_keep_their_calendar_months(tmp_path: Path) -> None:
    months = pd.date_range("2000-01-01", periods=60, freq="MS")
    v = 100 * 1.01 ** np.arange(60) * (1 + 0.1 * np.sin(2 * np.pi * np.arange(60) / 12))
    data = write_csv(pd.DataFrame({"month": months.strftime("%Y-%m-%d"), "v": v.round(2)}),
                     tmp_path / "m.csv")
    out = tmp_path / "run"
    code = train_main(["--data", str(data), "--time-col", "month", "--target", "v",
                       "--horizon", "3", "--structure", "seasonal", "--lookback", "6",
                       "--layers", "1", "--units", "4", "--epochs", "2", "--quiet",
                       "--out", str(out)])
    assert code == 0
    spec = RunSpec.load(out)
    assert spec.freq == "MS" and spec.seasons == [12]
    assert spec.data["rows"] == 60  # not re-binned into 31-day periods


def test_an_ensemble_is_one_wider_lstm_equal_to_the_mean_of_its_members() -> None:
    import keras

    from trainer.ensemble import merge
    from trainer.models import ModelShape, build_model

    shape = ModelShape(arch="lstm", features=3, horizon=2, per_step=1, activation=None,
                       layers=2, units=4, dropout=0.0)
    members = []
    for seed in range(3):
        keras.utils.set_random_seed(seed)
        members.append(build_model(shape, sequences=True))
    x = np.random.default_rng(0).normal(size=(2, 30, 3)).astype(np.float32)
    want = np.mean([np.asarray(m(x)) for m in members], axis=0)
    merged = merge(members, shape)
    assert merged.get_layer("lstm_1").units == 12
    np.testing.assert_allclose(np.asarray(merged(x)), want, atol=1e-5)


def test_drift_carries_the_seasonal_change_forward_by_hand() -> None:
    x = np.array([[1.0], [2.0], [4.0], [7.0], [11.0]])
    st = Structure(features=["v"], targets=[0], horizon=4, seasons=[2], base_lag=2, drift=True)
    # t=4: z(t+h-2*ceil(h/2)) = 7, 11, 7, 11; change since two steps ago 11-4 = 7, once for
    # h = 1, 2 and twice for h = 3, 4
    assert st.base(x)[4, :, 0].tolist() == [14, 18, 21, 25]


def test_the_seasonal_paths_ahead_by_hand() -> None:
    x = np.array([[1.0], [2.0], [4.0], [7.0], [11.0]])
    st = Structure(features=["v"], targets=[0], horizon=3, seasons=[2], base_lag=2, ahead=True)
    d = st.derive(x, None)
    # columns: d1, d2, then z(t+h-2*ceil(h/2)) - z(t) for h = 1, 2, 3
    # t=4: z(3)-z(4), z(4)-z(4), z(3)-z(4) = -4, 0, -4; t=0: the first value everywhere: 0
    assert d[4, 2:].tolist() == [-4, 0, -4]
    assert d[0, 2:].tolist() == [0, 0, 0]
    assert d[2, 2:].tolist() == [2 - 4, 0, 2 - 4]
