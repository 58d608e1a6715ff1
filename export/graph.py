"""Emit an ONNX graph straight from a Keras model's weights, one layer at a time.

Every LSTM becomes one fused ONNX ``LSTM`` node (Keras gate order i, f, c, o is reordered to
ONNX's i, o, f, c), so neither a step graph nor a window graph holds a Loop or Scan op:

- step graph: ``x [B, F]`` plus ``h_i``/``c_i [B, U]`` for every encoder LSTM; each of those
  advances by one observation. LSTMs after a ``RepeatVector`` (decoders) run all of their
  steps from zero state inside the same node, so a run decodes the whole horizon.
- window graph: ``x [B, L, F]``; every LSTM runs the window from zero state; Bidirectional
  layers become ``direction="bidirectional"`` nodes.

Tensors are kept time-major (``[T, B, D]``) inside the graph, as ONNX's LSTM wants them. The
walker tracks what the time axis means: the encoder's time (``enc``; length 1 in a step graph),
a decoder's time (``dec``, after a RepeatVector) or none (``none``; a dummy axis of length 1).
The input scaler is folded into the first layer's weights where it can be; the output scaler
into the last Dense's. A Masking layer in a step graph makes every stateful LSTM keep its state
(and so repeat its last output) when all features of an observation equal the mask value, as
Keras does; in a window graph it is ignored (a window holds real observations only).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from export.errors import ExportError

IDENTITY_LAYERS = frozenset({
    "InputLayer", "Dropout", "SpatialDropout1D", "GaussianNoise", "GaussianDropout",
    "AlphaDropout", "Masking", "ActivityRegularization",
})

# Keras activation -> (ONNX LSTM activation name, alpha, beta); None: the op's own default.
LSTM_ACTIVATIONS: dict[str, tuple[str, float | None, float | None]] = {
    "tanh": ("Tanh", None, None),
    "sigmoid": ("Sigmoid", None, None),
    "relu": ("Relu", None, None),
    "hard_sigmoid": ("HardSigmoid", 1.0 / 6.0, 0.5),  # Keras 3: relu6(x + 3) / 6
    "linear": ("Affine", 1.0, 0.0),
    "softsign": ("Softsign", None, None),
    "softplus": ("Softplus", None, None),
    "elu": ("Elu", 1.0, None),
}


@dataclass(frozen=True)
class Affine:
    """raw = scaled * scale + mean, per feature (input) or per target (output)."""

    mean: np.ndarray
    scale: np.ndarray


@dataclass(frozen=True)
class State:
    """One state input/output pair the graph exposes."""

    input: str
    output: str
    units: int


@dataclass
class Tensor:
    """A time-major tensor ``[T, B, width]`` and what its time axis means."""

    name: str
    width: int
    axis0: str  # "enc" | "dec" | "none"
    length: int  # T
    outer: bool = False  # an encoder time axis was collapsed to its newest step (stateful encdec)


@dataclass
class Builder:
    """Collects nodes and initializers; names are unique and readable."""

    kind: str  # "step" | "window"
    batch_dim: int | str
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    inits: list[onnx.TensorProto] = field(default_factory=list)
    inputs: list[onnx.ValueInfoProto] = field(default_factory=list)
    states: list[State] = field(default_factory=list)
    state_outputs: list[onnx.ValueInfoProto] = field(default_factory=list)
    _count: int = 0
    _consts: dict[tuple[str, bytes, tuple[int, ...]], str] = field(default_factory=dict)

    def fresh(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def const(self, hint: str, value: Any, dtype: Any = np.float32) -> str:
        arr = np.asarray(value, dtype=dtype)
        key = (arr.dtype.str, arr.tobytes(), arr.shape)
        if key in self._consts:  # share small constants such as axes
            return self._consts[key]
        name = self.fresh(hint)
        self.inits.append(numpy_helper.from_array(arr, name))
        self._consts[key] = name
        return name

    def op(self, op_type: str, inputs: list[str], hint: str, n_out: int = 1,
           outputs: list[str] | None = None, **attrs: Any) -> list[str]:
        outs = outputs or [self.fresh(f"{hint}_{op_type.lower()}") for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=self.fresh(hint), **attrs))
        return outs

    def op1(self, op_type: str, inputs: list[str], hint: str, **attrs: Any) -> str:
        return self.op(op_type, inputs, hint, **attrs)[0]

    def add_input(self, name: str, shape: list[int | str],
                  dtype: int = TensorProto.FLOAT) -> None:
        self.inputs.append(helper.make_tensor_value_info(name, dtype, shape))


def keras_layers(model: Any) -> list[Any]:
    """The model's layers in order, checking that a functional model is one straight chain."""
    layers = list(model.layers)
    if type(model).__name__ == "Sequential":
        return layers
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ExportError(
            f"model {model.name!r} has {len(model.inputs)} inputs and {len(model.outputs)} "
            "outputs; only single-input, single-output models can be exported"
        )
    chain = [layer for layer in layers if type(layer).__name__ != "InputLayer"]
    previous = model.inputs[0]
    for layer in chain:
        try:
            inbound = layer.input
        except (AttributeError, ValueError):
            inbound = None
        if isinstance(inbound, (list, tuple)):  # [tensor, mask] after a Masking layer
            inbound = inbound[0] if inbound else None
        if inbound is not previous:
            raise ExportError(
                f"layer {layer.name!r} does not simply follow the layer before it; only "
                "models that are a straight chain of layers can be exported"
            )
        previous = layer.output
    return chain


