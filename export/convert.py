"""Assemble the ONNX model: inputs, layers, output layout, precision and the manifest."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from export.errors import ExportError
from export.graph import IDENTITY_LAYERS, Affine, Builder, GraphWalker, Tensor, keras_layers
from export.structure import add_base, derived_inputs, state_shapes
from trainer.structure import Structure

DEFAULT_OPSET = 17
MIN_OPSET = 14
PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class Layout:
    """What y means: names, horizon, task and the scalers to bake in."""

    features: tuple[str, ...]
    targets: tuple[str, ...]
    horizon: int
    task: str  # regress | classify
    classes: tuple[str, ...] | None
    binary: bool  # a sigmoid p per horizon step, emitted as [1 - p, p]
    x_affine: Affine | None = None
    y_affine: Affine | None = None
    residual: tuple[int, ...] = ()  # feature index of each target: y is a change from it
    structure: Structure | None = None  # seasonal memory etc. around the LSTM (step graphs)

    @property
    def per_step(self) -> int:
        if self.task == "regress":
            return len(self.targets)
        return 1 if self.binary else len(self.classes or ())

    def output_shape(self, batch: int | None) -> tuple[int | None, ...]:
        if self.task == "classify":
            return (batch, self.horizon, 2 if self.binary else len(self.classes or ()))
        if len(self.targets) == 1:
            return (batch, self.horizon)
        return (batch, self.horizon, len(self.targets))


@dataclass
class Built:
    """An assembled graph before metadata: the proto, its state pairs and its y layout."""

    model: onnx.ModelProto
    states: list[tuple[str, str, tuple[int, ...]]]  # input, output, shape without the batch
    layout: Layout
    output_has_time: bool  # the Keras output has the encoder's time axis (return_sequences)


def final_activation(model: Any) -> str:
    """The activation of the model's last computing layer ('linear' if none)."""
    layers = keras_layers(model)
    for layer in reversed(layers):
        kind = type(layer).__name__
        if kind in IDENTITY_LAYERS:
            continue
        inner = layer.layer if kind == "TimeDistributed" else layer
        if type(inner).__name__ in ("Dense", "Activation"):
            act = inner.get_config().get("activation", "linear")
            return act if isinstance(act, str) else "custom"
        return "linear"
    return "linear"


def plain_layout(model: Any, end: Tensor, features: list[str] | None,
                 targets: list[str] | None, task: str | None) -> Layout:
    """Infer names, horizon and task for a Keras model that came without a run spec."""
    n_feat = int(model.inputs[0].shape[-1])
    feats = tuple(features) if features else tuple(f"x{i}" for i in range(n_feat))
    if len(feats) != n_feat:
        raise ExportError(f"--features names {len(feats)} features but the model takes {n_feat}")
    act = final_activation(model)
    if task is None:
        task = "classify" if act in ("sigmoid", "softmax") else "regress"
    width = end.width
    decoded = end.axis0 == "dec"
    if task == "classify":
        if act == "softmax":
            classes = tuple(str(i) for i in range(width))
            horizon, binary = (end.length if decoded else 1), False
        elif act == "sigmoid":
            if decoded and width != 1:
                raise ExportError("a sigmoid classifier must give one probability per step")
            classes, binary = ("0", "1"), True
            horizon = end.length if decoded else width
        else:
            raise ExportError("--task classify needs a model that ends in sigmoid or softmax")
        tgts = tuple(targets) if targets else ("y0",)
        return Layout(feats, tgts, horizon, "classify", classes, binary)
    if decoded:
        k, horizon = width, end.length
    else:
        k = len(targets) if targets else 1
        if width % k:
            raise ExportError(f"the model gives {width} values per step, not a multiple of "
                              f"the {k} targets named")
        horizon = width // k
    tgts = tuple(targets) if targets else tuple(f"y{i}" for i in range(k))
    if len(tgts) != k:
        raise ExportError(f"--targets names {len(tgts)} targets but the model gives {k} per step")
    return Layout(feats, tgts, horizon, "regress", None, False)


def run_layout(spec: Any) -> Layout:
    """Names, horizon, task and scalers from a run's spec."""
    s = spec.scaler
    x_aff = Affine(np.asarray(s.x_mean, np.float64), np.asarray(s.x_scale, np.float64))
    if spec.task == "classify":
        binary = spec.threshold is not None
        classes = tuple(spec.classes) if spec.classes else (("0", "1") if binary else None)
        if classes is None:
            raise ExportError("the run spec is a classifier but names no classes")
        return Layout(tuple(spec.features), tuple(spec.targets), int(spec.horizon), "classify",
                      classes, binary, x_aff, None)
    if getattr(spec, "structure", None):
        st = Structure.from_dict(spec.structure)
        h = int(spec.horizon)
        return Layout(
            tuple(spec.features), tuple(spec.targets), h, "regress", None, False,
            Affine(np.asarray(st.d_mean, np.float64), np.asarray(st.d_scale, np.float64)),
            Affine(np.asarray(st.r_mean, np.float64), np.tile(np.asarray(st.r_scale), h)),
            structure=st,
        )
    y_aff = Affine(np.asarray(s.y_mean, np.float64), np.asarray(s.y_scale, np.float64))
    residual: tuple[int, ...] = ()
    if getattr(spec, "residual", False):
        residual = tuple(list(spec.features).index(t) for t in spec.targets)
    return Layout(tuple(spec.features), tuple(spec.targets), int(spec.horizon), "regress", None,
                  False, x_aff, y_aff, residual)


