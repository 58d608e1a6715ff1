"""Self-scoring (edge/score.py): interval coverage on series with known noise, the baselines,
the drift alarm, and its state through restarts, reloads, eviction and a real SIGKILL."""

from __future__ import annotations

import json
import random
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import Mosquitto, Sink
from edge_models import build_model

from edge.config import EdgeConfig
from edge.manifest import Grid, Manifest
from edge.model import StepModel
from edge.score import EXTRA, Scorer, ScoreSettings
from edge.service import Processor, load_model
from edge.state import StateStore

T0 = datetime(2012, 1, 1)
Z = {0.8: 1.2816, 0.95: 1.9600}


def manifest(horizon: int = 3, conformal: dict[str, Any] | None = None,
             seasons: list[int] | None = None, warmup: int = 0) -> Manifest:
    return Manifest(
        kind="step", features=("v",), targets=("v",), horizon=horizon, task="regress",
        mode="stateful", model_id="m", statecast_version="0", created="",
        output_shape=(1, horizon), conformal=conformal or {}, warmup=warmup,
        structure={"seasons": seasons} if seasons else {},
    )


def gaussian_seed(horizon: int, sigma: float = 1.0) -> dict[str, Any]:
    levels = [0.5, 0.8, 0.95, 0.99]
    q = [0.6745 * sigma, Z[0.8] * sigma, Z[0.95] * sigma, 2.5758 * sigma]
    return {"points": 1000, "levels": levels, "abs_quantiles": [[q]] * horizon,
            "rmse": [[sigma]] * horizon, "mae": [[0.7979 * sigma]] * horizon}


def run(sc: Scorer, truth: np.ndarray, noise: np.ndarray, offset: np.ndarray | None = None
        ) -> list[Any]:
    """Streams [n, T] observed as truth + noise; the forecasts are the truth (+ offset at the
    origin): their errors are exactly the noise."""
    n, steps = noise.shape
    h = sc.horizon
    x = truth + noise
    ex = [sc.template.copy() for _ in range(n)]
    outs = []
    for t in range(steps - h):
        y = np.stack([truth[i, t + 1 : t + 1 + h] for i in range(n)])[:, :, None]
        if offset is not None:
            y = y + offset[t]
        outs.append(sc.step_many(ex, np.full(n, float(t)), x[:, t : t + 1], y))
    return [ex, outs]


@pytest.mark.parametrize("seeded", [True, False])
def test_intervals_cover_gaussian_noise_at_nominal(seeded: bool) -> None:
    """Gaussian noise of known sigma: the 80 % and 95 % intervals cover within 1.5 points per
    horizon step over 20,000 forecasts each; seeded, the width is the ideal 2·z·sigma within 4 %
    (the scorecaster's fast |error| costs ~3 % of width on noise of constant size); unseeded, the
    radii start at zero and learn."""
    h, n, steps = 3, 4, 5000
    rng = np.random.default_rng(1)
    truth = 20 + 5 * np.sin(np.arange(steps) * 2 * np.pi / 24)[None, :].repeat(n, 0)
    sc = Scorer(manifest(h, gaussian_seed(h) if seeded else None),
                ScoreSettings(lr=0.05))
    run(sc, truth, rng.normal(0, 1, (n, steps)))
    t = sc.totals
    cov = t.covered / t.scored
    width = t.width / t.scored
    for j, c in enumerate((0.8, 0.95)):
        np.testing.assert_allclose(cov[j], c, atol=0.015 if seeded else 0.02)
        if seeded:
            np.testing.assert_allclose(width[j], 2 * Z[c], rtol=0.04)
    np.testing.assert_allclose(np.sqrt(t.sq_err / t.scored), 1.0, rtol=0.03)


def test_intervals_widen_after_the_noise_triples() -> None:
    """Coverage recovers after the noise level triples (the static interval would cover ~33 %
    for 80 %): over the last 1,500 steps it is within 4 points."""
    h, steps = 2, 4000
    rng = np.random.default_rng(2)
    sigma = np.where(np.arange(steps) < 1000, 1.0, 3.0)
    truth = np.zeros((1, steps))
    sc = Scorer(manifest(h, gaussian_seed(h)), ScoreSettings(lr=0.1))
    ex, outs = run(sc, truth, rng.normal(0, 1, (1, steps)) * sigma)
    radii = np.array([o.radii[0, 0, 0, 0] for o in outs])  # h=1, 80 %
    late = np.abs(rng.normal(0, 1, 200000) * 3)
    assert abs(radii[-1500:].mean() - np.quantile(late, 0.8)) < 0.6
    summary = sc.summary(ex[0])
    assert abs(summary["coverage"]["0.8"][0] - 0.8) < 0.1


