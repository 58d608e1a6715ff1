"""A real seasonal-memory run (hist/seen state, time input) through the daemon: SIGKILL and
restart, eviction to disk and back, in both serving modes; forecasts equal one uninterrupted
stepping of the graph with the observations' times. A window graph's windows survive SIGKILL
too."""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from conftest import Mosquitto
from test_edge_reliability import (
    args,
    predictions_by_key,
    publisher,
    restarter,
    series,
    sigkill_while,
    wait_online,
)

from edge.model import StepModel
from edge.state import StateStore

pytestmark = [pytest.mark.broker, pytest.mark.slow]


@pytest.fixture(scope="module")
def seasonal_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny trained run with seasonal memory and a calendar, exported batch 1 and dynamic."""
    from export.api import export_model
    from trainer.config import TrainConfig
    from trainer.run import train

    d = tmp_path_factory.mktemp("seasonal-edge")
    t = np.arange(600)
    df = pd.DataFrame({
        "date": pd.date_range("2024-01-01", periods=600, freq="h").strftime("%Y-%m-%d %H:%M"),
        "temp": (50 + 10 * np.sin(2 * np.pi * t / 24)).round(3)})
    df.to_csv(d / "d.csv", index=False)
    train(TrainConfig(data=d / "d.csv", targets=["temp"], out=d / "run", time_col="date",
                      horizon=3, season=24, structure="seasonal", calendar=True, lookback=12,
                      layers=1, units=8, epochs=2, batch_size=8, quiet=True), log=lambda _: None)
    out = {b: d / f"seasonal-{b}.onnx" for b in ("1", "dynamic")}
    for b, path in out.items():
        m = export_model(d / "run", path, batch=b)
        assert m.time_input == "t" and m.warmup == 24
    return out


def epoch(ts: str) -> float:
    return datetime.fromisoformat(ts).replace(tzinfo=timezone.utc).timestamp()


def reference(model: Path, rows: list[tuple[str, float]]) -> tuple[np.ndarray, list[np.ndarray]]:
    """One uninterrupted stepping of the graph over `rows`, with their times."""
    xs = np.array([v for _, v in rows], np.float32).reshape(-1, 1)
    ts = np.array([epoch(t) for t, _ in rows])
    return StepModel(model).run_sequence(xs, ts=ts)


def finish(col: Any, cid: str, n: int, d: Any, pub: Any
           ) -> dict[tuple[str, str], list[list[float]]]:
    """Wait (up to a minute) for n distinct forecasts, stop the daemon and the publisher."""
    deadline = time.monotonic() + 60
    while len(predictions_by_key(col, f"{cid}-out/")) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    assert d.stop() == 0
    pub.disconnect()
    pub.loop_stop()
    return predictions_by_key(col, f"{cid}-out/")


@pytest.mark.parametrize("batch", ["1", "dynamic"])
def test_sigkill_keeps_the_seasonal_memory(
    broker: Mosquitto, seasonal_models: dict[str, Path], batch: str, tmp_path: Path,
    daemon_factory: Any, collector_factory: Any,
) -> None:
    """Killed with SIGKILL 6 times while 3 streams publish at QoS 1: every forecast and the final
    hist/seen/h/c states equal one uninterrupted run's."""
    model = seasonal_models[batch]
    cid = f"sk{uuid.uuid4().hex[:8]}"
    state = tmp_path / "state"
    streams = [f"s{i}" for i in range(3)]
    rows = {s: series(i, 400) for i, s in enumerate(streams)}
    col = collector_factory(broker, [f"{cid}-out/#", f"{cid}-err/#", f"statecast/status/{cid}"])
    argv = args(model, broker, cid, "--state-dir", str(state), "--qos", "1")
    mark = col.mark()
    d = daemon_factory(*argv)
    wait_online(col, cid, mark, d)
    pub = publisher(broker)

    def publish() -> None:
        for i in range(400):
            for s in streams:
                ts, v = rows[s][i]
                pub.publish(f"{cid}/{s}/temp", f'{{"ts": "{ts}", "temp": {v}}}', qos=1)
            time.sleep(0.004)

    d = sigkill_while(publish, d, restarter(daemon_factory, col, cid, argv), 6,
                      lambda: 0.25)
    n = 3 * 400
    got = finish(col, cid, n, d, pub)
    assert len(got) == n, d.log()[-3000:]
    sm = StepModel(model)
    store = StateStore(sm.manifest.model_id, sm.zero_state())
    assert store.load(state) == len(streams)
    for s in streams:
        want, final = reference(model, rows[s])
        mine = np.array([got[(s, ts)][0] for ts, _ in rows[s]])
        np.testing.assert_allclose(mine, want, atol=1e-5, rtol=0)
        names = [st.input for st in sm.manifest.state]
        for name, x, y in zip(names, store.streams[s].state, final, strict=True):
            np.testing.assert_allclose(x, y, atol=1e-6, rtol=0, err_msg=name)
        assert store.streams[s].state[names.index("seen")].item() == 1.0


