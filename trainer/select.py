"""Which forecaster structures to try, and how they are compared on the validation split.

The search is small and staged, so a default run stays quick: first the plain LSTM against a
seasonal-memory LSTM on each season's base forecast; then, on the best structured candidate, the
toggles that only validation can decide (drop the level input, forecast in log space). Every
candidate and the naive baselines are scored in target units on the same validation origins.
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
    """A short, stable name for a candidate."""
    if st is None:
        return "plain"
    name = "seasonal" if st.base_lag > 1 else "diff"
    if st.base_lag > 1:
        name += f"{st.base_lag}"
    if st.log:
        name += "+log"
    if not st.level:
        name += "-level"
    return name


def first_stage(base: Structure, seasons: list[int], include_plain: bool) -> list[Structure | None]:
    """The plain LSTM and one seasonal-memory candidate per season (its base forecast)."""
    out: list[Structure | None] = [None] if include_plain else []
    if seasons:
        out += [replace(base, base_lag=s) for s in seasons]
    else:
        out.append(replace(base, base_lag=1, level=False))
    return out


def second_stage(best: Structure, allow_log: bool) -> list[Structure]:
    """Toggles to try on the best structured candidate."""
    out = [replace(best, level=not best.level)]
    if allow_log and not best.log:
        out.append(replace(best, log=True))
    return out


def better(a: Candidate, b: Candidate | None) -> bool:
    """True when `a` scores strictly better than `b` on validation (None loses)."""
    if b is None:
        return True
    if a.val_rmse is None or not math.isfinite(a.val_rmse):
        return False
    return b.val_rmse is None or a.val_rmse < b.val_rmse


def rmse(err: np.ndarray) -> float:
    return math.sqrt(float(np.mean(np.square(err)))) if err.size else float("nan")