def _finish(b: Builder, end: Tensor, lay: Layout, y_folded: bool) -> str:
    """Turn the last layer's time-major output into y in the manifest's layout."""
    name = end.name
    big = np.iinfo(np.int64).max
    if end.axis0 == "enc" and end.length > 1:  # window graph of a sequence model: newest step
        name = b.op1("Slice", [name, b.const("start", [-1], np.int64),
                               b.const("end", [big], np.int64),
                               b.const("axes0", [0], np.int64)], "y")
    k = lay.per_step
    h = lay.horizon
    if end.axis0 == "dec":
        if end.length != h or end.width != k:
            raise ExportError(
                f"the model decodes {end.length} steps of {end.width} values but the "
                f"export expects {h} steps of {k}"
            )
        name = b.op1("Transpose", [name], "y", perm=[1, 0, 2])
    elif end.width != h * k:
        raise ExportError(
            f"the model gives {end.width} values per step but the export expects "
            f"{h} steps × {k} values"
        )
    if (lay.task == "regress" and k == 1) or lay.binary:
        target: list[int] = [-1, h]
    else:
        target = [-1, h, k]
    name = b.op1("Reshape", [name, b.const("shape", target, np.int64)], "y")
    if lay.y_affine is not None and not y_folded:
        scale = lay.y_affine.scale if k > 1 else lay.y_affine.scale[0]
        mean = lay.y_affine.mean if k > 1 else lay.y_affine.mean[0]
        name = b.op1("Mul", [name, b.const("y_scale", scale)], "y")
        name = b.op1("Add", [name, b.const("y_mean", mean)], "y")
    if lay.residual:
        name = _add_residual(b, name, lay)
    if lay.binary:
        p = b.op1("Unsqueeze", [name, b.const("axes_last", [-1], np.int64)], "y")
        q = b.op1("Sub", [b.const("one", 1.0), p], "y")
        name = b.op1("Concat", [q, p], "y", axis=-1)
    return name


def _add_residual(b: Builder, y: str, lay: Layout) -> str:
    """A residual run learns changes: y = out * y_scale + x[target] (raw units).

    `y` already holds out * y_scale + y_mean, so add x[target] - y_mean.
    """
    assert lay.y_affine is not None
    x_now = "x"
    if b.kind == "window":  # the newest observation of the window
        x_now = b.op1("Gather", ["x", b.const("last", -1, np.int64)], "residual", axis=1)
    picked = b.op1("Gather", [x_now, b.const("target_idx", list(lay.residual), np.int64)],
                   "residual", axis=1)
    shift = b.op1("Sub", [picked, b.const("y_mean_r", lay.y_affine.mean)], "residual")
    if len(lay.targets) > 1:  # [B, K] → [B, 1, K] against y [B, H, K]
        shift = b.op1("Unsqueeze", [shift, b.const("axes1", [1], np.int64)], "residual")
    return b.op1("Add", [y, shift], "y")


def _rename_output(b: Builder, name: str, new: str) -> None:
    for node in b.nodes:
        for seq in (node.output, node.input):
            for i, v in enumerate(seq):
                if v == name:
                    seq[i] = new
    if not any(new in node.output for node in b.nodes):
        b.nodes.append(helper.make_node("Identity", [name], [new], name="y_identity"))


