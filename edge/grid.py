"""Put a live stream on the grid the model was trained on: one model step per period.

The trainer aggregates the rows of each period and interpolates short gaps (`trainer/data.py`);
the manifest's `grid` says how, and `Regulariser` does the same to each stream, one observation
at a time, with the open period kept in the stream's state (an *extra* of the state store, so it
is journaled, restored after a crash, carried over on a reload and spilled with the stream).

The rule, for a grid of period ``p`` and origin ``o``:

- Bins are ``(T - p, T]`` at ``T = o + k·p`` (calendar months ``MS``: UTC month starts), labelled
  ``T`` — the *period time* of the model step and of its forecast's ``at`` times.
- An observation at ``t`` goes into the bin labelled ``T = the first grid time ≥ t``. An
  observation exactly at ``T`` completes that bin at once (a sensor publishing on the grid gets its
  forecast immediately); one after ``T`` first closes the open bin, then opens its own.
- A bin that stays open is closed by the timer (`due`) once the wall clock passes both its end and
  the arrival of its last observation by `grace`: ``now ≥ max(T, last arrival) + grace``. The first
  term waits for a live sensor's last reading of the period (sensor clocks assumed in sync with
  the daemon's); the second keeps a replay of old data, whose bin ends are long past, from being
  cut while its observations are still coming. Default grace: 10 % of the period.
- When a bin closes, the periods missing since the last closed bin are filled linearly between
  the two (as pandas ``interpolate(method="linear", limit_area="inside")`` does on the grid) and
  stepped first, in order, if there are at most `max_gap` of them; more missing periods are a long
  gap: the model state is reset and the bin is stepped alone (the trainer split its segments there).
- An observation whose bin is already closed (after a timer close) is refused as ``late``.

No I/O and no clock of its own: the caller passes the arrival time and `now`.
"""

from __future__ import annotations

import hashlib
import math
from datetime import datetime, timezone
from typing import NamedTuple

import numpy as np

from edge.codec import PayloadError, iso_time, parse_freq
from edge.errors import EdgeError
from edge.manifest import Manifest

GRACE_FRACTION = 0.1
MONTH = "MS"
# layout of a stream's grid extra (float64): the open bin, then the last closed bin
OPEN, COUNT, ARRIVAL, CLOSED = 0, 1, 2, 3
HEAD = 4  # then `F` accumulators of the open bin, then the `F` values of the last closed bin


class Step(NamedTuple):
    """One model step: its period time (epoch seconds), feature values, and whether it fills a
    missing period."""

    t: float
    values: np.ndarray
    fill: bool


class Closed(NamedTuple):
    """What closing a bin produced: the steps in order, and the missing periods before it when
    they were too many to fill (0 otherwise: the caller resets the model state)."""

    steps: list[Step]
    gap: int


