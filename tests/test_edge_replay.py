"""statecast-replay's row reading and timestamp conversion (no broker), and pacing (broker)."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from conftest import Mosquitto, replay

from edge.errors import EdgeError
from edge.replay import TimeParser, build_parser, encode_ts, rows


def test_time_parser_converts_common_formats_to_iso() -> None:
    p = TimeParser(None)
    assert p("2010/03/01 05:00").isoformat() == "2010-03-01T05:00:00"
    assert p("2010/03/01 06:00").isoformat() == "2010-03-01T06:00:00"
    assert p("2010-03-01T05:00:00+01:00").utcoffset() is not None
    assert p("1267419600") == datetime(2010, 3, 1, 5, tzinfo=timezone.utc)
    assert TimeParser("%d|%m|%Y")("01|03|2010") == datetime(2010, 3, 1)
    with pytest.raises(ValueError, match="--time-format"):
        p("first of March")
    assert encode_ts(datetime(2010, 3, 1, 5), "epoch") == 1267419600.0
    assert encode_ts(datetime(2010, 3, 1, 5), "epoch_ms") == 1267419600000


def test_rows_select_rename_and_series(tmp_path: Path) -> None:
    data = tmp_path / "d.csv"
    data.write_text(
        "when,site,temp,hum\n"
        "2010/01/01 00:00,a,1.5,80\n2010/01/01 00:00,b,2,81\n"
        "2010/01/01 01:00,a,,82\n2010/01/01 01:00,b,x,83\n"
    )
    args = build_parser().parse_args(
        ["--data", str(data), "--time-col", "when", "--broker", "mqtt://h", "--topic", "t/{stream}",
         "--series-col", "site", "--rename", "temp=t", "--skip", "1", "--count", "3"]
    )
    got = list(rows(args))
    assert [(s, ts.isoformat(), v) for s, ts, v in got] == [
        ("b", "2010-01-01T00:00:00", {"t": 2, "hum": 81}),
        ("a", "2010-01-01T01:00:00", {"t": None, "hum": 82}),
        ("b", "2010-01-01T01:00:00", {"t": "x", "hum": 83}),
    ]
    args.time_col = "nope"
    with pytest.raises(EdgeError, match="column 'nope'"):
        list(rows(args))


@pytest.mark.broker
def test_rate_paces_the_replay(broker: Mosquitto, tmp_path: Path) -> None:
    data = tmp_path / "d.csv"
    data.write_text("date,temp\n" + "".join(f"2010/01/01 {h:02d}:00,{h}\n" for h in range(11)))
    t0 = time.monotonic()
    replay(broker, data, "paced/{stream}/temp", "--time-col", "date", "--rate", "20")
    assert time.monotonic() - t0 >= 0.5  # 11 messages at 20/s take at least 0.5 s
