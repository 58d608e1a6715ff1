"""`statecast-train --data DIR`: a directory of tables, such as statecast-record's days, and the
unit and device class that travel from the trainer into the manifest."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from edge.codec import Decoder
from edge.record import Recorder
from tests.synthetic import hourly_sine, write_csv
from trainer.cli import main
from trainer.data import load_dataset


def test_a_directory_is_read_as_one_table(tmp_path: Path) -> None:
    df = hourly_sine(120)
    d = tmp_path / "days"
    d.mkdir()
    write_csv(df.iloc[60:], d / "b.csv")  # name order, not write order
    write_csv(df.iloc[:60], d / "a.csv")
    (d / "notes.txt").write_text("not a table")
    ds = load_dataset(d, ["temp"], time_col="date")
    assert len(ds.segments) == 1 and len(ds.segments[0].x) == 120


def test_empty_directory_and_mismatched_columns_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = tmp_path / "empty"
    d.mkdir()
    assert main(["--data", str(d), "--target", "temp", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert "holds no .csv or .parquet files" in err and len(err.splitlines()) == 1
    df = hourly_sine(40)
    write_csv(df, d / "2026-03-01.csv")
    write_csv(df.drop(columns=["hum"]), d / "2026-03-02.csv")
    assert main(["--data", str(d), "--target", "temp", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert "2026-03-02.csv has the columns date, temp, sky" in err
    assert "every file of" in err and len(err.splitlines()) == 1


def test_device_class_is_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_csv(hourly_sine(40), tmp_path / "d.csv")
    assert main(["--data", str(data), "--target", "temp", "--device-class", "Temperature °C",
                 "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert "is not a Home Assistant sensor device class" in err and len(err.splitlines()) == 1


def record(directory: Path, streams: dict[str, pd.DataFrame]) -> None:
    """Write what statecast-record writes for these observations (interleaved by time)."""
    rec = Recorder(directory, ("temp",))
    dec = Decoder(("temp",))
    frames = list(streams.items())
    for i in range(len(frames[0][1])):
        for name, df in frames:
            row = df.iloc[i]
            ts = pd.Timestamp(row["date"]).isoformat()
            rec.append_one(name, dec.decode(json.dumps({"ts": ts, "temp": row["temp"]}).encode()))
    rec.close()


@pytest.mark.slow
def test_recorded_directory_trains_and_exports_with_its_unit(tmp_path: Path) -> None:
    d = tmp_path / "record"
    record(d, {"kitchen": hourly_sine(240, seed=1), "hall": hourly_sine(240, seed=2)})
    assert len(list(d.glob("*.csv"))) == 10  # one file per UTC day
    run = tmp_path / "run"
    code = main(["--data", str(d), "--time-col", "ts", "--series-col", "stream",
                 "--target", "temp", "--horizon", "2", "--lookback", "12", "--layers", "1",
                 "--units", "4", "--epochs", "1", "--structure", "plain", "--quiet",
                 "--unit", "°C", "--device-class", "temperature", "--out", str(run)])
    assert code == 0
    spec = json.loads((run / "spec.json").read_text())
    assert spec["unit"] == "°C" and spec["device_class"] == "temperature"
    assert spec["freq"] == "1h"
    from export.api import export_model

    manifest = export_model(run, tmp_path / "m.onnx")
    assert (manifest.unit, manifest.device_class) == ("°C", "temperature")
    from edge.model import StepModel

    assert StepModel(tmp_path / "m.onnx").manifest.unit == "°C"
    from export.cli import main as export_main

    assert export_main([str(run), "--out", str(tmp_path / "f.onnx"), "--unit", "°F",
                        "--no-verify"]) == 0
    manifest = StepModel(tmp_path / "f.onnx").manifest
    assert (manifest.unit, manifest.device_class) == ("°F", "temperature")
