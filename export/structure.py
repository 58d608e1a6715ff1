"""ONNX nodes for a run's structure (trainer/structure.py) around the LSTM of a step graph.

Two more state tensors carry what the net must not forget: ``hist`` [B, N, K], the last N target
values (in the space they are forecast in, oldest first), and ``seen`` [B, 1, 1], 0 for a fresh
stream and 1 once it has had an observation: a fresh stream's memory is filled with its first
value. Before the LSTM the graph derives its inputs from ``x``, ``hist`` and, with a calendar, the
input ``t`` (epoch seconds, float64); after it, it adds the base forecast gathered from the
updated ``hist`` and undoes the log. `structure_reference` is the same computation in numpy and
Keras, which the export proof compares the graph against.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from onnx import TensorProto, helper

from edge.model import StepModel
from export.graph import Builder
from trainer.structure import LOG_FLOOR, Structure

HIST, SEEN, TIME = "hist", "seen", "t"
DRIFT = "drift_change"


def derived_inputs(b: Builder, st: Structure) -> tuple[str, str]:
    """Nodes from ``x`` (and the state, and ``t``) to the net's unscaled inputs [B, F'].

    Returns the derived tensor and z [B, K], the targets as forecast (for the base)."""
    n, k = st.memory, len(st.targets)
    b.add_input(HIST, [b.batch_dim, n, k])
    b.add_input(SEEN, [b.batch_dim, 1, 1])
    x_t = b.op1("Gather", ["x", b.const("target_idx", st.targets, np.int64)], "z", axis=1)
    z = x_t
    if st.log:
        z = b.op1("Log", [b.op1("Max", [x_t, b.const("log_floor", LOG_FLOOR)], "z")], "z")
    axes1 = b.const("axes1", [1], np.int64)
    newest = b.op1("Unsqueeze", [z, axes1], "hist")  # [B, 1, K]
    # a fresh stream's memory holds its first value everywhere
    started = b.op1("Greater", [SEEN, b.const("zero", 0.0)], "hist")
    hist = b.op1("Where", [started, HIST, newest], "hist")
    cols = []
    if st.others:
        cols.append(b.op1("Gather", ["x", b.const("other_idx", st.others, np.int64)], "x",
                          axis=1))
    if st.level:
        cols.append(z)
    lags = [1, *st.seasons]
    # one Gather for every lag: z(t - lag) sits at position N - lag of the memory
    prev = b.op1("Gather", [hist, b.const("lag_pos", [n - lag for lag in lags], np.int64)],
                 "lags", axis=1)  # [B, L, K]
    diffs = b.op1("Sub", [newest, prev], "lags")
    cols.append(b.op1("Reshape", [diffs, b.const("lags_shape", [0, len(lags) * k], np.int64)],
                      "lags"))  # lag-major, as trainer/structure.py orders them
    if st.ahead and st.seasons:
        # each season's naive path over the horizon, from today's value: [B, S*H, K] → [B, S*H*K]
        pos = np.concatenate([n - 1 + st.positions(s) for s in st.seasons])
        ahead = b.op1("Gather", [hist, b.const("ahead_pos", _before_today(pos, n), np.int64)],
                      "ahead", axis=1)
        ahead = b.op1("Where", [b.const("ahead_today", _is_today(pos, n).reshape(1, -1, 1),
                                        np.bool_), newest, ahead], "ahead")
        diffs_ahead = b.op1("Sub", [ahead, newest], "ahead")
        width = len(st.seasons) * st.horizon * k
        cols.append(b.op1("Reshape", [diffs_ahead, b.const("ahead_shape", [0, width],
                                                            np.int64)], "ahead"))
    if st.calendar:
        b.add_input(TIME, [b.batch_dim, 1], TensorProto.DOUBLE)
        periods = np.asarray(st.calendar, np.float64)
        phase = b.op1("Mod", [TIME, b.const("periods", periods, np.float64)], "calendar", fmod=1)
        phase = b.op1("Mul", [phase, b.const("to_radians", 2 * np.pi / periods, np.float64)],
                      "calendar")
        phase = b.op1("Cast", [phase], "calendar", to=TensorProto.FLOAT)  # [B, P]
        # sin and cos in one Sin: cos(a) = sin(a + pi/2); [B, P, 2] → sin, cos per period
        pairs = b.op1("Add", [b.op1("Unsqueeze", [phase, b.const("axes_last", [-1], np.int64)],
                                    "calendar"),
                              b.const("quarter_turn", [0.0, np.pi / 2])], "calendar")
        pairs = b.op1("Sin", [pairs], "calendar")
        cols.append(b.op1("Reshape", [pairs, b.const("cal_shape", [0, 2 * len(periods)],
                                                     np.int64)], "calendar"))
    derived = cols[0] if len(cols) == 1 else b.op1("Concat", cols, "derived", axis=1)
    if st.drift:  # z(t) - z(t - L) [B, 1, K], kept for the base
        b.op("Gather", [diffs, b.const("drift_lag", [lags.index(st.base_lag)], np.int64)],
             "drift", outputs=[DRIFT], axis=1)

    if n > 1:
        older = b.op1("Slice", [hist, b.const("one_i", [1], np.int64),
                                b.const("n_i", [n], np.int64), axes1], "hist")
        b.op("Concat", [older, newest], "hist", outputs=[HIST + "_out"], axis=1)
    else:
        b.op("Identity", [newest], "hist", outputs=[HIST + "_out"])
    b.op("Max", [SEEN, b.const("one", 1.0)], "seen", outputs=[SEEN + "_out"])
    for name, shape in ((HIST, [b.batch_dim, n, k]), (SEEN, [b.batch_dim, 1, 1])):
        b.state_outputs.append(
            helper.make_tensor_value_info(name + "_out", TensorProto.FLOAT, shape))
    return derived, z


def _before_today(pos: np.ndarray, n: int) -> np.ndarray:
    """Positions in the updated memory (today last) as positions in the memory before today's
    value joins it (one slot later); today's own slot is read elsewhere (clipped here)."""
    return np.minimum(pos + 1, n - 1)


