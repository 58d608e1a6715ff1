"""Benchmark: one step of an exported graph vs Keras, one thread, same weights.

    .venv/bin/python bench/bench_export.py [--repeats 3000]

Prints a table of median per-step latency for a 2×64 LSTM with 4 features and a 1×16 one:
the exported step graph (plain `session.run`, `StepModel.step`, `StepModel.stream().step`
with IOBinding), the
alternative tf2onnx cell graph (not shipped; kept here to show why), Keras `model.predict` at
batch 1 and a direct Keras call. Goal: ≤ 15 µs per step for 2×64 and ≥ 1000× faster than
`model.predict`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from bench.timing import interleaved_us


def median_us(fn: Callable[[], Any], repeats: int, warmup: int = 20) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        fn()
        times.append(time.perf_counter_ns() - t0)
    return float(np.median(times)) / 1e3


def onnx_plain(path: Path) -> Callable[[], Any]:
    from edge.model import StepModel

    sm = StepModel(path)
    m = sm.manifest
    feeds: dict[str, np.ndarray] = {m.input: np.ones((1, m.n_features), np.float32)}
    feeds.update(zip([s.input for s in m.state], sm.zero_state(), strict=True))
    names = [m.output] + [s.output for s in m.state]
    state_in = [s.input for s in m.state]

    def run() -> None:
        out = sm.session.run(names, feeds)
        for name, value in zip(state_in, out[1:], strict=True):
            feeds[name] = value

    return run


def onnx_stepmodel(path: Path) -> Callable[[], Any]:
    from edge.model import StepModel

    sm = StepModel(path)
    x = np.ones(sm.manifest.n_features, np.float32)
    box = [sm.zero_state()]

    def run() -> None:
        _, box[0] = sm.step(x, box[0])

    return run


def onnx_stream(path: Path) -> Callable[[], Any]:
    """edge's `StepModel.stream()`: state kept in IOBinding buffers, bound once."""
    from edge.model import StepModel

    sm = StepModel(path)
    stream = sm.stream()
    x = np.ones(sm.manifest.n_features, np.float32)
    return lambda: stream.step(x)


def tf2onnx_cell_graph(model: Any, folder: Path) -> Callable[[], Any]:
    """The alternative: a step function from each layer's cell, converted with tf2onnx."""
    import onnxruntime as ort
    import tensorflow as tf
    import tf2onnx

    from edge.model import session_options

    lstms = [lay for lay in model.layers if type(lay).__name__ == "LSTM"]
    dense = model.layers[-1]
    n_feat = int(model.inputs[0].shape[-1])
    sig = [tf.TensorSpec([1, n_feat], tf.float32, name="x")]
    for i, lay in enumerate(lstms):
        sig += [tf.TensorSpec([1, lay.units], tf.float32, name=f"h_{i}"),
                tf.TensorSpec([1, lay.units], tf.float32, name=f"c_{i}")]

    @tf.function(input_signature=sig)
    def step(x: Any, *state: Any) -> Any:
        h = x
        outs = []
        for i, lay in enumerate(lstms):
            h, (hh, cc) = lay.cell(h, [state[2 * i], state[2 * i + 1]], training=False)
            outs += [tf.identity(hh, name=f"h_{i}_out"), tf.identity(cc, name=f"c_{i}_out")]
        return [dense(h), *outs]

    path = folder / "cell.onnx"
    tf2onnx.convert.from_function(step, input_signature=sig, opset=17, output_path=str(path))
    sess = ort.InferenceSession(str(path), session_options(), providers=["CPUExecutionProvider"])
    feeds = {i.name: np.zeros([1 if not isinstance(d, int) else d for d in i.shape], np.float32)
             for i in sess.get_inputs()}
    return lambda: sess.run(None, feeds)


def keras_times(model: Any, n_feat: int, repeats: int) -> tuple[float, float]:
    x = np.ones((1, 1, n_feat), np.float32)
    predict = median_us(lambda: model.predict(x, verbose=0), max(20, repeats // 100), warmup=3)
    call = median_us(lambda: model(x, training=False), max(100, repeats // 10), warmup=5)
    return predict, call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3000)
    parser.add_argument("--no-tf2onnx", action="store_true", help="skip the cell-graph column")
    args = parser.parse_args()

    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    import export_models as em

    from export import export_model

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for layers, units in ((2, 64), (1, 16)):
            name = f"{layers}x{units}"
            model = em.randomize(em.bench_lstm(units, layers), scale=0.1)
            src = em.save(model, folder, name)
            out = folder / f"{name}.onnx"
            export_model(src, out)
            fns = {"run": onnx_plain(out), "step": onnx_stepmodel(out),
                   "stream": onnx_stream(out)}
            if not args.no_tf2onnx:
                fns["cell"] = tf2onnx_cell_graph(model, folder)
            t = interleaved_us(fns, args.repeats)
            plain, stepm, iob = t["run"], t["step"], t["stream"]
            cell = t.get("cell", float("nan"))
            predict, call = keras_times(model, 4, args.repeats)
            rows.append((name, plain, stepm, iob, cell, predict, call, out.stat().st_size))
    head = (f"{'model':6} {'run µs':>8} {'step() µs':>10} {'stream µs':>10} {'tf2onnx µs':>11} "
            f"{'predict µs':>11} {'call µs':>9} {'predict/run':>12} {'.onnx KiB':>10}")
    print(head)
    print("-" * len(head))
    for name, plain, stepm, iob, cell, predict, call, size in rows:
        print(f"{name:6} {plain:8.1f} {stepm:10.1f} {iob:10.1f} {cell:11.1f} {predict:11.0f} "
              f"{call:9.0f} {predict / plain:11.0f}× {size / 1024:10.1f}")
    print("run: the shipped fused-LSTM step graph, session.run with state fed back; step(): "
          "edge StepModel.step; stream: edge StepModel.stream().step (IOBinding); tf2onnx: "
          "the per-cell "
          "graph from tf2onnx (alternative, not shipped); predict/call: Keras at batch 1, "
          "one step. All one thread, medians.")


if __name__ == "__main__":
    main()
