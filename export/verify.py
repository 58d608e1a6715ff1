"""Proof before writing: onnx.checker, then the graph run in onnxruntime against Keras.

The proof feeds inputs the model can meet: the user's `--sample`, else the run's held-out tail,
else random data in the features' units (for a plain model, which has no scaler, uniform in
[-1, 1]). A model built for a fixed number of steps L is compared on windows of L steps, each
stepped from zero state — what it was trained on; a stateful model, or one that takes sequences of
any length, is stepped through sequences of up to STEP_LENGTH steps. An output passes when
|onnx - keras| <= atol + rtol·|keras|.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edge.model import StepModel
from export.convert import Layout
from export.errors import ExportError
from export.graph import keras_layers
from export.sample import load_sample

# Absolute part of the tolerance, in target units for fp32; for fp16/int8 as a fraction of the
# target's scale (y_scale of a run; 1 for probabilities and plain models).
TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2, "int8": 1e-1}
# Relative part: a fraction of |keras| at that output.
RTOL = {"fp32": 1e-5, "fp16": 1e-2, "int8": 1e-1}
STEP_LENGTH = 48  # most observations stepped through per sequence
SEQUENCES = 4  # most sequences of a sample stepped through (each from zero state)
PREFIXES = 12  # Keras calls per sequence for a model that only answers after its last step
WINDOWS = 6  # windows compared for a model with a fixed number of steps
PLAIN_RANGE = 1.0  # a plain model's random inputs are uniform in [-PLAIN_RANGE, PLAIN_RANGE]


@dataclass(frozen=True)
class Parity:
    """The outcome of one comparison with Keras.

    `worst_err` and `worst_ref` are the error and Keras's value at the output furthest over (or
    nearest to) its tolerance `tolerance + rtol·|worst_ref|`.
    """

    max_abs: float
    tolerance: float  # the absolute part
    rtol: float
    compared: int  # predictions compared
    worst_err: float
    worst_ref: float
    inputs: str = ""  # what was fed, e.g. "6 windows of 3 steps of random data"

    @property
    def allowed(self) -> float:
        return self.tolerance + self.rtol * abs(self.worst_ref)

    @property
    def ok(self) -> bool:
        finite = bool(np.isfinite(self.worst_err)) and bool(np.isfinite(self.worst_ref))
        return finite and self.worst_err <= self.allowed


def compare(ys: np.ndarray, ref: np.ndarray, *, tol: float, rtol: float, compared: int,
            inputs: str = "") -> Parity:
    """Element-wise |ys - ref| <= tol + rtol·|ref|, summed up as a Parity."""
    y, r = np.broadcast_arrays(np.asarray(ys, np.float64), np.asarray(ref, np.float64))
    with np.errstate(invalid="ignore"):  # inf - inf where Keras or the graph overflowed
        err = np.abs(y - r)
        over = err - (tol + rtol * np.abs(r))
    over = np.where(np.isnan(over), np.inf, over)
    i = int(np.argmax(over))
    return Parity(float(np.max(err)), tol, rtol, compared, float(err.flat[i]),
                  float(r.flat[i]), inputs)


def _np(value: Any) -> np.ndarray:
    """A Keras/TensorFlow tensor as a numpy array."""
    return value.numpy() if hasattr(value, "numpy") else np.asarray(value)


def check_onnx(proto: onnx.ModelProto) -> None:
    """Run onnx.checker (with shape inference); a failure is an ExportError with status 1."""
    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        first = str(exc).strip().splitlines()[0][:200]
        raise ExportError(f"the exported graph fails onnx.checker ({first})", status=1) from None


def tolerance(precision: str, layout: Layout) -> float:
    if precision == "fp32":
        return TOLERANCE["fp32"]
    scale = 1.0
    if layout.task == "regress" and layout.y_affine is not None:
        scale = float(np.max(layout.y_affine.scale))
    return TOLERANCE[precision] * scale


def random_data(layout: Layout, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Random observations in the features' units (shape [..., F], float32).

    A run's scaler says what its data look like (standard normal in scaled units); a plain model
    has none, so a modest uniform range, wherever its data lay after the user's own scaling.
    """
    rng = np.random.default_rng(seed)
    if layout.x_affine is None:
        return rng.uniform(-PLAIN_RANGE, PLAIN_RANGE, shape).astype(np.float32)
    x = rng.standard_normal(shape) * layout.x_affine.scale + layout.x_affine.mean
    return x.astype(np.float32)


