"""Which forecaster structures to try, and how they are compared on the validation split.

The search is small and greedy, so a default run stays quick: first the plain LSTM against a
seasonal-memory LSTM on each season's base forecast; then, one after the other on the best
structured candidate so far, the changes only validation can decide (a base without drift,
forecast in log space, keep only the base's season, drop the calendar),
each kept only if it helps by more than TOGGLE_MARGIN. Every candidate and the naive baselines
are scored in target units on the same validation origins.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from trainer.structure import Structure


@dataclass
class Candidate:
    """One fitted candidate: its structure (None: the plain LSTM) and validation score."""

    name: str
    structure: Structure | None
    val_rmse: float | None
    epochs: int
    seconds: float
    fitted: Any = None  # whatever the trainer needs to keep the winner (model, segments, ...)

    def summary(self) -> dict[str, Any]:
        return {"name": self.name, "val_rmse": self.val_rmse, "epochs": self.epochs,
                "seconds": round(self.seconds, 2),
                "structure": self.structure.describe() if self.structure else "plain LSTM"}


def name_of(st: Structure | None) -> str:
    """A short, stable name for a candidate, e.g. seasonal24+lags168+cal+level."""
    if st is None:
        return "plain"
    name = f"seasonal{st.base_lag}" if st.base_lag > 1 else "diff"
    others = [s for s in st.seasons if s != st.base_lag]
    if others:
        name += "+lags" + ",".join(map(str, others))
    if st.calendar:
        name += "+cal"
    if st.drift:
        name += "+drift"
    if st.log:
        name += "+log"
    if st.level:
        name += "+level"
    return name


def first_stage(base: Structure, seasons: list[int], include_plain: bool) -> list[Structure | None]:
    """The plain LSTM and one seasonal-memory candidate per season (its base forecast, with
    drift: the seasonal random walk with drift is the stronger base on every shipped series)."""
    out: list[Structure | None] = [None] if include_plain else []
    if seasons:
        out += [replace(base, base_lag=s, drift=True) for s in seasons]
    else:
        out.append(replace(base, base_lag=1, level=False, drift=False))
    return out


# The raw level is not among them: a level input ties on validation and then extrapolates badly
# on the months after it (ES-RNN divides the level out for the same reason).
TOGGLES = ("no drift", "log", "one season", "no calendar")


def toggle(st: Structure, which: str, allow_log: bool) -> Structure | None:
    """`st` with one part changed, or None when that change does not apply to it."""
    if which == "no drift":
        return replace(st, drift=False) if st.drift else None
    if which == "log":
        return replace(st, log=True) if allow_log and not st.log else None
    if which == "one season":
        keep = [s for s in st.seasons if s == st.base_lag]
        return replace(st, seasons=keep) if len(st.seasons) > len(keep) else None
    if which == "no calendar":
        return replace(st, calendar=[]) if st.calendar else None
    raise ValueError(which)


# A change of the second stage must beat what it changes by this fraction of validation RMSE:
# the validation split is short, and a structure that only ties on it (a level input, say) can
# still extrapolate worse on the months that follow.
TOGGLE_MARGIN = 0.02


def better(a: Candidate, b: Candidate | None, margin: float = 0.0) -> bool:
    """True when `a` scores better than `b` on validation by more than `margin` (a fraction;
    None loses)."""
    if b is None:
        return True
    if a.val_rmse is None or not math.isfinite(a.val_rmse):
        return False
    return b.val_rmse is None or a.val_rmse < b.val_rmse * (1 - margin)


def rmse(err: np.ndarray) -> float:
    return math.sqrt(float(np.mean(np.square(err)))) if err.size else float("nan")
