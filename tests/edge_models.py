"""Small real ONNX graphs for the edge tests, built with onnx.helper (no TensorFlow).

They follow the export contract: a batch-1 step graph with the ONNX LSTM op and explicit state
(`x [1,F]`, `h_0 [1,U]`, `c_0 [1,U]` → `y [1,H]`, `h_0_out`, `c_0_out`), a window graph
(`x [1,L,F]` → `y [1,H]`), a scaler baked in, and the manifest in the metadata under `statecast`.
With `batch="dynamic"` the batch dimension of every input and output is symbolic, window graphs
included (as `statecast-export --batch dynamic` writes them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edge.manifest import METADATA_KEY, Grid, Manifest, StateSpec

OPSET = 17


def _const(name: str, value: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


def build_model(
    path: str | Path,
    *,
    kind: str = "step",
    features: tuple[str, ...] = ("temp",),
    units: int = 8,
    horizon: int = 3,
    lookback: int = 4,
    task: str = "regress",
    classes: tuple[str, ...] | None = None,
    targets: tuple[str, ...] | None = None,
    freq: str | None = "1h",
    max_gap: int | None = 24,
    model_id: str | None = None,
    seed: int = 0,
    mean: float = 50.0,
    std: float = 10.0,
    manifest: bool = True,
    batch: str = "1",
    grid: Grid | None = None,
    conformal: dict[str, Any] | None = None,
    structure: dict[str, Any] | None = None,
    source: dict[str, Any] | None = None,
) -> Path:
    """Write a model and return its path. Targets default to the first feature.

    `batch="dynamic"` gives a symbolic batch dimension (as `statecast-export --batch dynamic`).
    """
    b: int | str = 1 if batch == "1" else "batch"
    rng = np.random.default_rng(seed)
    f = len(features)
    u = units
    targets = targets if targets is not None else (features[0],)
    k = len(classes) if task == "classify" and classes else len(targets)
    out_width = horizon * k
    nodes: list[onnx.NodeProto] = []
    inits = [
        _const("mean", np.full((f,), mean, np.float32)),
        _const("std", np.full((f,), std, np.float32)),
        _const("W", (rng.normal(size=(1, 4 * u, f)) * 0.4).astype(np.float32)),
        _const("R", (rng.normal(size=(1, 4 * u, u)) * 0.3).astype(np.float32)),
        _const("B", (rng.normal(size=(1, 8 * u)) * 0.1).astype(np.float32)),
        _const("Wd", (rng.normal(size=(u, out_width)) * 0.5).astype(np.float32)),
        _const("bd", (rng.normal(size=(out_width,)) * 0.1).astype(np.float32)),
        _const("axes0", np.array([0], np.int64)),
    ]
    nodes.append(helper.make_node("Sub", ["x", "mean"], ["xc"]))
    nodes.append(helper.make_node("Div", ["xc", "std"], ["xs"]))
    if kind == "step":
        inputs = [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [b, f]),
            helper.make_tensor_value_info("h_0", TensorProto.FLOAT, [b, u]),
            helper.make_tensor_value_info("c_0", TensorProto.FLOAT, [b, u]),
        ]
        nodes += [
            helper.make_node("Unsqueeze", ["xs", "axes0"], ["seq"]),  # [1, 1, F]
            helper.make_node("Unsqueeze", ["h_0", "axes0"], ["h_init"]),
            helper.make_node("Unsqueeze", ["c_0", "axes0"], ["c_init"]),
            helper.make_node(
                "LSTM", ["seq", "W", "R", "B", "", "h_init", "c_init"], ["Y", "Y_h", "Y_c"],
                hidden_size=u,
            ),
            helper.make_node("Squeeze", ["Y_h", "axes0"], ["h_0_out"]),
            helper.make_node("Squeeze", ["Y_c", "axes0"], ["c_0_out"]),
        ]
        last = "h_0_out"
    else:
        inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [b, lookback, f])]
        nodes += [
            helper.make_node("Transpose", ["xs"], ["seq"], perm=[1, 0, 2]),  # [L, B, F]
            helper.make_node("LSTM", ["seq", "W", "R", "B"], ["Y", "Y_h"], hidden_size=u),
            helper.make_node("Squeeze", ["Y_h", "axes0"], ["h_last"]),
        ]
        last = "h_last"
    nodes += [
        helper.make_node("MatMul", [last, "Wd"], ["dense"]),
        helper.make_node("Add", ["dense", "bd"], ["logits"]),
    ]
    if task == "classify":
        inits.append(_const("shape3", np.array([-1, horizon, k], np.int64)))
        nodes += [
            helper.make_node("Reshape", ["logits", "shape3"], ["logits3"]),
            helper.make_node("Softmax", ["logits3"], ["y"], axis=-1),
        ]
        y_shape: list[int | str] = [b, horizon, k]
    else:
        inits += [
            _const("tstd", np.array(std, np.float32)),
            _const("tmean", np.array(mean, np.float32)),
        ]
        shape = [-1, horizon] if k == 1 else [-1, horizon, k]
        inits.append(_const("yshape", np.array(shape, np.int64)))
        nodes += [
            helper.make_node("Mul", ["logits", "tstd"], ["scaled"]),
            helper.make_node("Add", ["scaled", "tmean"], ["y_flat"]),
            helper.make_node("Reshape", ["y_flat", "yshape"], ["y"]),
        ]
        y_shape = [b, *shape[1:]]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)]
    if kind == "step":
        outputs += [
            helper.make_tensor_value_info("h_0_out", TensorProto.FLOAT, [b, u]),
            helper.make_tensor_value_info("c_0_out", TensorProto.FLOAT, [b, u]),
        ]
    graph = helper.make_graph(nodes, "statecast_test", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    if manifest:
        man = Manifest(
            kind=kind,
            features=features,
            targets=targets,
            horizon=horizon,
            task=task,
            mode="stateful" if kind == "step" else "window",
            model_id=model_id or f"test-{kind}-{task}-{seed}",
            statecast_version="0.1.0",
            created="2026-01-01T00:00:00+00:00",
            output_shape=tuple(d if isinstance(d, int) else None for d in y_shape),
            state=(
                (StateSpec("h_0", "h_0_out", (1, u)), StateSpec("c_0", "c_0_out", (1, u)))
                if kind == "step"
                else ()
            ),
            classes=classes if task == "classify" else None,
            freq=freq,
            lookback=lookback if kind == "window" else None,
            max_gap=max_gap,
            batch=batch,
            grid=grid,
            conformal=conformal or {},
            structure=structure or {},
            source=source or {},
        )
        helper.set_model_props(model, {METADATA_KEY: man.to_json()})
    onnx.checker.check_model(model)
    path = Path(path)
    onnx.save(model, str(path))
    return path
