"""Recording: the Recorder's files (no broker), `statecast-record` against a real mosquitto
(bad input reported, a persistent session, SIGKILL), and the daemon's `--record`."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from conftest import ROOT, Collector, Mosquitto
from paho.mqtt.enums import CallbackAPIVersion

from edge.codec import Decoder
from edge.errors import EdgeError
from edge.record import Recorder


def rows(path: Path) -> list[list[str]]:
    with path.open(newline="") as fh:
        return list(csv.reader(fh))


def obs(ts: str, *values: float, features: tuple[str, ...] = ("temp",)) -> Any:
    return Decoder(features).decode(json.dumps({"ts": ts, **dict(zip(features, values,
                                                                     strict=True))}).encode())


def test_rows_go_to_the_file_of_their_utc_day(tmp_path: Path) -> None:
    rec = Recorder(tmp_path, ("temp", "hum"))
    f = ("temp", "hum")
    rec.append_one("kitchen", obs("2026-03-01T23:59:59", 20.5, 40.0, features=f))
    rec.append_one("hall, north", obs("2026-03-02T00:30:00+02:00", 21.25, 41.0, features=f))
    rec.append_one("kitchen", obs("2026-03-02T00:00:00.25", 19.0, 42.0, features=f))
    rec.append_one("late", obs("2026-03-01T12:00:00", 1.0, 2.0, features=f))  # a day behind
    rec.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["2026-03-01.csv", "2026-03-02.csv"]
    assert rows(tmp_path / "2026-03-01.csv") == [
        ["ts", "stream", "temp", "hum"],
        ["2026-03-01T23:59:59.000", "kitchen", "20.5", "40.0"],
        ["2026-03-01T22:30:00.000", "hall, north", "21.25", "41.0"],  # in UTC
        ["2026-03-01T12:00:00.000", "late", "1.0", "2.0"],
    ]
    assert rows(tmp_path / "2026-03-02.csv") == [
        ["ts", "stream", "temp", "hum"], ["2026-03-02T00:00:00.250", "kitchen", "19.0", "42.0"]]


def test_a_restart_appends_after_cutting_a_torn_line(tmp_path: Path) -> None:
    rec = Recorder(tmp_path, ("temp",))
    rec.append_one("a", obs("2026-03-01T01:00:00", 1.0))
    rec.close()
    path = tmp_path / "2026-03-01.csv"
    with path.open("a") as fh:
        fh.write("2026-03-01T02:00:00.000,a,2")  # a write torn by kill -9: no newline
    rec = Recorder(tmp_path, ("temp",))
    rec.append_one("a", obs("2026-03-01T03:00:00", 3.0))
    rec.close()
    assert rows(path) == [["ts", "stream", "temp"], ["2026-03-01T01:00:00.000", "a", "1.0"],
                          ["2026-03-01T03:00:00.000", "a", "3.0"]]
    with pytest.raises(EdgeError, match="record these features into another directory"):
        other = Recorder(tmp_path, ("hum",))
        other.append_one("a", obs("2026-03-01T04:00:00", 4.0))


def test_last_times_are_read_back_from_the_newest_rows(tmp_path: Path) -> None:
    rec = Recorder(tmp_path, ("temp",))
    rec.append_one("a", obs("2026-03-01T01:00:00", 1.0))
    rec.append_one("b", obs("2026-03-01T02:00:00", 2.0))
    rec.append_one("a", obs("2026-03-02T03:00:00", 3.0))
    rec.close()
    with (tmp_path / "2026-03-02.csv").open("a") as fh:
        fh.write("2026-03-02T09:00:00.000,a,")  # torn: not counted
    t = Recorder(tmp_path, ("temp",)).last_times()
    assert t == {"a": obs("2026-03-02T03:00:00", 0).t, "b": obs("2026-03-01T02:00:00", 0).t}
    # only whole rows within the last 45 bytes of each file count
    assert Recorder(tmp_path, ("temp",)).last_times(tail_bytes=45) == {
        "b": obs("2026-03-01T02:00:00", 0).t}
    assert Recorder(tmp_path, ("temp",)).last_times(tail_bytes=60) == t  # from a line start


def test_sync_is_at_most_once_a_second_unless_forced(tmp_path: Path) -> None:
    rec = Recorder(tmp_path, ("temp",), interval=1.0)
    rec.append_one("a", obs("2026-03-01T01:00:00", 1.0))
    assert rec.sync(force=True)
    rec.append_one("a", obs("2026-03-01T02:00:00", 2.0))
    assert not rec.sync()  # within the second
    assert rec.sync(force=True)
    assert not rec.sync(force=True)  # nothing new
    rec.close()


# ---------------------------------------------------------------------------------------------
# statecast-record against a real broker

class Record:
    def __init__(self, args: list[str], log_path: Path) -> None:
        self.log_path = log_path
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "edge.record", *args],
                                         stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(15)


@pytest.fixture
def recorders(tmp_path: Path) -> Any:
    made: list[Record] = []

    def make(*args: str) -> Record:
        r = Record(list(args), tmp_path / f"record-{len(made)}.log")
        made.append(r)
        return r

    yield made, make
    for r in made:
        if r.proc.poll() is None:
            r.proc.kill()
            r.proc.wait(5)


def publisher(broker: Mosquitto) -> mqtt.Client:
    c = mqtt.Client(CallbackAPIVersion.VERSION2)
    c.connect(broker.host, broker.port)
    c.loop_start()
    return c


def data_rows(directory: Path) -> list[list[str]]:
    out: list[list[str]] = []
    for path in sorted(directory.glob("*.csv")):
        got = rows(path)
        assert got[0] == ["ts", "stream", "temp"]
        assert all(r != got[0] for r in got[1:])  # the header once
        assert all(len(r) == 3 for r in got[1:])
        out += got[1:]
    return out


def wait_rows(directory: Path, n: int, timeout: float = 20.0) -> list[list[str]]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            got = data_rows(directory)
        except (FileNotFoundError, IndexError):
            got = []
        if len(got) >= n or time.monotonic() > deadline:
            return got
        time.sleep(0.05)


def start(make: Any, col: Collector, cid: str, *args: str) -> Record:
    mark = col.mark()
    r = make(*args)
    assert col.wait_status(cid, "online", mark), r.log()
    return r


def stamp(i: int) -> str:
    return (datetime(2026, 3, 1, tzinfo=timezone.utc) + timedelta(minutes=i)).isoformat()


@pytest.mark.broker
def test_record_accepts_what_the_daemon_accepts_and_keeps_its_session(
    broker: Mosquitto, tmp_path: Path, recorders: Any, collector_factory: Any
) -> None:
    _, make = recorders
    cid = f"r{uuid.uuid4().hex[:8]}"
    out = tmp_path / "rec"
    col = collector_factory(broker, [f"{cid}-err/#", f"statecast/status/{cid}"])
    args = ["--broker", broker.url, "--subscribe", f"{cid}/+/temp", "--features", "temp",
            "--errors", f"{cid}-err/{{stream}}", "--client-id", cid, "--out", str(out)]
    r = start(make, col, cid, *args)
    pub = publisher(broker)
    for i in range(5):
        pub.publish(f"{cid}/kitchen/temp", json.dumps({"ts": stamp(i), "temp": 20 + i}),
                    qos=1)
    bad = [b"{", b'{"ts": "x", "temp": 1}', json.dumps({"ts": stamp(9), "hum": 1}).encode(),
           json.dumps({"ts": stamp(4), "temp": 1}).encode(),  # a duplicate
           json.dumps({"ts": stamp(2), "temp": 1}).encode()]
    for payload in bad:
        pub.publish(f"{cid}/kitchen/temp", payload, qos=1)
    got = wait_rows(out, 5)
    errors = col.wait_for(f"{cid}-err/kitchen", 5)
    assert [e["reason"] for e in errors] == ["malformed_json", "bad_ts", "missing_field",
                                             "duplicate", "out_of_order"]
    assert [row[1:] for row in got] == [["kitchen", f"{20 + i}.0"] for i in range(5)]
    assert r.stop() == 0
    assert "Dropped a message on" in r.log()
    assert "Traceback" not in r.log() and "Warning" not in r.log()
    # While it is down, the broker keeps what arrives for its session.
    for i in range(5, 10):
        info = pub.publish(f"{cid}/hall/temp", json.dumps({"ts": stamp(i), "temp": i}), qos=1)
        info.wait_for_publish(5)
    r = start(make, col, cid, *args)
    got = wait_rows(out, 10)
    assert [row[1] for row in got[5:]] == ["hall"] * 5
    assert r.stop() == 0
    pub.loop_stop()
    pub.disconnect()


@pytest.mark.broker
def test_sigkill_loses_nothing_acknowledged_and_a_restart_appends(
    broker: Mosquitto, tmp_path: Path, recorders: Any, collector_factory: Any
) -> None:
    """Published at QoS 1 at 200 per second; the recorder is SIGKILLed mid-stream. The file
    still parses, it held all but about the last second, and after a restart (same session)
    every observation is there exactly once, the header once."""
    _, make = recorders
    cid = f"r{uuid.uuid4().hex[:8]}"
    out = tmp_path / "rec"
    col = collector_factory(broker, [f"statecast/status/{cid}"])
    args = ["--broker", broker.url, "--subscribe", f"{cid}/+/temp", "--features", "temp",
            "--client-id", cid, "--out", str(out)]
    r = start(make, col, cid, *args)
    pub = publisher(broker)
    n, rate = 1200, 200.0
    t0 = time.monotonic()
    killed_at = None
    for i in range(n):
        pub.publish(f"{cid}/s{i % 3}/temp", json.dumps({"ts": stamp(i), "temp": i}), qos=1)
        if i == n // 2:
            r.proc.kill()
            r.proc.wait(5)
            killed_at = i
            before = data_rows(out)  # parses: whole rows only, or a torn last line
        time.sleep(max(0.0, t0 + (i + 1) / rate - time.monotonic()))
    assert killed_at is not None
    assert len(before) >= killed_at - rate * 1.5, (len(before), killed_at)
    r = start(make, col, cid, *args)
    got = wait_rows(out, n, timeout=30)
    time.sleep(0.5)
    got = data_rows(out)
    # every observation exactly once: rows written but not acknowledged before the kill came
    # again and were dropped as duplicates
    assert sorted(int(float(row[2])) for row in got) == list(range(n))
    assert r.stop() == 0
    pub.loop_stop()
    pub.disconnect()


@pytest.mark.broker
def test_daemon_records_what_it_accepts(
    broker: Mosquitto, models: dict[str, Path], tmp_path: Path, daemon_factory: Any,
    collector_factory: Any,
) -> None:
    cid = f"e{uuid.uuid4().hex[:8]}"
    out = tmp_path / "rec"
    col = collector_factory(broker, [f"{cid}-out/#", f"statecast/status/{cid}"])
    mark = col.mark()
    d = daemon_factory("--model", str(models["step"]), "--broker", broker.url, "--subscribe",
                       f"{cid}/+/temp", "--publish", f"{cid}-out/{{stream}}", "--client-id",
                       cid, "--record", str(out))
    assert col.wait_status(cid, "online", mark), d.log()
    pub = publisher(broker)
    for i in range(4):
        pub.publish(f"{cid}/a/temp", json.dumps({"ts": stamp(i), "temp": 40 + i}), qos=1)
    pub.publish(f"{cid}/a/temp", b"oops", qos=1)
    assert len(col.wait_for(f"{cid}-out/", 4)) == 4
    assert d.stop() == 0  # the record is synced at shutdown
    assert [row[1:] for row in data_rows(out)] == [["a", f"{40 + i}.0"] for i in range(4)]
    pub.loop_stop()
    pub.disconnect()


def test_record_cli_needs_features_and_keeps_off_the_daemons_session(
    models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from edge.record import build_parser, config_from_args, main

    base = ["--subscribe", "s/+/temp", "--out", str(tmp_path / "rec")]
    with pytest.raises(SystemExit) as exit_info:
        main(base)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == ("statecast-record: error: no features given; pass --features A,B or "
                   "--model FILE.onnx.")
    cfg, features = config_from_args(build_parser().parse_args([*base, "--model",
                                                                str(models["multi"])]))
    assert features == ("temp", "hum")
    assert cfg.client_id.startswith("statecast-record-")
    toml = tmp_path / "edge.toml"
    toml.write_text(f'model = "{models["step"]}"\nsubscribe = ["s/+/temp"]\n'
                    'client_id = "edge-1"\nqos = 1\n[field_map]\ntemp = "t"\n')
    cfg, features = config_from_args(build_parser().parse_args(
        ["--config", str(toml), "--out", str(tmp_path / "rec")]))
    assert (cfg.client_id, features, dict(cfg.field_map)) == ("edge-1-record", ("temp",),
                                                              {"temp": "t"})


@pytest.mark.broker
def test_record_at_qos_0_syncs_within_seconds(
    broker: Mosquitto, tmp_path: Path, recorders: Any, collector_factory: Any
) -> None:
    _, make = recorders
    cid = f"r{uuid.uuid4().hex[:8]}"
    out = tmp_path / "rec"
    col = collector_factory(broker, [f"statecast/status/{cid}"])
    r = start(make, col, cid, "--broker", broker.url, "--subscribe", f"{cid}/+/temp",
              "--features", "temp", "--client-id", cid, "--out", str(out), "--qos", "0")
    pub = publisher(broker)
    for i in range(3):
        pub.publish(f"{cid}/a/temp", json.dumps({"ts": stamp(i), "temp": i}), qos=0)
    # no shutdown: the rows reach the file by the periodic sync alone
    assert len(wait_rows(out, 3, timeout=5)) == 3
    r.proc.kill()
    r.proc.wait(5)
    assert len(data_rows(out)) == 3
    pub.loop_stop()
    pub.disconnect()


def test_record_reads_timestamps_like_the_daemon(tmp_path: Path) -> None:
    """`--ts-field` and `--ts arrival` reach the recorder's decoder: a Tasmota payload keeps its
    own time, a zigbee2mqtt payload (no time) is stamped on arrival; without them both are
    refused as the daemon refuses them."""
    from edge.codec import PayloadError
    from edge.record import RecordService, build_parser, config_from_args

    tasmota = b'{"Time": "2026-03-01T10:00:00", "DS18B20": {"Temperature": 21.5}}'
    zigbee = b'{"temperature": 21.5, "humidity": 40, "linkquality": 100}'
    base = ["--subscribe", "s/+/temp", "--features", "temp", "--out", str(tmp_path / "rec")]
    toml = tmp_path / "edge.toml"
    toml.write_text('[field_map]\ntemp = "DS18B20.Temperature"\n')
    cfg, features = config_from_args(build_parser().parse_args(
        [*base, "--config", str(toml), "--ts-field", "Time"]))
    obs = RecordService(cfg, features).decoder.decode(tasmota)
    assert obs.ts == datetime(2026, 3, 1, 10, 0) and obs.values.tolist() == [21.5]
    toml.write_text('[field_map]\ntemp = "temperature"\n')
    cfg, features = config_from_args(build_parser().parse_args(
        [*base, "--config", str(toml), "--ts", "arrival"]))
    before = datetime.now(timezone.utc)
    obs = RecordService(cfg, features).decoder.decode(zigbee)
    assert obs.ts >= before and obs.values.tolist() == [21.5]
    cfg, features = config_from_args(build_parser().parse_args([*base, "--config", str(toml)]))
    with pytest.raises(PayloadError, match="timestamp"):
        RecordService(cfg, features).decoder.decode(zigbee)
