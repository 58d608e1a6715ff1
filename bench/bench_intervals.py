"""Benchmark: the daemon's prediction intervals and self-scores on a shipped series.

    .venv/bin/python bench/bench_intervals.py [--data examples/data/seattle-temps.csv]
        [--time-col date] [--target temp] [--horizon 6] [--season 24] [--epochs 30]

Trains and exports a model on the series (statecast-train, statecast-export), then replays the
whole series through the daemon's Processor (no broker: the publisher is a list) and looks at the
forecasts made over the held-out tail (the trainer's last 20 %):

* coverage of the 80 % and 95 % intervals per horizon step, and their mean width beside the
  static split-conformal interval (the trainer's validation quantile, never adapted) and beside
  the narrowest static interval that reaches the same realised coverage on the tail (chosen in
  hindsight);
* the daemon's own scores (its Prometheus counters over the tail) beside the trainer's held-out
  RMSE;
* a level shift injected halfway through the tail: the coverage two seasons later, and whether
  the drift alarm fired (and when it cleared).

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


def tail_table(rec: Recorder, values: np.ndarray, start: int, end: int, h: int,
               seed: dict[str, np.ndarray]) -> dict[str, Any]:
    """Per horizon step over forecasts made at origins [start, end - h): errors, adaptive and
    static intervals."""
    rows = []
    end = min(end, len(values))
    for k in range(h):
        origins = [i for i in range(start, end - h) if i in rec.forecasts]
        if not origins:  # a window past the end of a short series
            rows.append({"h": k + 1, "n": 0})
            continue
        f = np.array([rec.forecasts[i]["forecast"][k] for i in origins])
        y = values[np.array(origins) + k + 1]
        e = f - y
        row: dict[str, Any] = {"h": k + 1, "n": len(e), "mae": float(np.mean(np.abs(e))),
                               "rmse": float(np.sqrt(np.mean(e**2)))}
        for c in COVERAGES:
            iv = np.array([rec.forecasts[i]["intervals"][c][k] for i in origins])
            cov = float(np.mean((iv[:, 0] <= y) & (y <= iv[:, 1])))
            width = float(np.mean(iv[:, 1] - iv[:, 0]))
            r0 = float(seed[c][k])
            hindsight = float(np.quantile(np.abs(e), min(cov, 1.0)))
            row[c] = {"coverage": cov, "width": width,
                      "static_coverage": float(np.mean(np.abs(e) <= r0)),
                      "static_width": 2 * r0, "hindsight_width": 2 * hindsight,
                      "width_vs_hindsight": width / (2 * hindsight) if hindsight else None}
        rows.append(row)
    return {"horizon": rows}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--data", type=Path, default=ROOT / "examples/data/seattle-temps.csv")
    p.add_argument("--time-col", default="date")
    p.add_argument("--target", default="temp")
    p.add_argument("--horizon", type=int, default=6)
    p.add_argument("--season", type=int, default=24)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--shift", type=float, help="level shift added halfway through the tail "
                   "(default 3 × the standard deviation of the series' hourly changes)")
    p.add_argument("--lr", type=float, default=EdgeConfig.score_lr, help="score_lr")
    p.add_argument("--scorecast", type=float, help="score_scorecast (default: the daemon's)")
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
    plain = tail_table(rec, values, start, n, h, seed)
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
    at = start + (n - start) // 2
    shifted = values.copy()
    shifted[at:] += shift
    rec2 = replay(model, times, shifted, start, **settings)
    after = tail_table(rec2, shifted, at + 2 * season, min(n, at + 4 * season), h, seed)
    later = tail_table(rec2, shifted, at + 2 * season, n, h, seed)
    during = tail_table(rec2, shifted, at, at + 2 * season, h, seed)
    fired = [(i - at, up) for i, up in rec2.events if i >= at]
    result["alarms_without_shift"] = rec.events
    result["level_shift"] = {"shift": shift, "at": at, "events": fired,
                             "first_two_seasons": during, "seasons_2_to_4": after,
                             "from_2_seasons_to_end": later,
                             "alarms_before_shift": [(i, up) for i, up in rec2.events if i < at]}
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
    ls = r["level_shift"]
    print(f"\nDrift alarms without a shift (row, raised?): {r['alarms_without_shift']}")
    print(f"\nLevel shift of {ls['shift']:+.3f} at row {ls['at']}: drift events (periods after "
          f"the shift, raised?) {ls['events']}; alarms before it: {ls['alarms_before_shift']}")
    for name in ("first_two_seasons", "seasons_2_to_4", "from_2_seasons_to_end"):
        covs = [(row["0.8"]["coverage"], row["0.95"]["coverage"]) for row in
                ls[name]["horizon"] if row["n"]]
        if not covs:
            print(f"  coverage {name.replace('_', ' ')}: no forecasts (the series is too short)")
            continue
        print(f"  coverage {name.replace('_', ' ')}: 80 % "
              + " ".join(f"{a:.0%}" for a, _ in covs) + "; 95 % "
              + " ".join(f"{b:.0%}" for _, b in covs))


if __name__ == "__main__":
    sys.exit(main())