@pytest.mark.parametrize("batch", ["1", "dynamic"])
def test_evicted_seasonal_streams_come_back_exactly(
    broker: Mosquitto, seasonal_models: dict[str, Path], batch: str, tmp_path: Path,
    daemon_factory: Any, collector_factory: Any,
) -> None:
    """With room for one resident stream, two streams evict each other to disk on every message;
    their seasonal memory comes back exactly."""
    model = seasonal_models[batch]
    cid = f"ev{uuid.uuid4().hex[:8]}"
    streams = ["a", "b"]
    rows = {s: series(i + 5, 80) for i, s in enumerate(streams)}
    col = collector_factory(broker, [f"{cid}-out/#", f"statecast/status/{cid}"])
    mark = col.mark()
    d = daemon_factory(*args(model, broker, cid, "--state-dir", str(tmp_path / "st"),
                             "--max-resident", "1", "--qos", "1"))
    wait_online(col, cid, mark, d)
    pub = publisher(broker)
    for i in range(80):
        for s in streams:
            ts, v = rows[s][i]
            pub.publish(f"{cid}/{s}/temp", f'{{"ts": "{ts}", "temp": {v}}}', qos=1)
    got = col.wait_for(f"{cid}-out/", 160, timeout=60)
    assert len(got) == 160, d.log()[-3000:]
    assert d.stop() == 0
    pub.disconnect()
    pub.loop_stop()
    by_key = predictions_by_key(col, f"{cid}-out/")
    for s in streams:
        want, _ = reference(model, rows[s])
        mine = np.array([by_key[(s, ts)][0] for ts, _ in rows[s]])
        np.testing.assert_allclose(mine, want, atol=1e-5, rtol=0)


def test_sigkill_keeps_window_graph_windows(
    broker: Mosquitto, models: dict[str, Path], tmp_path: Path, daemon_factory: Any,
    collector_factory: Any,
) -> None:
    """A window graph's per-stream windows survive SIGKILL like step states do: killed 4 times
    while 2 streams publish at QoS 1, every forecast equals the graph run on that window."""
    model = models["window"]
    lookback = StepModel(model).manifest.lookback
    assert lookback is not None
    cid = f"wk{uuid.uuid4().hex[:8]}"
    streams = ["w0", "w1"]
    rows = {s: series(i + 2, 300) for i, s in enumerate(streams)}
    col = collector_factory(broker, [f"{cid}-out/#", f"statecast/status/{cid}"])
    argv = args(model, broker, cid, "--state-dir", str(tmp_path / "state"), "--qos", "1")
    mark = col.mark()
    d = daemon_factory(*argv)
    wait_online(col, cid, mark, d)
    pub = publisher(broker)

    def publish() -> None:
        for i in range(300):
            for s in streams:
                ts, v = rows[s][i]
                pub.publish(f"{cid}/{s}/temp", f'{{"ts": "{ts}", "temp": {v}}}', qos=1)
            time.sleep(0.004)

    d = sigkill_while(publish, d, restarter(daemon_factory, col, cid, argv), 4,
                      lambda: 0.25)
    n = len(streams) * (300 - lookback + 1)  # a window graph forecasts once its window is full
    got = finish(col, cid, n, d, pub)
    assert len(got) == n, d.log()[-3000:]
    sm = StepModel(model)
    for s in streams:
        xs = np.array([v for _, v in rows[s]], np.float32).reshape(-1, 1)
        for i in range(lookback - 1, len(xs)):
            want = sm.step(xs[i - lookback + 1:i + 1], [])[0][0]
            mine = np.asarray(got[(s, rows[s][i][0])][0])
            np.testing.assert_allclose(mine, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("batch", ["1", "dynamic"])
def test_a_fast_sensor_steps_the_calendar_graph_at_period_times(
    seasonal_models: dict[str, Path], batch: str, tmp_path: Path,
) -> None:
    """A run's manifest carries the trainer's grid: six jittered readings an hour (a 2-hour gap
    among them) step the seasonal graph once per hour, with the period time as its time input,
    exactly as the graph stepped over the trainer's regularisation of the same readings."""
    import json

    from conftest import Sink

    from edge.config import EdgeConfig
    from edge.service import Processor, load_model
    from trainer.data import load_dataset

    model = seasonal_models[batch]
    assert StepModel(model).manifest.grid is not None
    rng = np.random.default_rng(5)
    t0 = pd.Timestamp("2024-03-01 00:00")
    offsets = [0] + [h * 3600 + j * 600 + int(rng.integers(1, 599))
                     for h in range(60) if h not in (30, 31) for j in range(6)]
    raw = pd.DataFrame({"date": [t0 + pd.Timedelta(seconds=s) for s in offsets],
                        "temp": np.round(50 + 10 * np.sin(np.array(offsets) / 13751), 3)})
    raw.to_csv(tmp_path / "raw.csv", index=False)
    seg = load_dataset(tmp_path / "raw.csv", ["temp"], time_col="date", freq="1h").segments[0]
    periods = pd.DatetimeIndex(seg.times)
    want, _ = StepModel(model).run_sequence(
        seg.x.astype(np.float32), ts=(periods.as_unit("ns").asi8 / 1e9))

    cfg = EdgeConfig(model=str(model), subscribe=("s/+/temp",), client_id="t",
                     publish_fills="all")
    m, freq = load_model(cfg)
    sink = Sink()
    proc = Processor(cfg, m, freq, sink)
    for ts, v in zip(raw["date"], raw["temp"], strict=True):
        proc.handle("s/a/temp", json.dumps({"ts": ts.isoformat(), "temp": v}).encode())
    got = sink.on("forecasts/a")
    assert [d["period"] for d in got] == [p.isoformat() for p in periods[:-1]]
    np.testing.assert_allclose([d["forecast"] for d in got], want[:-1], atol=1e-4, rtol=0)
