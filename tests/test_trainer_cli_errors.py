"""Every bad input exits 2 with one sentence that names the problem, and no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.synthetic import hourly_sine, write_csv
from trainer.cli import main


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(args)
    err = capsys.readouterr().err.strip()
    return code, err


@pytest.fixture
def good(tmp_path: Path) -> Path:
    return write_csv(hourly_sine(300), tmp_path / "good.csv")


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run(["--data", str(tmp_path / "nope.csv"), "--target", "temp",
                     "--out", str(tmp_path / "r")], capsys)
    assert code == 2
    assert "nope.csv does not exist" in err
    assert len(err.splitlines()) == 1


def test_unreadable_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"\x00\x01 definitely not parquet")
    code, err = run(["--data", str(bad), "--target", "temp", "--out", str(tmp_path / "r")],
                    capsys)
    assert code == 2
    assert "could not read" in err and "as Parquet" in err
    assert len(err.splitlines()) == 1


def test_missing_column_names_it_and_lists_the_others(
    good: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = run(["--data", str(good), "--target", "tmp", "--out", str(tmp_path / "r")],
                    capsys)
    assert code == 2
    assert "'tmp'" in err
    assert "available: date, temp, hum, sky" in err


def test_missing_time_column(
    good: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = run(["--data", str(good), "--target", "temp", "--time-col", "when",
                     "--out", str(tmp_path / "r")], capsys)
    assert code == 2
    assert "time column 'when'" in err


def test_non_numeric_value_names_column_and_row(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    df = hourly_sine(300)
    df["temp"] = df["temp"].astype(object)
    df.loc[41, "temp"] = "n/a?"
    path = write_csv(df, tmp_path / "bad.csv")
    code, err = run(["--data", str(path), "--target", "temp", "--time-col", "date",
                     "--out", str(tmp_path / "r")], capsys)
    assert code == 2
    assert "column 'temp'" in err and "'n/a?'" in err and "row 42" in err


def test_series_too_short(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_csv(hourly_sine(30), tmp_path / "short.csv")
    code, err = run(["--data", str(path), "--target", "temp", "--time-col", "date",
                     "--lookback", "24", "--out", str(tmp_path / "r")], capsys)
    assert code == 2
    assert "fewer than lookback + horizon" in err


def test_all_nan_column(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    df = hourly_sine(300)
    df["hum"] = np.nan
    path = write_csv(df, tmp_path / "nan.csv")
    code, err = run(["--data", str(path), "--target", "temp", "--features", "temp,hum",
                     "--time-col", "date", "--out", str(tmp_path / "r")], capsys)
    assert code == 2
    assert "column 'hum' has no values" in err


def test_bad_timestamp(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    df = hourly_sine(300)
    df.loc[7, "date"] = "yesterday-ish"
    path = write_csv(df, tmp_path / "ts.csv")
    code, err = run(["--data", str(path), "--target", "temp", "--time-col", "date",
                     "--out", str(tmp_path / "r")], capsys)
    assert code == 2
    assert "'yesterday-ish'" in err and "row 8" in err


def test_bilstm_refuses_stateful(
    good: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = run(["--data", str(good), "--target", "temp", "--arch", "bilstm",
                     "--mode", "stateful", "--out", str(tmp_path / "r")], capsys)
    assert code == 2
    assert "--mode window" in err


def test_classify_numeric_target_needs_threshold(
    good: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = run(["--data", str(good), "--target", "temp", "--time-col", "date",
                     "--task", "classify", "--out", str(tmp_path / "r")], capsys)
    assert code == 2
    assert "--threshold" in err


def test_console_script_prints_no_traceback(tmp_path: Path) -> None:
    df = pd.DataFrame({"a": [1, 2, 3]})
    path = write_csv(df, tmp_path / "t.csv")
    exe = Path(sys.executable).with_name("statecast-train")
    proc = subprocess.run(
        [str(exe), "--data", str(path), "--target", "b", "--out", str(tmp_path / "r")],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip() == (
        "statecast-train: error: target column 'b' is not in the data; available: a"
    )


def test_residual_needs_the_target_among_the_features(
    good: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = run(["--data", str(good), "--target", "temp", "--features", "hum",
                     "--time-col", "date", "--residual", "--out", str(tmp_path / "r")], capsys)
    assert code == 2
    assert "'temp' is not" in err
