"""Fit a model on a table and write the run folder: the trainer's one public entry point."""

from __future__ import annotations

import csv
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from trainer import __version__
from trainer.batches import (
    Prepared,
    origins,
    shape_targets,
    stateful_groups,
    targets_at,
    windows,
)
from trainer.config import TrainConfig
from trainer.data import Dataset, load_dataset, table_files
from trainer.errors import TrainError
from trainer.evaluate import (
    classification_metrics,
    conformal_seed,
    regression_metrics,
    seasonal_index,
)
from trainer.models import ModelShape, build_model, reset_states
from trainer.select import (
    TOGGLE_MARGIN,
    TOGGLES,
    Candidate,
    better,
    first_stage,
    name_of,
    rmse,
    toggle,
)
from trainer.spec import (
    FORECASTS_FILE,
    HISTORY_FILE,
    METRICS_FILE,
    MODEL_FILE,
    TAIL_FILE,
    RunSpec,
    Scaler,
)
from trainer.structure import Structure, default_calendar, default_seasons, epoch_seconds

Log = Callable[[str], None]


@dataclass
class Task:
    """How targets are encoded for the network and decoded back to user units."""

    kind: str  # regress | binary | categorical
    classes: list[str] | None
    threshold: float | None

    @property
    def categorical(self) -> bool:
        return self.kind == "categorical"

    def loss(self) -> str:
        return {"regress": "mse", "binary": "binary_crossentropy",
                "categorical": "sparse_categorical_crossentropy"}[self.kind]


