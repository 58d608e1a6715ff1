"""Benchmark: the daemon's prediction intervals and self-scores on a shipped series.

    .venv/bin/python bench/bench_intervals.py [--data examples/data/seattle-temps.csv]
        [--time-col date] [--target temp] [--horizon 6] [--season 24] [--epochs 30]
        [--shift-positions 6]

Trains and exports a model on the series (statecast-train, statecast-export), then replays the
whole series through the daemon's Processor (no broker: the publisher is a list) and looks at the
forecasts made over the held-out tail (the trainer's last 20 %):

* coverage of the 80 % and 95 % intervals per horizon step, and their mean width beside the
  static split-conformal interval (the trainer's validation quantile, never adapted) and beside
  the narrowest static interval that reaches the same realised coverage on the tail (chosen in
  hindsight);
* the daemon's own scores (its Prometheus counters over the tail) beside the trainer's held-out
  RMSE;
* a level shift injected at several positions, spread evenly from the tail's start to the last
  one that leaves four seasons and a horizon after it (fewer, or only the tail's start, where the
  series is too short), one fresh replay per position, shifted from that position on: the
  coverage in windows after the shift (its first two seasons, seasons 2-4, season 2 to the end),
  pooled per horizon step over every position's forecasts, with the range of the positions'
  own coverages; and at how many positions the drift alarm fired, how many periods after the
  shift it was first raised, and whether and when it cleared. With `--drift PER_SEASON` the
  same for a sensor drift instead: a ramp from each position on, PER_SEASON more every season.

Prints tables and writes bench/results/intervals.json. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge.config import EdgeConfig  # noqa: E402
from edge.service import Processor, load_model  # noqa: E402

BIN = Path(sys.executable).parent
COVERAGES = ("0.8", "0.95")


class Recorder:
    """The Processor's publisher: forecasts by origin index, drift events by step index."""

    def __init__(self) -> None:
        self.step = 0
        self.forecasts: dict[int, dict[str, Any]] = {}
        self.events: list[tuple[int, bool]] = []
        self.totals0: dict[str, np.ndarray] = {}  # the scorer's counters at the tail's start
        self.totals1: dict[str, np.ndarray] = {}  # ... and at the end

    def __call__(self, topic: str, payload: bytes, qos: int) -> bool:
        if topic.startswith("bench/out/"):
            self.forecasts[self.step] = json.loads(payload)
        elif topic.endswith("/events"):
            doc = json.loads(payload)
            if doc.get("event") == "drift":
                self.events.append((self.step, bool(doc["alarm"])))
        return True


def train_and_export(args: argparse.Namespace, work: Path) -> tuple[Path, Path]:
    run_dir, model = work / "run", work / "model.onnx"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": "",
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    if not (run_dir / "metrics.json").exists():
        cmd = [str(BIN / "statecast-train"), "--data", str(args.data), "--time-col",
               args.time_col, "--target", args.target, "--horizon", str(args.horizon),
               "--epochs", str(args.epochs), "--quiet", "--out", str(run_dir)]
        if args.season:
            cmd += ["--season", str(args.season)]
        subprocess.run(cmd, check=True, env=env)
    if not model.exists():
        subprocess.run([str(BIN / "statecast-export"), str(run_dir), "--out", str(model)],
                       check=True, env=env, stdout=subprocess.DEVNULL)
    return run_dir, model


def replay(model: Path, times: pd.Series, values: np.ndarray, tail_start: int,
           **settings: Any) -> Recorder:
    cfg = EdgeConfig(model=str(model), subscribe=("bench/+/v",), client_id="bench",
                     publish="bench/out/{stream}", **settings)
    m, freq = load_model(cfg)
    rec = Recorder()
    proc = Processor(cfg, m, freq, rec)
    feature = m.manifest.features[0]
    scorer = proc.scorer
    for i, (ts, v) in enumerate(zip(times, values, strict=True)):
        rec.step = i
        if i == tail_start and scorer is not None:
            rec.totals0 = {k: np.array(getattr(scorer.totals, k)) for k in ("scored", "sq_err")}
        proc.handle("bench/s/v", json.dumps({"ts": ts.isoformat(), feature: float(v)}).encode())
    if scorer is not None:
        rec.totals1 = {k: np.array(getattr(scorer.totals, k)) for k in ("scored", "sq_err")}
    return rec


Segment = tuple[Recorder, np.ndarray, int, int]  # a replay, the values it saw, origins [a, b)