def test_the_scorecaster_covers_a_run_of_large_errors_and_lets_go_after_it() -> None:
    """Forecasts off by 4 sigma for 48 periods, then right again: with the scorecaster (half-life
    2 periods, the default) the 80 % interval covers most of the run and is
    back near its old width 48 periods later; plain quantile tracking (scorecast 0) misses most
    of it and is still wide then, paying back its misses."""
    h, steps, t0, span = 1, 1300, 1000, 48
    rng = np.random.default_rng(6)
    truth = np.zeros((1, steps))
    offset = np.where((np.arange(steps) >= t0) & (np.arange(steps) < t0 + span), 4.0, 0.0)
    noise = rng.normal(0, 1, (1, steps))
    radii, covered = {}, {}
    for name, hl in (("scorecast", ScoreSettings.scorecast), ("plain", 0.0)):
        sc = Scorer(manifest(h, gaussian_seed(h)), ScoreSettings(scorecast=hl))
        _, outs = run(sc, truth, noise, offset)
        r = np.array([o.radii[0, 0, 0, 0] for o in outs])  # 80 %, issued at t
        err = np.abs(offset[: len(r)] - noise[0, 1 : len(r) + 1])  # of the forecast made at t
        radii[name], covered[name] = r, err <= r
    during = slice(t0, t0 + span)
    assert covered["scorecast"][during].mean() > 0.5 > covered["plain"][during].mean()
    before = radii["scorecast"][t0 - 200 : t0].mean()
    assert abs(radii["scorecast"][t0 + 2 * span] / before - 1) < 0.25
    assert radii["plain"][t0 + 2 * span] > 1.5 * radii["plain"][t0 - 200 : t0].mean()


def test_baselines_match_direct_computation() -> None:
    """Persistence and seasonal naive are scored on the same actuals: their rolling MSE with a
    very long half-life equals the plain mean over the same pairs."""
    h, season, steps = 3, 5, 400
    rng = np.random.default_rng(3)
    x = rng.normal(0, 1, steps).cumsum()
    sc = Scorer(manifest(h, seasons=[season]), ScoreSettings(half_life=1e9, intervals=()))
    ex = [sc.template.copy()]
    for t in range(steps):
        sc.step_many(ex, np.array([float(t)]), x[t : t + 1, None], np.zeros((1, h, 1)))
    s = sc.summary(ex[0])
    for k in range(h):
        tgt = np.arange(k + 1, steps)  # targets whose origin exists (origin t - k - 1 >= 0)
        pers = x[tgt - k - 1] - x[tgt]
        np.testing.assert_allclose(s["persistence_rmse"][k], np.sqrt(np.mean(pers**2)),
                                   rtol=1e-3)
        back = season * int(np.ceil((k + 1) / season))
        stgt = np.arange(back, steps)
        stgt = stgt[stgt - k - 1 >= 0]
        seas = x[stgt - back] - x[stgt]
        np.testing.assert_allclose(s["seasonal_rmse"][k], np.sqrt(np.mean(seas**2)), rtol=1e-3)
        model = x[np.arange(k + 1, steps)]
        np.testing.assert_allclose(s["rmse"][k], np.sqrt(np.mean(model**2)), rtol=1e-3)


def test_drift_alarm_fires_and_clears() -> None:
    """Forecasts that go wrong for 150 periods (an offset of 4 sigma) raise the alarm after
    `periods` bad periods; once right again, it clears. Nothing during warm-up or before
    `min_scored` scored steps."""
    h, steps = 2, 900
    rng = np.random.default_rng(4)
    truth = np.zeros((1, steps))
    offset = np.where((np.arange(steps) >= 400) & (np.arange(steps) < 550), 4.0, 0.0)
    settings = ScoreSettings(periods=6, min_scored=48, half_life=12)
    sc = Scorer(manifest(h, gaussian_seed(h), warmup=30), settings)
    _, outs = run(sc, truth, rng.normal(0, 1, (1, steps)), offset)
    changes = [(t, raised) for t, o in enumerate(outs) for _, raised in o.changed]
    assert [r for _, r in changes] == [True, False], changes
    (up, _), (down, _) = changes
    assert 400 < up < 430 and 550 < down < 700


def test_no_alarm_during_warmup_or_before_min_scored() -> None:
    h = 2
    sc = Scorer(manifest(h, gaussian_seed(h), warmup=100),
                ScoreSettings(periods=1, min_scored=10))
    truth = np.zeros((1, 120))
    _, outs = run(sc, truth, np.full((1, 120), 50.0))  # every forecast is far off
    changes = [t for t, o in enumerate(outs) for _ in o.changed]
    assert changes and changes[0] >= 100 + 10