def build_graph(model: Any, *, kind: str, batch: str, opset: int, layout: Layout | None,
                features: list[str] | None = None, targets: list[str] | None = None,
                task: str | None = None, lookback: int | None = None) -> Built:
    """Walk the model's layers into an ONNX graph (fp32, no metadata yet).

    `layout` is None for a plain Keras model: names and horizon are then inferred from the model.
    """
    if not MIN_OPSET <= opset <= onnx.defs.onnx_opset_version():
        raise ExportError(
            f"--opset {opset} is not supported; use {MIN_OPSET} to {onnx.defs.onnx_opset_version()}"
        )
    b = Builder(kind, 1 if batch == "1" else "batch")
    n_feat = int(model.inputs[0].shape[-1])
    st = layout.structure if layout is not None else None
    if st is not None:
        if kind != "step":
            raise ExportError("a run with seasonal memory exports as a step graph only; "
                              "drop --kind window")
        assert layout is not None
        b.add_input("x", [b.batch_dim, len(layout.features)])
        derived, _ = derived_inputs(b, st)
        start = Tensor(b.op1("Unsqueeze", [derived, b.const("axes0", [0], np.int64)], "x"),
                       n_feat, "enc", 1)
    elif kind == "step":
        b.add_input("x", [b.batch_dim, n_feat])
        start = Tensor(b.op1("Unsqueeze", ["x", b.const("axes0", [0], np.int64)], "x"),
                       n_feat, "enc", 1)
    else:
        if lookback is None or lookback < 1:
            raise ExportError("a window graph needs a window length; pass --lookback N")
        b.add_input("x", [b.batch_dim, lookback, n_feat])
        start = Tensor(b.op1("Transpose", ["x"], "x", perm=[1, 0, 2]), n_feat, "enc", lookback)
    walker = GraphWalker(b, layout.x_affine if layout else None,
                         layout.y_affine if layout else None, opset)
    end = walker.walk(keras_layers(model), start)
    if layout is None:
        layout = plain_layout(model, end, features, targets, task)
    y = _finish(b, end, layout, walker.y_folded)
    out_shape = [b.batch_dim, *layout.output_shape(1)[1:]]
    if st is not None:
        if not walker.y_folded:
            raise ExportError("a run with seasonal memory must end in a linear Dense layer")
        y = add_base(b, st, y, [-1, *[int(d or 1) for d in layout.output_shape(1)[1:]]])
    _rename_output(b, y, "y")
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)]
    outputs += b.state_outputs
    graph = helper.make_graph(b.nodes, f"statecast_{kind}", b.inputs, outputs, b.inits)
    opsets = [helper.make_opsetid("", opset)]
    proto = helper.make_model(graph, opset_imports=opsets, producer_name="statecast-export")
    proto.ir_version = helper.find_min_ir_version_for(opsets)
    states = [(s.input, s.output, s.units) for s in b.states]
    pairs: list[tuple[str, str, tuple[int, ...]]] = []
    for inp, out, units in states:  # h and c of each layer, paired explicitly
        pairs += [(inp, out, (units,)), ("c" + inp[1:], "c" + out[1:], (units,))]
    if st is not None:
        pairs += state_shapes(st)
    return Built(proto, pairs, layout, end.axis0 == "enc" or end.outer)


def apply_precision(proto: onnx.ModelProto, precision: str) -> onnx.ModelProto:
    """fp16: weights stored as float16, arithmetic in float32; int8: onnxruntime's dynamic
    quantization (int8 weights for LSTM and MatMul). Inputs and outputs stay float32."""
    if precision == "fp32":
        return proto
    if precision == "fp16":
        return _fp16_weights(proto)
    if precision == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        with tempfile.TemporaryDirectory() as tmp:
            src, dst = os.path.join(tmp, "fp32.onnx"), os.path.join(tmp, "int8.onnx")
            onnx.save(proto, src)
            logging.disable(logging.WARNING)  # its advice to pre-process is for CNNs
            try:
                quantize_dynamic(src, dst, weight_type=QuantType.QInt8)
            finally:
                logging.disable(logging.NOTSET)
            return onnx.load(dst)
    raise ExportError(f"--precision {precision!r} is not one of {', '.join(PRECISIONS)}")


def _fp16_weights(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Store every float weight as float16 and cast it back when the session loads.

    onnxruntime's CPU LSTM kernel computes in float32 only (its float16 converter would have
    to leave the LSTM weights alone), so this keeps the arithmetic in float32 and halves the
    file; onnxruntime folds the casts once at start-up, so stepping costs nothing extra.
    """
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    inits, casts = [], []
    for init in out.graph.initializer:
        arr = numpy_helper.to_array(init)
        if init.data_type == TensorProto.FLOAT and arr.size > 8:
            half = f"{init.name}_fp16"
            inits.append(numpy_helper.from_array(arr.astype(np.float16), half))
            casts.append(helper.make_node("Cast", [half], [init.name], name=f"{init.name}_cast",
                                          to=TensorProto.FLOAT))
        else:
            inits.append(init)
    del out.graph.initializer[:]
    out.graph.initializer.extend(inits)
    nodes = casts + list(out.graph.node)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out


def model_id(proto: onnx.ModelProto) -> str:
    """sha256 of the serialized graph (call before the manifest is added)."""
    return hashlib.sha256(proto.SerializeToString(deterministic=True)).hexdigest()


def attach_manifest(proto: onnx.ModelProto, key: str, text: str) -> None:
    """Store the manifest JSON in the model's metadata."""
    del proto.metadata_props[:]
    helper.set_model_props(proto, {key: text})


def save(proto: onnx.ModelProto, path: Path) -> None:
    onnx.save(proto, str(path))