def _is_today(pos: np.ndarray, n: int) -> np.ndarray:
    return pos == n - 1


def add_base(b: Builder, st: Structure, y: str, out_shape: list[int]) -> str:
    """y (corrections, [B, H] or [B, H, K] as the output is laid out) + the base forecast read
    from the updated memory, out of log space."""
    h = st.horizon
    pos = (st.memory - 1 + st.base_positions()).astype(np.int64)
    base = b.op1("Gather", [HIST + "_out", b.const("base_pos", pos, np.int64)], "base",
                 axis=1)  # [B, H, K]
    if st.drift:
        steps = st.drift_steps().astype(np.float32).reshape(1, h, 1)
        base = b.op1("Add", [base, b.op1("Mul", [DRIFT, b.const("drift_steps", steps)],
                                         "drift")], "base")
    if len(out_shape) == 2:  # one target: y is [B, H]
        base = b.op1("Reshape", [base, b.const("shape_h", [-1, h], np.int64)], "base")
    out = b.op1("Add", [y, base], "base")
    if st.log:
        out = b.op1("Exp", [out], "base")
    return out


def state_shapes(st: Structure) -> list[tuple[str, str, tuple[int, ...]]]:
    """The structure's state pairs (without the batch dimension)."""
    return [(HIST, HIST + "_out", (st.memory, len(st.targets))), (SEEN, SEEN + "_out", (1, 1))]


def structure_reference(model: Any, st: Structure, xs: np.ndarray,
                        ts: np.ndarray | None) -> np.ndarray:
    """What the run's Keras model and the trainer's numpy structure forecast after each row of
    `xs` [T, F] (raw, from zero state): [T, H] for one target, [T, H, K] for several."""
    d = st.scaled_inputs(xs, ts)
    out = model(d[None], training=False)
    out = out.numpy() if hasattr(out, "numpy") else np.asarray(out)
    y = st.decode(out[0], st.base(xs))
    return y[..., 0] if len(st.targets) == 1 else y


def sample_rows(source: Any, st: Structure, sample: str | Path | None = None,
                length: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray | None, str]:
    """Rows (and times) to prove the graph on: the user's sample, the run's held-out tail, else
    a synthetic seasonal series at the training data's level; long enough to fill the memory."""
    length = max(length, 3 * st.memory)
    ts: np.ndarray | None = None
    if sample is not None:
        from export.sample import load_sample

        seqs = load_sample(sample, tuple(st.features), 1)
        xs, origin = np.asarray(seqs[0][:length], np.float32), Path(sample).name
    elif source.tail is not None and len(source.tail) >= 2:
        xs = np.asarray(source.tail[:length], np.float32)
        ts = source.tail_t[:length] if source.tail_t is not None else None
        origin = "the run's held-out tail"
    else:
        rng = np.random.default_rng(seed)
        spec = source.spec
        mean = np.asarray(spec.scaler.x_mean)
        scale = np.asarray(spec.scaler.x_scale)
        k = np.arange(length)[:, None]
        cycle = np.sin(2 * np.pi * k / max(st.memory, 2))
        noise = 0.3 * rng.standard_normal((length, len(mean)))
        xs = (mean + scale * (cycle + noise)).astype(np.float32)
        origin = "a synthetic seasonal series"
    if st.log:
        xs = np.maximum(xs, np.float32(LOG_FLOOR))
    if st.calendar and ts is None:
        ts = 1.6e9 + 3600.0 * np.arange(len(xs))
    return xs, ts, origin


def parity_structured(path: Path, source: Any, layout: Any, precision: str,
                      sample: str | Path | None = None) -> Any:
    """Step the graph over sample rows from zero state and compare every forecast with Keras +
    the trainer's numpy structure (tolerance as for any graph: absolute + relative)."""
    from export.verify import RTOL, compare, tolerance

    st = layout.structure
    xs, ts, origin = sample_rows(source, st, sample)
    ref = structure_reference(source.model, st, xs, ts)
    got = StepModel(path).run_sequence(xs, ts=ts)[0]
    return compare(got, ref, tol=tolerance(precision, layout), rtol=RTOL[precision],
                   compared=len(xs), inputs=f"{len(xs)} observations of {origin}")
