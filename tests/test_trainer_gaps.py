"""Gappy real-shaped series: long gaps, short segments, gaps inside the held-out tails."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.synthetic import write_csv
from trainer.cli import main as train_main
from trainer.config import TrainConfig
from trainer.run import train

pytestmark = pytest.mark.slow


def weekly_with_gaps(n: int = 520) -> pd.DataFrame:
    """A weekly CO2-like series: trend, yearly cycle and NaN gaps of every kind."""
    rng = np.random.default_rng(0)
    t = np.arange(n)
    v = 315 + 0.03 * t + 3 * np.sin(2 * np.pi * t / 52) + rng.normal(0, 0.3, n)
    for a, b in ((40, 48), (60, 63), (70, 80), (85, 95), (440, 452), (480, 490)):
        v[a:b] = np.nan  # long gaps, a short one, a 5-row segment, gaps in val and test
    return pd.DataFrame({
        "date": pd.date_range("1960-01-03", periods=n, freq="7D").strftime("%Y-%m-%d"),
        "co2": np.round(v, 2)})


@pytest.mark.parametrize("mode", ["stateful", "window"])
def test_a_gappy_series_trains_in_both_modes(tmp_path: Path, mode: str) -> None:
    data = write_csv(weekly_with_gaps(), tmp_path / "co2.csv")
    lines: list[str] = []
    metrics = train(TrainConfig(data=data, targets=["co2"], out=tmp_path / "r", time_col="date",
                                horizon=4, season=52, mode=mode, structure="plain",
                                lookback=8, layers=1, units=4, epochs=1, batch_size=8,
                                quiet=True), log=lines.append)
    assert np.isfinite(metrics["rmse"]) and metrics["points"] > 0
    assert any("long gap(s) split" in line for line in lines)
    note = [line for line in lines if line.startswith("segments used")]
    assert note and "3 of 5 for training" in note[0]  # the 5-row segment was dropped


def test_gaps_with_a_max_gap_of_ten(tmp_path: Path) -> None:
    data = write_csv(weekly_with_gaps(), tmp_path / "co2.csv")
    metrics = train(TrainConfig(data=data, targets=["co2"], out=tmp_path / "r", time_col="date",
                                horizon=4, season=52, max_gap=10, lookback=8, layers=1,
                                units=4, epochs=1, batch_size=8, quiet=True),
                    log=lambda _: None)
    assert np.isfinite(metrics["rmse"])


def test_nothing_usable_is_one_sentence(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                        ) -> None:
    """Every segment is shorter than a forecast: exit 2, one line, no traceback."""
    v = np.full(200, np.nan)
    for a in range(0, 200, 10):
        v[a:a + 3] = np.arange(3) + a
    df = pd.DataFrame({"date": pd.date_range("2000-01-02", periods=200, freq="7D")
                       .strftime("%Y-%m-%d"), "co2": v})
    data = write_csv(df, tmp_path / "bits.csv")
    code = train_main(["--data", str(data), "--time-col", "date", "--target", "co2",
                       "--horizon", "4", "--out", str(tmp_path / "r"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("statecast-train: error:")
    assert "Traceback" not in capsys.readouterr().err
