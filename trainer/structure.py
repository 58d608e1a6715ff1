"""The forecaster's structure around the LSTM: seasonal memory, a base forecast, log and calendar.

ES-RNN (Smyl, M4) showed that a recurrent net forecasts well when the state it cannot forget —
level and seasonality — is kept outside the net and the net learns corrections. Here that state is
a memory of the last N target values (N = the longest season, or 1), filled with the stream's
first value when it starts (a value before the first observation reads as the first observation):

- inputs: the other features, the target level (``level``), its change since the last step and
  since one season ago for every season, and sin/cos of the time's phase in each calendar period;
- output: the net predicts, per horizon step h, the correction to a *base* forecast: the value one
  ``base_lag`` back (``z(t + h - L*ceil(h/L))``: seasonal naive for L = a season, persistence for
  L = 1), with ``drift`` plus today's change from one season ago, ``ceil(h/L)`` times (the
  forecast of a seasonal random walk with drift);
- ``log``: targets are forecast in log space (multiplicative trend and seasonality).

`derive` and `base` are the numpy reference of what `export/` builds as ONNX nodes: a segment's
row t sees exactly the state an edge stream has after t + 1 observations from zero state.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

LOG_FLOOR = 1e-6  # log(max(x, floor)): a non-positive reading cannot make the state NaN
DAY = 86400.0
CALENDAR_PERIODS = {"day": DAY, "week": 7 * DAY, "year": 365.2425 * DAY}


@dataclass(frozen=True)
class Structure:
    """What surrounds the LSTM of a run, and the scalers fitted for it on training rows."""

    features: list[str]
    targets: list[int]  # feature index of each target
    horizon: int
    seasons: list[int] = field(default_factory=list)
    base_lag: int = 1
    log: bool = False
    level: bool = False
    # the base also carries today's deviation from one season ago forward: the forecast of a
    # seasonal random walk with drift, z(t+h-L) + ceil(h/L) * (z(t) - z(t-L))
    drift: bool = False
    # inputs: the path each season's naive forecast takes over the horizon, from today's value:
    # z(t + h - S*ceil(h/S)) - z(t) for every season S and step h (what the memory says is ahead)
    ahead: bool = False
    calendar: list[float] = field(default_factory=list)  # periods in seconds
    d_mean: list[float] = field(default_factory=list)  # derived inputs: (d - mean) / scale
    d_scale: list[float] = field(default_factory=list)
    r_mean: list[float] = field(default_factory=list)  # [H*K] correction, horizon-major
    r_scale: list[float] = field(default_factory=list)  # [K]

    @property
    def memory(self) -> int:
        """How many past target values the state holds."""
        return max([*self.seasons, self.base_lag, 1])

    @property
    def others(self) -> list[int]:
        """Feature indices fed through as they are (features that are not targets)."""
        return [i for i in range(len(self.features)) if i not in self.targets]

    def input_names(self) -> list[str]:
        """A name for every derived input, in the order the net sees them."""
        tn = [self.features[i] for i in self.targets]
        names = [self.features[i] for i in self.others]
        if self.level:
            names += [f"log({t})" if self.log else t for t in tn]
        names += [f"d1({t})" for t in tn]
        for s in self.seasons:
            names += [f"d{s}({t})" for t in tn]
        if self.ahead:
            for s in self.seasons:
                names += [f"s{s}h{h}({t})" for h in range(1, self.horizon + 1) for t in tn]
        for p in self.calendar:
            names += [f"sin(2pi t/{p:g}s)", f"cos(2pi t/{p:g}s)"]
        return names

    def describe(self) -> str:
        parts = [f"memory {self.memory}"]
        if self.seasons:
            parts.append("seasons " + ",".join(map(str, self.seasons)))
        parts.append("base " + ("last value" if self.base_lag == 1 else f"lag {self.base_lag}"))
        if self.log:
            parts.append("log")
        if self.level:
            parts.append("level input")
        if self.drift:
            parts.append("with drift")
        if self.ahead:
            parts.append("seasonal paths ahead")
        if self.calendar:
            names = {v: k for k, v in CALENDAR_PERIODS.items()}
            parts.append("calendar " + ",".join(names.get(p, f"{p:g}s") for p in self.calendar))
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Structure:
        return cls(**d)

    # -- the numpy reference -------------------------------------------------------------------

    def z(self, x: np.ndarray) -> np.ndarray:
        """[T, K] the targets in the space they are forecast in."""
        v = np.asarray(x, np.float64)[:, self.targets]
        return np.log(np.maximum(v, LOG_FLOOR)) if self.log else v

    def derive(self, x: np.ndarray, t: np.ndarray | None) -> np.ndarray:
        """[T, F'] unscaled derived inputs for a segment of raw rows `x` [T, F] from its start;
        `t` [T] are epoch seconds (needed with a calendar)."""
        x = np.asarray(x, np.float64)
        z = self.z(x)
        n = len(x)
        cols = [x[:, self.others]]
        if self.level:
            cols.append(z)
        rows = np.arange(n)
        for lag in [1, *self.seasons]:
            cols.append(z - z[np.maximum(rows - lag, 0)])
        if self.ahead:
            for s in self.seasons:
                ahead = z[np.maximum(rows[:, None] + self.positions(s)[None, :], 0)]  # [T, H, K]
                cols.append((ahead - z[:, None, :]).reshape(n, -1))
        if self.calendar:
            if t is None:
                raise ValueError("a structure with a calendar needs the times")
            tt = np.asarray(t, np.float64)
            for p in self.calendar:
                phase = np.fmod(tt, p) * (2 * np.pi / p)
                cols += [np.sin(phase)[:, None], np.cos(phase)[:, None]]
        return np.concatenate(cols, axis=1)

    def positions(self, lag: int) -> np.ndarray:
        """[H] offset j <= 0 of the naive forecast of period `lag` for each step: z(t + j)."""
        h = np.arange(1, self.horizon + 1)
        return h - lag * np.ceil(h / lag).astype(int)

    def base_positions(self) -> np.ndarray:
        """[H] offset j <= 0 of the base value for each horizon step: z(t + j)."""
        return self.positions(self.base_lag)

    def drift_steps(self) -> np.ndarray:
        """[H] how many seasons ahead each horizon step is: the multiple of the drift added."""
        h = np.arange(1, self.horizon + 1)
        return np.ceil(h / self.base_lag).astype(int)

    def base(self, x: np.ndarray) -> np.ndarray:
        """[T, H, K] the base forecast (in z units) after each row of a segment from its start."""
        z = self.z(x)
        n = len(z)
        rows = np.arange(n)[:, None] + self.base_positions()[None, :]
        out = z[np.maximum(rows, 0)]
        if self.drift:
            change = z - z[np.maximum(np.arange(n) - self.base_lag, 0)]
            out = out + self.drift_steps()[None, :, None] * change[:, None, :]
        return out

    def scaled_inputs(self, x: np.ndarray, t: np.ndarray | None) -> np.ndarray:
        d = self.derive(x, t)
        return ((d - np.asarray(self.d_mean)) / np.asarray(self.d_scale)).astype(np.float32)

    def decode(self, out: np.ndarray, base: np.ndarray) -> np.ndarray:
        """Net outputs [n, H*K] (scaled) and bases [n, H, K] → forecasts [n, H, K] raw units."""
        k = len(self.targets)
        y = np.asarray(out, np.float64).reshape(len(out), self.horizon, k)
        y = y * np.asarray(self.r_scale) + np.asarray(self.r_mean).reshape(self.horizon, k)
        y = y + base
        return np.exp(y) if self.log else y


def default_seasons(freq: str | None) -> list[int]:
    """Seasons implied by the grid's period: a day and a week below a day, a week for days,
    a year for weeks and months."""
    seconds = _seconds(freq)
    if seconds is None or seconds <= 0:
        return []
    if seconds < DAY and DAY % seconds == 0:
        per_day = int(DAY // seconds)
        return [per_day] if per_day * 7 > 2000 else [per_day, per_day * 7]
    if seconds == DAY:
        return [7]
    if seconds == 7 * DAY:
        return [52]
    if 28 * DAY <= seconds <= 31 * DAY:
        return [12]
    return []


def default_calendar(freq: str | None) -> list[float]:
    """Calendar periods worth feeding for a grid: the cycles longer than one period that the
    seasonal memory does not already hold."""
    seconds = _seconds(freq)
    if seconds is None:
        return []
    if seconds < DAY:
        return [CALENDAR_PERIODS["week"], CALENDAR_PERIODS["year"]]
    if seconds < 7 * DAY:
        return [CALENDAR_PERIODS["year"]]
    return []


def _seconds(freq: str | None) -> float | None:
    """The grid's period in seconds; a calendar month counts as 30 days; None if unknown."""
    if freq is None:
        return None
    import pandas as pd

    try:
        offset = pd.tseries.frequencies.to_offset(freq)
    except ValueError:
        return None
    if isinstance(offset, (pd.offsets.MonthBegin, pd.offsets.MonthEnd)):
        return 30 * DAY * offset.n
    try:
        return float(pd.Timedelta(offset).total_seconds())
    except (ValueError, TypeError):
        return None


def epoch_seconds(times: np.ndarray) -> np.ndarray | None:
    """Epoch seconds of datetime64 times (naive times are read as UTC); None for positions."""
    if not np.issubdtype(np.asarray(times).dtype, np.datetime64):
        return None
    return np.asarray(times).astype("datetime64[ns]").astype(np.int64) / 1e9
