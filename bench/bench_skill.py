"""Benchmark: forecast skill of statecast-train's default model beside classical peers.

    .venv/bin/python bench/bench_skill.py [--series NAME ...] [--quick] [--seeds 0 1 2]
        [--arima NAME ...] [--exact-mstl] [--keep DIR] [--out bench/results/skill.json]

For each series in SERIES (below) it trains statecast's default model in-process (only the data,
target, time column, horizon and season are given) and reads every held-out forecast from the run
folder (`forecasts.npz`, `metrics.json`): statecast's figures are never recomputed here, so the
benchmark follows the model as it changes. The classical peers (statsforecast: SeasonalNaive,
AutoETS, MSTL, AutoTheta, AutoARIMA) get the trainer's own gridded series (`load_dataset`: regular
grid, short gaps interpolated, long gaps split; the segment that holds the test origins). Each is
fitted once on the rows up to the first held-out origin and then steps over exactly the trainer's
origins without refitting (`cross_validation(step_size=1, refit=False)`).

Before scoring it checks that the origins line up: the cross-validation cutoffs equal the
trainer's `origin_time`, its actuals equal the trainer's, and persistence and seasonal naive
computed here from the gridded series equal the trainer's baselines, as does statsforecast's
SeasonalNaive. Any mismatch stops the run.

Reported per series: RMSE over all steps 1..H and per step, the ratio to the best classical
forecast (persistence, seasonal naive or a peer), fit seconds (statecast: `train_seconds` from
metrics.json; a peer: its whole cross-validation call, fit included) and the cost per
observation (statecast: one `session.run` of the exported batch-1 step graph; a peer: its
cross-validation seconds per origin, fit included; statsforecast's `forward` refilters the whole
history at each origin). Prints a table per series and a Markdown table, writes JSON.
A full run takes about 12 minutes on two shared cores, most of it MSTL and AutoTheta on
seattle-temps and uk-demand. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import pandas as pd

from trainer.config import TrainConfig
from trainer.data import Segment, load_dataset

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples/data"
MAX_GAP = 3  # the trainer's default: the grid the peers see is the one statecast trains on
TOL = 1e-6
Log = Callable[[str], None]


@dataclass(frozen=True)
class Series:
    """One benchmark series: the file, what to forecast and which peers to run."""

    name: str  # file stem under examples/data
    target: str
    time_col: str | None
    horizon: int
    seasons: tuple[int, ...]  # for the trainer and the peers; the first is seasonal naive's
    arima: bool  # AutoARIMA by default (False where it does not fit within minutes here)
    why_no_arima: str = ""
    # MSTL's STL options where statsmodels' defaults make a forecast cost seconds (--exact-mstl)
    stl: dict[str, int] = field(default_factory=dict)
    note: str = ""


SERIES: tuple[Series, ...] = (
    Series("seattle-temps", "temp", "date", 6, (24,), arima=False,
           why_no_arima="AutoARIMA(m=24) took 606 s to fit on 7,000 rows on this machine"),
    Series("seattle-weather", "temp_max", "date", 3, (7,), arima=True,
           note="season 7 (the trainer's default for days): four years are too few for the "
                "trainer to keep a 365-day season (it wants three in the training rows)"),
    Series("uk-demand-halfhourly", "demand_mw", "time", 6, (48, 336), arima=False,
           why_no_arima="m=48 over 3,200 rows; AutoARIMA(m=24) already took 606 s on "
                        "seattle-temps",
           # statsmodels' STL evaluates its LOESS at every row; with a 336 period (trend window
           # ~640) one MSTL forecast took 1.4-1.8 s, ~20 min for the 800 origins. Evaluating every
           # few rows and interpolating (what R's stl does by default) is 7x faster; on 40 of the
           # origins the RMSE moved by 0.4 % (218.1 -> 219.0 MW).
           stl={"seasonal_jump": 2, "trend_jump": 10, "low_pass_jump": 5}),
    Series("airpassengers-monthly", "passengers", "month", 12, (12,), arima=True),
    Series("co2-weekly", "co2", "date", 4, (52,), arima=False,
           why_no_arima="seasonal ARIMA with m=52 does not fit within minutes"),
)
NAMES = [s.name for s in SERIES]


class AlignmentError(Exception):
    """The peers' origins or baselines do not line up with the trainer's."""

    def __init__(self, series: str, what: str) -> None:
        super().__init__(f"{series}: {what}")


def rmse_scores(pred: np.ndarray, actual: np.ndarray) -> tuple[float, list[float]]:
    """RMSE over every step, and per horizon step; arrays are [n, H] or [n, H, K]."""
    p, a = np.asarray(pred, np.float64), np.asarray(actual, np.float64)
    err = p.reshape(*p.shape[:2], -1) - a.reshape(*a.shape[:2], -1)
    return math.sqrt(float(np.mean(err**2))), np.sqrt(np.mean(err**2, axis=(0, 2))).tolist()


# ---------------------------------------------------------------------------------------------
# statecast: train, then read everything from the run folder


def run_statecast(spec: Series, seed: int, epochs: int | None, out: Path) -> dict[str, Any]:
    """Train the default model; return what the run folder says (forecasts and metrics)."""
    from trainer.run import train

    kw: dict[str, Any] = {"seed": seed}
    if epochs is not None:
        kw["epochs"] = epochs
    cfg = TrainConfig(data=DATA / f"{spec.name}.csv", targets=[spec.target], out=out,
                      time_col=spec.time_col, horizon=spec.horizon,
                      season=list(spec.seasons), quiet=True, **kw)
    train(cfg, log=lambda _: None)
    metrics = json.loads((out / "metrics.json").read_text())
    run_spec = json.loads((out / "spec.json").read_text())
    with np.load(out / "forecasts.npz") as f:
        fc = {k: f[k] for k in f.files}
    return {"dir": out, "metrics": metrics, "spec": run_spec, "forecasts": fc}


def step_cost_us(run_dir: Path, tmp: Path) -> float:
    """Median µs of one step of the exported batch-1 graph (export verifies it against Keras)."""
    from export.api import export_model, step_latency_us

    path = tmp / "m.onnx"
    export_model(run_dir, path)
    return step_latency_us(path, repeats=3000)


# ---------------------------------------------------------------------------------------------
# the classical side: the trainer's grid, the checks, statsforecast


def test_segment(spec: Series, origin_time: np.ndarray) -> tuple[Segment, np.ndarray, str | None]:
    """The gridded segment that holds every test origin, the origins' row indices in it, and
    the grid's period."""
    ds = load_dataset(DATA / f"{spec.name}.csv", [spec.target], None, spec.time_col, None, None,
                      max_gap=MAX_GAP)
    seg = ds.segments[-1]
    idx = np.minimum(np.searchsorted(seg.times, origin_time), len(seg.times) - 1)
    missing = seg.times[idx] != origin_time
    if missing.any():
        raise AlignmentError(spec.name, f"{int(missing.sum())} trainer origins (first "
                                        f"{origin_time[missing][0]}) are not in the last "
                                        "gridded segment")
    if not np.array_equal(idx, np.arange(idx[0], idx[0] + len(idx))):
        raise AlignmentError(spec.name, "the trainer's origins are not consecutive grid rows")
    return seg, idx, ds.freq