def _activation_name(layer: Any, key: str = "activation") -> str:
    act = layer.get_config().get(key, "linear")
    if act is None:
        return "linear"
    if not isinstance(act, str):
        raise ExportError(f"layer {layer.name!r} uses a custom {key} that cannot be exported")
    return act


def _gates_to_onnx(m: np.ndarray) -> np.ndarray:
    """Reorder the last axis from Keras gates (i, f, c, o) to ONNX gates (i, o, f, c)."""
    i, f, c, o = np.split(m, 4, axis=-1)
    return np.concatenate([i, o, f, c], axis=-1)


class GraphWalker:
    """Turns a straight chain of Keras layers into ONNX nodes."""

    def __init__(self, builder: Builder, x_affine: Affine | None, y_affine: Affine | None,
                 opset: int) -> None:
        self.b = builder
        self.pending_in = x_affine
        self.y_affine = y_affine
        self.y_folded = False
        self.opset = opset
        self.keep: str | None = None  # bool [1, B, 1]: this observation is not masked

    def masking(self, layer: Any, t: Tensor) -> None:
        """Keras skips a step whose features all equal `mask_value`: the LSTMs keep their state
        and repeat their last output. Compute `keep` so each stateful LSTM can do the same."""
        b = self.b
        value = np.full(t.width, float(layer.mask_value))
        if self.pending_in is not None:  # x is still in raw units here
            value = value * self.pending_in.scale + self.pending_in.mean
        diff = b.op1("Abs", [b.op1("Sub", [t.name, b.const("mask_value", value)], layer.name)],
                     layer.name)
        if self.opset >= 18:
            biggest = b.op1("ReduceMax", [diff, b.const("axes_last", [-1], np.int64)],
                            layer.name, keepdims=1)
        else:
            biggest = b.op1("ReduceMax", [diff], layer.name, axes=[-1], keepdims=1)
        self.keep = b.op1("Greater", [biggest, b.const("zero", 0.0)], layer.name)

    # -- helpers -------------------------------------------------------------------------------
    def _fold_input(self, kernel: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Fold a pending (x - mean) / scale into a kernel [D, N] and bias [N]."""
        if self.pending_in is None:
            return kernel, bias
        mean = np.asarray(self.pending_in.mean, np.float64)
        scale = np.asarray(self.pending_in.scale, np.float64)
        if mean.shape[0] != kernel.shape[0]:
            raise ExportError(
                f"the scaler has {mean.shape[0]} features but the model takes {kernel.shape[0]}"
            )
        k64 = kernel.astype(np.float64)
        new_k = k64 / scale[:, None]
        new_b = bias.astype(np.float64) - (mean / scale) @ k64
        self.pending_in = None
        return new_k, new_b

    def _materialize_input(self, t: Tensor) -> Tensor:
        if self.pending_in is None:
            return t
        mean = self.b.const("x_mean", self.pending_in.mean)
        inv = self.b.const("x_inv_scale", 1.0 / np.asarray(self.pending_in.scale, np.float64))
        self.pending_in = None
        sub = self.b.op1("Sub", [t.name, mean], "scale_x")
        return Tensor(self.b.op1("Mul", [sub, inv], "scale_x"), t.width, t.axis0, t.length,
                      t.outer)

    def _activation(self, name: str, act: str, layer_name: str) -> str:
        b = self.b
        if act == "linear":
            return name
        simple = {"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh", "softplus": "Softplus",
                  "softsign": "Softsign", "elu": "Elu", "selu": "Selu", "exponential": "Exp"}
        if act in simple:
            return b.op1(simple[act], [name], layer_name)
        if act == "softmax":
            return b.op1("Softmax", [name], layer_name, axis=-1)
        if act == "hard_sigmoid":
            return b.op1("HardSigmoid", [name], layer_name, alpha=1.0 / 6.0, beta=0.5)
        if act == "leaky_relu":
            return b.op1("LeakyRelu", [name], layer_name, alpha=0.2)
        if act in ("swish", "silu"):
            return b.op1("Mul", [name, b.op1("Sigmoid", [name], layer_name)], layer_name)
        raise ExportError(f"layer {layer_name!r} uses activation {act!r}, which cannot be exported")

    # -- layers --------------------------------------------------------------------------------
    def walk(self, layers: list[Any], t: Tensor) -> Tensor:
        last = max((i for i, lay in enumerate(layers)
                    if type(lay).__name__ not in IDENTITY_LAYERS), default=-1)
        for i, layer in enumerate(layers):
            t = self.layer(layer, t, is_last=i == last)
        return t

    def layer(self, layer: Any, t: Tensor, is_last: bool = False) -> Tensor:
        kind = type(layer).__name__
        if kind == "Masking" and self.b.kind == "step" and t.axis0 == "enc" and not t.outer:
            self.masking(layer, t)
            return t
        if kind in IDENTITY_LAYERS:
            return t
        if kind in ("Sequential", "Functional"):
            return self.walk(keras_layers(layer), t)
        if kind == "Dense":
            return self.dense(layer, t, is_last)
        if kind == "Activation":
            t = self._materialize_input(t)
            return Tensor(self._activation(t.name, _activation_name(layer), layer.name),
                          t.width, t.axis0, t.length, t.outer)
        if kind == "LSTM":
            return self.lstm(layer, t)
        if kind == "Bidirectional":
            return self.bidirectional(layer, t)
        if kind == "RepeatVector":
            return self.repeat(layer, t)
        if kind == "TimeDistributed":
            return self.time_distributed(layer, t, is_last)
        raise ExportError(
            f"layer {layer.name!r} ({kind}) is not supported; statecast exports LSTM, "
            "Bidirectional(LSTM), Dense, TimeDistributed, RepeatVector, Dropout and Masking"
        )

    def dense(self, layer: Any, t: Tensor, is_last: bool) -> Tensor:
        weights = layer.get_weights()
        kernel = np.asarray(weights[0])
        bias = np.asarray(weights[1]) if len(weights) > 1 else np.zeros(kernel.shape[1])
        if kernel.ndim != 2 or kernel.shape[0] != t.width:
            raise ExportError(f"layer {layer.name!r} does not act on the last axis of its input")
        kernel, bias = self._fold_input(kernel, bias)
        act = _activation_name(layer)
        if is_last and act == "linear" and self.y_affine is not None:
            scale = np.asarray(self.y_affine.scale, np.float64)
            mean = np.asarray(self.y_affine.mean, np.float64)
            if kernel.shape[1] % scale.shape[0] == 0:  # columns are horizon-major: h0k0, h0k1..
                reps = kernel.shape[1] // scale.shape[0]
                kernel = kernel * np.tile(scale, reps)[None, :]
                bias = bias * np.tile(scale, reps) + np.tile(mean, reps)
                self.y_folded = True
        b = self.b
        out = b.op1("MatMul", [t.name, b.const(f"{layer.name}_kernel", kernel)], layer.name)
        out = b.op1("Add", [out, b.const(f"{layer.name}_bias", bias)], layer.name)
        out = self._activation(out, act, layer.name)
        return Tensor(out, kernel.shape[1], t.axis0, t.length, t.outer)

    def _lstm_weights(self, layer: Any, fold: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        weights = [np.asarray(w) for w in layer.get_weights()]
        kernel, rec = weights[0], weights[1]
        units = rec.shape[0]
        bias = weights[2] if len(weights) > 2 else np.zeros(4 * units)
        if fold:
            kernel, bias = self._fold_input(kernel, bias)
        w = _gates_to_onnx(kernel).T  # [4U, D]
        r = _gates_to_onnx(rec).T  # [4U, U]
        bb = np.concatenate([_gates_to_onnx(bias), np.zeros(4 * units)])  # Wb then Rb
        return w, r, bb

    def _lstm_attrs(self, layers: list[Any]) -> dict[str, Any]:
        acts: list[str] = []
        alphas: list[float] = []
        betas: list[float] = []
        for lay in layers:
            cfg = lay.get_config()
            for key in ("recurrent_activation", "activation", "activation"):
                act = _activation_name(lay, key)
                if act not in LSTM_ACTIVATIONS:
                    raise ExportError(
                        f"layer {lay.name!r} uses {key.replace('_', ' ')} {act!r}, which the "
                        f"ONNX LSTM op cannot express (supported: "
                        f"{', '.join(sorted(LSTM_ACTIVATIONS))})"
                    )
                onnx_name, alpha, beta = LSTM_ACTIVATIONS[act]
                acts.append(onnx_name)
                if alpha is not None:
                    alphas.append(alpha)
                if beta is not None:
                    betas.append(beta)
            if cfg.get("return_state"):
                raise ExportError(f"layer {lay.name!r} returns its state; export needs a chain")
        attrs: dict[str, Any] = {"hidden_size": int(layers[0].units)}
        if acts != ["Sigmoid", "Tanh", "Tanh"] * len(layers):
            attrs["activations"] = acts
            if alphas:
                attrs["activation_alpha"] = alphas
            if betas:
                attrs["activation_beta"] = betas
        return attrs

    def lstm(self, layer: Any, t: Tensor) -> Tensor:
        b = self.b
        cfg = layer.get_config()
        if cfg.get("go_backwards"):
            raise ExportError(
                f"layer {layer.name!r} reads its input backwards, which cannot be stepped or "
                "exported; wrap it in Bidirectional or train it forwards"
            )
        if t.axis0 == "none":
            raise ExportError(f"layer {layer.name!r} gets an input without a time axis")
        attrs = self._lstm_attrs([layer])
        if self.pending_in is not None and t.axis0 == "enc":
            w, r, bias = self._lstm_weights(layer, fold=True)
        else:
            t = self._materialize_input(t)
            w, r, bias = self._lstm_weights(layer, fold=False)
        units = int(layer.units)
        ins = [t.name, b.const(f"{layer.name}_W", w[None]), b.const(f"{layer.name}_R", r[None]),
               b.const(f"{layer.name}_B", bias[None])]
        seq = bool(cfg.get("return_sequences"))
        carry = b.kind == "step" and t.axis0 == "enc" and not t.outer
        if carry:  # a stateful encoder layer: state in, one step, state out
            i = len(b.states)
            h_in, c_in = f"h_{i}", f"c_{i}"
            b.add_input(h_in, [b.batch_dim, units])
            b.add_input(c_in, [b.batch_dim, units])
            axes = b.const("axes0", [0], np.int64)
            ins += ["", b.op1("Unsqueeze", [h_in, axes], layer.name),
                    b.op1("Unsqueeze", [c_in, axes], layer.name)]
            _, y_h, y_c = b.op("LSTM", ins, layer.name, outputs=["", b.fresh(f"{layer.name}_h"),
                                                                 b.fresh(f"{layer.name}_c")],
                               **attrs)
            if self.keep is not None:  # a masked observation leaves the state as it was
                y_h = b.op1("Where", [self.keep, y_h, ins[5]], layer.name)
                y_c = b.op1("Where", [self.keep, y_c, ins[6]], layer.name)
            b.op("Squeeze", [y_h, axes], layer.name, outputs=[f"h_{i}_out"])
            b.op("Squeeze", [y_c, axes], layer.name, outputs=[f"c_{i}_out"])
            b.states.append(State(h_in, f"h_{i}_out", units))
            for name in (f"h_{i}_out", f"c_{i}_out"):
                b.state_outputs.append(
                    helper.make_tensor_value_info(name, TensorProto.FLOAT, [b.batch_dim, units]))
            # Y_h is [1, B, U]: this step's output, whether or not the layer returns sequences
            return Tensor(y_h, units, "enc" if seq else "none", 1, t.outer)
        if seq:
            y = b.op("LSTM", ins, layer.name, outputs=[b.fresh(f"{layer.name}_y")], **attrs)[0]
            y = b.op1("Squeeze", [y, b.const("axes1", [1], np.int64)], layer.name)
            return Tensor(y, units, t.axis0, t.length, t.outer)
        y_h = b.op("LSTM", ins, layer.name, outputs=["", b.fresh(f"{layer.name}_h")], **attrs)[1]
        return Tensor(y_h, units, "none", 1, t.outer)

    def bidirectional(self, layer: Any, t: Tensor) -> Tensor:
        b = self.b
        if b.kind == "step":
            raise ExportError(
                f"layer {layer.name!r} is Bidirectional: each position sees the rest of its "
                "window, so it cannot be stepped one observation at a time; export it with "
                "--kind window"
            )
        fwd, bwd = layer.forward_layer, layer.backward_layer
        if type(fwd).__name__ != "LSTM" or type(bwd).__name__ != "LSTM":
            raise ExportError(f"layer {layer.name!r} wraps {type(fwd).__name__}, not an LSTM")
        merge = layer.merge_mode
        if merge not in ("concat", "sum", "ave", "mul"):
            raise ExportError(f"layer {layer.name!r} has merge mode {merge!r}, not supported")
        if t.axis0 == "none":
            raise ExportError(f"layer {layer.name!r} gets an input without a time axis")
        attrs = self._lstm_attrs([fwd, bwd])
        fold = self.pending_in is not None and t.axis0 == "enc"
        if not fold:
            t = self._materialize_input(t)
        saved = self.pending_in
        wf, rf, bf = self._lstm_weights(fwd, fold=fold)
        self.pending_in = saved
        wb, rb, bb = self._lstm_weights(bwd, fold=fold)
        units = int(fwd.units)
        ins = [t.name, b.const(f"{layer.name}_W", np.stack([wf, wb])),
               b.const(f"{layer.name}_R", np.stack([rf, rb])),
               b.const(f"{layer.name}_B", np.stack([bf, bb]))]
        seq = bool(fwd.get_config().get("return_sequences"))
        attrs["direction"] = "bidirectional"
        if seq:  # Y: [T, 2, B, U], each direction aligned with the input's time
            y = b.op("LSTM", ins, layer.name, outputs=[b.fresh(f"{layer.name}_y")], **attrs)[0]
            dir_axis = 1
        else:  # Y_h: [2, B, U]
            y = b.op("LSTM", ins, layer.name, outputs=["", b.fresh(f"{layer.name}_h")],
                     **attrs)[1]
            dir_axis = 0
        if merge == "concat":
            if seq:
                y = b.op1("Transpose", [y], layer.name, perm=[0, 2, 1, 3])
                y = b.op1("Reshape", [y, b.const("shape", [0, 0, 2 * units], np.int64)],
                          layer.name)
            else:
                y = b.op1("Transpose", [y], layer.name, perm=[1, 0, 2])
                y = b.op1("Reshape", [y, b.const("shape", [1, -1, 2 * units], np.int64)],
                          layer.name)
            width = 2 * units
        else:
            parts = b.op("Split", [y, b.const("split", [1, 1], np.int64)], layer.name, n_out=2,
                         axis=dir_axis)
            y = b.op1({"sum": "Add", "ave": "Add", "mul": "Mul"}[merge], parts, layer.name)
            if merge == "ave":
                y = b.op1("Mul", [y, b.const("half", 0.5)], layer.name)
            if seq:
                y = b.op1("Squeeze", [y, b.const("axes1", [1], np.int64)], layer.name)
            width = units
        if seq:
            return Tensor(y, width, t.axis0, t.length, t.outer)
        return Tensor(y, width, "none", 1, t.outer)

    def repeat(self, layer: Any, t: Tensor) -> Tensor:
        if t.axis0 != "none":
            raise ExportError(f"layer {layer.name!r} (RepeatVector) needs an input without time")
        t = self._materialize_input(t)
        n = int(layer.n)
        y = self.b.op1("Expand", [t.name, self.b.const("repeat", [n, 1, 1], np.int64)],
                       layer.name)
        return Tensor(y, t.width, "dec", n, t.outer)

    def time_distributed(self, layer: Any, t: Tensor, is_last: bool) -> Tensor:
        inner = layer.layer
        kind = type(inner).__name__
        if kind in IDENTITY_LAYERS or kind in ("Dense", "Activation"):
            return self.layer(inner, t, is_last)  # these act on the last axis anyway
        if t.outer:
            return self.layer(inner, t, is_last)
        if t.axis0 != "enc":
            raise ExportError(
                f"layer {layer.name!r} wraps {kind} over an axis that is not time; not supported"
            )
        # The wrapped layer sees each encoder step on its own, so only the newest step matters.
        name = t.name
        if t.length > 1:
            big = np.iinfo(np.int64).max
            name = self.b.op1("Slice", [name, self.b.const("start", [-1], np.int64),
                                        self.b.const("end", [big], np.int64),
                                        self.b.const("axes0", [0], np.int64)], layer.name)
        return self.layer(inner, Tensor(name, t.width, "none", 1, True), is_last)