def train(cfg: TrainConfig, log: Log = print) -> dict[str, Any]:
    """Load, split, scale, fit, evaluate and write `cfg.out`; returns the metrics."""
    started = time.perf_counter()
    task = _task(cfg)
    ds = load_dataset(
        cfg.data, cfg.targets, cfg.features, cfg.time_col, cfg.series_col, cfg.freq,
        cfg.max_gap, agg=cfg.agg, categorical_ok=cfg.task == "classify" and cfg.threshold is None,
        min_length=cfg.horizon + 2,
    )
    if cfg.task == "classify" and ds.classes is None and cfg.threshold is None:
        raise TrainError(
            f"--task classify needs --threshold X for the numeric target {cfg.targets[0]!r}"
        )
    if ds.classes is not None:
        task = Task("categorical", ds.classes, None)
    log(_describe(ds))
    mode = cfg.resolved_mode
    cfg = _small_data_batch(cfg, ds, mode, log)
    seasons = cfg.seasons or default_seasons(ds.freq)
    plan = _plan(cfg, ds, task, mode, seasons, log)
    seasons = plan.seasons
    # The same held-out origins for every candidate and baseline: enough history for the
    # longest season and the lookback.
    test_min = max(cfg.lookback - 1, max(seasons, default=1) - 1)

    import keras
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()
    tried: list[Candidate] = []
    best: Candidate | None = None

    def attempt(st: Structure | None, margin: float = 0.0) -> Candidate:
        nonlocal best
        keras.utils.set_random_seed(cfg.seed)
        t0 = time.perf_counter()
        segs, scaler, st = _prepare(ds, cfg, task, st)
        note = _roles_note(segs, cfg.horizon)
        if note and not tried:
            log(note)
        shape = _shape(cfg, ds, task, st)
        fit = _fit_stateful if mode == "stateful" else _fit_window
        model, history = fit(cfg, shape, task, segs, log if plan.single else _quiet)
        val = _val_rmse(cfg, task, segs, model, mode, test_min, scaler) if not plan.single \
            else None
        cand = Candidate(name_of(st), st, val, len(history), time.perf_counter() - t0,
                         (model, history, segs, scaler))
        tried.append(cand)
        if not plan.single:
            v = f"{val:.4g}" if val is not None else "n/a"
            log(f"candidate {cand.name:<18} validation RMSE {v:>9}  "
                f"({cand.epochs} epochs, {cand.seconds:.1f}s; {_what(st)})")
        if better(cand, best, margin):
            if best is not None:
                best.fitted = None  # free the loser's model
            best = cand
        else:
            cand.fitted = None
        return cand

    for st in plan.first:
        attempt(st)
    structured = [c for c in tried if c.structure is not None]
    if plan.second and structured:
        top = min(structured, key=lambda c: c.val_rmse if c.val_rmse is not None else np.inf)
        for which in TOGGLES:
            assert top.structure is not None
            st = toggle(top.structure, which, plan.allow_log)
            if st is not None:
                cand = attempt(st, TOGGLE_MARGIN)
                if better(cand, top, TOGGLE_MARGIN):
                    top = cand
    assert best is not None and best.fitted is not None
    model, history, segs, scaler = best.fitted
    chosen: Structure | None = best.structure
    members = 1
    ensemble: dict[str, Any] | None = None
    if cfg.ensemble > 1 and task.kind == "regress" and cfg.arch == "lstm" \
            and mode == "stateful":
        model, members, ensemble = _ensemble(cfg, ds, task, mode, test_min, best, log)
    metrics, curves = _evaluate(cfg, task, segs, model, mode, test_min, scaler, seasons)
    epochs = len(history)
    metrics.update(
        epochs=epochs,
        train_seconds=round(time.perf_counter() - started, 2),
        seconds_per_epoch=float(np.median([h["seconds"] for h in history])),
        mode=mode, arch=cfg.arch, structure=name_of(chosen),
        structure_description=_what(chosen), ensemble_members=members,
    )
    if ensemble is not None:
        metrics["ensemble"] = ensemble
    if not plan.single:
        metrics["selection"] = _selection(cfg, task, segs, mode, test_min, seasons, tried,
                                          best, log)
    _verdict(metrics, log)
    if task.kind == "regress":
        errs = _val_errors(cfg, task, segs, model, mode, test_min, scaler)
        if errs is not None and len(errs):
            metrics["conformal"] = conformal_seed(errs)

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    model.save(out / MODEL_FILE)
    spec = RunSpec(
        arch=cfg.arch, mode=mode, task=cfg.task, features=ds.features, targets=ds.targets,
        horizon=cfg.horizon, lookback=cfg.lookback, layers=cfg.layers, units=cfg.units,
        dropout=cfg.dropout, scaler=scaler, freq=ds.freq, max_gap=cfg.max_gap,
        classes=task.classes, threshold=task.threshold,
        season=seasons[0] if seasons else None, seasons=seasons,
        batch_size=cfg.resolved_batch, seed=cfg.seed, data=_fingerprint(cfg, ds),
        residual=chosen is None and bool(_residual_features(ds, cfg, task)),
        structure=chosen.to_dict() if chosen is not None else None, ensemble=members,
        unit=cfg.unit, device_class=cfg.device_class, statecast_version=__version__,
        grid=_grid(ds),
    )
    spec.save(out)
    (out / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
    with open(out / HISTORY_FILE, "w", newline="") as fh:
        writer = csv.DictWriter(
            fh, fieldnames=["epoch", "loss", "val_loss", "seconds", "fit_seconds"])
        writer.writeheader()
        writer.writerows(history)
    tail = next(s for s in segs if len(origins(s, "test", cfg.horizon)))
    first = int(np.argmax(tail.gpos >= tail.test_start))
    # From the start of the held-out tail's segment when it is short enough, so the exporter's
    # proof steps through the seasonal memory filling up as an edge stream does.
    first = 0 if first < 2000 else first
    assert tail.raw_x is not None
    tail_t = epoch_seconds(tail.times)
    tail_arrays = {"x": tail.raw_x[first:first + 2500].astype(np.float32)}
    if tail_t is not None:
        tail_arrays["t"] = tail_t[first:first + 2500]
    np.savez(out / TAIL_FILE, **tail_arrays)
    np.savez(out / FORECASTS_FILE, **curves.pop("forecasts"))
    from trainer.report import write_report

    write_report(out, history, curves, spec)
    return metrics


def _ensemble(cfg: TrainConfig, ds: Dataset, task: Task, mode: str, min_history: int,
              best: Candidate, log: Log) -> tuple[Any, int, dict[str, Any]]:
    """Train the chosen candidate again with other seeds and average them inside one wider
    LSTM (trainer/ensemble.py); keep the ensemble only if it forecasts better on validation."""
    import keras

    from trainer.ensemble import merge

    model, _, segs, scaler = best.fitted
    shape = _shape(cfg, ds, task, best.structure)
    t0 = time.perf_counter()
    members = [model]
    for k in range(1, cfg.ensemble):
        keras.utils.set_random_seed(cfg.seed + k)
        members.append(_fit_stateful(cfg, shape, task, segs, _quiet)[0])
    merged = merge(members, shape)
    val = _val_rmse(cfg, task, segs, merged, mode, min_history, scaler)
    single = best.val_rmse
    kept = val is not None and (single is None or val < single)
    v = f"{val:.4g}" if val is not None else "n/a"
    log(f"ensemble of {cfg.ensemble} seeds: validation RMSE {v} "
        f"({time.perf_counter() - t0:.1f}s); {'kept' if kept else 'not kept: one seed did better'}")
    info = {"members": cfg.ensemble, "val_rmse": val, "single_val_rmse": single, "kept": kept,
            "seconds": round(time.perf_counter() - t0, 2)}
    return (merged, cfg.ensemble, info) if kept else (model, 1, info)


SMALL_BATCH = 16


def _small_data_batch(cfg: TrainConfig, ds: Dataset, mode: str, log: Log) -> TrainConfig:
    """Stateful training at the default batch of 64 streams gives a small series only a couple
    of gradient steps per epoch (each stream is a few lookbacks long); below 3 lookbacks of
    training rows per stream, train 16 streams at a time instead."""
    if cfg.batch_size is not None or mode != "stateful":
        return cfg
    rows = sum(len(s.x) for s in ds.segments) * (1 - cfg.test_frac - cfg.val_frac)
    if rows / cfg.resolved_batch >= 3 * cfg.lookback:
        return cfg
    log(f"{rows:.0f} training rows: stateful batches of {SMALL_BATCH} streams, so each epoch "
        "takes several gradient steps (give --batch-size to choose)")
    return replace(cfg, batch_size=SMALL_BATCH)


def _quiet(_: str) -> None:
    return None


def _what(st: Structure | None) -> str:
    return st.describe() if st is not None else "plain LSTM, change from the last value"


@dataclass
class Plan:
    """The candidates a run tries (a single one: no selection)."""

    first: list[Structure | None]
    second: bool
    allow_log: bool
    seasons: list[int]

    @property
    def single(self) -> bool:
        return len(self.first) == 1 and not self.second


def _plan(cfg: TrainConfig, ds: Dataset, task: Task, mode: str, seasons: list[int],
          log: Log) -> Plan:
    """Decide which structures to try; explain why none applies when the user asked for one."""
    why_not = None
    if task.kind != "regress":
        why_not = "a classifier"
    elif cfg.arch != "lstm":
        why_not = f"--arch {cfg.arch}"
    elif mode != "stateful":
        why_not = "--mode window"
    elif not _residual_features(ds, cfg, task) or cfg.residual is False:
        why_not = "a target that is not also a feature" if cfg.residual is not False \
            else "--no-residual"
    rows = min(sum(len(s.x) for s in ds.segments if s.series == n) for n in ds.series_names())
    usable = [s for s in seasons if s * 3 <= rows * (1 - cfg.test_frac - cfg.val_frac)]
    if len(usable) < len(seasons):
        log(f"season(s) {sorted(set(seasons) - set(usable))} left out: fewer than three seasons "
            "of training rows")
    seasons = usable
    if why_not is not None or cfg.structure == "plain":
        if cfg.structure == "seasonal":
            raise TrainError(f"--structure seasonal needs a regression LSTM trained stateful on "
                             f"targets that are also features, not {why_not}")
        if cfg.calendar:
            raise TrainError("--calendar needs the seasonal structure (see --structure)")
        return Plan([None], False, False, seasons)
    if cfg.calendar and cfg.time_col is None:
        raise TrainError("--calendar needs timestamps; give --time-col")
    calendar = default_calendar(ds.freq) if cfg.calendar is not False and cfg.time_col else []
    # A phase the training part never went round twice is extrapolated on the held-out tail
    # (a year's day-of-year from nine months of data): leave such periods out.
    span = _train_span_seconds(ds, cfg)
    dropped = [p for p in calendar if span < 2 * p]
    calendar = [p for p in calendar if span >= 2 * p]
    if dropped and cfg.calendar:
        log(f"calendar period(s) of {', '.join(f'{p / 86400:g} days' for p in dropped)} left "
            "out: the training part does not cover two of them")
    train_y = np.concatenate([s.y for s in ds.segments])
    positive = bool(np.all(train_y > 0))
    if cfg.log_target and not positive:
        raise TrainError("--log needs targets that are always above zero")
    targets = [ds.features.index(t) for t in ds.targets]
    base = Structure(features=list(ds.features), targets=targets, horizon=cfg.horizon,
                     seasons=seasons, base_lag=seasons[0] if seasons else 1,
                     log=bool(cfg.log_target), level=False, calendar=calendar,
                     ahead=bool(seasons))
    if cfg.structure == "seasonal":
        return Plan([replace(base, drift=bool(seasons))], False, False, seasons)
    first = first_stage(base, seasons, include_plain=True)
    return Plan(first, True, positive and cfg.log_target is None, seasons)


def _train_span_seconds(ds: Dataset, cfg: TrainConfig) -> float:
    """How much time the training part of the shortest series covers (0 without times)."""
    spans = []
    for name in ds.series_names():
        times = np.concatenate([s.times for s in ds.segments if s.series == name])
        secs = epoch_seconds(times)
        if secs is None or len(secs) < 2:
            return 0.0
        n_train = int(len(secs) * (1 - cfg.test_frac - cfg.val_frac))
        spans.append(float(secs[max(n_train - 1, 0)] - secs[0]))
    return min(spans, default=0.0)


def _shape(cfg: TrainConfig, ds: Dataset, task: Task, st: Structure | None) -> ModelShape:
    return ModelShape(
        arch=cfg.arch,
        features=len(st.input_names()) if st is not None else len(ds.features),
        horizon=cfg.horizon,
        per_step=len(ds.targets) if task.kind == "regress" else (
            1 if task.kind == "binary" else len(task.classes or [])),
        activation={"regress": None, "binary": "sigmoid", "categorical": "softmax"}[task.kind],
        layers=cfg.layers, units=cfg.units, dropout=cfg.dropout,
    )


def _val_errors(cfg: TrainConfig, task: Task, segs: list[Prepared], model: Any, mode: str,
                min_history: int, scaler: Scaler) -> np.ndarray | None:
    """Forecast minus actual at the validation origins, [n, H, K] in target units (each segment
    run from its start); None without validation origins."""
    h = cfg.horizon
    per_seg = [origins(s, "val", h, min_history=min_history) for s in segs]
    if not any(len(ts) for ts in per_seg):
        return None
    raw = _raw_outputs(cfg, segs, model, mode, per_seg)
    errs = []
    for s, ts, out in zip(segs, per_seg, raw, strict=True):
        if len(ts) and out is not None:
            pred = _decode_at(task, s, out, ts, h, scaler)
            errs.append(pred - targets_at(s.raw_y, ts, h))
    return np.concatenate(errs) if errs else None


def _val_rmse(cfg: TrainConfig, task: Task, segs: list[Prepared], model: Any, mode: str,
              min_history: int, scaler: Scaler) -> float | None:
    """RMSE in target units on the validation origins, each segment run from its start."""
    errs = _val_errors(cfg, task, segs, model, mode, min_history, scaler)
    return rmse(errs.ravel()) if errs is not None else None


def _selection(cfg: TrainConfig, task: Task, segs: list[Prepared], mode: str, min_history: int,
               seasons: list[int], tried: list[Candidate], best: Candidate,
               log: Log) -> dict[str, Any]:
    """What was tried, the baselines on the same validation origins, and the verdict."""
    h = cfg.horizon
    errs: dict[str, list[np.ndarray]] = {"persistence": []}
    for s_len in seasons:
        errs[f"seasonal_{s_len}"] = []
    for s in segs:
        ts = origins(s, "val", h, min_history=min_history)
        if not len(ts):
            continue
        actual = targets_at(s.raw_y, ts, h)
        errs["persistence"].append((s.raw_y[ts][:, None, :] - actual).ravel())
        for s_len in seasons:
            errs[f"seasonal_{s_len}"].append(
                (s.raw_y[seasonal_index(ts, h, s_len)] - actual).ravel())
    baselines = {k: rmse(np.concatenate(v)) for k, v in errs.items() if v}
    best_base = min(baselines, key=lambda k: baselines[k]) if baselines else None
    beats = None
    if best_base is not None and best.val_rmse is not None:
        beats = best.val_rmse < baselines[best_base]
        log(f"chose {best.name} (validation RMSE {best.val_rmse:.4g}; best baseline "
            f"{best_base} {baselines[best_base]:.4g})")
    return {
        "candidates": [c.summary() for c in tried],
        "chosen": best.name,
        "val_baselines": baselines,
        "val_best_baseline": best_base,
        "val_beats_best_baseline": beats,
    }


def _verdict(metrics: dict[str, Any], log: Log) -> None:
    """Say plainly, in the metrics and the log, whether the model beat every naive baseline."""
    if metrics.get("task") != "regress":
        return
    baselines = {"persistence": metrics["persistence_rmse"]}
    for s_len, v in (metrics.get("seasonal_rmse_by_season") or {}).items():
        baselines[f"seasonal_{s_len}"] = v
    best = min(baselines, key=lambda k: baselines[k])
    metrics["best_baseline"] = best
    metrics["best_baseline_rmse"] = baselines[best]
    metrics["beats_best_baseline"] = bool(metrics["rmse"] < baselines[best])
    if not metrics["beats_best_baseline"]:
        log(f"WARNING: the model (RMSE {metrics['rmse']:.4g}) does not beat the {best} baseline "
            f"({baselines[best]:.4g}) on the held-out tail")


def _grid(ds: Dataset) -> dict[str, Any] | None:
    """How the data were put on the grid, for the manifest (None when there was no time column
    or the period is one the edge cannot place, such as month ends)."""
    if ds.origin is None or ds.freq is None or ds.freq.endswith(("M", "ME")):
        return None
    return {"origin": ds.origin, "closed": "right", "label": "right",
            "aggregation": dict(ds.agg), "fill": "linear"}


def _fingerprint(cfg: TrainConfig, ds: Dataset) -> dict[str, Any]:
    """Identify the training data: file (or directory) name, sha256 and what was read from it.
    A directory's digest covers the name and bytes of each table in it, in name order."""
    h = hashlib.sha256()
    directory = Path(cfg.data).is_dir()
    for f in table_files(cfg.data):
        if directory:
            h.update(f.name.encode() + b"\0")
        h.update(f.read_bytes())
    digest = h.hexdigest()
    return {
        "file": Path(cfg.data).name,
        "sha256": digest,
        "rows": int(sum(len(s.x) for s in ds.segments)),
        "series": ds.series_names(),
        "segments": len(ds.segments),
        "time_col": cfg.time_col,
        "series_col": cfg.series_col,
    }


def _task(cfg: TrainConfig) -> Task:
    if cfg.task == "regress":
        return Task("regress", None, None)
    if cfg.threshold is not None:
        thr = cfg.threshold
        t = cfg.targets[0]
        return Task("binary", [f"{t}<={thr:g}", f"{t}>{thr:g}"], thr)
    return Task("categorical", None, None)


def _describe(ds: Dataset) -> str:
    rows = sum(len(s.x) for s in ds.segments)
    parts = [
        f"data: {rows} rows in {len(ds.segments)} segment(s) of {len(ds.series_names())} "
        f"series, period {ds.freq or 'n/a'}",
    ]
    if ds.interpolated:
        parts.append(f"{ds.interpolated} missing row(s) interpolated")
    if ds.splits:
        parts.append(f"{ds.splits} long gap(s) split")
    parts += ds.notes
    return "; ".join(parts)


def _prepare(ds: Dataset, cfg: TrainConfig, task: Task, st: Structure | None = None
             ) -> tuple[list[Prepared], Scaler, Structure | None]:
    """Place each segment in its series, fit the scalers on training rows only, scale.

    With a structure the network's inputs are its derived inputs and its labels corrections to
    the base forecast; their scalers are fitted here and returned inside the structure.
    """
    placed: list[tuple[Any, np.ndarray, int, int]] = []
    for name in ds.series_names():
        parts = [s for s in ds.segments if s.series == name]
        total = sum(len(s.x) for s in parts)
        n_test = max(cfg.horizon + 1, round(cfg.test_frac * total))
        n_val = max(cfg.horizon + 1, round(cfg.val_frac * total))
        need = cfg.lookback + cfg.horizon + n_test + n_val
        if total < need:
            raise TrainError(
                f"series {name!r} has {total} rows, fewer than lookback + horizon + the "
                f"validation and test tails ({need})"
            )
        test_start, val_start = total - n_test, total - n_test - n_val
        offset = 0
        for s in parts:
            placed.append((s, np.arange(offset, offset + len(s.x)), val_start, test_start))
            offset += len(s.x)
    train_x = np.concatenate([s.x[g < v] for s, g, v, _ in placed])
    train_y = np.concatenate([s.y[g < v] for s, g, v, _ in placed])
    if len(train_x) == 0:
        raise TrainError("no training rows are left before the validation and test tails")
    x_mean, x_scale = train_x.mean(0), _safe_std(train_x)
    if task.kind == "regress":
        y_mean, y_scale = train_y.mean(0), _safe_std(train_y)
    else:
        y_mean, y_scale = np.zeros(train_y.shape[1]), np.ones(train_y.shape[1])
    scaler = Scaler(x_mean.tolist(), x_scale.tolist(), y_mean.tolist(), y_scale.tolist())
    if st is not None:
        segs, st = _prepare_structured(placed, cfg, st)
        return segs, scaler, st
    residual = _residual_features(ds, cfg, task)
    segs = []
    for s, g, v, t in placed:
        x = ((s.x - x_mean) / x_scale).astype(np.float32)
        if task.kind == "regress":
            lab = ((s.y - y_mean) / y_scale).astype(np.float32)
        elif task.kind == "binary":
            lab = (s.y > task.threshold).astype(np.float32)
        else:
            lab = s.y.astype(np.float32)
        base = None
        if residual:
            base = ((s.x[:, residual] - y_mean) / y_scale).astype(np.float32)
        segs.append(Prepared(s.series, x, lab, s.y, s.times, g, v, t, base, raw_x=s.x))
    return segs, scaler, None


def _prepare_structured(placed: list[tuple[Any, np.ndarray, int, int]], cfg: TrainConfig,
                        st: Structure) -> tuple[list[Prepared], Structure]:
    """Derived inputs, z targets and base forecasts per segment; scalers from training rows."""
    h = cfg.horizon
    parts = []
    for s, g, v, t in placed:
        times = epoch_seconds(s.times) if st.calendar else None
        parts.append((s, g, v, t, st.derive(s.x, times), st.z(s.x), st.base(s.x)))
    mem = st.memory
    rows = [d[(g < v) & (np.arange(len(d)) >= mem)] for _, g, v, _, d, _, _ in parts]
    if not sum(len(r) for r in rows):  # segments shorter than the memory: use what there is
        rows = [d[g < v] for _, g, v, _, d, _, _ in parts]
    train_d = np.concatenate(rows)
    resid = []
    for s, g, v, t, _, z, zb in parts:
        probe = Prepared(s.series, np.zeros((len(z), 0), np.float32), z, s.y, s.times, g, v, t)
        ts = origins(probe, "train", h)
        if len(ts):
            resid.append(targets_at(z, ts, h) - zb[ts])
    if not resid:
        raise TrainError("no training rows are left before the validation and test tails")
    r = np.concatenate(resid)  # [n, H, K]
    st = replace(
        st,
        d_mean=train_d.mean(0).tolist(), d_scale=_safe_std(train_d).tolist(),
        r_mean=r.mean(0).ravel().tolist(),
        r_scale=_safe_std(r.reshape(-1, r.shape[-1])).tolist(),
    )
    d_mean, d_scale = np.asarray(st.d_mean), np.asarray(st.d_scale)
    segs = [
        Prepared(s.series, ((d - d_mean) / d_scale).astype(np.float32), z, s.y, s.times, g, v, t,
                 raw_x=s.x, structure=st, zbase=zb)
        for s, g, v, t, d, z, zb in parts
    ]
    return segs, st


def _roles_note(segs: list[Prepared], horizon: int) -> str | None:
    """Segments too short for a role are left out of it: say how many when some are."""
    n = len(segs)
    counts = {role: sum(bool(len(origins(s, role, horizon))) for s in segs)
              for role in ("train", "val", "test")}
    if n < 2 or all(c == n for c in counts.values()):
        return None
    return (f"segments used: {counts['train']} of {n} for training, {counts['val']} for "
            f"validation, {counts['test']} for the held-out tail (the others are too short for "
            "a complete forecast there, or lie wholly in another part)")


def _residual_features(ds: Dataset, cfg: TrainConfig, task: Task) -> list[int]:
    """Feature index of each target when the network learns changes from the current value."""
    if cfg.residual is False or task.kind != "regress":
        return []
    missing = [t for t in ds.targets if t not in ds.features]
    if missing and cfg.residual is None:
        return []
    if missing:
        raise TrainError(
            f"--residual needs every target among the features; {missing[0]!r} is not"
        )
    return [ds.features.index(t) for t in ds.targets]


def _safe_std(a: np.ndarray) -> np.ndarray:
    std = a.std(0)
    return np.where(std > 1e-12, std, 1.0)


def _numpy_loss(task: Task, pred: np.ndarray, y: np.ndarray) -> float:
    eps = 1e-7
    if task.kind == "regress":
        return float(np.mean((pred - y) ** 2))
    if task.kind == "binary":
        p = np.clip(pred, eps, 1 - eps)
        return float(np.mean(-(y * np.log(p) + (1 - y) * np.log(1 - p))))
    probs = pred.reshape(*y.shape, -1)
    p = np.take_along_axis(probs, y[..., None].astype(int), axis=-1)
    return float(np.mean(-np.log(np.clip(p, eps, 1.0))))


def _sequence_outputs(
    model: Any, segs: list[Prepared], starts: list[int] | None = None
) -> list[np.ndarray]:
    """Run the inference model over each segment from zero state (from row `starts[i]`, else 0)
    in one padded batch; padding sits at the end, so it never affects the outputs kept.

    Returns outputs aligned with the segment's rows (rows before the start are zeros).
    """
    import tensorflow as tf

    starts = starts or [0] * len(segs)
    longest = max(len(s.x) - a for s, a in zip(segs, starts, strict=True))
    x = np.zeros((len(segs), longest, segs[0].x.shape[1]), np.float32)
    for i, (s, a) in enumerate(zip(segs, starts, strict=True)):
        x[i, : len(s.x) - a] = s.x[a:]
    run = getattr(model, "_statecast_fn", None)
    if run is None:  # eager Keras runs an LSTM ~100x slower than a traced function
        # A free time axis also keeps TimeDistributed from unrolling one copy per step.
        run = tf.function(lambda t: model(t, training=False),
                          input_signature=[tf.TensorSpec([None, None, x.shape[2]], tf.float32)])
        model._statecast_fn = run
    out = np.asarray(run(tf.constant(x)))
    result = []
    for i, (s, a) in enumerate(zip(segs, starts, strict=True)):
        full = np.zeros((len(s.x), *out.shape[2:]), out.dtype)
        full[a:] = out[i, : len(s.x) - a]
        result.append(full)
    return result


def _progress(log: Log, epoch: int, total: int, loss: float, val: float | None, secs: float,
              quiet: bool, fit_secs: float | None = None) -> dict[str, Any]:
    """Log one line per epoch; `fit_secs` is the part spent on gradient steps alone."""
    if not quiet:
        v = f"{val:.4f}" if val is not None else "n/a"
        log(f"epoch {epoch}/{total}  loss {loss:.4f}  val_loss {v}  {secs:.2f}s")
    return {"epoch": epoch, "loss": loss, "val_loss": val, "seconds": round(secs, 4),
            "fit_seconds": round(fit_secs if fit_secs is not None else secs, 4)}


def _fit_stateful(
    cfg: TrainConfig, shape: ModelShape, task: Task, segs: list[Prepared], log: Log
) -> tuple[Any, list[dict[str, Any]]]:
    """Truncated BPTT: every batch advances B streams by `lookback` steps, state carried."""
    import keras

    batch, lb = cfg.resolved_batch, cfg.lookback
    trainer_model = build_model(shape, sequences=True, lookback=lb, batch_size=batch,
                                stateful=True)
    trainer_model.compile(optimizer=keras.optimizers.Adam(cfg.learning_rate, clipnorm=1.0),
                          loss=task.loss())
    infer = build_model(shape, sequences=True)
    groups = stateful_groups(segs, batch, lb, cfg.horizon, cfg.arch, task.categorical,
                             burn_in=lb)
    if not groups:
        raise TrainError("no training rows are left before the validation and test tails")
    val_idx = [origins(s, "val", cfg.horizon) for s in segs]
    val_y = [shape_targets(s.labels(ts, cfg.horizon), cfg.arch, task.categorical)
             for s, ts in zip(segs, val_idx, strict=True)]
    # Validation warms each stream on `warm` rows before its first validation origin instead of
    # the whole history: an approximation that is only used to pick the epoch to keep.
    warm = max(8 * lb, 200)
    val_starts = [max(0, int(v[0]) - warm) if len(v) else 0 for v in val_idx]
    history: list[dict[str, Any]] = []
    best, best_weights, waited = np.inf, None, 0
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.perf_counter()
        total, weight = 0.0, 0.0
        for group in groups:
            reset_states(trainer_model)
            for xb, yb, wb in group.batches(lb):
                w = float(wb.sum())
                if w == 0.0:
                    trainer_model.predict_on_batch(xb)  # advance the state, learn nothing
                    continue
                # Weights must have the rank of the per-element loss (one per horizon step
                # for encdec), or Keras refuses to broadcast them.
                loss_rank = yb.ndim if task.categorical else yb.ndim - 1
                wb = wb.reshape(wb.shape + (1,) * (loss_rank - wb.ndim))
                loss = trainer_model.train_on_batch(xb, yb, sample_weight=wb)
                total += float(np.asarray(loss).ravel()[0]) * w
                weight += w
        fit_secs = time.perf_counter() - t0
        for a, b in zip(infer.trainable_weights, trainer_model.trainable_weights, strict=True):
            a.assign(b)
        val = None
        if any(len(v) for v in val_idx):
            outs = _sequence_outputs(infer, segs, val_starts)
            preds = np.concatenate([o[ts] for o, ts in zip(outs, val_idx, strict=True)])
            val = _numpy_loss(task, preds, np.concatenate(val_y))
        history.append(_progress(log, epoch, cfg.epochs, total / max(weight, 1.0), val,
                                 time.perf_counter() - t0, cfg.quiet, fit_secs))
        score = val if val is not None else total / max(weight, 1.0)
        if score < best - 1e-6:
            best, waited = score, 0
            best_weights = [w.numpy().copy() for w in infer.trainable_weights]
        else:
            waited += 1
            if waited >= cfg.patience:
                if not cfg.quiet:
                    log(f"early stop: no validation improvement for {cfg.patience} epochs")
                break
    if best_weights is not None:
        for var, value in zip(infer.trainable_weights, best_weights, strict=True):
            var.assign(value)
    return infer, history


def _fit_window(
    cfg: TrainConfig, shape: ModelShape, task: Task, segs: list[Prepared], log: Log
) -> tuple[Any, list[dict[str, Any]]]:
    """Independent windows of `lookback` rows from zero state, shuffled, large batch."""
    import keras

    lb = cfg.lookback
    model = build_model(shape, sequences=False, lookback=lb)
    model.compile(optimizer=keras.optimizers.Adam(cfg.learning_rate, clipnorm=1.0),
                  loss=task.loss())

    def tensors(role: str) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for s in segs:
            ts = origins(s, role, cfg.horizon, min_history=lb - 1)
            if len(ts):
                xs.append(windows(s, ts, lb))
                ys.append(shape_targets(s.labels(ts, cfg.horizon), cfg.arch,
                                        task.categorical))
        if not xs:
            return np.zeros((0, lb, shape.features), np.float32), np.zeros((0,))
        return np.concatenate(xs), np.concatenate(ys)

    x_tr, y_tr = tensors("train")
    x_va, y_va = tensors("val")
    if len(x_tr) == 0:
        raise TrainError("no training windows are left before the validation and test tails")
    history: list[dict[str, Any]] = []

    class Progress(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            logs = logs or {}
            val = logs.get("val_loss")
            history.append(_progress(log, epoch + 1, cfg.epochs, float(logs["loss"]),
                                     float(val) if val is not None else None,
                                     time.perf_counter() - self.t0, cfg.quiet))

    has_val = len(x_va) > 0
    stop = keras.callbacks.EarlyStopping(
        monitor="val_loss" if has_val else "loss", patience=cfg.patience,
        restore_best_weights=True,
    )
    model.fit(x_tr, y_tr, batch_size=cfg.resolved_batch, epochs=cfg.epochs, shuffle=True,
              validation_data=(x_va, y_va) if has_val else None, callbacks=[Progress(), stop],
              verbose=0)
    return model, history


def _decode(
    task: Task, out: np.ndarray, n: int, horizon: int, scaler: Scaler, base: np.ndarray | None
) -> np.ndarray:
    """Model outputs at n origins → [n, H, K] target units, or [n, H, C] probabilities."""
    if task.kind == "regress":
        y = out.reshape(n, horizon, -1)
        if base is not None:
            y = y + base[:, None, :]
        return y * np.asarray(scaler.y_scale) + np.asarray(scaler.y_mean)
    if task.kind == "binary":
        p = out.reshape(n, horizon)
        return np.stack([1.0 - p, p], axis=-1)
    return out.reshape(n, horizon, -1)


def _decode_at(task: Task, seg: Prepared, out: np.ndarray, ts: np.ndarray, horizon: int,
               scaler: Scaler) -> np.ndarray:
    """The network's outputs at origins `ts` of `seg` in target units (or probabilities)."""
    if seg.structure is not None:
        assert seg.zbase is not None
        return seg.structure.decode(out, seg.zbase[ts])
    base = seg.base[ts] if seg.base is not None else None
    return _decode(task, out, len(ts), horizon, scaler, base)


def _raw_outputs(cfg: TrainConfig, segs: list[Prepared], model: Any, mode: str,
                 per_seg: list[np.ndarray]) -> list[np.ndarray | None]:
    """The network's outputs at each segment's origins, run the way the edge runs it."""
    if mode == "stateful":
        outs = _sequence_outputs(model, segs)
        return [o[ts] for o, ts in zip(outs, per_seg, strict=True)]
    return [
        np.asarray(model.predict(windows(s, ts, cfg.lookback), batch_size=1024, verbose=0))
        if len(ts) else None
        for s, ts in zip(segs, per_seg, strict=True)
    ]


def _evaluate(
    cfg: TrainConfig, task: Task, segs: list[Prepared], model: Any, mode: str, test_min: int,
    scaler: Scaler, seasons: list[int],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Score the tail the way the edge runs the model; return metrics and plot curves.

    The seasonal-naive baseline uses the first season; every season's is in the metrics too.
    """
    h = cfg.horizon
    per_seg = [origins(s, "test", h, min_history=test_min) for s in segs]
    if not any(len(ts) for ts in per_seg):
        raise TrainError("the held-out tail has no complete forecasts; use a larger --test-frac")
    raw = _raw_outputs(cfg, segs, model, mode, per_seg)
    preds, actual, persist = [], [], []
    by_season: dict[int, list[np.ndarray]] = {s_len: [] for s_len in seasons}
    when, names = [], []
    for s, ts, out in zip(segs, per_seg, raw, strict=True):
        if not len(ts):
            continue
        assert out is not None
        when.append(s.times[ts])
        names += [s.series] * len(ts)
        preds.append(_decode_at(task, s, out, ts, h, scaler))
        actual.append(targets_at(s.raw_y if task.kind == "regress" else s.lab, ts, h))
        persist.append(np.repeat(s.raw_y[ts][:, None, :], h, axis=1))
        for s_len in seasons:
            by_season[s_len].append(s.raw_y[seasonal_index(ts, h, s_len)])
    pred = np.concatenate(preds)
    seasonal = by_season[seasons[0]] if seasons else []
    if task.kind == "regress":
        metrics = regression_metrics(
            pred, np.concatenate(actual), np.concatenate(persist),
            np.concatenate(seasonal) if seasonal else None,
        )
        if seasons:
            metrics["season"] = seasons[0]
            act = np.concatenate(actual)
            metrics["seasonal_rmse_by_season"] = {
                str(k): rmse(np.concatenate(v) - act) for k, v in by_season.items()}
    else:
        labels = np.concatenate(actual)[..., 0].astype(int)
        now = np.concatenate(persist)[..., 0]
        if task.kind == "binary":
            now = (now > task.threshold).astype(int)
        train_labels = np.concatenate(
            [s.lab[s.gpos < s.val_start, 0] for s in segs]).astype(int)
        n_cls = len(task.classes or [])
        prior = np.bincount(train_labels, minlength=n_cls) / max(len(train_labels), 1)
        metrics = classification_metrics(pred, labels, prior, now.astype(int))
    first = next(i for i, ts in enumerate(per_seg) if len(ts))
    forecasts = {
        "origin_time": np.concatenate(when), "series": np.asarray(names),
        "pred": pred, "actual": np.concatenate(actual),
        "persistence": np.concatenate(persist),
    }
    if seasonal:
        forecasts["seasonal"] = np.concatenate(seasonal)
    curves = {
        "times": segs[first].times[per_seg[first]],
        "pred": preds[0],
        "actual": actual[0],
        "series": segs[first].series,
        "forecasts": forecasts,
    }
    return metrics, curves
