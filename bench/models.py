"""Models shared by the benchmarks: one Keras LSTM and everything built from its weights.

* `keras_model`: a plain stacked Keras LSTM regressor with seeded random weights;
* `export_pair`: its batch-1 and dynamic-batch step graphs (`statecast-export`, verified);
* `keras_step_model`: the equivalent batch-1 Keras model with the state as inputs and outputs
  (what LiteRT is converted from, and what a TensorFlow daemon would call);
* `identity_graph`: an ONNX graph with the same contract whose "forecast" is the observation
  repeated and whose state passes through: the daemon's floor without the LSTM.

Only `identity_graph` works without TensorFlow.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


def keras_model(layers: int, units: int, features: int, horizon: int, seed: int = 0) -> Any:
    import keras

    rng = np.random.default_rng(seed)
    stack: list[Any] = [keras.Input((None, features))]
    for i in range(layers):
        stack.append(keras.layers.LSTM(units, return_sequences=i < layers - 1))
    stack.append(keras.layers.Dense(horizon))
    model = keras.Sequential(stack)
    model.set_weights([rng.normal(0, 0.3, w.shape).astype(np.float32)
                       for w in model.get_weights()])
    return model


def export_pair(model: Any, directory: Path, name: str) -> tuple[Path, Path]:
    """The batch-1 and the dynamic-batch step graph of `model`, both verified against Keras."""
    import export

    directory.mkdir(parents=True, exist_ok=True)
    src = directory / f"{name}.keras"
    model.save(src)
    n_features = model.inputs[0].shape[-1]
    features = ["temp"] if n_features == 1 else [f"x{i}" for i in range(n_features)]
    one, dyn = directory / f"{name}.onnx", directory / f"{name}-dynamic.onnx"
    export.export_model(src, one, features=features, targets=[features[0]])
    export.export_model(src, dyn, batch="dynamic", features=features, targets=[features[0]])
    return one, dyn


def keras_step_model(model: Any) -> Any:
    """x [1, 1, F] and h_i, c_i [1, U] in; y [1, H] and the new h_i, c_i out; same weights."""
    import keras

    lstms = [layer for layer in model.layers if isinstance(layer, keras.layers.LSTM)]
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)][-1]
    x_in = keras.Input(batch_shape=(1, 1, model.inputs[0].shape[-1]), name="x")
    h = x_in
    state_in: list[Any] = []
    state_out: list[Any] = []
    copies: list[tuple[Any, Any]] = []
    for i, layer in enumerate(lstms):
        hi = keras.Input(batch_shape=(1, layer.units), name=f"h_{i}")
        ci = keras.Input(batch_shape=(1, layer.units), name=f"c_{i}")
        twin = keras.layers.LSTM(layer.units, return_sequences=True, return_state=True)
        h, h_out, c_out = twin(h, initial_state=[hi, ci])
        copies.append((twin, layer))
        state_in += [hi, ci]
        state_out += [h_out, c_out]
    head = keras.layers.Dense(dense.units)
    y = head(h[:, -1])
    copies.append((head, dense))
    step = keras.Model([x_in, *state_in], [y, *state_out])
    for twin, layer in copies:
        twin.set_weights(layer.get_weights())
    return step


def numpy_step(model: Any) -> Any:
    """A numpy reference of one step with the Keras weights (gate order i, f, c, o)."""
    import keras

    lstms = [layer.get_weights() for layer in model.layers
             if isinstance(layer, keras.layers.LSTM)]
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)][-1]
    wd, bd = dense.get_weights()

    def sigmoid(v: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-v))

    def step(x: np.ndarray, state: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        h_in = x
        new = []
        for k, (w, r, b) in enumerate(lstms):
            h, c = state[2 * k], state[2 * k + 1]
            z = h_in @ w + h @ r + b
            i, f, g, o = np.split(z, 4, axis=-1)
            c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
            h = sigmoid(o) * np.tanh(c)
            new += [h, c]
            h_in = h
        return h_in @ wd + bd, new

    return step


def identity_graph(like: Path, out: Path) -> Path:
    """An ONNX graph with `like`'s manifest contract (dynamic batch) that does no LSTM work:
    y is the first feature repeated H times and every state output is its input."""
    import json

    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edge.manifest import METADATA_KEY, Manifest
    from edge.model import StepModel

    m = StepModel(like).manifest
    horizon = m.horizon
    nodes = [
        helper.make_node("Slice", ["x", "zero", "one", "one"], ["first"]),
        helper.make_node("Tile", ["first", "reps"], ["y"]),
    ]
    inits = [numpy_helper.from_array(np.array([0], np.int64), "zero"),
             numpy_helper.from_array(np.array([1], np.int64), "one"),
             numpy_helper.from_array(np.array([1, horizon], np.int64), "reps")]
    inputs = [helper.make_tensor_value_info(m.input, TensorProto.FLOAT, ["b", m.n_features])]
    outputs = [helper.make_tensor_value_info(m.output, TensorProto.FLOAT, ["b", horizon])]
    for s in m.state:
        inputs.append(helper.make_tensor_value_info(s.input, TensorProto.FLOAT,
                                                    ["b", *s.shape[1:]]))
        outputs.append(helper.make_tensor_value_info(s.output, TensorProto.FLOAT,
                                                     ["b", *s.shape[1:]]))
        nodes.append(helper.make_node("Identity", [s.input], [s.output]))
    graph = helper.make_graph(nodes, "identity", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    d = json.loads(m.to_json())
    d["model_id"] = "identity"
    d["batch"] = "dynamic"
    helper.set_model_props(model, {METADATA_KEY: Manifest.from_json(json.dumps(d)).to_json()})
    onnx.checker.check_model(model)
    onnx.save(model, str(out))
    return out


def with_grid(like: Path, out: Path, freq: str = "1h", origin: float = 0.0,
              max_gap: int = 3) -> Path:
    """`like` with a manifest that says it was trained on a grid of `freq` from `origin`
    (same weights, same graph): the daemon then steps it once per period."""
    import json

    import onnx
    from onnx import helper

    from edge.manifest import METADATA_KEY, Manifest

    model = onnx.load(str(like))
    meta = {p.key: p.value for p in model.metadata_props}
    d = json.loads(meta[METADATA_KEY])
    d.update(freq=freq, max_gap=max_gap, grid={"origin": origin})
    del model.metadata_props[:]
    helper.set_model_props(model, {**meta,
                                   METADATA_KEY: Manifest.from_json(json.dumps(d)).to_json()})
    onnx.save(model, str(out))
    return out