@pytest.mark.parametrize("seeded", [True, False])
def test_one_stream_path_equals_the_vectorised_one(seeded: bool) -> None:
    """One stream at a time (plain Python) and streams together (numpy) give the same states,
    radii, counters, due scores and alarms: two targets, a season, warm-up, missing actuals,
    two steps in one period, gaps, steps that issue no forecast, an alarm raised and cleared."""
    h, n, steps = 3, 4, 400
    rng = np.random.default_rng(5)
    man = Manifest(
        kind="step", features=("a", "b"), targets=("a", "b"), horizon=h, task="regress",
        mode="stateful", model_id="m", statecast_version="0", created="",
        output_shape=(1, h, 2), warmup=5, structure={"seasons": [4]},
        conformal={"points": 9, "levels": [0.5, 0.9], "abs_quantiles": [[[0.5, 1.5]] * 2] * h,
                   "rmse": [[1.0, 2.0]] * h, "mae": [[0.8, 1.6]] * h} if seeded else {},
    )
    settings = ScoreSettings(periods=3, min_scored=10, half_life=8, every=3)
    one, many = Scorer(man, settings), Scorer(man, settings)
    ex1 = [one.template.copy() for _ in range(n)]
    exn = [many.template.copy() for _ in range(n)]
    tau = np.zeros(n)
    changes1: list[tuple[int, int, bool]] = []
    changesn: list[tuple[int, int, bool]] = []
    for t in range(steps):
        tau = tau + rng.choice([0.0, 1.0, 1.0, 1.0, 3.0], n)  # repeats and gaps
        given = tau.copy()
        if not seeded:
            given[0] = np.nan  # no frequency: steps are counted
        values = rng.normal(0, 1, (n, 2)) + (3.0 if 150 <= t < 200 else 0.0)
        values[rng.random(n) < 0.05, 0] = np.nan
        y = rng.normal(0, 1, (n, h, 2))
        issue = rng.random(n) >= 0.1  # a window graph filling its window forecasts nothing
        y[~issue] = np.nan
        got = many.step_many(exn, given.copy(), values, y, issue)
        changesn += [(t, i, up) for i, up in got.changed]
        for i in range(n):
            g1 = one.step_many([ex1[i]], given[i : i + 1].copy(), values[i : i + 1],
                               y[i : i + 1], issue[i : i + 1])
            assert got.radii is not None and g1.radii is not None
            np.testing.assert_allclose(g1.radii[0], got.radii[i], rtol=1e-12)
            assert (i in got.due) == bool(g1.due)
            changes1 += [(t, i, up) for _, up in g1.changed]
    for a, b in zip(ex1, exn, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12, equal_nan=True)
    for name in ("scored", "abs_err", "sq_err", "base_n", "base_sq", "covered", "width"):
        np.testing.assert_allclose(getattr(one.totals, name), getattr(many.totals, name),
                                   rtol=1e-10)
    assert changes1 == sorted(changesn) and any(up for *_, up in changes1)



def test_intervals_of_one_stream_read_as_among_many() -> None:
    """One stream's intervals (a low rate: their own path) are the same bytes as that stream's
    among many, and read back as forecast ± radius in float32, per step (and target)."""
    rng = np.random.default_rng(3)
    sc = Scorer(manifest(3, gaussian_seed(3)), ScoreSettings())
    for k in (1, 2):
        y = rng.normal(50, 10, (4, 3, k)).astype(np.float32)
        radii = rng.uniform(0, 5, (4, 3, k, 2))
        many = sc.intervals_many(y, radii)
        for i in range(4):
            assert sc.intervals_many(y[i : i + 1], radii[i : i + 1]) == [many[i]]
            doc = json.loads(many[i])
            for j, c in enumerate(("0.8", "0.95")):
                got = np.array(doc[c]).reshape(3, k, 2).astype(np.float32)
                for side, sign in ((0, -1.0), (1, 1.0)):
                    want = (y[i].astype(np.float64) + sign * radii[i, ..., j]).astype(np.float32)
                    np.testing.assert_array_equal(got[..., side], want)


# -- the daemon's processor ---------------------------------------------------------------------


def seeded_model(path: Path, batch: str = "1", horizon: int = 3, model_id: str = "sc") -> Path:
    return build_model(path, batch=batch, horizon=horizon, model_id=model_id,
                       conformal=gaussian_seed(horizon, 2.0), freq="1h")