def pick_windows(seqs: list[np.ndarray], length: int, count: int = WINDOWS) -> np.ndarray:
    """`count` windows of `length` steps spread evenly over the sequences ([N, length, F])."""
    counts = np.array([max(len(xs) - length + 1, 0) for xs in seqs])
    ends = np.cumsum(counts)
    total = int(ends[-1])
    assert total > 0, "no sequence is long enough"
    picks = sorted({int(v) for v in np.linspace(0, total - 1, min(count, total))})
    out = []
    for k in picks:
        i = int(np.searchsorted(ends, k, side="right"))
        start = k - int(ends[i] - counts[i])
        out.append(seqs[i][start : start + length])
    return np.stack(out).astype(np.float32)


def declared_steps(model: Any) -> int | None:
    """The fixed number of steps a model was built for; None if it takes any number or is
    stateful (a stateful model carries its state from one call to the next)."""
    shape = model.inputs[0].shape
    if is_stateful(model) or len(shape) != 3 or not shape[1]:
        return None
    return int(shape[1])


def keras_to_layout(raw: np.ndarray, layout: Layout, x_now: np.ndarray | None = None
                    ) -> np.ndarray:
    """Keras outputs [N, ...] (scaled units) → [N, H(, K or classes)] as y is laid out.

    `x_now` ([N, F] raw) is the observation each output was made after; a residual run needs it.
    """
    n, h, k = raw.shape[0], layout.horizon, layout.per_step
    y = np.asarray(raw, np.float64).reshape(n, h, k)
    if layout.task == "regress":
        if layout.y_affine is not None and layout.residual:
            assert x_now is not None
            base = np.asarray(x_now, np.float64)[:, list(layout.residual)]
            y = y * layout.y_affine.scale + base[:, None, :]
        elif layout.y_affine is not None:
            y = y * layout.y_affine.scale + layout.y_affine.mean
        return y[..., 0] if k == 1 else y
    if layout.binary:
        return np.concatenate([1.0 - y, y], axis=-1)
    return y


def _scale_x(x: np.ndarray, layout: Layout) -> np.ndarray:
    if layout.x_affine is None:
        return x.astype(np.float32)
    return ((x - layout.x_affine.mean) / layout.x_affine.scale).astype(np.float32)


def rebuilt(model: Any, batch: int | None) -> Any:
    """The same layers and weights on a new input: batch `batch`, any number of steps."""
    import keras

    shape = model.inputs[0].shape
    inp = keras.Input(batch_shape=(batch, None, *shape[2:]))
    clone = keras.models.clone_model(model, input_tensors=inp)
    clone.set_weights(model.get_weights())
    return clone


def is_stateful(model: Any) -> bool:
    return any(getattr(layer, "stateful", False) for layer in keras_layers(model))


def keras_steps(model: Any, xs: np.ndarray, layout: Layout,
                output_has_time: bool) -> tuple[list[int], np.ndarray]:
    """What Keras predicts after each of the chosen steps of raw sequence `xs` (from zero state).

    A stateful model is copied at batch 1 and stepped with its state carried; a model that
    returns sequences runs the whole sequence once; any other model runs each chosen prefix.
    For a model that takes any number of steps (see `keras_windows` for one that does not).
    """
    xs_s = _scale_x(xs, layout)
    t = len(xs_s)
    if is_stateful(model):
        clone = rebuilt(model, 1)  # the copy-weights batch-1 model, stepped
        for layer in clone.layers:
            if getattr(layer, "stateful", False):
                layer.reset_state()
        outs = []
        for i in range(t):
            out = _np(clone(xs_s[None, i:i + 1], training=False))
            outs.append(out[0, -1] if output_has_time else out[0])
        return list(range(t)), keras_to_layout(np.stack(outs), layout, xs)
    if output_has_time:
        out = _np(model(xs_s[None], training=False))[0]
        return list(range(t)), keras_to_layout(out, layout, xs)
    steps = sorted({int(v) for v in np.linspace(0, t - 1, min(PREFIXES, t))})
    outs = [_np(model(xs_s[None, : i + 1], training=False))[0] for i in steps]
    return steps, keras_to_layout(np.stack(outs), layout, xs[steps])


def keras_windows(model: Any, windows: np.ndarray, layout: Layout,
                  output_has_time: bool) -> tuple[list[int], np.ndarray]:
    """What Keras predicts after the chosen steps of each raw window [N, L, F], from zero state.

    Returns the steps and [N, steps, H(, K or classes)]. A model that returns sequences runs the
    windows once; any other model runs each chosen prefix of them (the whole window as built,
    shorter prefixes on a copy that takes any number of steps).
    """
    n, length, f = windows.shape
    ws = _scale_x(windows, layout)
    if output_has_time:
        out = _np(model(ws, training=False))
        ref = keras_to_layout(out.reshape(n * length, *out.shape[2:]), layout,
                              windows.reshape(n * length, f))
        return list(range(length)), ref.reshape(n, length, *ref.shape[1:])
    steps = sorted({int(v) for v in np.linspace(0, length - 1, min(PREFIXES, length))})
    free = rebuilt(model, None) if len(steps) > 1 else model
    outs = []
    for i in steps:
        out = _np((model if i == length - 1 else free)(ws[:, : i + 1], training=False))
        outs.append(keras_to_layout(out, layout, windows[:, i]))
    return steps, np.stack(outs, axis=1)