def own_baselines(y: np.ndarray, idx: np.ndarray, horizon: int,
                  season: int) -> tuple[np.ndarray, np.ndarray]:
    """Persistence and seasonal naive (y[t+h-S*ceil(h/S)]) at origins `idx`, [n, H]."""
    h = np.arange(1, horizon + 1)[None, :]
    persistence = np.repeat(y[idx][:, None], horizon, axis=1)
    seasonal = y[idx[:, None] + h - season * np.ceil(h / season).astype(int)]
    return persistence, seasonal


def when(t: Any) -> str:
    """An origin for people: a timestamp to the minute, or a row position."""
    if np.issubdtype(np.asarray(t).dtype, np.datetime64):
        return str(np.datetime_as_string(t, unit="m")).replace("T", " ")
    return str(t)


def max_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64).reshape(len(a), -1)
                               - np.asarray(b, np.float64).reshape(len(b), -1))))


def peer_models(spec: Series, no_arima: str | None, exact_mstl: bool) -> list[Any]:
    """The statsforecast models for a series; AutoARIMA unless `no_arima` says why not."""
    from statsforecast.models import MSTL, AutoARIMA, AutoETS, AutoTheta, SeasonalNaive

    first = spec.seasons[0]
    multi = len(spec.seasons) > 1
    models: list[Any] = [SeasonalNaive(season_length=s, alias=f"SeasonalNaive{s}" if multi
                                       else "SeasonalNaive") for s in spec.seasons]
    models.append(AutoETS(season_length=first))
    models.append(MSTL(season_length=list(spec.seasons),
                       stl_kwargs=None if exact_mstl or not spec.stl else dict(spec.stl)))
    models.append(AutoTheta(season_length=first))
    if no_arima is None:
        models.append(AutoARIMA(season_length=first))
    return models


