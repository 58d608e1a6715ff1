"""statecast-replay's row reading and timestamp conversion (no broker), and pacing (broker)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, Mosquitto, replay

from edge.errors import EdgeError
from edge.replay import Scoreboard, TimeParser, build_parser, encode_ts, rows, summary_lines


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


def test_scoreboard_scores_forecasts_against_the_replayed_actuals() -> None:
    """Per horizon step: the model's errors, interval coverage and width, persistence and
    seasonal naive on the same actuals; forecasts whose target was not replayed are skipped."""
    board = Scoreboard(None, season=2)
    t0 = datetime(2010, 1, 1)
    values = [1.0, 2.0, 4.0, 7.0, 11.0]
    for i, v in enumerate(values):
        board.sent("s", t0 + timedelta(hours=i), {"temp": v})
    for i, v in enumerate(values):
        at = [(t0 + timedelta(hours=i + k)).isoformat() for k in (1, 2)]
        doc = {"stream": "s", "ts": (t0 + timedelta(hours=i)).isoformat(), "at": at,
               "forecast": [v + 1, v + 2],
               "intervals": {"0.8": [[v, v + 2], [v + 1.5, v + 2.5]]}}
        board.received(json.dumps(doc).encode())
    s = board.summary()["horizon"]
    assert [r["n"] for r in s] == [4, 3]
    # h=1: forecasts 2,3,5,8 for actuals 2,4,7,11
    assert s[0]["mae"] == pytest.approx((0 + 1 + 2 + 3) / 4)
    assert s[0]["persistence_mae"] == pytest.approx((1 + 2 + 3 + 4) / 4)
    assert s[0]["coverage"]["0.8"] == pytest.approx(2 / 4) and s[0]["width"]["0.8"] == 2
    # seasonal naive, season 2: the actual 2 rows before the target (h=1, h=2 alike)
    assert s[1]["seasonal_mae"] == pytest.approx((3 + 5 + 7) / 3)
    assert "h" in summary_lines(board.summary())[1]


@pytest.mark.broker
def test_replay_ends_with_a_summary_of_the_daemons_forecasts(
    broker: Mosquitto, models: dict[str, Path], tmp_path: Path, daemon_factory: Any,
    collector_factory: Any,
) -> None:
    data = tmp_path / "d.csv"
    data.write_text("date,temp\n" + "".join(
        f"2010/01/{1 + h // 24:02d} {h % 24:02d}:00,{50 + (h % 7)}\n" for h in range(60)))
    col = collector_factory(broker, ["statecast/status/sumtest"])
    d = daemon_factory("--model", str(models["step"]), "--broker", broker.url, "--subscribe",
                       "sum/+/temp", "--publish", "sumout/{stream}", "--client-id", "sumtest")
    assert col.wait_status("sumtest", "online", 0), d.log()[-2000:]
    out = tmp_path / "summary.json"
    result = subprocess.run(  # noqa: PLW1510
        [sys.executable, "-m", "edge.replay", "--data", str(data), "--broker", broker.url,
         "--topic", "sum/{stream}/temp", "--time-col", "date", "--quiet", "--forecasts",
         "sumout/{stream}", "--season", "24", "--summary-json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "MAE" in result.stdout and "cov 0.8" in result.stdout, result.stdout
    summary = json.loads(out.read_text())
    assert [r["h"] for r in summary["horizon"]] == [1, 2, 3]
    assert summary["horizon"][0]["n"] == 59 and "seasonal_mae" in summary["horizon"][0]
    assert d.stop() == 0
