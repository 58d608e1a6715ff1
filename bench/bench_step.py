"""Benchmark: one LSTM step, every way of running it, the same weights, one thread.

    .venv/bin/python bench/bench_step.py [--repeats 4000] [--out bench/results/step.json]

For a 2×64 LSTM with 4 features and a 6-step forecast (seeded random weights) it measures the
median time of one step with the state carried:

* `onnxruntime`: the exported batch-1 step graph, `session.run` with the state fed back;
* `onnxruntime IOBinding`: `StepModel.stream().step` (buffers bound once, state swapped);
* `Keras predict` and `Keras call`: the batch-1 Keras model with the state as inputs/outputs;
* `LiteRT`: that Keras model converted with `tf.lite.TFLiteConverter`, run by ai-edge-litert's
  interpreter (XNNPACK, one thread);
* `numpy`: the LSTM equations in numpy (the reference);

then the per-observation cost of the dynamic-batch graph at 1…1,000 streams per run, both the
bare `session.run` and `Runner.step_many` (which also gathers and scatters the per-stream states,
as the daemon does). Every path's forecast is checked against the numpy reference first.
Prints tables and writes JSON. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.models import export_pair, keras_model, keras_step_model, numpy_step
from bench.timing import interleaved_us

ROOT = Path(__file__).resolve().parents[1]
LAYERS, UNITS, FEATURES, HORIZON = 2, 64, 4, 6


def litert_stepper(step_model: Any, path: Path) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """Convert the explicit-state Keras model to LiteRT; returns (run with explicit state, step
    in place with the state kept in the interpreter)."""
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    converter = tf.lite.TFLiteConverter.from_keras_model(step_model)
    path.write_bytes(converter.convert())
    interp = Interpreter(model_path=str(path), num_threads=1)
    interp.allocate_tensors()
    ins = {d["name"]: d["index"] for d in interp.get_input_details()}
    outs = interp.get_output_details()
    # inputs are named after the Keras inputs (serving_default_x:0, serving_default_h_0:0, ...)
    order_in = [next(i for n, i in ins.items() if n.split("_", 2)[-1].startswith(k))
                for k in ("x", *[f"{s}_{j}" for j in range(LAYERS) for s in ("h", "c")])]
    # outputs: y is the one with HORIZON columns; the state outputs follow Keras' order
    by_width = sorted(outs, key=lambda d: d["name"])
    y_idx = next(d["index"] for d in by_width if d["shape"][-1] == HORIZON)
    state_idx = [d["index"] for d in by_width if d["index"] != y_idx]

    def run(x: np.ndarray, state: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        interp.set_tensor(order_in[0], x.reshape(1, 1, FEATURES))
        for idx, s in zip(order_in[1:], state, strict=True):
            interp.set_tensor(idx, s)
        interp.invoke()
        return interp.get_tensor(y_idx), [interp.get_tensor(i) for i in state_idx]

    x_idx = order_in[0]
    pairs = list(zip(order_in[1:], state_idx, strict=True))
    tensor = interp.tensor

    def step_in_place(x: np.ndarray) -> None:
        """The fastest Python loop we found: write through the interpreter's own buffers
        (no set_tensor/get_tensor copies into new arrays), state output → state input."""
        tensor(x_idx)()[...] = x
        interp.invoke()
        for i, o in pairs:
            tensor(i)()[...] = tensor(o)()

    step_in_place.interp = interp  # type: ignore[attr-defined]
    return run, step_in_place


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--repeats", type=int, default=4000)
    p.add_argument("--out", type=Path, default=ROOT / "bench/results/step.json")
    args = p.parse_args()
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
    import keras
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from edge.model import StepModel
    from edge.runner import Runner
    from edge.state import StreamState

    results: dict[str, Any] = {"machine": platform.processor() or platform.machine(),
                               "cpus": os.cpu_count(), "load_before": os.getloadavg(),
                               "model": f"{LAYERS}x{UNITS} LSTM, {FEATURES} features, "
                                        f"horizon {HORIZON}"}
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        net = keras_model(LAYERS, UNITS, FEATURES, HORIZON, seed=1)
        one, dyn = export_pair(net, d, "step")
        step_k = keras_step_model(net)
        ref = numpy_step(net)
        rng = np.random.default_rng(0)
        xs = rng.normal(0, 1, (8, FEATURES)).astype(np.float32)
        zero = [np.zeros((1, UNITS), np.float32) for _ in range(2 * LAYERS)]

        sm = StepModel(one)
        m = sm.manifest
        names = [m.output] + [s.output for s in m.state]
        state_in = [s.input for s in m.state]
        lite_run, lite_step = litert_stepper(step_k, d / "step.tflite")
        lite_interp = lite_step.interp  # type: ignore[attr-defined]

        def ort_run(x: np.ndarray, state: list[np.ndarray]) -> tuple[Any, list[Any]]:
            feeds = dict(zip(state_in, state, strict=True))
            feeds[m.input] = x.reshape(1, FEATURES)
            out = sm.session.run(names, feeds)
            return out[0], out[1:]

        def keras_run(x: np.ndarray, state: list[np.ndarray]) -> tuple[Any, list[Any]]:
            out = step_k([x.reshape(1, 1, FEATURES), *state], training=False)
            return (keras.ops.convert_to_numpy(out[0]),
                    [keras.ops.convert_to_numpy(o) for o in out[1:]])

        # parity over a short sequence, every path against numpy
        parity: dict[str, float] = {}
        for name, fn in (("onnxruntime", ort_run), ("LiteRT", lite_run),
                         ("Keras call", keras_run)):
            s_ref, s_fn, worst = list(zero), list(zero), 0.0
            for x in xs:
                y_ref, s_ref = ref(x.reshape(1, FEATURES), s_ref)
                y_fn, s_fn = fn(x, s_fn)
                worst = max(worst, float(np.abs(np.asarray(y_fn) - y_ref).max()))
            parity[name] = worst
        results["parity_max_abs_vs_numpy"] = parity
        print("parity vs numpy (max abs):", {k: f"{v:.1e}" for k, v in parity.items()},
              file=sys.stderr)

        x1 = xs[0]
        st: dict[str, list[Any]] = {k: list(zero) for k in
                                    ("ort", "lite", "keras", "predict", "numpy")}
        feeds: dict[str, np.ndarray] = {m.input: x1.reshape(1, FEATURES)}
        feeds.update(zip(state_in, zero, strict=True))

        def t_ort() -> None:
            out = sm.session.run(names, feeds)
            for name, value in zip(state_in, out[1:], strict=True):
                feeds[name] = value

        stream = sm.stream()

        def t_stream() -> None:
            stream.step(x1)

        def t_lite() -> None:
            _, st["lite"] = lite_run(x1, st["lite"])

        x1l = x1.reshape(1, 1, FEATURES)

        def t_lite_in_place() -> None:
            lite_step(x1l)

        def t_lite_invoke() -> None:
            lite_interp.invoke()

        x1k = tf.constant(x1.reshape(1, 1, FEATURES))
        st["keras"] = [tf.constant(z) for z in zero]

        def t_keras() -> None:
            out = step_k([x1k, *st["keras"]], training=False)
            st["keras"] = list(out[1:])

        def t_predict() -> None:
            out = step_k.predict([x1.reshape(1, 1, FEATURES), *st["predict"]], verbose=0)
            st["predict"] = list(out[1:])

        x1r = x1.reshape(1, FEATURES)

        def t_numpy() -> None:
            _, st["numpy"] = ref(x1r, st["numpy"])

        fast = interleaved_us({"onnxruntime": t_ort, "onnxruntime IOBinding": t_stream,
                               "LiteRT set/get_tensor": t_lite,
                               "LiteRT in place": t_lite_in_place,
                               "LiteRT invoke only, no state": t_lite_invoke, "numpy": t_numpy},
                              args.repeats)
        slow = interleaved_us({"Keras call": t_keras, "Keras predict": t_predict},
                              max(50, args.repeats // 40), rounds=5)
        single = {**fast, **slow}
        results["single_step_us"] = single

        # many streams per run: the dynamic-batch graph
        dm = StepModel(dyn)
        runner = Runner(dm)
        batch: dict[str, dict[str, float]] = {}
        for n in (1, 16, 64, 256, 1000):
            xb = rng.normal(0, 1, (n, FEATURES)).astype(np.float32)
            bfeeds: dict[str, np.ndarray] = {dm.manifest.input: xb}
            bfeeds.update(zip(state_in, dm.zero_state(n), strict=True))

            def t_batch(bfeeds: dict[str, np.ndarray] = bfeeds) -> None:
                out = dm.session.run(names, bfeeds)
                for name, value in zip(state_in, out[1:], strict=True):
                    bfeeds[name] = value

            sts = [StreamState(state=[z.copy() for z in dm.zero_state(1)]) for _ in range(n)]

            def t_many(sts: list[StreamState] = sts, xb: np.ndarray = xb) -> None:
                runner.step_many(sts, xb)

            reps = max(20, args.repeats // max(1, n // 4))
            r = interleaved_us({"run": t_batch, "step_many": t_many}, reps)
            batch[str(n)] = {"run_us_per_obs": r["run"] / n,
                             "step_many_us_per_obs": r["step_many"] / n}
        results["batched_us_per_obs"] = batch
    results["load_after"] = os.getloadavg()
    report(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {args.out}")
    return 0


def report(r: dict[str, Any]) -> None:
    print(f"\n{r['model']}; machine: {r['cpus']} CPUs ({r['machine']}), load average before "
          f"{r['load_before'][0]:.2f}, after {r['load_after'][0]:.2f}")
    single = r["single_step_us"]
    lite = min(single["LiteRT set/get_tensor"], single["LiteRT in place"])
    r["litert_us"] = lite
    print("\nOne step at batch 1, one thread (median); ratios vs the faster LiteRT loop that "
          "carries the state")
    print(f"| {'path':<30} | {'µs per step':>12} | {'vs LiteRT':>9} |")
    print(f"|{'-' * 32}|{'-' * 14}|{'-' * 11}|")
    for name, us in sorted(single.items(), key=lambda kv: kv[1]):
        print(f"| {name:<30} | {us:>12,.1f} | {us / lite:>8.2f}x |")
    print("\nMany streams per run: dynamic-batch graph, µs per observation (median)")
    print(f"| {'streams per run':>15} | {'session.run':>11} | {'LiteRT / run':>12} "
          f"| {'Runner.step_many':>16} | {'LiteRT / step_many':>18} |")
    print(f"|{'-' * 17}|{'-' * 13}|{'-' * 14}|{'-' * 18}|{'-' * 20}|")
    for n, v in r["batched_us_per_obs"].items():
        a, b = v["run_us_per_obs"], v["step_many_us_per_obs"]
        print(f"| {int(n):>15,} | {a:>11.2f} | {lite / a:>11.1f}x | {b:>16.2f} "
              f"| {lite / b:>17.1f}x |")


if __name__ == "__main__":
    sys.exit(main())