def describe(fitted: Any) -> str:
    """Which form an automatic model picked: cross-validation fits the object it is given (with
    n_jobs=1), on the rows up to the first origin."""
    name = type(fitted).__name__
    if name == "SeasonalNaive":
        return f"y[t+h-{fitted.season_length}k]"
    if not hasattr(fitted, "model_"):
        return "form not recorded"
    if name == "AutoETS":
        return str(fitted.model_["method"])
    if name == "AutoARIMA":
        from statsforecast.arima import arima_string

        return str(arima_string(fitted.model_)).strip()
    if name == "AutoTheta":
        m = fitted.model_
        decomp = f"{m['decomposition_type']} seasonal decomposition" if m["decompose"] \
            else "no seasonal decomposition"
        return f"{m['modeltype']}, {decomp}"
    if name == "MSTL":
        stl = f", STL {fitted.stl_kwargs}" if fitted.stl_kwargs else ""
        trend = getattr(fitted.trend_forecaster, "model_", {}).get("method", "?")
        return f"seasons {fitted.season_length}, trend {trend}{stl}"
    return name


def run_peer(model: Any, df: pd.DataFrame, freq: Any, horizon: int,
             origins: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Cross-validate one model over the trainer's origins: [n, H] forecasts and actuals, and
    the wall seconds of the whole call (its one fit included)."""
    from statsforecast import StatsForecast

    sf = StatsForecast(models=[model], freq=freq, n_jobs=1)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        cv = sf.cross_validation(df=df, h=horizon, step_size=1, n_windows=len(origins),
                                 refit=False)
    secs = time.perf_counter() - t0
    cv = cv.sort_values(["cutoff", "ds"], kind="stable")
    cutoffs = cv["cutoff"].to_numpy()[::horizon]
    if len(cv) != len(origins) * horizon or not np.array_equal(cutoffs, origins):
        raise AlignmentError(str(df["unique_id"].iloc[0]),
                             f"{model!r}: cross-validation cutoffs differ from the trainer's "
                             f"origins ({len(set(cutoffs.tolist()))} cutoffs, "
                             f"{len(origins)} origins)")
    pred = cv[repr(model)].to_numpy(np.float64).reshape(len(origins), horizon)
    actual = cv["y"].to_numpy(np.float64).reshape(len(origins), horizon)
    return pred, actual, secs


def bench_series(spec: Series, *, seeds: list[int], epochs: int | None, no_arima: str | None,
                 exact_mstl: bool, tmp: Path, log: Log) -> dict[str, Any]:
    """Every model on one series; raises AlignmentError if the origins do not line up."""
    h = spec.horizon
    runs = []
    for seed in seeds:
        t0 = time.perf_counter()
        runs.append(run_statecast(spec, seed, epochs, tmp / f"{spec.name}-seed{seed}"))
        log(f"  statecast seed {seed}: {runs[-1]['metrics']['epochs']} epochs, "
            f"{time.perf_counter() - t0:.1f} s")
    fc = runs[0]["forecasts"]
    origin_time = fc["origin_time"]
    for r in runs[1:]:
        if not np.array_equal(r["forecasts"]["origin_time"], origin_time):
            raise AlignmentError(spec.name, "two seeds forecast from different origins")
    if len(set(fc["series"].tolist())) != 1 or fc["pred"].shape[2] != 1:
        raise AlignmentError(spec.name, "expected one series and one target in forecasts.npz")
    us_step = step_cost_us(runs[0]["dir"], tmp / f"{spec.name}-export")
    # The seasons the trainer kept (it drops one with fewer than three cycles of training rows);
    # its seasonal-naive baseline uses the first.
    run_spec = runs[0]["spec"]
    trained = run_spec.get("seasons") or ([run_spec["season"]] if run_spec.get("season") else [])
    if "seasonal" in fc and not trained:
        raise AlignmentError(spec.name, "forecasts.npz has a seasonal baseline but spec.json "
                                        "names no season")

    seg, idx, freq_str = test_segment(spec, origin_time)
    y = seg.y[:, 0]
    actual = fc["actual"][..., 0]
    season = int(trained[0]) if trained else spec.seasons[0]
    persistence, seasonal = own_baselines(y, idx, h, season)
    checks: dict[str, Any] = {
        "origins": len(idx),
        "first_origin": when(origin_time[0]),
        "last_origin": when(origin_time[-1]),
        "segment_rows": len(y),
        "fit_rows": int(idx[0]) + 1,
        "actual_max_abs_diff": max_diff(y[idx[:, None] + np.arange(1, h + 1)], actual),
        "persistence_max_abs_diff": max_diff(persistence, fc["persistence"]),
        "seasonal_naive_season": season,
    }
    if "seasonal" in fc:
        checks["seasonal_max_abs_diff"] = max_diff(seasonal, fc["seasonal"])
    for key in ("actual_max_abs_diff", "persistence_max_abs_diff", "seasonal_max_abs_diff"):
        if key in checks and not checks[key] < TOL:
            raise AlignmentError(spec.name, f"{key} = {checks[key]:.3g}")
    log(f"  check: {len(idx)} trainer origins ({checks['first_origin']} .. "
        f"{checks['last_origin']}) are consecutive rows of the last segment ({len(y)} rows); "
        f"peers fit on {idx[0] + 1} rows")
    seasonal_check = (f"seasonal naive (S={season}) {checks['seasonal_max_abs_diff']:.2g}"
                      if "seasonal" in fc else "no seasonal baseline in forecasts.npz")
    log(f"  check: own baselines vs the trainer's, max |diff|: persistence "
        f"{checks['persistence_max_abs_diff']:.2g}, {seasonal_check}; actuals "
        f"{checks['actual_max_abs_diff']:.2g}")

    rows: list[dict[str, Any]] = []
    per_seed = [rmse_scores(r["forecasts"]["pred"], actual) for r in runs]
    rows.append({
        "model": "statecast", "kind": "statecast",
        "rmse": float(np.mean([s[0] for s in per_seed])),
        "per_horizon": np.mean([s[1] for s in per_seed], axis=0).tolist(),
        "rmse_per_seed": [s[0] for s in per_seed],
        "fit_seconds": float(np.mean([r["metrics"]["train_seconds"] for r in runs])),
        "us_per_obs": us_step,
        "detail": ", ".join(
            [str(runs[0]["metrics"].get("structure", "default model")),
             f"{np.mean([r['metrics']['epochs'] for r in runs]):.0f} epochs"]
            + ([f"mean of {len(runs)} seeds"] if len(runs) > 1 else [])),
        "structure_per_seed": [r["metrics"].get("structure") for r in runs],
        "selection": runs[0]["metrics"].get("selection"),
    })
    rmse, per = rmse_scores(fc["persistence"], actual)
    rows.append({"model": "Persistence", "kind": "baseline", "rmse": rmse, "per_horizon": per,
                 "fit_seconds": None, "us_per_obs": None, "detail": "the trainer's, y[t]"})

    times = seg.times[: idx[-1] + h + 1]
    df = pd.DataFrame({"unique_id": spec.name, "ds": times, "y": y[: idx[-1] + h + 1]})
    freq: Any = 1 if spec.time_col is None else freq_str
    models = peer_models(spec, no_arima, exact_mstl)
    skipped = [] if no_arima is None else [{"model": "AutoARIMA", "why": no_arima}]
    for model in models:
        alias = repr(model)
        try:
            pred, cv_actual, secs = run_peer(model, df, freq, h, origin_time)
            detail = describe(model)
        except AlignmentError:
            raise
        except Exception as exc:  # a peer that fails is reported, not fatal
            skipped.append({"model": alias, "why": f"{type(exc).__name__}: {exc}"[:200]})
            log(f"  {alias}: failed ({type(exc).__name__}: {exc})")
            continue
        diff = max_diff(cv_actual, actual)
        if not diff < TOL:
            raise AlignmentError(spec.name,
                                 f"{alias}: cross-validation actuals differ by {diff:.3g}")
        if "seasonal" in fc and alias in ("SeasonalNaive", f"SeasonalNaive{season}"):
            checks["sf_seasonal_naive_max_abs_diff"] = max_diff(pred, fc["seasonal"])
            if not checks["sf_seasonal_naive_max_abs_diff"] < TOL:
                raise AlignmentError(spec.name, "statsforecast's SeasonalNaive differs from the "
                                     "trainer's seasonal baseline by "
                                     f"{checks['sf_seasonal_naive_max_abs_diff']:.3g}")
            log(f"  check: statsforecast {alias} vs the trainer's seasonal naive: max |diff| "
                f"{checks['sf_seasonal_naive_max_abs_diff']:.2g}; cutoffs == origins")
        rmse, per = rmse_scores(pred, actual)
        rows.append({"model": alias, "kind": "peer", "rmse": rmse, "per_horizon": per,
                     "fit_seconds": secs, "us_per_obs": secs / len(idx) * 1e6,
                     "detail": detail})
        log(f"  {alias}: RMSE {sig(rmse)}, {secs:.1f} s ({detail})")
    best = min(r["rmse"] for r in rows if r["kind"] != "statecast")
    for r in rows:
        r["ratio_to_best_classical"] = r["rmse"] / best
    return {
        "file": f"examples/data/{spec.name}.csv", "target": spec.target,
        "time_col": spec.time_col, "horizon": h, "seasons": list(spec.seasons),
        "trainer_seasons": trained, "period": freq_str, "note": spec.note,
        "checks": checks, "models": rows, "skipped": skipped,
        "best_classical": min((r for r in rows if r["kind"] != "statecast"),
                              key=lambda r: r["rmse"])["model"],
    }


# ---------------------------------------------------------------------------------------------
# output


def fmt(v: float | None, spec: str) -> str:
    return "—" if v is None else format(v, spec)


def sig(v: float, digits: int = 4) -> str:
    """`digits` significant digits in fixed point: 0.1234, 12.34, 1,234."""
    if v == 0 or not math.isfinite(v):
        return f"{v:g}"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(v))))
    return f"{v:,.{decimals}f}"


def print_series(name: str, r: dict[str, Any]) -> None:
    h = r["horizon"]
    c = r["checks"]
    print(f"\n{name}: {r['target']}, H={h}, seasons {r['seasons']} (the trainer kept "
          f"{r['trainer_seasons']}), {c['origins']} origins ({c['first_origin']} .. "
          f"{c['last_origin']}), peers fitted on {c['fit_rows']} rows")
    if r["note"]:
        print(f"  note: {r['note']}")
    steps = "".join(f" {f'h{i + 1}':>8}" for i in range(h))
    print(f"  {'model':<17} {'RMSE all':>9}{steps} {'x best':>7} {'fit s':>8} {'µs/obs':>10}  form")
    for m in r["models"]:
        per = "".join(f" {sig(v):>8}" for v in m["per_horizon"])
        print(f"  {m['model']:<17} {sig(m['rmse']):>9}{per} {m['ratio_to_best_classical']:>7.3f} "
              f"{fmt(m['fit_seconds'], '8.1f'):>8} {fmt(m['us_per_obs'], '10,.1f'):>10}  "
              f"{m['detail']}")
    for s in r["skipped"]:
        print(f"  skipped {s['model']}: {s['why']}")


def markdown(results: dict[str, Any]) -> list[str]:
    lines = ["| series | H | model | RMSE 1..H | RMSE at H | × best classical | fit s | µs/obs |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in results["series"].items():
        for m in r["models"]:
            model = f"**{m['model']}**" if m["model"] == r["best_classical"] else m["model"]
            lines.append(
                f"| {name} | {r['horizon']} | {model} | {sig(m['rmse'])} "
                f"| {sig(m['per_horizon'][-1])} | {m['ratio_to_best_classical']:.3f} "
                f"| {fmt(m['fit_seconds'], '.1f')} | {fmt(m['us_per_obs'], ',.0f')} |")
    return lines


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("statsforecast", "tensorflow-cpu", "tensorflow", "keras", "onnxruntime",
                "pandas", "numpy"):
        with contextlib.suppress(PackageNotFoundError):
            out[pkg] = version(pkg)
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        out["statecast_commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
            check=True).stdout.strip()
    return out


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  bench/bench_skill.py --quick --series airpassengers-monthly   # seconds\n"
               "  bench/bench_skill.py --seeds 0 1 2 --series co2-weekly\n"
               f"series: {', '.join(NAMES)}")
    p.add_argument("--series", action="append", choices=NAMES, metavar="NAME",
                   help="run only this series (repeatable; default: all)")
    p.add_argument("--quick", action="store_true",
                   help="development: 5 epochs for statecast and no AutoARIMA (MSTL still "
                        "takes ~4 min on each of seattle-temps and uk-demand)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], metavar="SEED",
                   help="train statecast once per seed and average its RMSE (default: 0)")
    p.add_argument("--arima", action="append", default=[], choices=NAMES, metavar="NAME",
                   help="run AutoARIMA on this series even where it is skipped by default "
                        "(repeatable; overrides --quick)")
    p.add_argument("--exact-mstl", action="store_true",
                   help="statsmodels' default STL options everywhere (slow on uk-demand)")
    p.add_argument("--keep", type=Path, metavar="DIR",
                   help="keep the run folders and exported graphs in DIR")
    p.add_argument("--out", type=Path, default=ROOT / "bench/results/skill.json",
                   help="JSON results (default: %(default)s)")
    args = p.parse_args()
    chosen = [s for s in SERIES if not args.series or s.name in args.series]

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    started = time.perf_counter()
    results: dict[str, Any] = {
        "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
        "load_before": os.getloadavg(), "versions": versions(), "quick": args.quick,
        "seeds": args.seeds, "exact_mstl": args.exact_mstl, "series": {},
    }
    with tempfile.TemporaryDirectory(prefix="statecast-skill-") as scratch:
        tmp = args.keep or Path(scratch)
        tmp.mkdir(parents=True, exist_ok=True)
        for spec in chosen:
            log(f"{spec.name}:")
            t0 = time.perf_counter()
            no_arima = None if spec.name in args.arima else (
                spec.why_no_arima if not spec.arima else "--quick" if args.quick else None)
            try:
                r = bench_series(spec, seeds=args.seeds, epochs=5 if args.quick else None,
                                 no_arima=no_arima, exact_mstl=args.exact_mstl, tmp=tmp,
                                 log=log)
            except AlignmentError as exc:
                print(f"error: origins do not line up: {exc}", file=sys.stderr)
                return 1
            r["seconds"] = round(time.perf_counter() - t0, 1)
            results["series"][spec.name] = r
            print_series(spec.name, r)
    results["load_after"] = os.getloadavg()
    results["total_seconds"] = round(time.perf_counter() - started, 1)
    print()
    print("\n".join(markdown(results)))
    print(f"\ntotal {results['total_seconds']:.0f} s; load average before "
          f"{results['load_before'][0]:.2f}, after {results['load_after'][0]:.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