class Regulariser:
    """The grid of one model; every method works on a stream's grid extra (`template()`'s
    shape) in place."""

    def __init__(self, manifest: Manifest, grace: float | None = None) -> None:
        grid = manifest.grid
        if grid is None or manifest.freq is None:
            raise EdgeError("the manifest has no grid")
        self.freq = manifest.freq
        self.monthly = manifest.freq.strip() in (MONTH, "1" + MONTH)
        if self.monthly:
            self.period = 0.0
        else:
            delta = parse_freq(manifest.freq)
            assert delta is not None
            self.period = delta.total_seconds()
        self.origin = float(grid.origin)
        self.max_gap = manifest.max_gap
        self.n = manifest.n_features
        hows = [grid.how(f) for f in manifest.features]
        self.hows = tuple(hows)
        self._mean = np.array([h == "mean" for h in hows])
        self._add = np.array([h in ("mean", "sum") for h in hows])
        self._last = np.array([h == "last" for h in hows])
        self._min = np.array([h == "min" for h in hows])
        self._uniform = hows[0] if len(set(hows)) == 1 else None
        self.grace = grace
        # the extra's name: a reload to a model on another grid starts the open bins afresh
        phase = 0.0 if self.monthly else math.fmod(self.origin, self.period)
        sig = f"{self.freq}|{phase!r}|{','.join(hows)}".encode()
        self.name = "grid_" + hashlib.sha1(sig).hexdigest()[:12]

    def template(self) -> np.ndarray:
        g = np.zeros(HEAD + 2 * self.n, np.float64)
        g[OPEN] = g[CLOSED] = np.nan
        return g

    # -- the grid's times --------------------------------------------------------------------

    def label(self, t: float) -> float:
        """The end (label) of the bin holding `t`: the first grid time at or after it."""
        if self.monthly:
            d = datetime.fromtimestamp(t, timezone.utc)
            start = datetime(d.year, d.month, 1, tzinfo=timezone.utc).timestamp()
            return start if start >= t else self.after(start, 1)
        x = (t - self.origin) / self.period
        k = round(x)
        if abs(x - k) > 1e-9:
            k = math.ceil(x)
        return self.origin + k * self.period

    def after(self, label: float, k: int) -> float:
        """The grid time `k` periods after `label`."""
        if not self.monthly:
            return label + k * self.period
        d = datetime.fromtimestamp(label, timezone.utc)
        m = d.year * 12 + d.month - 1 + k
        return datetime(m // 12, m % 12 + 1, 1, tzinfo=timezone.utc).timestamp()

    def periods(self, a: float, b: float) -> int:
        """Whole periods from grid time `a` to grid time `b`."""
        if not self.monthly:
            return round((b - a) / self.period)
        da = datetime.fromtimestamp(a, timezone.utc)
        db = datetime.fromtimestamp(b, timezone.utc)
        return (db.year - da.year) * 12 + db.month - da.month

    def grace_for(self, label: float) -> float:
        if self.grace is not None:
            return self.grace
        length = self.period if not self.monthly else label - self.after(label, -1)
        return GRACE_FRACTION * length

    # -- one stream --------------------------------------------------------------------------

    def check(self, g: np.ndarray, t: float) -> None:
        """Refuse (PayloadError `late`) an observation whose bin is already closed."""
        closed = g[CLOSED]
        if not math.isnan(closed) and self.label(t) <= closed:
            raise PayloadError(
                "late", f"its period ending {iso_time(self.label(t))} is already closed")

    def add_one(self, g: np.ndarray, t: float, values: np.ndarray,
                arrival: float) -> list[Closed]:
        """Take one observation (after `check`): the bins it closes, in order — the open one
        when `t` lies after it, and its own when `t` sits exactly on its grid time."""
        end = self.label(t)
        out: list[Closed] = []
        open_end = g[OPEN]
        if not math.isnan(open_end) and end > open_end:
            out.append(self.close_one(g))
        acc = g[HEAD : HEAD + self.n]
        if math.isnan(g[OPEN]):  # open a bin
            g[OPEN] = end
            g[COUNT] = 1.0
            acc[:] = values
        else:
            g[COUNT] += 1.0
            how = self._uniform
            if how in ("mean", "sum"):
                acc += values
            elif how == "last":
                acc[:] = values
            elif how == "min":
                np.minimum(acc, values, out=acc)
            elif how == "max":
                np.maximum(acc, values, out=acc)
            else:
                acc[:] = np.where(self._add, acc + values, np.where(
                    self._last, values, np.where(self._min, np.minimum(acc, values),
                                                 np.maximum(acc, values))))
        g[ARRIVAL] = arrival
        if t == end:  # exactly at the grid time: nothing later can fall in this bin
            out.append(self.close_one(g))
        return out

    def due_at(self, g: np.ndarray) -> float | None:
        """When (wall clock) the timer closes the open bin, None if none is open (see the
        module docstring)."""
        end = float(g[OPEN])
        if math.isnan(end):
            return None
        return max(end, float(g[ARRIVAL])) + self.grace_for(end)

    def due(self, g: np.ndarray, now: float) -> bool:
        """Whether the timer closes the open bin at wall-clock `now`."""
        at = self.due_at(g)
        return at is not None and now >= at

    def close_one(self, g: np.ndarray) -> Closed:
        """Close the open bin: the missing periods since the last closed one (filled when at most
        `max_gap`), then the bin itself."""
        n = self.n
        end = float(g[OPEN])
        acc = g[HEAD : HEAD + n]
        value = np.where(self._mean, acc / g[COUNT], acc) if self._mean.any() else acc.copy()
        last = float(g[CLOSED])
        steps: list[Step] = []
        gap = 0
        if not math.isnan(last):
            missing = self.periods(last, end) - 1
            if missing > 0 and self.max_gap is not None and missing > self.max_gap:
                gap = missing
            elif missing > 0:
                prev = g[HEAD + n : HEAD + 2 * n].copy()
                for k in range(1, missing + 1):
                    steps.append(Step(self.after(last, k),
                                      prev + (value - prev) * (k / (missing + 1)), True))
        steps.append(Step(end, value, False))
        g[HEAD + n : HEAD + 2 * n] = value
        g[CLOSED] = end
        g[OPEN] = np.nan
        g[COUNT] = 0.0
        acc[:] = 0.0
        return Closed(steps, gap)

