"""Read a CSV or Parquet table and turn it into clean, regular, gap-split series.

Each series (one per value of `--series-col`, or the whole file) is sorted, de-duplicated,
put on a regular grid of period `freq`; gaps of up to `max_gap` periods are interpolated and
longer ones split it into segments, so no state ever runs across a long gap.

The grid (the same definition the edge daemon applies to live streams, see `edge/grid.py` and
the manifest's `grid`): bins of one period closed on the right and labelled on the right,
``(T - period, T]`` labelled ``T``, with the grid times ``origin + k * period`` where `origin` is
the first timestamp of the data (one origin for every series); calendar months (``MS``) are
bins ``(month start, next month start]`` in UTC. The rows in a bin are aggregated per column
(`agg`: mean by default, or last, min, max, sum), so a row exactly at a grid time closes its bin.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from trainer.errors import TrainError

AGGREGATIONS = ("mean", "last", "min", "max", "sum")


@dataclass
class Segment:
    """A gap-free run of one series on a regular grid."""

    series: str
    times: np.ndarray  # datetime64[ns] or integer positions when there is no time column
    x: np.ndarray  # [T, F] raw feature values
    y: np.ndarray  # [T, K] raw target values, or class indices for a categorical target


@dataclass
class Dataset:
    """Every usable segment, grouped by series in time order, plus what was inferred."""

    segments: list[Segment]
    features: list[str]
    targets: list[str]
    freq: str | None
    classes: list[str] | None = None
    origin: float | None = None  # epoch seconds of the grid's origin (None without a time column)
    agg: dict[str, str] = field(default_factory=dict)  # feature -> aggregation within a bin
    interpolated: int = 0
    splits: int = 0
    notes: list[str] = field(default_factory=list)

    def series_names(self) -> list[str]:
        return list(dict.fromkeys(s.series for s in self.segments))


def read_table(path: str | Path) -> pd.DataFrame:
    """Read CSV or Parquet by extension, or every `*.csv`/`*.parquet` file of a directory
    (in name order, e.g. the days `statecast-record` writes) as one table; any failure is one
    TrainError sentence."""
    p = Path(path)
    if not p.exists():
        raise TrainError(f"data file {p} does not exist")
    if p.is_dir():
        return _read_directory(p)
    if not p.is_file():
        raise TrainError(f"data path {p} is not a file")
    return _read_file(p)


TABLE_SUFFIXES = (".csv", ".parquet", ".pq")


def table_files(path: str | Path) -> list[Path]:
    """The files `read_table` reads: `path` itself, or a directory's tables in name order."""
    p = Path(path)
    if not p.is_dir():
        return [p]
    return sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in TABLE_SUFFIXES)


def _read_directory(d: Path) -> pd.DataFrame:
    files = table_files(d)
    if not files:
        raise TrainError(f"data directory {d} holds no .csv or .parquet files")
    tables = [_read_file(f) for f in files]
    columns = list(tables[0].columns)
    for f, table in zip(files[1:], tables[1:], strict=True):
        if list(table.columns) != columns:
            raise TrainError(
                f"{f} has the columns {', '.join(map(str, table.columns))}, but {files[0].name} "
                f"has {', '.join(map(str, columns))}; every file of {d} needs the same columns"
            )
    return pd.concat(tables, ignore_index=True) if len(tables) > 1 else tables[0]


def _read_file(p: Path) -> pd.DataFrame:
    try:
        if p.suffix.lower() in (".parquet", ".pq"):
            return pd.read_parquet(p)
        return pd.read_csv(p)
    except Exception as exc:  # pandas raises many unrelated types for unreadable files
        msg = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        kind = "Parquet" if p.suffix.lower() in (".parquet", ".pq") else "CSV"
        raise TrainError(f"could not read {p} as {kind}: {msg}") from None


def require_columns(df: pd.DataFrame, names: list[str], what: str) -> None:
    for name in names:
        if name not in df.columns:
            available = ", ".join(map(str, df.columns))
            raise TrainError(f"{what} column {name!r} is not in the data; available: {available}")


def to_numeric(df: pd.DataFrame, col: str) -> pd.Series:
    """Convert a column to float, naming the first value that is not a number."""
    raw = df[col]
    if raw.isna().all():
        raise TrainError(f"column {col!r} has no values (all empty or NaN)")
    values = pd.to_numeric(raw, errors="coerce")
    bad = values.isna() & raw.notna()
    if bad.any():
        pos = int(np.flatnonzero(bad.to_numpy())[0])
        raise TrainError(
            f"column {col!r} has a non-numeric value {raw.iloc[pos]!r} at data row {pos + 1}"
        )
    return values.astype(float)


