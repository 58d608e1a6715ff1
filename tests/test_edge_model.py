"""The TensorFlow-free loader: manifest checks against the real graph, stepping one or many."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edge import METADATA_KEY, EdgeError, Manifest, StateSpec, StepModel

F, U, H = 2, 3, 2


def manifest(**kw: object) -> Manifest:
    base = dict(kind="step", features=("a", "b"), targets=("t",), horizon=H, task="regress",
                mode="stateful", model_id="0" * 64, statecast_version="0.1.0",
                created="2026-01-01T00:00:00+00:00", output_shape=(1, H),
                state=(StateSpec("h_0", "h_0_out", (1, U)), StateSpec("c_0", "c_0_out", (1, U))),
                freq="1h", lookback=None, max_gap=3)
    base.update(kw)
    return Manifest(**base)  # type: ignore[arg-type]


def write_graph(path: Path, m: Manifest | None, batch: int | str = 1,
                x_name: str = "x", features: int = F) -> Path:
    """A small recurrent graph: h' = tanh(x A + h), c' = c + 1, y = h' B. Known by hand."""
    rng = np.random.default_rng(0)
    a = rng.normal(size=(features, U)).astype(np.float32)
    b = rng.normal(size=(U, H)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", [x_name, "A"], ["xa"]),
        helper.make_node("Add", ["xa", "h_0"], ["pre"]),
        helper.make_node("Tanh", ["pre"], ["h_0_out"]),
        helper.make_node("Add", ["c_0", "one"], ["c_0_out"]),
        helper.make_node("MatMul", ["h_0_out", "B"], ["y"]),
    ]
    vi = helper.make_tensor_value_info
    graph = helper.make_graph(
        nodes, "toy",
        [vi(x_name, TensorProto.FLOAT, [batch, features]),
         vi("h_0", TensorProto.FLOAT, [batch, U]), vi("c_0", TensorProto.FLOAT, [batch, U])],
        [vi("y", TensorProto.FLOAT, [batch, H]), vi("h_0_out", TensorProto.FLOAT, [batch, U]),
         vi("c_0_out", TensorProto.FLOAT, [batch, U])],
        [numpy_helper.from_array(a, "A"), numpy_helper.from_array(b, "B"),
         numpy_helper.from_array(np.float32(1.0), "one")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if m is not None:
        helper.set_model_props(model, {METADATA_KEY: m.to_json()})
    onnx.save(model, str(path))
    np.save(path.with_suffix(".A.npy"), a)
    np.save(path.with_suffix(".B.npy"), b)
    return path


def reference(path: Path, xs: np.ndarray) -> np.ndarray:
    a, b = np.load(path.with_suffix(".A.npy")), np.load(path.with_suffix(".B.npy"))
    h = np.zeros(U, np.float32)
    ys = []
    for x in xs:
        h = np.tanh(x @ a + h)
        ys.append(h @ b)
    return np.stack(ys)


@pytest.fixture
def toy(tmp_path: Path) -> Path:
    return write_graph(tmp_path / "toy.onnx", manifest())


def test_step_returns_new_state_and_leaves_the_old(toy: Path) -> None:
    sm = StepModel(toy)
    state = sm.zero_state()
    assert [s.shape for s in state] == [(1, U), (1, U)]
    y, new = sm.step(np.array([0.5, -1.0]), state)
    assert y.shape == (1, H) and [s.shape for s in new] == [(1, U), (1, U)]
    assert not state[0].any() and not state[1].any()
    np.testing.assert_allclose(new[1], 1.0)
    np.testing.assert_allclose(y[0], reference(toy, np.array([[0.5, -1.0]]))[0], rtol=1e-6)


def test_run_sequence_carries_state(toy: Path) -> None:
    xs = np.random.default_rng(1).normal(size=(7, F)).astype(np.float32)
    ys, state = StepModel(toy).run_sequence(xs)
    np.testing.assert_allclose(ys, reference(toy, xs), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(state[1], 7.0)


def test_step_many_on_a_batch1_graph_runs_row_by_row(toy: Path) -> None:
    sm = StepModel(toy)
    assert not sm.dynamic_batch
    xs = np.random.default_rng(2).normal(size=(3, F)).astype(np.float32)
    y, state = sm.step_many(xs, sm.zero_state(3))
    assert y.shape == (3, H) and state[0].shape == (3, U)
    for i in range(3):
        np.testing.assert_allclose(y[i], reference(toy, xs[i : i + 1])[0], rtol=1e-5)


def test_step_many_on_a_dynamic_graph(tmp_path: Path) -> None:
    m = manifest(output_shape=(None, H), batch="dynamic")
    path = write_graph(tmp_path / "dyn.onnx", m, batch="batch")
    sm = StepModel(path)
    assert sm.dynamic_batch
    xs = np.random.default_rng(3).normal(size=(4, 5, F)).astype(np.float32)
    state = sm.zero_state(4)
    for t in range(5):
        y, state = sm.step_many(xs[:, t], state)
    for i in range(4):
        np.testing.assert_allclose(y[i], reference(path, xs[i])[-1], rtol=1e-5, atol=1e-6)


def test_session_is_quiet(toy: Path) -> None:
    opts = StepModel(toy).session.get_session_options()
    assert opts.intra_op_num_threads == 1 and opts.inter_op_num_threads == 1
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_refuses_missing_corrupt_and_unlabelled_files(tmp_path: Path) -> None:
    with pytest.raises(EdgeError, match="does not exist"):
        StepModel(tmp_path / "nope.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    with pytest.raises(EdgeError, match="not a readable ONNX model"):
        StepModel(tmp_path / "junk.onnx")
    with pytest.raises(EdgeError, match="no statecast manifest"):
        StepModel(write_graph(tmp_path / "bare.onnx", None))


def test_refuses_a_manifest_that_does_not_match_the_graph(tmp_path: Path) -> None:
    with pytest.raises(EdgeError, match="which the graph lacks"):
        StepModel(write_graph(tmp_path / "a.onnx", manifest(), x_name="obs"))
    with pytest.raises(EdgeError, match="features"):
        StepModel(write_graph(tmp_path / "b.onnx", manifest(features=("a", "b", "c"))))
    wrong = (StateSpec("h_0", "h_0_out", (1, U + 1)), StateSpec("c_0", "c_0_out", (1, U)))
    with pytest.raises(EdgeError, match="state 'h_0'"):
        StepModel(write_graph(tmp_path / "c.onnx", manifest(state=wrong)))
    with pytest.raises(EdgeError, match="does not describe"):
        StepModel(write_graph(tmp_path / "d.onnx", manifest(state=wrong[1:])))


def test_manifest_round_trip_and_validation() -> None:
    m = manifest(metrics={"mae": 1.5}, classes=None)
    assert Manifest.from_json(m.to_json()) == m
    with pytest.raises(EdgeError, match="kind"):
        dataclasses.replace(m, kind="loop")
    with pytest.raises(EdgeError, match="window graph carries no state"):
        dataclasses.replace(m, kind="window", lookback=4)
    with pytest.raises(EdgeError, match="classes"):
        dataclasses.replace(m, task="classify")
    with pytest.raises(EdgeError, match="one tensor name twice"):
        dataclasses.replace(m, state=(StateSpec("x", "h_0_out", (1, U)),))
    with pytest.raises(EdgeError, match="not valid JSON"):
        Manifest.from_json("{")
    with pytest.raises(EdgeError, match="incomplete or malformed"):
        Manifest.from_json('{"kind": "step"}')


def test_stream_matches_step_and_checkpoints(toy: Path) -> None:
    sm = StepModel(toy)
    xs = np.random.default_rng(4).normal(size=(6, F)).astype(np.float32)
    stream = sm.stream()
    ys = np.stack([stream.step(x)[0] for x in xs])
    ref, state = sm.run_sequence(xs)
    np.testing.assert_allclose(ys, ref, rtol=1e-6)
    for got, want in zip(stream.state, state, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6)
    again = sm.stream(stream.state)  # resume from a checkpoint
    nxt = np.array([0.1, 0.2], np.float32)
    np.testing.assert_allclose(again.step(nxt), sm.step(nxt, state)[0], rtol=1e-6)
    stream.reset()
    np.testing.assert_allclose(stream.step(xs[0]), ref[:1], rtol=1e-6)