def rows(stream: int, n: int, start: int = 0) -> list[tuple[str, float]]:
    rng = np.random.default_rng(stream)
    noise = rng.normal(0, 1.0, start + n)
    return [((T0 + timedelta(hours=i)).isoformat(),
             round(50 + 8 * np.sin(i / 3.8 + stream) + noise[i], 3))
            for i in range(start, start + n)]


def msg(stream: str, ts: str, v: float) -> tuple[str, bytes]:
    return f"x/{stream}/temp", json.dumps({"ts": ts, "temp": v}).encode()


def processor(model: Path, sink: Any, **kw: Any) -> Processor:
    cfg = EdgeConfig(model=str(model), subscribe=("x/+/temp",), client_id="t", **kw)
    m, freq = load_model(cfg)
    return Processor(cfg, m, freq, sink)


def test_payload_intervals_score_topic_and_events(tmp_path: Path) -> None:
    model = seeded_model(tmp_path / "m.onnx")
    sink = Sink()
    proc = processor(model, sink, drift_periods=2, drift_min_scored=5, drift_train_ratio=0.1,
                     score_every=1)
    data = rows(0, 30)
    for ts, v in data:
        proc.handle(*msg("a", ts, v))
    preds = sink.on("forecasts/a")
    assert len(preds) == 30
    first = preds[0]
    assert set(first["intervals"]) == {"0.8", "0.95"}
    for c, z in ((0.8, Z[0.8]), (0.95, Z[0.95])):
        for (lo, hi), f in zip(first["intervals"][f"{c:g}"], first["forecast"], strict=True):
            assert lo < f < hi
            assert hi - lo == pytest.approx(2 * z * 2.0, rel=1e-4)  # the seed, sigma 2
    scores = sink.on("statecast/score/a")
    assert len(scores) == 29  # once per period, from the first scored step
    last = scores[-1]
    assert last["scored"] == 29 and len(last["rmse"]) == 3 and "0.8" in last["coverage"]
    events = sink.on("statecast/status/t/events")
    assert events and events[0]["event"] == "drift" and events[0]["alarm"] is True
    assert "retrain_needed 1" in proc.metrics.render()
    sink2 = Sink()
    proc2 = processor(model, sink2)  # the default: every 12 periods
    for ts, v in data:
        proc2.handle(*msg("a", ts, v))
    assert [d["scored"] for d in sink2.on("statecast/score/a")] == [1, 13, 25]
    assert 'statecast_edge_score_scored_total{h="1"} 29' in proc.metrics.render()


@pytest.mark.parametrize("together", [False, True], ids=["one-by-one", "streams-together"])
def test_a_window_graph_is_scored_alike_fed_one_by_one_or_together(
        tmp_path: Path, together: bool) -> None:
    """A window graph (lookback 4) forecasts from its fourth observation: those forecasts carry
    intervals around them, nothing before is scored, and each stream's score document counts
    exactly the forecasts whose actual had arrived, with the MAE of the published forecasts
    against the fed values (a half-life long enough to be a plain mean). Fed one message at a
    time and as all streams' messages of a period together (scored in one call): the same."""
    model = build_model(tmp_path / "w.onnx", kind="window", lookback=4, horizon=3,
                        model_id="win", conformal=gaussian_seed(3, 2.0), freq="1h")
    sink = Sink()
    proc = processor(model, sink, score_half_life=1e9)
    streams, hours = ["a", "b", "c"], 40
    data = {s: rows(i, hours) for i, s in enumerate(streams)}
    for k in range(hours):
        batch = [msg(s, *data[s][k]) for s in streams]
        if together:
            proc.handle_many(batch)
        else:
            for m in batch:
                proc.handle(*m)
    for s in streams:
        values = [v for _, v in data[s]]
        preds = sink.on(f"forecasts/{s}")
        assert len(preds) == hours - 3  # the first three fill the window
        at = {ts: i for i, (ts, _) in enumerate(data[s])}
        for p in preds:
            for c in ("0.8", "0.95"):
                assert len(p["intervals"][c]) == 3
                for (lo, hi), f in zip(p["intervals"][c], p["forecast"], strict=True):
                    assert lo < f < hi
        docs = sink.on(f"statecast/score/{s}")
        assert docs
        for doc in docs:
            now = at[doc["ts"]]
            for h in range(3):
                # forecasts made at i (from the fourth observation on) for i + h + 1 <= now
                pairs = [(p["forecast"][h], values[at[p["ts"]] + h + 1]) for p in preds
                         if at[p["ts"]] + h + 1 <= now]
                if h == 0:
                    assert doc["scored"] == len(pairs)
                if not pairs:
                    assert doc["mae"][h] is None
                    continue
                mae = np.mean([abs(f - v) for f, v in pairs])
                assert doc["mae"][h] == pytest.approx(mae, rel=1e-4, abs=1e-6)
    if together:
        assert proc.metrics.model_runs == 3 * hours - 3 * 3  # one run per warm observation