def freq_string(delta: pd.Timedelta | pd.DateOffset) -> str:
    """A compact period string the edge can parse without pandas: 1D, 1h, 15min, 30s (a
    calendar month stays a pandas alias such as MS, which has no fixed length)."""
    if not isinstance(delta, pd.Timedelta):
        return str(delta.freqstr)
    seconds = int(delta.total_seconds())
    if seconds <= 0:
        raise TrainError("the time column has no positive period between rows")
    for unit, size in (("D", 86400), ("h", 3600), ("min", 60), ("s", 1)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def parse_freq(text: str) -> pd.Timedelta | pd.DateOffset:
    try:
        offset = pd.tseries.frequencies.to_offset(text)
        if isinstance(offset, (pd.offsets.MonthBegin, pd.offsets.MonthEnd)):
            return offset
        delta = pd.Timedelta(offset)
    except (ValueError, TypeError):
        raise TrainError(f"--freq {text!r} is not a period such as 1h, 15min or 1D") from None
    if delta <= pd.Timedelta(0):
        raise TrainError(f"--freq {text!r} must be a positive period")
    return delta


def load_dataset(
    path: str | Path,
    targets: list[str],
    features: list[str] | None = None,
    time_col: str | None = None,
    series_col: str | None = None,
    freq: str | None = None,
    max_gap: int = 3,
    categorical_ok: bool = False,
    min_length: int = 1,
    agg: dict[str, str] | None = None,
) -> Dataset:
    """Load `path` and return gap-split segments; see the module docstring. `agg` maps a
    column to its aggregation within a period (mean when not named)."""
    df = read_table(path)
    if df.empty:
        raise TrainError(f"data file {path} has no rows")
    require_columns(df, targets, "target")
    categorical = categorical_ok and len(targets) == 1 and not _is_numeric(df[targets[0]])
    if features is None:
        if categorical:
            skip = {targets[0], time_col, series_col}
            features = [c for c in df.columns if c not in skip and _is_numeric(df[c])]
            if not features:
                raise TrainError("a categorical target needs numeric --features to predict it from")
        else:
            features = list(targets)
    require_columns(df, features, "feature")
    agg = dict(agg or {})
    for col, how in agg.items():
        if col not in features and col not in targets:
            raise TrainError(f"--agg names {col!r}, which is neither a feature nor a target")
        if how not in AGGREGATIONS:
            raise TrainError(
                f"--agg {col}={how}: the aggregation must be one of {', '.join(AGGREGATIONS)}")
    if time_col is not None:
        require_columns(df, [time_col], "time")
    if series_col is not None:
        require_columns(df, [series_col], "series")

    table = pd.DataFrame(index=df.index)
    for col in dict.fromkeys(features + ([] if categorical else targets)):
        table[col] = to_numeric(df, col)
    classes: list[str] | None = None
    if categorical:
        labels = df[targets[0]]
        if labels.isna().all():
            raise TrainError(f"column {targets[0]!r} has no values (all empty or NaN)")
        classes = sorted(str(v) for v in labels.dropna().unique())
        if len(classes) < 2:
            raise TrainError(f"target {targets[0]!r} has only one class ({classes[0]!r})")
        lookup = {c: i for i, c in enumerate(classes)}
        table["__class__"] = labels.map(lambda v: lookup.get(str(v), np.nan) if pd.notna(v) else v)
    if time_col is not None:
        times = pd.to_datetime(df[time_col], errors="coerce")
        bad = times.isna() & df[time_col].notna()
        if bad.any():
            pos = int(np.flatnonzero(bad.to_numpy())[0])
            raise TrainError(
                f"time column {time_col!r} has a value that is not a timestamp, "
                f"{df[time_col].iloc[pos]!r}, at data row {pos + 1}"
            )
        if times.isna().all():
            raise TrainError(f"time column {time_col!r} has no values")
        table["__time__"] = times
    table["__series__"] = df[series_col].astype(str) if series_col else "all"

    step = parse_freq(freq) if freq else None
    origin = table["__time__"].min() if time_col is not None else None
    segments: list[Segment] = []
    interpolated = splits = 0
    inferred: pd.Timedelta | pd.DateOffset | None = step
    ycols = ["__class__"] if categorical else targets
    for name, group in table.groupby("__series__", sort=True):
        if time_col is not None:
            group = group.dropna(subset=["__time__"]).sort_values("__time__", kind="stable")
            group = group.drop_duplicates(subset="__time__", keep="first")
            period = step or _infer_period(group["__time__"])
            inferred = inferred or period
            group = group.set_index("__time__")
            grid = _regularise(group, features, ycols, categorical, period, origin, agg)
        else:
            grid = group.reset_index(drop=True)
        segs, n_interp, n_split = _split_gaps(grid, features + ycols, max_gap)
        interpolated += n_interp
        splits += n_split
        for seg in segs:
            if len(seg) == 0:
                continue
            t = seg.index.to_numpy() if time_col is not None else np.arange(len(seg))
            segments.append(
                Segment(
                    series=str(name),
                    times=t,
                    x=seg[features].to_numpy(np.float64),
                    y=seg[ycols].to_numpy(np.float64),
                )
            )
    if inferred is not None and time_col is None:
        inferred = None
    usable = [s for s in segments if len(s.x) >= min_length]
    if not usable:
        longest = max((len(s.x) for s in segments), default=0)
        raise TrainError(
            f"the longest gap-free series has {longest} rows, fewer than the {min_length} "
            "needed for lookback + horizon + the test tail"
        )
    return Dataset(
        segments=usable,
        features=list(features),
        targets=list(targets),
        freq=freq_string(inferred) if inferred is not None else None,
        classes=classes,
        origin=_epoch(origin) if origin is not None else None,
        agg={f: agg.get(f, "mean") for f in features},
        interpolated=interpolated,
        splits=splits,
        notes=[f"dropped {len(segments) - len(usable)} short segment(s)"]
        if len(usable) < len(segments)
        else [],
    )


def _is_numeric(col: pd.Series) -> bool:
    if pd.api.types.is_numeric_dtype(col):
        return True
    converted = pd.to_numeric(col.dropna(), errors="coerce")
    return bool(len(converted)) and bool(converted.notna().mean() > 0.95)


def _infer_period(times: pd.Series) -> pd.Timedelta | pd.DateOffset:
    """The most common spacing; month starts (or ends) a month apart give a calendar month."""
    diffs = times.diff().dropna()
    diffs = diffs[diffs > pd.Timedelta(0)]
    if diffs.empty:
        raise TrainError("cannot infer the period from fewer than two timestamps; give --freq")
    common = pd.Timedelta(diffs.mode().iloc[0])
    if pd.Timedelta(days=28) <= common <= pd.Timedelta(days=31):
        t = pd.DatetimeIndex(times)
        if (t.normalize() == t).all() and (t.day == 1).all():
            return pd.offsets.MonthBegin()
        if (t.normalize() == t).all() and t.is_month_end.all():
            return pd.offsets.MonthEnd()
    return common


def _epoch(ts: pd.Timestamp) -> float:
    """Epoch seconds; naive timestamps are read as UTC (as the edge reads them)."""
    return float(pd.Timestamp(ts).timestamp())


def _regularise(
    group: pd.DataFrame,
    features: list[str],
    ycols: list[str],
    categorical: bool,
    period: pd.Timedelta | pd.DateOffset,
    origin: pd.Timestamp | None = None,
    agg: dict[str, str] | None = None,
) -> pd.DataFrame:
    """Put rows on the grid (see the module docstring): the rows of a bin are aggregated per
    column (`agg`, mean by default), empty bins are NaN."""
    numeric = list(dict.fromkeys(features + ([] if categorical else ycols)))
    if isinstance(period, pd.Timedelta):
        bins = group[numeric].resample(period, closed="right", label="right",
                                       origin=origin if origin is not None else "start_day")
    else:  # calendar months: the offset itself fixes the grid
        bins = group[numeric].resample(period, closed="right", label="right")
    how = agg or {}
    binned = pd.DataFrame({
        col: bins[col].sum(min_count=1) if how.get(col) == "sum"
        else getattr(bins[col], how.get(col, "mean"))()
        for col in numeric
    })
    if categorical:
        if isinstance(period, pd.Timedelta):
            cls = group["__class__"].resample(period, closed="right", label="right",
                                              origin=origin if origin is not None else "start_day")
        else:
            cls = group["__class__"].resample(period, closed="right", label="right")
        binned["__class__"] = cls.first()
    return binned


def _split_gaps(
    grid: pd.DataFrame, cols: list[str], max_gap: int
) -> tuple[list[pd.DataFrame], int, int]:
    """Interpolate runs of up to `max_gap` missing rows; split at longer runs."""
    cols = list(dict.fromkeys(cols))
    missing = grid[cols].isna().any(axis=1).to_numpy()
    if not missing.any():
        return [grid], 0, 0
    run_id = np.cumsum(np.r_[True, missing[1:] != missing[:-1]])
    runs = pd.Series(missing).groupby(run_id).agg(["first", "size"])
    long_missing = np.zeros(len(grid), dtype=bool)
    interpolated = 0
    for rid, (is_missing, size) in runs.iterrows():
        if not is_missing:
            continue
        where = run_id == rid
        if size > max_gap or where[0] or where[-1]:
            long_missing |= where
        else:
            interpolated += int(size)
    filled = grid.copy()
    for col in cols:
        if col == "__class__":
            filled[col] = filled[col].ffill()
        else:
            filled[col] = filled[col].interpolate(method="linear", limit_area="inside")
    pieces: list[pd.DataFrame] = []
    keep_id = np.cumsum(np.r_[True, long_missing[1:] != long_missing[:-1]])
    for rid in np.unique(keep_id[~long_missing]):
        pieces.append(filled[(keep_id == rid) & ~long_missing])
    return pieces, interpolated, max(len(pieces) - 1, 0)