def tail_table(segments: list[Segment], h: int, seed: dict[str, np.ndarray]) -> dict[str, Any]:
    """Per horizon step over the forecasts made at origins [start, end - h) of each segment,
    pooled: errors, adaptive and static intervals; with several segments also each one's
    coverage (None where it has no forecasts) and their range."""
    rows = []
    for k in range(h):
        errors: list[np.ndarray] = []
        actuals: list[np.ndarray] = []
        ivs: dict[str, list[np.ndarray]] = {c: [] for c in COVERAGES}
        for rec, values, start, end in segments:
            end = min(end, len(values))
            origins = [i for i in range(start, end - h) if i in rec.forecasts]
            f = np.array([rec.forecasts[i]["forecast"][k] for i in origins], dtype=np.float64)
            y = values[np.array(origins, dtype=int) + k + 1]
            errors.append(f - y)
            actuals.append(y)
            for c in COVERAGES:
                iv = [rec.forecasts[i]["intervals"][c][k] for i in origins]
                ivs[c].append(np.array(iv, dtype=np.float64).reshape(-1, 2))
        e = np.concatenate(errors)
        if not len(e):  # a window past the end of a short series
            rows.append({"h": k + 1, "n": 0})
            continue
        y = np.concatenate(actuals)
        row: dict[str, Any] = {"h": k + 1, "n": len(e), "mae": float(np.mean(np.abs(e))),
                               "rmse": float(np.sqrt(np.mean(e**2)))}
        if len(segments) > 1:
            row["n_per_position"] = [len(x) for x in errors]
        for c in COVERAGES:
            lohi = np.concatenate(ivs[c])
            hit = (lohi[:, 0] <= y) & (y <= lohi[:, 1])
            cov = float(np.mean(hit))
            width = float(np.mean(lohi[:, 1] - lohi[:, 0]))
            r0 = float(seed[c][k])
            hindsight = float(np.quantile(np.abs(e), min(cov, 1.0)))
            row[c] = {"coverage": cov, "width": width,
                      "static_coverage": float(np.mean(np.abs(e) <= r0)),
                      "static_width": 2 * r0, "hindsight_width": 2 * hindsight,
                      "width_vs_hindsight": width / (2 * hindsight) if hindsight else None}
            if len(segments) > 1:
                own = [float(np.mean(x)) if len(x) else None
                       for x in np.split(hit, np.cumsum([len(x) for x in errors])[:-1])]
                seen = [x for x in own if x is not None]
                row[c] |= {"per_position": own, "range": [min(seen), max(seen)]}
        rows.append(row)
    return {"horizon": rows}


def own_rows(rows: list[dict[str, Any]], i: int, positions: int) -> list[dict[str, Any]]:
    """Position i's forecasts and coverage per horizon step, from the pooled rows."""
    out = []
    for row in rows:
        if positions == 1 or not row["n"]:
            n, cov = row["n"], {c: row[c]["coverage"] for c in COVERAGES if row["n"]}
        else:
            n = row["n_per_position"][i]
            cov = {c: row[c]["per_position"][i] for c in COVERAGES} if n else {}
        out.append({"h": row["h"], "n": n} | cov)
    return out


def shift_positions(start: int, n: int, h: int, season: int, count: int) -> list[int]:
    """`count` positions spread evenly from `start` to the last one with four seasons and a
    horizon after it (fewer where they coincide; only `start` where even that one has not)."""
    hi = n - 4 * season - h
    return [int(a) for a in np.unique(np.linspace(start, max(start, hi), count).round())]


def alarm_after(events: list[tuple[int, bool]], at: int, n: int) -> dict[str, Any]:
    """The drift alarm around a shift at `at` of a series of `n` rows: up when it came, first
    raise at or after it and the first clear after that (periods after the shift; None for
    never)."""
    before = [(i, up) for i, up in events if i < at]
    after = [(i - at, up) for i, up in events if i >= at]
    raised = next((d for d, up in after if up), None)
    cleared = None if raised is None else next(
        (d for d, up in after if not up and d > raised), None)
    return {"at": at, "periods_after": n - at, "up_at_shift": bool(before and before[-1][1]),
            "raised": raised, "cleared": cleared, "events": after,
            "alarms_before_shift": before}


