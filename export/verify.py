"""Proof before writing: onnx.checker, then the graph stepped in onnxruntime against Keras."""

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

# Largest allowed |onnx - keras|, in target units for fp32; for fp16/int8 as a fraction of the
# target's scale (y_scale of a run; 1 for probabilities and plain models).
TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2, "int8": 1e-1}
STEP_LENGTH = 48  # observations stepped through
PREFIXES = 12  # Keras calls for a model that only answers after its last step
WINDOWS = 6


@dataclass(frozen=True)
class Parity:
    """The outcome of one comparison with Keras."""

    max_abs: float
    tolerance: float
    compared: int  # predictions compared

    @property
    def ok(self) -> bool:
        return bool(np.isfinite(self.max_abs)) and self.max_abs <= self.tolerance


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


def sample_sequence(layout: Layout, length: int, tail: np.ndarray | None,
                    seed: int = 0) -> np.ndarray:
    """The run's held-out tail, or random data in the features' units ([T, F] float32)."""
    if tail is not None and len(tail) >= 2:
        return np.asarray(tail[:length], dtype=np.float32)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((length, len(layout.features)))
    if layout.x_affine is not None:
        x = x * layout.x_affine.scale + layout.x_affine.mean
    return x.astype(np.float32)


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
    if model.inputs[0].shape[1] is not None:  # trained on fixed windows: free the time axis
        model = rebuilt(model, None)
    steps = sorted({int(v) for v in np.linspace(0, t - 1, min(PREFIXES, t))})
    outs = [_np(model(xs_s[None, : i + 1], training=False))[0] for i in steps]
    return steps, keras_to_layout(np.stack(outs), layout, xs[steps])


def parity_step(path: Path, model: Any, layout: Layout, *, xs: np.ndarray, output_has_time: bool,
                tol: float) -> Parity:
    """Step the ONNX graph over `xs` from zero state and compare with Keras."""
    steps, ref = keras_steps(model, xs, layout, output_has_time)
    ys, _ = StepModel(path).run_sequence(xs)
    err = float(np.max(np.abs(ys[steps].astype(np.float64) - ref)))
    return Parity(err, tol, len(steps))


def parity_window(path: Path, model: Any, layout: Layout, *, xs: np.ndarray, lookback: int,
                  output_has_time: bool, tol: float) -> Parity:
    """Run the window graph on a few windows of `xs` and compare with Keras."""
    if len(xs) < lookback:
        reps = -(-lookback // len(xs))
        xs = np.concatenate([xs] * (reps + 1))
    starts = sorted({int(v) for v in np.linspace(0, len(xs) - lookback, WINDOWS)})
    windows = np.stack([xs[s : s + lookback] for s in starts])
    out = _np(model(_scale_x(windows, layout), training=False))
    if output_has_time:
        out = out[:, -1]
    ref = keras_to_layout(out, layout, windows[:, -1])
    sm = StepModel(path)
    ys = np.stack([sm.step(w, [])[0][0] for w in windows])
    err = float(np.max(np.abs(ys.astype(np.float64) - ref)))
    return Parity(err, tol, len(windows))