def test_several_targets_get_intervals_per_target_and_classifiers_none(
    models: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    sink = Sink()
    cfg = EdgeConfig(model=str(models["multi"]), subscribe=("x/+/temp",), client_id="t",
                     score_every=1)
    m, freq = load_model(cfg)
    proc = Processor(cfg, m, freq, sink)
    for i in range(6):
        ts = (T0 + timedelta(hours=i)).isoformat()
        proc.handle("x/a/temp", json.dumps({"ts": ts, "temp": 50.0 + i, "hum": 70.0 - i}).encode())
    pred = sink.on("forecasts/a")[-1]
    iv = np.array(pred["intervals"]["0.8"])
    assert iv.shape == (3, 2, 2)  # [H][K][lo, hi]; unseeded radii have learnt from the errors
    assert np.all(iv[..., 0] <= np.array(pred["forecast"])) and np.all(
        np.array(pred["forecast"]) <= iv[..., 1])
    assert sink.on("statecast/score/a")[-1]["scored"] == 5
    sink = Sink()
    proc = processor(models["classify"], sink)  # categorical classes: not scored on the device
    proc.handle(*msg("c", T0.isoformat(), 50.0))
    proc.handle(*msg("c", (T0 + timedelta(hours=1)).isoformat(), 51.0))
    assert all("intervals" not in p for p in sink.on("forecasts/c"))
    assert proc.scorer is None and "Scoring failed" not in caplog.text


def test_threshold_classifier_is_scored_by_its_brier_score(tmp_path: Path) -> None:
    """A binary classifier of temp > 50 (the trainer's threshold in the manifest): no
    intervals; its rolling Brier score per horizon step equals the plain mean of
    sum over classes (p - onehot)^2 with a long half-life, beside persistence's."""
    model = build_model(tmp_path / "c.onnx", task="classify", classes=("no", "yes"), horizon=2,
                        model_id="thr", source={"threshold": 50.0}, freq="1h")
    sink = Sink()
    proc = processor(model, sink, score_every=1, score_half_life=1e9)
    temps = [48.0, 52.0, 53.0, 49.0, 47.0, 51.0, 55.0, 46.0]
    for i, v in enumerate(temps):
        proc.handle(*msg("c", (T0 + timedelta(hours=i)).isoformat(), v))
    preds = sink.on("forecasts/c")
    assert all("intervals" not in p for p in preds)
    score = sink.on("statecast/score/c")[-1]
    label = np.array([float(v > 50) for v in temps])
    for h in range(2):
        briers, pers = [], []
        for o in range(len(temps) - h - 1):
            p_yes = preds[o]["probabilities"]["yes"][h]
            y = label[o + h + 1]
            briers.append((p_yes - y) ** 2 + ((1 - p_yes) - (1 - y)) ** 2)
            pers.append(2.0 * (label[o] != y))
        assert score["brier"][h] == pytest.approx(np.mean(briers), rel=1e-5)
        assert score["persistence_brier"][h] == pytest.approx(np.mean(pers), rel=1e-5)


def test_no_scoring_leaves_payload_alone(tmp_path: Path) -> None:
    model = seeded_model(tmp_path / "m.onnx")
    sink = Sink()
    proc = processor(model, sink, scoring=False)
    for ts, v in rows(0, 5):
        proc.handle(*msg("a", ts, v))
    assert all("intervals" not in p for p in sink.on("forecasts/a"))
    assert not sink.on("statecast/score/")


def forecasts(sink: Sink) -> dict[tuple[str, str], tuple[list[float], Any]]:
    return {(p["stream"], p["ts"]): (p["forecast"], p.get("intervals"))
            for p in sink.on("forecasts/")}


def reference(model: Path, data: dict[str, list[tuple[str, float]]], **kw: Any
              ) -> tuple[dict[tuple[str, str], Any], dict[str, np.ndarray]]:
    sink = Sink()
    proc = processor(model, sink, **kw)
    for i in range(len(next(iter(data.values())))):
        proc.handle_many([msg(s, *data[s][i]) for s in data])
    return forecasts(sink), {s: proc.store.streams[s].extra[EXTRA].copy() for s in data}


def same(got: dict[tuple[str, str], Any], want: dict[tuple[str, str], Any]) -> None:
    assert set(got) == set(want)
    for key, (f, iv) in want.items():
        np.testing.assert_allclose(got[key][0], f, atol=1e-5, rtol=0)
        for c in iv:
            np.testing.assert_allclose(got[key][1][c], iv[c], atol=1e-5, rtol=0)


def test_restart_and_eviction_give_the_uninterrupted_scores(tmp_path: Path, batch: str) -> None:
    """Four streams, at most two resident, a commit after each round and two restarts: every
    forecast's intervals and the final scoring states equal one uninterrupted run's."""
    model = seeded_model(tmp_path / "m.onnx", batch)
    data = {f"s{i}": rows(i, 80) for i in range(4)}
    want, want_state = reference(model, data)
    state = tmp_path / "state"
    sink = Sink()

    def start() -> Processor:
        proc = processor(model, sink, max_resident=2, stream_ttl=3600.0, state_dir=str(state))
        proc.store.load(state)
        return proc

    proc = start()
    for i in range(80):
        if i in (30, 55):
            proc = start()
        proc.handle_many([msg(s, *data[s][i]) for s in data])
        proc.store.evict()
        proc.store.commit(state)
    assert proc.store.evictions > 0 and proc.store.restored > 0
    same(forecasts(sink), want)
    for s in data:
        st = proc.store.get(s)
        assert st is not None
        np.testing.assert_allclose(st.extra[EXTRA], want_state[s], atol=1e-5, equal_nan=True)


def test_reload_keeps_scores_for_the_same_horizon_and_resets_for_another(tmp_path: Path) -> None:
    a = seeded_model(tmp_path / "a.onnx", model_id="a")
    b = build_model(tmp_path / "b.onnx", horizon=3, model_id="b", seed=1, freq="1h")
    c = build_model(tmp_path / "c.onnx", horizon=4, model_id="c", seed=1, freq="1h")
    sink = Sink()
    proc = processor(a, sink)
    for ts, v in rows(0, 20):
        proc.handle(*msg("s", ts, v))
    before = proc.store.streams["s"].extra[EXTRA].copy()
    cfg = proc.config
    mb, fb = load_model(EdgeConfig(model=str(b), subscribe=cfg.subscribe, client_id="t"))
    proc_b = Processor(cfg, mb, fb, sink, store=proc.store)
    np.testing.assert_array_equal(proc_b.store.streams["s"].extra[EXTRA], before)
    mc, fc = load_model(EdgeConfig(model=str(c), subscribe=cfg.subscribe, client_id="t"))
    proc_c = Processor(cfg, mc, fc, sink, store=proc_b.store)
    fresh = proc_c.store.streams["s"].extra[EXTRA]
    assert fresh.shape == proc_c.scorer.template.shape  # type: ignore[union-attr]
    np.testing.assert_array_equal(fresh, proc_c.scorer.template)  # type: ignore[union-attr]


@pytest.mark.parametrize("grid", [False, True], ids=["no-grid", "grid"])
def test_a_gap_reset_keeps_the_scores(tmp_path: Path, grid: bool) -> None:
    """A gap over max_gap resets the model's state, not the scores (with a grid too)."""
    model = build_model(tmp_path / "m.onnx", horizon=3, model_id="sc",
                        conformal=gaussian_seed(3, 2.0), freq="1h",
                        grid=Grid(origin=T0.replace(tzinfo=timezone.utc).timestamp())
                        if grid else None)
    sink = Sink()
    cfg = EdgeConfig(model=str(model), subscribe=("x/+/temp",), client_id="t")
    m, freq = load_model(cfg)
    proc = Processor(cfg, m, freq, sink, clock=lambda: 0.0)
    data = rows(0, 60)
    for ts, v in data[:20] + data[-5:]:  # a gap of 35 periods, over max_gap (24)
        proc.handle(*msg("s", ts, v))
    assert proc.metrics.resets == {"gap": 1}
    sc = proc.scorer
    assert sc is not None
    assert sc.summary(proc.store.streams["s"].extra[EXTRA])["scored"] == 19 + 4


# -- a real daemon, killed -----------------------------------------------------------------------


@pytest.mark.broker
def test_sigkill_restart_gives_the_uninterrupted_intervals(
    broker: Mosquitto, batch: str, tmp_path: Path, daemon_factory: Any, collector_factory: Any,
) -> None:
    """Two streams at QoS 1 while the daemon is SIGKILLed at random moments and restarted: the
    intervals published for each (stream, ts) and the scoring states on disk equal those of
    one uninterrupted run."""
    from test_edge_reliability import args, publisher, restarter, sigkill_while, wait_online

    model = seeded_model(tmp_path / "m.onnx", batch)
    cid = f"sc{uuid.uuid4().hex[:8]}"
    state = tmp_path / "state"
    streams = ["s0", "s1"]
    n = 600
    data = {s: rows(i, n) for i, s in enumerate(streams)}
    col = collector_factory(broker, [f"{cid}-out/#", f"statecast/status/{cid}"])
    argv = args(model, broker, cid, "--state-dir", str(state))
    mark = col.mark()
    d = daemon_factory(*argv)
    wait_online(col, cid, mark, d)
    pub = publisher(broker)

    def publish() -> None:
        for i in range(n):
            for s in streams:
                ts, v = data[s][i]
                pub.publish(f"{cid}/{s}/temp", json.dumps({"ts": ts, "temp": v}), qos=1)
            time.sleep(0.004)

    rng = random.Random(3)
    d = sigkill_while(publish, d, restarter(daemon_factory, col, cid, argv), 5,
                      lambda: rng.uniform(0.05, 0.4))
    deadline = time.monotonic() + 60
    got: dict[tuple[str, str], Any] = {}
    while time.monotonic() < deadline:
        got = {(p["stream"], p["ts"]): (p["forecast"], p["intervals"])
               for p in col.json(f"{cid}-out/")}
        if len(got) >= n * len(streams):
            break
        time.sleep(0.05)
    assert d.stop() == 0
    pub.disconnect()
    pub.loop_stop()
    want, want_state = reference(model, data)
    same(got, want)
    m, _ = load_model(EdgeConfig(model=str(model), subscribe=("x/+/t",), client_id="t"))
    sc = Scorer(m.manifest, ScoreSettings())
    store = StateStore(m.manifest.model_id, m.zero_state(), extras={EXTRA: sc.template})
    assert store.load(state) == len(streams)
    for s in streams:
        np.testing.assert_allclose(store.streams[s].extra[EXTRA], want_state[s], atol=1e-5,
                                   equal_nan=True)


# -- a window graph ------------------------------------------------------------------------------


def ew_mean(values: Any, half_life: float) -> float | None:
    """The exponentially weighted mean of `values` in the order they were scored: the newest
    weighs 1, each older one 0.5 ** (1 / half_life) times the one after it; None when empty
    (the score document's null)."""
    if not len(values):
        return None
    weights = 0.5 ** (np.arange(len(values))[::-1] / half_life)
    return float(np.dot(weights, values) / weights.sum())


def close(got: float | None, want: float | None, tol: float = 2e-6) -> bool:
    return (got is None and want is None) or (
        got is not None and want is not None and abs(got - want) <= tol)


def score_total(proc: Processor, name: str, h: int) -> float:
    """A `statecast_edge_score_*` counter of the processor's Prometheus text for horizon step h."""
    prefix = f'statecast_edge_score_{name}{{h="{h}"}} '
    (line,) = [x for x in proc.metrics.render().splitlines() if x.startswith(prefix)]
    return float(line[len(prefix):])


def test_a_window_graph_is_scored_once_warm(tmp_path: Path, batch: str) -> None:
    """A window graph (lookback 5) and two streams of a sine plus unit Gaussian noise: nothing
    is published or scored while a stream's window fills; from its first forecast on, every
    forecast has seeded intervals around it; the score documents come from the first period
    with a judged forecast, once per `score_every` periods, and their counts, MAE, RMSE,
    persistence MAE, coverage and width equal those worked out here from the published
    forecasts and the fed actuals (exponentially weighted, newest last)."""
    h, lookback, n, every, half_life, sigma = 3, 5, 40, 4, 6.0, 2.0
    model = build_model(tmp_path / "w.onnx", kind="window", lookback=lookback, horizon=h,
                        batch=batch, model_id="win", conformal=gaussian_seed(h, sigma), freq="1h")
    assert StepModel(model).dynamic_batch is (batch == "dynamic")
    sink = Sink()
    proc = processor(model, sink, score_every=every, score_half_life=half_life)
    data = {"a": rows(0, n), "b": rows(1, n)}
    for i in range(n):
        proc.handle_many([msg(s, *data[s][i]) for s in data])
    warm = lookback - 1  # the index of a stream's first forecast
    pairs = dict.fromkeys(range(h), 0)  # (origin, horizon step) pairs judged, over both streams
    for s, series in data.items():
        index = {ts: i for i, (ts, _) in enumerate(series)}
        actual = [float(np.float32(v)) for _, v in series]  # the daemon reads float32
        preds = sink.on(f"forecasts/{s}")
        assert [index[p["ts"]] for p in preds] == list(range(warm, n))  # none while warming
        fc = {index[p["ts"]]: p["forecast"] for p in preds}
        iv = {index[p["ts"]]: p["intervals"] for p in preds}
        for o, f in fc.items():
            assert set(iv[o]) == {"0.8", "0.95"}
            for c in ("0.8", "0.95"):
                lohi = np.array(iv[o][c])
                assert lohi.shape == (h, 2)
                assert np.all(lohi[:, 0] <= f) and np.all(np.array(f) <= lohi[:, 1])
                np.testing.assert_allclose(lohi.mean(axis=1), f, atol=2e-6)  # symmetric
        for level, z in Z.items():  # the first forecast's intervals are the trainer's seed
            np.testing.assert_allclose(np.diff(iv[warm][f"{level:g}"]).ravel(), 2 * z * sigma,
                                       rtol=1e-4)
        docs = sink.on(f"statecast/score/{s}")
        assert [index[d["ts"]] for d in docs] == list(range(warm + 1, n, every))
        for doc in docs:
            now = index[doc["ts"]]
            judged = [[o for o in fc if o + k + 1 <= now] for k in range(h)]
            assert doc["scored"] == len(judged[0])  # forecasts judged at their first step
            for k in range(h):
                err = np.array([fc[o][k] - actual[o + k + 1] for o in judged[k]])
                pers = np.array([actual[o] - actual[o + k + 1] for o in judged[k]])
                mse = ew_mean(err**2, half_life)
                assert close(doc["mae"][k], ew_mean(np.abs(err), half_life)), (s, now, k)
                assert close(doc["rmse"][k], None if mse is None else np.sqrt(mse)), (s, now, k)
                assert close(doc["persistence_mae"][k], ew_mean(np.abs(pers), half_life))
                for c in ("0.8", "0.95"):
                    lo_hi = [iv[o][c][k] for o in judged[k]]
                    inside = [float(lo <= actual[o + k + 1] <= hi)
                              for o, (lo, hi) in zip(judged[k], lo_hi, strict=True)]
                    width = [hi - lo for lo, hi in lo_hi]
                    assert close(doc["coverage"][c][k], ew_mean(inside, half_life))
                    # the bounds are float32 (ulp 3.8e-6 near 50): so are their widths
                    assert close(doc["width"][c][k], ew_mean(width, half_life), 1.6e-5)
        for k in range(h):
            pairs[k] += sum(1 for o in fc if o + k + 1 < n)
    for k in range(h):  # every (origin, horizon step) pair that could be judged, and no other
        assert score_total(proc, "scored_total", k + 1) == pairs[k]
    assert pairs == {k: 2 * (n - warm - k - 1) for k in range(h)}


def test_a_window_graph_scores_forecasts_made_before_a_gap_reset(tmp_path: Path,
                                                                 batch: str) -> None:
    """A window graph (lookback 5, horizon 4, max_gap 2 periods) and a stream that skips two
    hours: the gap resets the window, and while it fills again (no forecasts) the actuals still
    judge the forecasts made before the gap that targeted them, once each; the error sums are
    those of the published forecasts against the fed actuals."""
    h, lookback = 4, 5
    model = build_model(tmp_path / "w.onnx", kind="window", lookback=lookback, horizon=h,
                        max_gap=2, batch=batch, model_id="wg", conformal=gaussian_seed(h, 2.0),
                        freq="1h")
    sink = Sink()
    proc = processor(model, sink)
    series = rows(0, 40)
    fed = series[:20] + series[22:]  # hours 20 and 21 missing: a gap of 3 periods
    for ts, v in fed:
        proc.handle(*msg("s", ts, v))
    assert proc.metrics.resets == {"gap": 1}
    index = {ts: i for i, (ts, _) in enumerate(series)}
    actual = {index[ts]: float(np.float32(v)) for ts, v in fed}
    preds = {index[p["ts"]]: p["forecast"] for p in sink.on("forecasts/s")}
    # none while the window fills: at the start and again after the gap
    assert sorted(preds) == list(range(lookback - 1, 20)) + list(range(22 + lookback - 1, 40))
    for k in range(h):
        judged = [o for o in preds if o + k + 1 in actual]
        after_gap = [o for o in judged if o < 20 and o + k + 1 >= 22]
        assert len(after_gap) == max(0, k - 1)  # judged while the window refilled
        assert score_total(proc, "scored_total", k + 1) == len(judged)
        err = sum(abs(preds[o][k] - actual[o + k + 1]) for o in judged)
        assert score_total(proc, "abs_error_sum", k + 1) == pytest.approx(err, rel=1e-5)


# -- a real daemon, killed -----------------------------------------------------------------------
