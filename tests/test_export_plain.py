"""Export of plain Keras models like the tutorials': parity with Keras, graph structure, refusals.

Every reference here is computed by Keras in this file, never by the exporter.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import export_models as em
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edge import METADATA_KEY, Manifest, StepModel

pytestmark = [pytest.mark.slow,
              pytest.mark.filterwarnings("ignore::DeprecationWarning:keras")]


def prefixes(model: Any, xs: np.ndarray) -> np.ndarray:
    """Keras over every prefix x[:t+1] from zero state: what it predicts after step t."""
    return np.stack([em.to_numpy(model(xs[None, : t + 1], training=False))[0]
                     for t in range(len(xs))])


def op_types(path: Path) -> Counter[str]:
    return Counter(node.op_type for node in onnx.load(str(path)).graph.node)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Any, Path, Manifest]]:
    """Each plain model: (Keras model, .onnx path, manifest), exported once for the module."""
    from export import export_model

    folder = tmp_path_factory.mktemp("plain")
    out: dict[str, tuple[Any, Path, Manifest]] = {}
    for i, (name, build) in enumerate(em.PLAIN.items()):
        model = em.randomize(build(), seed=i)
        src = em.save(model, folder, name)
        onnx_path = folder / f"{name}.onnx"
        out[name] = (model, onnx_path, export_model(src, onnx_path))
    return out


@pytest.mark.parametrize("name", ["relu_vanilla", "relu_stacked", "sigmoid_classifier",
                                  "softmax_classifier"])
def test_many_to_one_matches_keras_after_every_step(exported: Any, name: str) -> None:
    model, path, manifest = exported[name]
    xs = em.sequence()
    ref = prefixes(model, xs)  # [T, outputs]
    ys, _ = StepModel(path).run_sequence(xs)
    if manifest.task == "classify":
        # sigmoid: [T, 1, 2], the probabilities of 0 and 1; softmax: [T, 1, C]
        ref = np.stack([1 - ref, ref], axis=-1) if name == "sigmoid_classifier" \
            else ref[:, None, :]
        np.testing.assert_allclose(ys.sum(axis=-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(ys, ref, atol=1e-5)


def test_encoder_decoder_decodes_the_whole_horizon(exported: Any) -> None:
    model, path, manifest = exported["encoder_decoder"]
    assert manifest.horizon == 3 and manifest.targets == ("y0", "y1")
    assert manifest.output_shape == (1, 3, 2)
    xs = em.sequence(seed=2)
    ref = prefixes(model, xs)  # [T, 3, 2]
    ys, _ = StepModel(path).run_sequence(xs)
    np.testing.assert_allclose(ys, ref, atol=1e-5)


def test_many_to_many_time_distributed_gives_that_steps_output(exported: Any) -> None:
    model, path, manifest = exported["many_to_many"]
    xs = em.sequence(seed=3)
    ref = em.to_numpy(model(xs[None], training=False))[0]  # [T, 2]
    ys, _ = StepModel(path).run_sequence(xs)
    assert manifest.output_shape == (1, 2)
    np.testing.assert_allclose(ys, ref, atol=1e-5)


def test_stateful_batch9_model_matches_its_batch1_copy_stepped(exported: Any) -> None:
    import keras
    from keras import layers as kl

    model, path, manifest = exported["stateful_batch9"]
    inp = keras.Input(batch_shape=(1, None, em.F))
    h = kl.LSTM(6, stateful=True, return_sequences=True)(inp)
    h = kl.LSTM(4, stateful=True, return_sequences=True, activation="relu")(h)
    copy = keras.Model(inp, kl.Dense(1)(h))
    copy.set_weights(model.get_weights())
    xs = em.sequence(seed=4, length=24)
    ref = np.stack([em.to_numpy(copy(xs[None, t : t + 1], training=False))[0, 0]
                    for t in range(len(xs))])  # state carried between calls
    model_step = StepModel(path)
    ys, state = model_step.run_sequence(xs)
    np.testing.assert_allclose(ys, ref, atol=1e-5)
    assert len(state) == 4 and manifest.mode == "stateful"
    # carrying the state on matches Keras carrying its own
    more = em.sequence(seed=5, length=4)
    ref2 = np.stack([em.to_numpy(copy(more[None, t : t + 1], training=False))[0, 0]
                     for t in range(len(more))])
    ys2, _ = model_step.run_sequence(more, state)
    np.testing.assert_allclose(ys2, ref2, atol=1e-5)


@pytest.mark.parametrize("name", list(em.PLAIN))
def test_graph_structure_batch1_names_and_no_loops(exported: Any, name: str) -> None:
    _, path, manifest = exported[name]
    ops = op_types(path)
    assert not {"Loop", "Scan", "If"} & set(ops), ops
    assert ops["LSTM"] >= 1
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    dims = {v.name: [d.dim_value if d.HasField("dim_value") else d.dim_param
                     for d in v.type.tensor_type.shape.dim]
            for v in [*proto.graph.input, *proto.graph.output]}
    assert dims["x"] == [1, len(manifest.features)]
    assert dims["y"] == list(manifest.output_shape)
    for s in manifest.state:
        assert dims[s.input] == list(s.shape) == dims[s.output]
    names_in = {v.name for v in proto.graph.input}
    names_out = {v.name for v in proto.graph.output}
    assert names_in == {"x", *(s.input for s in manifest.state)}
    assert names_out == {"y", *(s.output for s in manifest.state)}


def test_manifest_round_trip_through_onnxruntime_alone(exported: Any) -> None:
    _, path, manifest = exported["relu_stacked"]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    raw = json.loads(sess.get_modelmeta().custom_metadata_map[METADATA_KEY])
    for key in ("format", "kind", "input", "output", "state", "features", "targets", "horizon",
                "task", "classes", "freq", "lookback", "mode", "model_id",
                "statecast_version", "created", "metrics"):
        assert key in raw, key
    assert raw["format"] == 1 and raw["kind"] == "step" and raw["input"] == "x"
    assert raw["features"] == ["x0", "x1", "x2"] and raw["targets"] == ["y0"]
    assert raw["horizon"] == 3 and raw["task"] == "regress" and raw["classes"] is None
    assert raw["state"] == [{"input": "h_0", "output": "h_0_out", "shape": [1, 6]},
                            {"input": "c_0", "output": "c_0_out", "shape": [1, 6]},
                            {"input": "h_1", "output": "h_1_out", "shape": [1, 4]},
                            {"input": "c_1", "output": "c_1_out", "shape": [1, 4]}]
    assert raw["lookback"] == 5  # the tutorial model's fixed window
    assert Manifest.from_json(manifest.to_json()) == manifest
    assert Manifest.from_json(json.dumps(raw)) == manifest
    # model_id is the sha256 of the graph before the manifest was added
    import hashlib

    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    assert hashlib.sha256(proto.SerializeToString(deterministic=True)).hexdigest() == \
        raw["model_id"]


def test_classifier_manifest(exported: Any) -> None:
    _, _, sig = exported["sigmoid_classifier"]
    _, _, soft = exported["softmax_classifier"]
    assert sig.task == "classify" and sig.classes == ("0", "1") and sig.output_shape == (1, 1, 2)
    assert soft.classes == ("0", "1", "2", "3") and soft.output_shape == (1, 1, 4)


def test_features_and_targets_names(tmp_path: Path) -> None:
    from export import export_model

    model = em.randomize(em.many_to_many(), seed=7)
    src = em.save(model, tmp_path, "m2m")
    m = export_model(src, tmp_path / "m.onnx", features=["a", "b", "c"], targets=["t", "u"])
    assert m.features == ("a", "b", "c") and m.targets == ("t", "u")
    assert m.horizon == 1 and m.output_shape == (1, 1, 2)
    xs = em.sequence(seed=8)
    ys, _ = StepModel(tmp_path / "m.onnx").run_sequence(xs)
    np.testing.assert_allclose(ys[:, 0, :], em.to_numpy(model(xs[None]))[0], atol=1e-5)


def test_bidirectional_window_graph_matches_keras(tmp_path: Path) -> None:
    from export import export_model

    model = em.randomize(em.bidirectional(), seed=9)
    src = em.save(model, tmp_path, "bi")
    m = export_model(src, tmp_path / "bi.onnx", kind="window")
    assert m.kind == "window" and m.lookback == 6 and not m.state
    assert not {"Loop", "Scan"} & set(op_types(tmp_path / "bi.onnx"))
    windows = np.random.default_rng(10).standard_normal((5, 6, em.F)).astype(np.float32)
    ref = em.to_numpy(model(windows, training=False))
    sm = StepModel(tmp_path / "bi.onnx")
    ys = np.stack([sm.step(w, [])[0][0] for w in windows])
    np.testing.assert_allclose(ys, ref, atol=1e-5)


def test_dynamic_batch_steps_many_streams(tmp_path: Path) -> None:
    from export import export_model

    model = em.randomize(em.relu_stacked(), seed=11)
    src = em.save(model, tmp_path, "dyn")
    m = export_model(src, tmp_path / "dyn.onnx", batch="dynamic")
    assert m.batch == "dynamic" and m.output_shape == (None, 3)
    sm = StepModel(tmp_path / "dyn.onnx")
    assert sm.dynamic_batch
    streams = np.random.default_rng(12).standard_normal((4, 6, em.F)).astype(np.float32)
    state = sm.zero_state(4)
    for t in range(6):
        y, state = sm.step_many(streams[:, t], state)
    ref = em.to_numpy(model(streams, training=False))  # each stream from zero state
    np.testing.assert_allclose(y, ref, atol=1e-5)


def test_masked_observations_keep_the_state_like_keras(exported: Any) -> None:
    model, path, _ = exported["many_to_many"]  # Masking(mask_value=-999) in front
    xs = em.sequence(seed=13)
    xs[[3, 4, 9]] = -999.0  # whole observations masked
    xs[6, 0] = -999.0  # one feature only: not masked
    ref = em.to_numpy(model(xs[None], training=False))[0]
    ys, _ = StepModel(path).run_sequence(xs)
    np.testing.assert_allclose(ys, ref, atol=1e-5)
    np.testing.assert_allclose(ys[4], ys[2], atol=1e-6)  # a masked step repeats the last answer


def test_legacy_h5_file(tmp_path: Path) -> None:
    from export import export_model

    model = em.randomize(em.relu_vanilla(), seed=14)
    src = tmp_path / "tutorial.h5"
    model.save(src)
    m = export_model(src, tmp_path / "h5.onnx")
    xs = em.sequence(seed=15, length=6)
    ys, _ = StepModel(tmp_path / "h5.onnx").run_sequence(xs)
    np.testing.assert_allclose(ys[-1], em.to_numpy(model(xs[None]))[0], atol=1e-5)
    assert m.source["type"] == "keras"