def delays(xs: list[int]) -> dict[str, float] | None:
    """Median, min and max of a list of delays (None when empty)."""
    return ({"median": float(np.median(xs)), "min": min(xs), "max": max(xs)} if xs else None)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--data", type=Path, default=ROOT / "examples/data/seattle-temps.csv")
    p.add_argument("--time-col", default="date")
    p.add_argument("--target", default="temp")
    p.add_argument("--horizon", type=int, default=6)
    p.add_argument("--season", type=int, default=24)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--shift", type=float, help="level shift added from each position on "
                   "(default 3 × the standard deviation of the series' changes per period)")
    p.add_argument("--drift", type=float, metavar="PER_SEASON", help="inject a sensor drift "
                   "instead of a level shift: a ramp that adds PER_SEASON per season from each "
                   "position on (0: the --shift size per season)")
    p.add_argument("--shift-positions", type=int, default=6, metavar="P",
                   help="inject the shift at P positions (one replay each), spread evenly from "
                   "the tail's start to the last one with 4 seasons and a horizon after it; "
                   "fewer where the series is too short")
    p.add_argument("--lr", type=float, default=EdgeConfig.score_lr, help="score_lr")
    p.add_argument("--scorecast", type=float, default=EdgeConfig.score_scorecast,
                   help="score_scorecast")
    p.add_argument("--train-ratio", type=float, default=2.0, help="drift_train_ratio")
    p.add_argument("--work", type=Path, help="keep the run and model here (reused when there)")
    p.add_argument("--out", type=Path, default=ROOT / "bench/results/intervals.json")
    args = p.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-intervals-"))
    work.mkdir(parents=True, exist_ok=True)
    run_dir, model = train_and_export(args, work)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    table = pd.read_csv(args.data)
    times = pd.to_datetime(table[args.time_col])
    values = table[args.target].interpolate().to_numpy(dtype=np.float64)
    n, h, season = len(values), args.horizon, args.season
    start = n - round(0.2 * n)
    m, _ = load_model(EdgeConfig(model=str(model), subscribe=("x/+/y",), client_id="b"))
    conf = m.manifest.conformal
    levels = conf["levels"]
    seed = {c: np.array([np.interp(float(c), levels, row[0]) for row in conf["abs_quantiles"]])
            for c in COVERAGES}

    settings = {"score_lr": args.lr, "drift_train_ratio": args.train_ratio,
                "score_scorecast": args.scorecast}
    rec = replay(model, times, values, start, **settings)
    plain = tail_table([(rec, values, start, n)], h, seed)
    t0, t1 = rec.totals0, rec.totals1
    live_rmse = float(np.sqrt((t1["sq_err"] - t0["sq_err"]).sum()
                              / (t1["scored"] - t0["scored"]).sum()))
    result: dict[str, Any] = {"data": str(args.data.resolve().relative_to(ROOT)), "rows": n,
                              "settings": settings,
                              "tail_start": start, "horizon": h, "season": season,
                              "trainer": {"rmse": metrics["rmse"],
                                          "per_horizon_rmse": metrics["per_horizon"]["rmse"]},
                              "live_rmse": live_rmse, "tail": plain}

    shift = args.shift or 3.0 * float(np.std(np.diff(values)))
    ats = shift_positions(start, n, h, season, max(1, args.shift_positions))
    windows = {"first_two_seasons": (0, 2 * season), "seasons_2_to_4": (2 * season, 4 * season),
               "from_2_seasons_to_end": (2 * season, n)}
    segments: dict[str, list[Segment]] = {name: [] for name in windows}
    alarms = []
    per_season = None if args.drift is None else (args.drift or shift)
    for at in ats:
        shifted = values.copy()
        if per_season is None:
            shifted[at:] += shift
        else:  # the sensor drifts from `at` on
            shifted[at:] += per_season * np.arange(n - at) / season
        rec2 = replay(model, times, shifted, start, **settings)
        for name, (a, b) in windows.items():
            segments[name].append((rec2, shifted, at + a, min(n, at + b)))
        alarms.append(alarm_after(rec2.events, at, n))
    pooled = {name: tail_table(segs, h, seed) for name, segs in segments.items()}
    per_position = [alarm | {name: own_rows(table["horizon"], i, len(ats))
                             for name, table in pooled.items()}
                    for i, alarm in enumerate(alarms)]
    raised = [a["raised"] for a in alarms if a["raised"] is not None]
    cleared = [a["cleared"] for a in alarms if a["cleared"] is not None]
    mid = alarms[len(alarms) // 2]
    result["alarms_without_shift"] = rec.events
    result["level_shift" if per_season is None else "sensor_drift"] = {
        "shift": shift if per_season is None else None, "drift_per_season": per_season,
        "positions": ats,
        "alarm": {"positions": len(ats), "fired": len(raised), "raised_after": delays(raised),
                  "cleared": len(cleared), "cleared_after": delays(cleared),
                  "up_at_shift": sum(a["up_at_shift"] for a in alarms)},
        **pooled, "per_position": per_position,
        # the middle position's, as with the one injection there was
        "at": mid["at"], "events": mid["events"],
        "alarms_before_shift": mid["alarms_before_shift"]}
    report(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


def report(r: dict[str, Any]) -> None:
    print(f"\n{r['data']}: {r['rows']} rows, held-out tail from row {r['tail_start']}, "
          f"horizon {r['horizon']}, season {r['season']}, settings {r['settings']}")
    print("\nIntervals over the held-out tail (adaptive: what the daemon published; static: the "
          "trainer's split-conformal radius; hindsight: the narrowest static interval with the "
          "adaptive one's realised coverage)")
    print(f"| {'h':>2} | {'MAE':>6} | {'RMSE':>6} | {'cov 80':>6} | {'static':>6} "
          f"| {'width':>6} | {'static':>6} | {'/hind.':>6} | {'cov 95':>6} | {'static':>6} "
          f"| {'width':>6} | {'static':>6} | {'/hind.':>6} |")
    print("|" + "|".join("-" * w for w in (4, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8)) + "|")
    for row in r["tail"]["horizon"]:
        cells = [f"{row['h']:>2}", f"{row['mae']:>6.3f}", f"{row['rmse']:>6.3f}"]
        for c in COVERAGES:
            x = row[c]
            cells += [f"{x['coverage']:>6.1%}", f"{x['static_coverage']:>6.1%}",
                      f"{x['width']:>6.3f}", f"{x['static_width']:>6.3f}",
                      f"{x['width_vs_hindsight'] or float('nan'):>6.3f}"]
        print("| " + " | ".join(cells) + " |")
    tr = r["trainer"]["rmse"]
    print(f"\nRMSE over the tail: the daemon's own counters {r['live_rmse']:.4f}, the trainer's "
          f"held-out evaluation {tr:.4f} ({r['live_rmse'] / tr - 1:+.1%})")
    ls = r.get("level_shift") or r["sensor_drift"]
    print(f"\nDrift alarms without a shift (row, raised?): {r['alarms_without_shift']}")
    al = ls["alarm"]
    what = f"Level shift of {ls['shift']:+.3f}" if ls.get("drift_per_season") is None else \
        f"Sensor drift of {ls['drift_per_season']:+.3f} per season"
    print(f"\n{what}, injected (one replay each) at rows "
          f"{', '.join(map(str, ls['positions']))}")
    line = f"  drift alarm raised at {al['fired']} of {al['positions']} positions"
    if al["raised_after"]:
        d = al["raised_after"]
        line += f", {d['median']:g} periods after the shift (median; {d['min']}-{d['max']})"
    line += f"; cleared at {al['cleared']}"
    if al["cleared_after"]:
        d = al["cleared_after"]
        line += f", {d['median']:g} periods after the shift (median; {d['min']}-{d['max']})"
    if al["up_at_shift"]:
        line += f"; already up at the shift at {al['up_at_shift']}"
    print(line)
    for pos in ls["per_position"]:
        print(f"    row {pos['at']} ({pos['periods_after']} periods left): raised "
              f"{pos['raised']}, cleared {pos['cleared']} (periods after the shift); alarms "
              f"before it {pos['alarms_before_shift']}")
    print("\n  Coverage after the shift, per horizon step: pooled over the positions (the "
          "positions' own range)")
    print(f"  | {'window':<21} | {'h':>2} | {'n':>5} | {'cov 80':>6} | {'positions':>11} "
          f"| {'cov 95':>6} | {'positions':>11} |")
    print("  |" + "|".join("-" * w for w in (23, 4, 7, 8, 13, 8, 13)) + "|")
    for name in ("first_two_seasons", "seasons_2_to_4", "from_2_seasons_to_end"):
        label = name.replace("_", " ").replace("2 to 4", "2-4")
        for row in ls[name]["horizon"]:
            cells = [f"{label:<21}", f"{row['h']:>2}", f"{row['n']:>5}"]
            for c in COVERAGES:
                x = row.get(c)
                rng = x.get("range") if x else None
                cells += [f"{x['coverage']:>6.1%}" if x else f"{'-':>6}",
                          f"{rng[0]:>5.0%}-{rng[1]:<5.0%}" if rng else f"{'-':>11}"]
            print("  | " + " | ".join(cells) + " |")

if __name__ == "__main__":
    sys.exit(main())
