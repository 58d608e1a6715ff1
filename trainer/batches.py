"""Turn prepared segments into training tensors: forecast origins, targets, windows, streams.

An origin t is an observation after which the model forecasts rows t+1 .. t+H. Its role follows
where those targets fall in its series: all before the validation part (train), inside it (val),
or in the held-out tail (test). No target ever crosses into a later part.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from trainer.structure import Structure


@dataclass
class Prepared:
    """One gap-free segment, scaled, with its place in its series."""

    series: str
    x: np.ndarray  # [T, F] scaled features, float32
    lab: np.ndarray  # [T, Kl] scaled targets, 0/1 labels, or class indices
    raw_y: np.ndarray  # [T, K] raw targets (class indices for a categorical target)
    times: np.ndarray
    gpos: np.ndarray  # [T] position of each row within its series
    val_start: int
    test_start: int
    base: np.ndarray | None = None  # [T, Kl] scaled current target: labels are changes from it
    raw_x: np.ndarray | None = None  # [T, F] raw feature rows
    structure: Structure | None = None  # with it, `lab` holds z and the net learns corrections
    zbase: np.ndarray | None = None  # [T, H, K] the structure's base forecast after each row

    def labels(self, ts: np.ndarray, horizon: int) -> np.ndarray:
        """[n, H, Kl] what the network learns for origins `ts` (changes from `base` if set)."""
        y = targets_at(self.lab, ts, horizon)
        st = self.structure
        if st is not None:
            assert self.zbase is not None
            r_mean = np.asarray(st.r_mean).reshape(horizon, -1)
            return (y - self.zbase[ts] - r_mean) / np.asarray(st.r_scale)
        return y - self.base[ts][:, None, :] if self.base is not None else y


def origins(seg: Prepared, role: str, horizon: int, min_history: int = 0) -> np.ndarray:
    """Local indices t whose targets t+1..t+H lie wholly in `role` ('train', 'val', 'test')."""
    t = np.arange(len(seg.x))
    ok = t + horizon <= len(seg.x) - 1
    ok &= t >= min_history
    g = seg.gpos
    if role == "train":
        ok &= g + horizon < seg.val_start
    elif role == "val":
        ok &= (g + 1 >= seg.val_start) & (g + horizon < seg.test_start)
    elif role == "test":
        ok &= g + 1 >= seg.test_start
    else:
        raise ValueError(role)
    return t[ok]


def targets_at(lab: np.ndarray, ts: np.ndarray, horizon: int) -> np.ndarray:
    """[n, H, Kl]: the labels of rows t+1..t+H for each origin t."""
    idx = ts[:, None] + 1 + np.arange(horizon)[None, :]
    return lab[idx]


def shape_targets(y: np.ndarray, arch: str, categorical: bool) -> np.ndarray:
    """Lay [.., H, Kl] targets out as the model's output expects (see trainer/spec.py)."""
    if categorical:
        return y[..., 0].astype(np.int32)
    if arch == "encdec":
        return y.astype(np.float32)
    # explicit sizes: an empty set of origins has no -1 to infer
    return y.reshape(*y.shape[:-2], y.shape[-2] * y.shape[-1]).astype(np.float32)


def windows(seg: Prepared, ts: np.ndarray, lookback: int) -> np.ndarray:
    """[n, L, F] windows ending at each origin."""
    idx = ts[:, None] - lookback + 1 + np.arange(lookback)[None, :]
    return seg.x[idx]


@dataclass
class StreamGroup:
    """B contiguous streams advanced together, `lookback` steps per batch."""

    x: np.ndarray  # [B, T, F]
    y: np.ndarray  # [B, T, ...] laid out for the model
    w: np.ndarray  # [B, T] 1 where a train origin, 0 for padding and unlabelled rows

    def batches(self, lookback: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        steps = self.x.shape[1] // lookback
        return [
            (self.x[:, k * lookback:(k + 1) * lookback],
             self.y[:, k * lookback:(k + 1) * lookback],
             self.w[:, k * lookback:(k + 1) * lookback])
            for k in range(steps)
        ]


def stateful_groups(
    segs: list[Prepared],
    batch_size: int,
    lookback: int,
    horizon: int,
    arch: str,
    categorical: bool,
    burn_in: int = 0,
) -> list[StreamGroup]:
    """Cut the training rows into contiguous streams, `batch_size` per group.

    Long segments are chunked so that every batch row carries one stream; each stream keeps its
    own state from batch to batch. Streams shorter than the group are padded at the end with
    weight 0, so padding never trains the model. A chunk that starts inside a segment first
    replays the `burn_in` rows before it with weight 0, so no origin is learned from an
    artificially cold state; every training origin still carries weight exactly once.
    """
    pieces: list[tuple[Prepared, int, int, np.ndarray]] = []
    total = 0
    for seg in segs:
        ts = origins(seg, "train", horizon)
        if len(ts) == 0:
            continue
        n_rows = int(ts[-1]) + 1
        total += n_rows
        pieces.append((seg, 0, n_rows, ts))
    if not pieces:
        return []
    chunk = max(lookback, math.ceil(total / batch_size / lookback) * lookback)
    streams: list[tuple[Prepared, int, int, np.ndarray]] = []
    for seg, start, stop, ts in pieces:
        n = stop - start
        k = math.ceil(n / chunk)
        bounds = np.linspace(start, stop, k + 1).round().astype(int)
        for a, b in itertools.pairwise(bounds):
            streams.append((seg, max(0, int(a) - burn_in), int(b), ts[(ts >= a) & (ts < b)]))
    length = max(b - a for _, a, b, _ in streams)
    length = math.ceil(length / lookback) * lookback
    feat = segs[0].x.shape[1]
    groups: list[StreamGroup] = []
    for g0 in range(0, len(streams), batch_size):
        part = streams[g0:g0 + batch_size]
        x = np.zeros((batch_size, length, feat), np.float32)
        w = np.zeros((batch_size, length), np.float32)
        y: np.ndarray | None = None
        for row, (seg, a, b, ts) in enumerate(part):
            x[row, : b - a] = seg.x[a:b]
            if len(ts):
                yt = shape_targets(seg.labels(ts, horizon), arch, categorical)
                if y is None:
                    y = np.zeros((batch_size, length, *yt.shape[1:]), yt.dtype)
                y[row, ts - a] = yt
                w[row, ts - a] = 1.0
        assert y is not None
        groups.append(StreamGroup(x, y, w))
    return groups
