"""Timing shared by the benchmarks."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np


def interleaved_us(fns: dict[str, Callable[[], Any]], repeats: int, rounds: int = 10,
                   warmup: int = 50) -> dict[str, float]:
    """Median µs per call of each function, measured in alternating rounds so that a busy
    machine slows them all alike."""
    samples: dict[str, list[int]] = {name: [] for name in fns}
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    for _ in range(rounds):
        for name, fn in fns.items():
            for _ in range(max(1, repeats // rounds)):
                t0 = time.perf_counter_ns()
                fn()
                samples[name].append(time.perf_counter_ns() - t0)
    return {name: float(np.median(v)) / 1e3 for name, v in samples.items()}
