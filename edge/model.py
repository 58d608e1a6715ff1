"""Open an exported `.onnx`, check its manifest against the real graph, and step it.

TensorFlow-free on purpose: this is all a device runs. The session uses one intra-op thread,
sequential execution and no spinning, so an idle daemon leaves a Pi's cores alone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from edge.errors import EdgeError
from edge.manifest import METADATA_KEY, Manifest

State = list[np.ndarray]


def session_options(threads: int = 1) -> ort.SessionOptions:
    """Options for a quiet single-stream session: no spinning between messages."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    opts.log_severity_level = 3
    return opts


def inputs_shape0(session: ort.InferenceSession) -> object:
    """The batch dimension of the graph's first input (an int when fixed)."""
    return session.get_inputs()[0].shape[0]


def time_feed(t: float | np.ndarray | None, n: int) -> np.ndarray:
    """Observation times as the graph's time input wants them: float64 [n, 1] epoch seconds."""
    if t is None:
        raise EdgeError("this model derives calendar inputs from the time: pass the "
                        "observation's timestamp")
    return np.asarray(t, dtype=np.float64).reshape(n, 1)


class StepModel:
    """An exported graph with its manifest: `step` one observation, `step_many` a batch."""

    def __init__(self, path: str | Path, threads: int = 1) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise EdgeError(f"model file {self.path} does not exist")
        try:
            self.session = ort.InferenceSession(
                str(self.path), sess_options=session_options(threads),
                providers=["CPUExecutionProvider"],
            )
        except Exception as exc:  # onnxruntime raises several unrelated types for a bad file
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise EdgeError(f"{self.path} is not a readable ONNX model ({first[:200]})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if METADATA_KEY not in meta:
            raise EdgeError(
                f"{self.path} has no statecast manifest; export it with statecast-export"
            )
        self.manifest = Manifest.from_json(meta[METADATA_KEY])
        self._check_graph()
        m = self.manifest
        self._state_in = [s.input for s in m.state]
        self._outputs = [m.output] + [s.output for s in m.state]
        self._dynamic = not isinstance(inputs_shape0(self.session), int)
        self.time_input = m.time_input
        self._one_shape = (1, m.n_features) if m.kind == "step" else (1, -1, m.n_features)

    def _check_graph(self) -> None:
        m = self.manifest
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name for o in self.session.get_outputs()}
        wanted_in = [m.input] + [s.input for s in m.state]
        if m.time_input:
            wanted_in.append(m.time_input)
        wanted_out = [m.output] + [s.output for s in m.state]
        for name in wanted_in:
            if name not in inputs:
                raise EdgeError(f"the manifest names input {name!r}, which the graph lacks")
        for name in wanted_out:
            if name not in outputs:
                raise EdgeError(f"the manifest names output {name!r}, which the graph lacks")
        if len(inputs) != len(wanted_in):
            extra = sorted(set(inputs) - set(wanted_in))
            raise EdgeError(f"the graph has inputs the manifest does not describe: {extra}")
        x_shape = inputs[m.input].shape
        if x_shape[-1] != m.n_features:
            raise EdgeError(
                f"the graph's input {m.input!r} takes {x_shape[-1]} features "
                f"but the manifest names {m.n_features}"
            )
        for s in m.state:
            got = inputs[s.input].shape
            if got[-1] != s.shape[-1]:
                raise EdgeError(
                    f"state {s.input!r} is {got} in the graph but {list(s.shape)} in the manifest"
                )

    @property
    def dynamic_batch(self) -> bool:
        """True when the graph was exported with `--batch dynamic` (many streams per run)."""
        return self._dynamic

    def zero_state(self, n: int = 1) -> State:
        """A fresh state for n streams, one array per manifest state entry."""
        return [np.zeros((n, *s.shape[1:]), dtype=np.float32) for s in self.manifest.state]

    def step(self, x: np.ndarray, state: State,
             t: float | None = None) -> tuple[np.ndarray, State]:
        """Advance one stream by one observation `x` ([F] or [1, F] raw units) made at `t`
        (epoch seconds; needed when the manifest names a time input).

        Returns the prediction (batch dimension kept) and the new state; `state` is not modified.
        For a window graph, `x` is the whole window ([L, F] or [1, L, F]) and `state` is empty.
        """
        x = np.ascontiguousarray(x, dtype=np.float32).reshape(self._one_shape)
        if len(state) != len(self._state_in):
            raise EdgeError(
                f"the model carries {len(self._state_in)} state tensors, not {len(state)}"
            )
        feeds = dict(zip(self._state_in, state, strict=True))
        feeds[self.manifest.input] = x
        if self.time_input:
            feeds[self.time_input] = time_feed(t, 1)
        out = self.session.run(self._outputs, feeds)
        return out[0], out[1:]

    def step_many(self, x: np.ndarray, state: State,
                  t: np.ndarray | None = None) -> tuple[np.ndarray, State]:
        """Advance N streams at once (rows of `x`, times `t` [N]); needs a graph exported with a
        dynamic batch, otherwise it runs the batch-1 graph once per row."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if len(state) != len(self._state_in):
            raise EdgeError(
                f"the model carries {len(self._state_in)} state tensors, not {len(state)}"
            )
        n = x.shape[0]
        if n == 1 or self.dynamic_batch:
            feeds = {self.manifest.input: x}
            feeds.update(zip(self._state_in, state, strict=True))
            if self.time_input:
                feeds[self.time_input] = time_feed(t, n)
            out = self.session.run(self._outputs, feeds)
            return out[0], list(out[1:])
        ys, new = [], []
        for i in range(n):
            ti = None if t is None else np.asarray(t, np.float64).reshape(n)[i : i + 1]
            y, s = self.step_many(x[i : i + 1], [st[i : i + 1] for st in state], ti)
            ys.append(y)
            new.append(s)
        return np.concatenate(ys), [np.concatenate(parts) for parts in zip(*new, strict=True)]

    def run_sequence(self, xs: np.ndarray, state: State | None = None,
                     ts: np.ndarray | None = None) -> tuple[np.ndarray, State]:
        """Step one stream through a sequence [T, F] (times `ts` [T]) from `state` (zero by
        default).

        Returns the stacked predictions [T, ...] and the final state.
        """
        state = self.zero_state() if state is None else state
        ys = []
        for i, row in enumerate(np.asarray(xs, dtype=np.float32)):
            y, state = self.step(row, state, None if ts is None else float(ts[i]))
            ys.append(y[0])
        return np.stack(ys), state

    def stream(self, state: State | None = None) -> Stream:
        """A fast single-stream stepper that keeps its state inside onnxruntime (IOBinding).

        Measured at batch 1 on one thread it takes about half the time of `step` (see
        bench/bench_export.py); use it when one process follows one stream.
        """
        return Stream(self, state)


class Stream:
    """One stream's state, held in preallocated buffers bound to the session once.

    Two bindings alternate (state in → state out, then back), so a step copies nothing but
    the observation in and the prediction out. Only for step graphs.
    """

    def __init__(self, model: StepModel, state: State | None = None) -> None:
        m = model.manifest
        if m.kind != "step":
            raise EdgeError("a window graph has no state to carry; call StepModel.step instead")
        self.model = model
        shape = tuple(d or 1 for d in m.output_shape)
        self._x = np.zeros((1, m.n_features), np.float32)
        self._y = np.zeros(shape, np.float32)
        self._bufs = [[np.zeros((1, *s.shape[1:]), np.float32) for s in m.state]
                      for _ in range(2)]
        self._t = np.zeros((1, 1), np.float64)
        x_val = ort.OrtValue.ortvalue_from_numpy(self._x)
        y_val = ort.OrtValue.ortvalue_from_numpy(self._y)
        t_val = ort.OrtValue.ortvalue_from_numpy(self._t)
        vals = [[ort.OrtValue.ortvalue_from_numpy(b) for b in bufs] for bufs in self._bufs]
        self._bindings = []
        for k in range(2):
            io = model.session.io_binding()
            io.bind_ortvalue_input(m.input, x_val)
            io.bind_ortvalue_output(m.output, y_val)
            if m.time_input:
                io.bind_ortvalue_input(m.time_input, t_val)
            for s, src, dst in zip(m.state, vals[k], vals[1 - k], strict=True):
                io.bind_ortvalue_input(s.input, src)
                io.bind_ortvalue_output(s.output, dst)
            self._bindings.append(io)
        self._k = 0
        self.reset(state)

    def reset(self, state: State | None = None) -> None:
        """Start again from `state` (zero by default)."""
        self._k = 0
        for buf, value in zip(self._bufs[0], state or self.model.zero_state(), strict=True):
            buf[...] = value

    @property
    def state(self) -> State:
        """A copy of the current state (for checkpoints)."""
        return [b.copy() for b in self._bufs[self._k]]

    def step(self, x: np.ndarray, t: float | None = None) -> np.ndarray:
        """Advance by one observation ([F] or [1, F] raw units) made at `t` (epoch seconds,
        for a graph with a time input); returns a copy of y."""
        self._x[...] = np.reshape(x, self._x.shape)
        if self.model.time_input:
            self._t[...] = time_feed(t, 1)
        self.model.session.run_with_iobinding(self._bindings[self._k])
        self._k ^= 1
        return self._y.copy()