def parity_step(path: Path, model: Any, layout: Layout, *, seqs: list[np.ndarray],
                output_has_time: bool, tol: float, rtol: float, origin: str) -> Parity:
    """Step the ONNX graph over each sequence from zero state and compare with Keras."""
    sm = StepModel(path)
    ys, refs = [], []
    for xs in seqs:
        steps, ref = keras_steps(model, xs, layout, output_has_time)
        out, _ = sm.run_sequence(xs)
        ys.append(out[steps])
        refs.append(ref)
    y, r = np.concatenate(ys), np.concatenate(refs)
    longest = max(len(xs) for xs in seqs)
    what = f"{len(seqs)} sequence{'s' if len(seqs) > 1 else ''} of {longest} steps"
    return compare(y, r, tol=tol, rtol=rtol, compared=len(y), inputs=f"{what} from {origin}")


def parity_windows_stepped(path: Path, model: Any, layout: Layout, *, windows: np.ndarray,
                           output_has_time: bool, tol: float, rtol: float,
                           origin: str) -> Parity:
    """Step the ONNX graph through each window from zero state and compare with Keras on it."""
    steps, ref = keras_windows(model, windows, layout, output_has_time)
    sm = StepModel(path)
    ys = np.stack([sm.run_sequence(w)[0][steps] for w in windows])
    n, length = windows.shape[:2]
    return compare(ys, ref, tol=tol, rtol=rtol, compared=n * len(steps),
                   inputs=f"{n} windows of {length} steps from {origin}")


def parity_window(path: Path, model: Any, layout: Layout, *, windows: np.ndarray,
                  output_has_time: bool, tol: float, rtol: float, origin: str) -> Parity:
    """Run the window graph on each window and compare with Keras."""
    out = _np(model(_scale_x(windows, layout), training=False))
    if output_has_time:
        out = out[:, -1]
    ref = keras_to_layout(out, layout, windows[:, -1])
    sm = StepModel(path)
    ys = np.stack([sm.step(w, [])[0][0] for w in windows])
    n, length = windows.shape[:2]
    return compare(ys, ref, tol=tol, rtol=rtol, compared=n,
                   inputs=f"{n} windows of {length} steps from {origin}")


def prove(path: Path, model: Any, layout: Layout, *, kind: str, lookback: int | None,
          output_has_time: bool, precision: str, tail: np.ndarray | None = None,
          sample: str | Path | None = None) -> Parity:
    """Compare the graph at `path` with Keras on inputs the model can meet (see the module).

    `sample` is the user's file of raw inputs (see `export.sample`); a bad one is an
    ExportError with status 2. Without it the run's `tail` is used when long enough.
    """
    tol, rtol = tolerance(precision, layout), RTOL[precision]
    n_feat = len(layout.features)
    if kind == "window":
        if lookback is None:
            raise ExportError("a window graph needs --lookback")
        length: int | None = lookback
    else:
        length = declared_steps(model)
    seqs: list[np.ndarray] | None = None
    if sample is not None:
        seqs, origin = load_sample(sample, layout.features, length or 1), Path(sample).name
    elif tail is not None and len(tail) >= max(length or 2, 2):
        seqs, origin = [np.asarray(tail, np.float32)], "the run's held-out tail"
    else:
        origin = "random data"
    if length is None:  # stepped through whole sequences
        if seqs is None:
            seqs = [random_data(layout, (STEP_LENGTH, n_feat))]
        seqs = [xs[:STEP_LENGTH] for xs in seqs[:SEQUENCES]]
        return parity_step(path, model, layout, seqs=seqs, output_has_time=output_has_time,
                           tol=tol, rtol=rtol, origin=origin)
    windows = pick_windows(seqs, length) if seqs is not None else \
        random_data(layout, (WINDOWS, length, n_feat))
    if kind == "window":
        return parity_window(path, model, layout, windows=windows,
                             output_has_time=output_has_time, tol=tol, rtol=rtol, origin=origin)
    return parity_windows_stepped(path, model, layout, windows=windows,
                                  output_has_time=output_has_time, tol=tol, rtol=rtol,
                                  origin=origin)
