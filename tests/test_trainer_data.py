"""Loading: sorting, duplicates, gaps interpolated or split, several series, the scaler."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from tests.synthetic import hourly_sine, write_csv
from trainer.data import load_dataset


def test_rows_sorted_duplicates_dropped_short_gap_interpolated(tmp_path: Path) -> None:
    df = hourly_sine(100)
    # Shuffle, duplicate a timestamp (keeping its first value) and drop two rows (a 2-row gap).
    dup = df.iloc[[10]].assign(temp=999.0)
    df = pd.concat([df.drop(index=[50, 51]), dup]).sample(frac=1.0, random_state=1)
    ds = load_dataset(write_csv(df, tmp_path / "d.csv"), ["temp"], time_col="date", max_gap=3)
    assert len(ds.segments) == 1
    seg = ds.segments[0]
    assert len(seg.x) == 100
    assert ds.freq == "1h"
    assert ds.interpolated == 2
    assert np.all(np.diff(seg.times) > np.timedelta64(0))
    assert 999.0 not in seg.x  # the duplicate's second value was dropped
    original = hourly_sine(100)["temp"].to_numpy()
    np.testing.assert_allclose(seg.x[:50, 0], original[:50])
    # Linear interpolation between rows 49 and 52.
    np.testing.assert_allclose(seg.x[50:52, 0], np.interp([50, 51], [49, 52], original[[49, 52]]))


def test_long_gap_splits_the_series(tmp_path: Path) -> None:
    df = hourly_sine(200).drop(index=range(80, 90))
    ds = load_dataset(write_csv(df, tmp_path / "d.csv"), ["temp"], time_col="date", max_gap=3)
    assert [len(s.x) for s in ds.segments] == [80, 110]
    assert ds.splits == 1
    assert ds.interpolated == 0


def test_series_column_gives_independent_series(tmp_path: Path) -> None:
    a = hourly_sine(120, seed=1).assign(sensor="a")
    b = hourly_sine(150, seed=2, start="2024-03-01").assign(sensor="b")
    path = write_csv(pd.concat([b, a]), tmp_path / "d.csv")
    ds = load_dataset(path, ["temp"], features=["temp", "hum"], time_col="date",
                      series_col="sensor")
    assert ds.series_names() == ["a", "b"]
    assert [len(s.x) for s in ds.segments] == [120, 150]
    np.testing.assert_allclose(ds.segments[0].x[:, 1], a["hum"].to_numpy())


def test_freq_option_overrides_inference(tmp_path: Path) -> None:
    df = hourly_sine(96)
    ds = load_dataset(write_csv(df, tmp_path / "d.csv"), ["temp"], time_col="date", freq="2h")
    assert ds.freq == "2h"
    # bins (T - 2h, T] from the first timestamp: the first row alone, then pairs of rows
    assert len(ds.segments[0].x) == 49
    np.testing.assert_allclose(ds.segments[0].x[0, 0], df["temp"].iloc[0])
    np.testing.assert_allclose(ds.segments[0].x[1, 0], df["temp"].iloc[1:3].mean())
    assert ds.origin == pd.Timestamp(df["date"].iloc[0]).timestamp()


def test_scaler_is_fitted_on_training_rows_only(tmp_path: Path) -> None:
    from trainer.config import TrainConfig
    from trainer.run import Task, _prepare

    df = hourly_sine(400)
    df.loc[300:, "temp"] = 1000.0  # the validation/test tail is wildly different
    ds = load_dataset(write_csv(df, tmp_path / "d.csv"), ["temp"], time_col="date")
    cfg = TrainConfig(data=tmp_path / "d.csv", targets=["temp"], out=tmp_path / "r",
                      lookback=8, test_frac=0.2)
    _, scaler, _ = _prepare(ds, cfg, Task("regress", None, None))
    train_rows = df["temp"].to_numpy()[: 400 - 80 - 40]
    assert abs(scaler.x_mean[0] - train_rows.mean()) < 1e-9
    assert abs(scaler.y_scale[0] - train_rows.std()) < 1e-9
    assert scaler.x_mean[0] < 100


def test_parquet_reads_like_csv(tmp_path: Path) -> None:
    df = hourly_sine(120)
    df.to_parquet(tmp_path / "d.parquet")
    from_parquet = load_dataset(tmp_path / "d.parquet", ["temp"], time_col="date")
    from_csv = load_dataset(write_csv(df, tmp_path / "d.csv"), ["temp"], time_col="date")
    np.testing.assert_array_equal(from_parquet.segments[0].x, from_csv.segments[0].x)
    assert from_parquet.freq == "1h"
