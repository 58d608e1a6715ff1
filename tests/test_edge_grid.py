"""The grid: the trainer and the daemon put the same raw series on the same grid, and a stream
faster than the model's period is stepped once per period, with the same forecasts as the
trainer's pipeline; the timer closes a quiet period; payloads as devices send them."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from conftest import GRID_ORIGIN, Collector, Mosquitto, Sink

from edge.codec import Decoder, StreamRouter
from edge.config import EdgeConfig
from edge.grid import Regulariser
from edge.manifest import Grid, Manifest
from edge.model import StepModel
from edge.service import Processor, load_model
from trainer.data import load_dataset

T0 = datetime(2011, 1, 1)  # GRID_ORIGIN


def manifest(origin: float, agg: dict[str, str], features: tuple[str, ...],
             freq: str = "1h", max_gap: int = 3) -> Manifest:
    return Manifest(kind="step", features=features, targets=features[:1], horizon=1,
                    task="regress", mode="stateful", model_id="m", statecast_version="0",
                    created="", output_shape=(1, 1), freq=freq, max_gap=max_gap,
                    grid=Grid(origin=origin, aggregation=agg))


def irregular(seed: int, hours: int = 40, per_hour: int = 6,
              missing: tuple[range, ...] = (range(10, 12), range(18, 26))) -> pd.DataFrame:
    """Jittered observations, `per_hour` an hour, some exactly on the hour; the hours in
    `missing` have none (by default a short gap of 2 periods and a long one of 8)."""
    rng = np.random.default_rng(seed)
    offsets = [0]
    for hour in range(hours):
        if any(hour in r for r in missing):
            continue
        for j in range(per_hour):
            step = 3600 // per_hour
            offsets.append(hour * 3600 + j * step + int(rng.integers(1, step - 1)))
        if hour % 5 == 4:
            offsets.append((hour + 1) * 3600)  # exactly on the grid: closes its bin at once
    offsets = sorted(set(offsets))
    t = np.array(offsets, float)
    return pd.DataFrame({
        "date": [T0 + timedelta(seconds=s) for s in offsets],
        "temp": np.round(20 + 5 * np.sin(t / 20000) + rng.normal(0, 0.5, len(t)), 3),
        "rain": np.round(rng.exponential(1.0, len(t)), 3),
    })


def epochs(times: np.ndarray) -> list[float]:
    return [float(t) for t in pd.DatetimeIndex(times).as_unit("ns").asi8 / 1e9]


def edge_steps(reg: Regulariser, df: pd.DataFrame, cols: list[str]
               ) -> tuple[list[float], np.ndarray, list[int]]:
    """The steps `edge.grid` makes of the rows (the last period closed as the timer would):
    times, values, and the indexes of the steps that follow a long gap."""
    g = reg.template()
    times: list[float] = []
    values: list[np.ndarray] = []
    starts: list[int] = []
    closed: list[Any] = []
    for ts, row in zip(df["date"], df[cols].to_numpy(np.float64), strict=True):
        t = ts.replace(tzinfo=timezone.utc).timestamp()
        reg.check(g, t)
        closed += reg.add_one(g, t, row, arrival=0.0)
    if reg.due(g, float("inf")):  # a period is open
        closed.append(reg.close_one(g))
    for c in closed:
        if c.gap:
            starts.append(len(times))
        for s in c.steps:
            times.append(s.t)
            values.append(s.values)
    return times, np.array(values), starts


@pytest.mark.parametrize("agg", [
    {"temp": "mean", "rain": "mean"},
    {"temp": "sum", "rain": "sum"},
    {"temp": "max", "rain": "sum"},
    {"temp": "last", "rain": "min"},
])
def test_trainer_and_edge_put_a_raw_series_on_the_same_grid(
        tmp_path: Path, agg: dict[str, str]) -> None:
    df = irregular(3)
    path = tmp_path / "raw.csv"
    df.to_csv(path, index=False)
    ds = load_dataset(path, ["temp"], features=["temp", "rain"], time_col="date", freq="1h",
                      max_gap=3, agg=agg)
    assert ds.origin == GRID_ORIGIN and ds.agg == agg
    assert len(ds.segments) == 2 and ds.interpolated == 2  # the short gap filled, the long split
    want_t = [t for s in ds.segments for t in epochs(s.times)]
    want_x = np.concatenate([s.x for s in ds.segments])
    starts = [len(ds.segments[0].x)]

    reg = Regulariser(manifest(ds.origin, agg, ("temp", "rain")))
    times, values, gaps = edge_steps(reg, df, ["temp", "rain"])
    assert times == want_t
    np.testing.assert_allclose(values, want_x, atol=1e-6, rtol=0)
    assert gaps == starts


def test_a_monthly_grid_places_observations_in_calendar_months(tmp_path: Path) -> None:
    days = [0, 10, 31, 45, 59, 60, 100, 121]  # Jan 1, Jan 11, Feb 1, Feb 15, Mar 1, Mar 2, ...
    df = pd.DataFrame({"date": [T0 + timedelta(days=d) for d in days],
                       "temp": [float(d) for d in days]})
    df.to_csv(tmp_path / "m.csv", index=False)
    ds = load_dataset(tmp_path / "m.csv", ["temp"], time_col="date", freq="MS", max_gap=3)
    reg = Regulariser(manifest(ds.origin or 0.0, {}, ("temp",), freq="MS"))
    times, values, _ = edge_steps(reg, df, ["temp"])
    seg = ds.segments[0]
    assert times == epochs(seg.times)
    np.testing.assert_allclose(values, seg.x, atol=1e-9)


# -- the daemon's processor, without a broker ----------------------------------------------------


def make(model: Path, clock: list[float] | None = None, **kw: Any) -> tuple[Processor, Sink]:
    cfg = EdgeConfig(model=str(model), subscribe=("sensors/+/temp",), client_id="t", **kw)
    m, freq = load_model(cfg)
    sink = Sink()
    now = clock if clock is not None else [0.0]
    return Processor(cfg, m, freq, sink, clock=lambda: now[0]), sink


def msg(ts: datetime | str, temp: float) -> bytes:
    return json.dumps({"ts": ts if isinstance(ts, str) else ts.isoformat(),
                       "temp": temp}).encode()


def ten_second_sensor(hours: int, skip: range = range(0)) -> pd.DataFrame:
    """One reading every 10 s, starting at the grid's origin, none in the hours of `skip`."""
    rows = [(T0 + timedelta(seconds=10 * i), round(20 + 5 * np.sin(i / 900) + 0.01 * (i % 7), 3))
            for i in range(hours * 360) if (10 * i) // 3600 not in skip]
    return pd.DataFrame(rows, columns=["date", "temp"])


def trainer_forecasts(model: Path, df: pd.DataFrame, tmp_path: Path) -> dict[str, list[float]]:
    """Period (ISO) -> the forecast of the model stepped over the trainer's regularised series
    (the last period, which no later observation closes, left out)."""
    df.to_csv(tmp_path / "raw.csv", index=False)
    ds = load_dataset(tmp_path / "raw.csv", ["temp"], time_col="date", freq="1h", max_gap=3)
    assert len(ds.segments) == 1
    seg = ds.segments[0]
    ys, _ = StepModel(model).run_sequence(seg.x.astype(np.float32))
    periods = [pd.Timestamp(t).isoformat() for t in seg.times]
    return dict(zip(periods[:-1], ys[:-1].tolist(), strict=True))


def test_a_fast_sensor_is_stepped_once_per_period_like_the_trainer(
        models: dict[str, Path], tmp_path: Path) -> None:
    df = ten_second_sensor(6, skip=range(3, 5))  # a 2-hour gap, within max_gap
    want = trainer_forecasts(models["grid"], df, tmp_path)
    proc, sink = make(models["grid"], publish_fills="all")
    for ts, v in zip(df["date"], df["temp"], strict=True):
        proc.handle("sensors/a/temp", msg(ts, v))
    got = sink.on("forecasts/a")
    assert [d["period"] for d in got] == list(want)  # one forecast per period, fills included
    np.testing.assert_allclose([d["forecast"] for d in got], list(want.values()), atol=1e-4)
    first = got[0]
    assert first["at"] == [(T0 + timedelta(hours=k)).isoformat() for k in (1, 2, 3)]
    assert first["ts"] == T0.isoformat()  # on the grid: its period closes at once
    assert got[1]["period"] == got[1]["ts"] == "2011-01-01T01:00:00"
    assert proc.store.streams["a"].count == len(want)
    assert not sink.on("statecast/errors/")


def test_only_the_latest_period_is_published_by_default_and_on_grid_sensors_step_at_once(
        models: dict[str, Path]) -> None:
    proc, sink = make(models["grid"])
    assert proc.handle("sensors/a/temp", msg(T0, 20.0))  # on the grid: its own bin, at once
    assert not proc.handle("sensors/a/temp", msg(T0 + timedelta(minutes=30), 21.0))
    assert proc.handle("sensors/a/temp", msg(T0 + timedelta(hours=1), 23.0))  # closes 01:00
    # 02:00 and 03:00 missing: filled and stepped, but only 04:00 is published
    assert proc.handle("sensors/a/temp", msg(T0 + timedelta(hours=4), 30.0))
    got = sink.on("forecasts/a")
    assert [d["period"] for d in got] == ["2011-01-01T00:00:00", "2011-01-01T01:00:00",
                                          "2011-01-01T04:00:00"]
    assert proc.store.streams["a"].count == 5
    want, _ = StepModel(models["grid"]).run_sequence(
        np.array([[20.0], [22.0], [24.666667], [27.333333], [30.0]], np.float32))
    np.testing.assert_allclose(got[-1]["forecast"], want[-1], atol=1e-4)
    # a long gap (5 missing periods > max_gap 3) resets the state and is reported
    assert proc.handle("sensors/a/temp", msg(T0 + timedelta(hours=10), 40.0))
    errors = sink.on("statecast/errors/")
    assert [e["reason"] for e in errors] == ["gap"]
    assert proc.store.streams["a"].count == 1


def test_the_timer_closes_a_quiet_period_after_its_end_and_its_last_arrival(
        models: dict[str, Path]) -> None:
    end = (T0 + timedelta(hours=1)).replace(tzinfo=timezone.utc).timestamp()
    clock = [end - 600]  # a live sensor: its clock agrees with ours
    proc, sink = make(models["grid"], clock=clock, grace=5.0)
    assert not proc.handle("sensors/a/temp", msg(T0 + timedelta(minutes=50), 20.0))
    assert proc.tick(end - 1) == 0 and proc.tick(end + 4.9) == 0
    assert proc.tick(end + 5) == 1
    (fc,) = sink.on("forecasts/a")
    assert fc["period"] == "2011-01-01T01:00:00"
    # a reading for the closed period arrives late: refused, nothing changes
    proc.handle("sensors/a/temp", msg(T0 + timedelta(minutes=55), 20.0))
    assert [e["reason"] for e in sink.on("statecast/errors/")] == ["late"]
    # a replay of old data: the period's end is long past, the last arrival counts
    clock[0] = end + 10_000
    assert not proc.handle("sensors/a/temp", msg(T0 + timedelta(minutes=70), 21.0))
    assert proc.tick(end + 10_004) == 0
    assert proc.tick(end + 10_005) == 1
    assert proc.store.streams["a"].count == 2


def test_a_partial_period_survives_a_checkpoint_and_a_reload(
        models: dict[str, Path], tmp_path: Path) -> None:
    df = ten_second_sensor(3)
    proc, sink = make(models["grid"])
    half = len(df) // 2 + 7  # mid-period
    for ts, v in zip(df["date"][:half], df["temp"][:half], strict=True):
        proc.handle("sensors/a/temp", msg(ts, v))
    proc.store.commit(tmp_path)
    again, sink2 = make(models["grid"])
    assert again.store.load(tmp_path) == 1
    for ts, v in zip(df["date"][half:], df["temp"][half:], strict=True):
        again.handle("sensors/a/temp", msg(ts, v))
        proc.handle("sensors/a/temp", msg(ts, v))
    assert sink2.on("forecasts/a") == sink.on("forecasts/a")[-len(sink2.on("forecasts/a")):]
    # a reload to a model on the same grid keeps the open period
    other, _ = make(models["grid-dynamic"])
    moved = Processor(other.config, other.runner.model, None, Sink(), store=again.store)
    assert moved.store is again.store
    name = moved.grid.name if moved.grid else ""
    np.testing.assert_array_equal(moved.store.streams["a"].extra[name],
                                  proc.store.streams["a"].extra[name])


# -- payloads as devices send them -----------------------------------------------------------


def test_payloads_of_common_firmware_decode() -> None:
    now = datetime(2024, 1, 1, 12, 0, tzinfo=timezone.utc)
    # zigbee2mqtt: no timestamp, extra fields
    z2m = Decoder(("temp", "hum"), {"temp": "temperature", "hum": "humidity"}, arrival=True,
                  now=lambda: now)
    obs = z2m.decode(b'{"temperature":21.5,"humidity":40,"linkquality":100}')
    assert obs.values.tolist() == [21.5, 40.0] and obs.t == now.timestamp()
    with pytest.raises(Exception, match="timestamp"):
        Decoder(("temp", "hum"), {"temp": "temperature", "hum": "humidity"}).decode(
            b'{"temperature":21.5,"humidity":40}')
    # Tasmota: its own time key, the reading nested under the sensor's name
    tasmota = Decoder(("temp",), {"temp": "DS18B20.Temperature"}, ts_field="Time")
    obs = tasmota.decode(b'{"Time":"2024-01-01T10:00:00","DS18B20":{"Id":"01",'
                         b'"Temperature":21.5},"TempUnit":"C"}')
    assert obs.values.tolist() == [21.5] and obs.ts == datetime(2024, 1, 1, 10)
    with pytest.raises(Exception, match=r"DS18B20\.Temperature"):
        tasmota.decode(b'{"Time":"2024-01-01T10:00:00","DS18B20":{"Id":"01"}}')
    # the same through field_map["ts"]
    assert Decoder(("temp",), {"temp": "DS18B20.Temperature", "ts": "Time"}).decode(
        b'{"Time":"2024-01-01T10:00:00","DS18B20":{"Temperature":1}}').values.tolist() == [1.0]
    # ESPHome: a bare number on <node>/sensor/<name>/state
    router = StreamRouter(["+/sensor/temperature/state"])
    assert router.stream("living-room/sensor/temperature/state") == "living-room"
    obs = Decoder(("temp",), now=lambda: now).decode(b"21.5")
    assert obs.values.tolist() == [21.5] and obs.t == now.timestamp()
    # Shelly Gen2 (Plus H&T): {"id":0,"tC":...,"tF":...} on <device>/status/temperature:0
    shelly = Decoder(("temp",), {"temp": "tC"}, arrival=True, now=lambda: now)
    assert shelly.decode(b'{"id":0,"tC":21.5,"tF":70.7}').values.tolist() == [21.5]
    router = StreamRouter(["+/status/temperature:0"])
    assert router.stream("shellyplusht-a8032ab1/status/temperature:0") == "shellyplusht-a8032ab1"


def test_settings_for_payloads_are_validated() -> None:
    with pytest.raises(Exception, match="ts must be"):
        EdgeConfig(model="m", subscribe=("a/+",), ts="now")
    with pytest.raises(Exception, match="publish_fills"):
        EdgeConfig(model="m", subscribe=("a/+",), publish_fills="some")
    cfg = EdgeConfig.build({"model": "m", "subscribe": "a/+", "ts": "arrival", "grace": 2,
                            "ts_field": "Time", "field_map": {"temp": "DS18B20.Temperature"}})
    assert cfg.grace == 2.0 and cfg.ts == "arrival"


# -- over a real mosquitto ---------------------------------------------------------------------


def publish_all(broker: Mosquitto, items: list[tuple[str, bytes]]) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    pub = mqtt.Client(CallbackAPIVersion.VERSION2)
    pub.max_inflight_messages_set(100)
    pub.connect(broker.host, broker.port)
    pub.loop_start()
    infos = [pub.publish(topic, payload, qos=1) for topic, payload in items]
    for info in infos:
        info.wait_for_publish(30)
    pub.disconnect()
    pub.loop_stop()


def start(daemon_factory: Any, broker: Mosquitto, col: Collector, cid: str, model: Path,
          *extra: str) -> Any:
    mark = col.mark()
    d = daemon_factory("--model", str(model), "--broker", broker.url, "--subscribe",
                       f"{cid}/+/temp", "--publish", f"{cid}-out/{{stream}}", "--errors",
                       f"{cid}-err/{{stream}}", "--client-id", cid, *extra)
    assert col.wait_status(cid, "online", mark, timeout=30), d.log()[-3000:]
    return d


@pytest.mark.broker
def test_a_ten_second_sensor_into_an_hourly_model_over_mqtt(
        broker: Mosquitto, grid_model: Path, models: dict[str, Path], tmp_path: Path,
        daemon_factory: Any, collector_factory: Any) -> None:
    """Two streams at one reading per 10 s, with a 2-hour gap in one: exactly the forecasts of
    the model over the trainer's regularised series, one per period, in both serving modes."""
    cid = f"g{tmp_path.name[-6:]}".replace("_", "")
    a = ten_second_sensor(5, skip=range(2, 4))
    b = ten_second_sensor(5)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    want = {s: trainer_forecasts(models["grid"], df, tmp_path / s)
            for s, df in (("a", a), ("b", b))}
    col = collector_factory(broker, [f"{cid}-out/#", f"{cid}-err/#", f"statecast/status/{cid}"])
    d = start(daemon_factory, broker, col, cid, grid_model)
    items = []
    for i in range(max(len(a), len(b))):
        for s, df in (("a", a), ("b", b)):
            if i < len(df):
                items.append((f"{cid}/{s}/temp", msg(df["date"].iloc[i], df["temp"].iloc[i])))
    publish_all(broker, items)
    # stream a has no reading from 02:00 to 04:00: period 03:00 is filled (and not published)
    n = len(want["b"]) + len(want["a"]) - 1
    got = col.wait_for(f"{cid}-out/", n, timeout=60)
    assert d.stop() == 0
    assert len(got) == n, d.log()[-2000:]
    for s in ("a", "b"):
        mine = {p["period"]: p["forecast"] for p in got if p["stream"] == s}
        expected = want[s]
        if s == "a":
            expected = {k: v for k, v in expected.items() if k != "2011-01-01T03:00:00"}
        assert list(mine) == list(expected)
        np.testing.assert_allclose(list(mine.values()), list(expected.values()), atol=1e-4)
    assert not col.json(f"{cid}-err/")


@pytest.mark.broker
def test_the_daemon_closes_a_quiet_period_by_timer(
        broker: Mosquitto, models: dict[str, Path], tmp_path: Path, daemon_factory: Any,
        collector_factory: Any) -> None:
    cid = f"t{tmp_path.name[-6:]}".replace("_", "")
    col = collector_factory(broker, [f"{cid}-out/#", f"statecast/status/{cid}"])
    d = start(daemon_factory, broker, col, cid, models["grid"], "--grace", "0.5")
    publish_all(broker, [(f"{cid}/a/temp", msg(T0 + timedelta(minutes=m), 20.0 + m))
                         for m in (10, 20, 30)])
    (fc,) = col.wait_for(f"{cid}-out/", 1, timeout=10)
    assert d.stop() == 0
    assert fc["period"] == "2011-01-01T01:00:00"
    assert fc["ts"] == (T0 + timedelta(minutes=30)).replace(tzinfo=timezone.utc).timestamp()
    want, _ = StepModel(models["grid"]).run_sequence(np.array([[40.0]], np.float32))
    np.testing.assert_allclose(fc["forecast"], want[0], atol=1e-4)


@pytest.mark.broker
def test_zigbee2mqtt_and_tasmota_payloads_over_mqtt(
        broker: Mosquitto, models: dict[str, Path], tmp_path: Path, daemon_factory: Any,
        collector_factory: Any) -> None:
    cid = f"p{tmp_path.name[-6:]}".replace("_", "")
    col = collector_factory(broker, [f"{cid}-out/#", f"{cid}-err/#", f"statecast/status/{cid}",
                                     f"statecast/status/{cid}t"])
    z2m = tmp_path / "z2m.toml"
    z2m.write_text('ts = "arrival"\n[field_map]\ntemp = "temperature"\nhum = "humidity"\n')
    mark = col.mark()
    d = daemon_factory("--model", str(models["multi"]), "--broker", broker.url, "--subscribe",
                       f"{cid}/z2m/+", "--publish", f"{cid}-out/{{stream}}", "--errors",
                       f"{cid}-err/{{stream}}", "--client-id", cid, "--config", str(z2m))
    assert col.wait_status(cid, "online", mark, timeout=30), d.log()[-3000:]
    publish_all(broker, [(f"{cid}/z2m/bedroom",
                          b'{"temperature":21.5,"humidity":40,"linkquality":100}')])
    (fc,) = col.wait_for(f"{cid}-out/", 1, timeout=10)
    assert d.stop() == 0
    assert fc["stream"] == "bedroom" and len(fc["forecast"]) == 3
    want, _ = StepModel(models["multi"]).run_sequence(np.array([[21.5, 40]], np.float32))
    np.testing.assert_allclose(fc["forecast"], want[0], atol=1e-4)

    tas = tmp_path / "tasmota.toml"
    tas.write_text('ts_field = "Time"\n[field_map]\ntemp = "DS18B20.Temperature"\n')
    mark = col.mark()
    d = daemon_factory("--model", str(models["grid"]), "--broker", broker.url, "--subscribe",
                       f"tele/{cid}/+/SENSOR", "--publish", f"{cid}-out/{{stream}}",
                       "--errors", f"{cid}-err/{{stream}}", "--client-id", cid + "t",
                       "--config", str(tas))
    assert col.wait_status(cid + "t", "online", mark, timeout=30), d.log()[-3000:]
    since = col.mark()
    publish_all(broker, [(f"tele/{cid}/kitchen/SENSOR",
                          b'{"Time":"2011-01-01T10:00:00","DS18B20":{"Id":"01",'
                          b'"Temperature":21.5},"TempUnit":"C"}')])
    (fc,) = col.wait_for(f"{cid}-out/", 1, timeout=10, since=since)
    assert d.stop() == 0
    assert fc["stream"] == "kitchen" and fc["period"] == "2011-01-01T10:00:00"
    assert fc["ts"] == "2011-01-01T10:00:00"
    assert not col.json(f"{cid}-err/")


def test_evicted_streams_keep_their_open_period(models: dict[str, Path], tmp_path: Path) -> None:
    """Two 10 s sensors, at most one stream in memory: each is spilled (open period and all)
    and read back at every reading, and the forecasts equal a run that keeps both."""
    a, b = ten_second_sensor(3), ten_second_sensor(3, skip=range(1, 2))
    evicting, sink = make(models["grid"], max_resident=1, state_dir=str(tmp_path))
    assert evicting.store.load(tmp_path) == 0  # the store writes its spill files here
    keeping, sink2 = make(models["grid"])
    for i in range(len(a)):
        for s, df in (("a", a), ("b", b)):
            if i < len(df):
                body = msg(df["date"].iloc[i], df["temp"].iloc[i])
                evicting.handle(f"sensors/{s}/temp", body)
                keeping.handle(f"sensors/{s}/temp", body)
                evicting.store.evict()
                evicting.store.commit(tmp_path)
    assert evicting.store.restored > 100
    assert sink.on("forecasts/") == sink2.on("forecasts/") and len(sink.on("forecasts/")) == 6


def test_a_window_graph_on_a_grid_sees_one_row_per_period(tmp_path: Path) -> None:
    """A window graph fed a 10 s sensor forecasts like the same graph (without a grid) fed the
    trainer's regularised series one row per period."""
    from edge_models import build_model

    gridded = build_model(tmp_path / "w.onnx", kind="window", lookback=4, model_id="w",
                          grid=Grid(origin=GRID_ORIGIN))
    plain = build_model(tmp_path / "p.onnx", kind="window", lookback=4, model_id="w")
    df = ten_second_sensor(8, skip=range(4, 5))
    df.to_csv(tmp_path / "raw.csv", index=False)
    seg = load_dataset(tmp_path / "raw.csv", ["temp"], time_col="date", freq="1h").segments[0]
    proc, sink = make(gridded, publish_fills="all")
    for ts, v in zip(df["date"], df["temp"], strict=True):
        proc.handle("sensors/a/temp", msg(ts, v))
    ref, sink2 = make(plain)
    for t, v in zip(seg.times[:-1], seg.x[:-1, 0], strict=True):  # the last period stays open
        ref.handle("sensors/a/temp", msg(pd.Timestamp(t).isoformat(), float(v)))
    got, want = sink.on("forecasts/a"), sink2.on("forecasts/a")
    assert len(got) == len(seg.times) - 1 - 3  # warming for the first 3 periods
    assert [d["period"] for d in got] == [d["ts"] for d in want]
    np.testing.assert_allclose([d["forecast"] for d in got], [d["forecast"] for d in want],
                               atol=1e-4)


def test_a_monthly_model_forecasts_calendar_months(tmp_path: Path) -> None:
    from edge_models import build_model

    model = build_model(tmp_path / "m.onnx", freq="MS", model_id="monthly",
                        grid=Grid(origin=GRID_ORIGIN))
    proc, sink = make(model)
    assert not proc.handle("sensors/a/temp", msg(datetime(2011, 1, 15), 10.0))
    assert proc.handle("sensors/a/temp", msg(datetime(2011, 2, 1), 20.0))  # closes (Jan 1, Feb 1]
    (fc,) = sink.on("forecasts/a")
    assert fc["period"] == "2011-02-01T00:00:00"
    assert fc["at"] == ["2011-03-01T00:00:00", "2011-04-01T00:00:00", "2011-05-01T00:00:00"]
    want, _ = StepModel(model).run_sequence(np.array([[15.0]], np.float32))
    np.testing.assert_allclose(fc["forecast"], want[0], atol=1e-4)
