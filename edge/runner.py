"""Step stream states through the onnxruntime session. No I/O; tested without a broker.

It calls the session that `StepModel` opened directly, with feed names prepared once, to keep the
per-message path short; the numbers are the same as `StepModel.step`. `step_many` advances many
streams by one observation each in one run of a dynamic-batch step graph (micro-batching); each
row of a batched LSTM is computed independently, so the results equal stepping each stream alone.
"""

from __future__ import annotations

import time

import numpy as np

from edge.model import StepModel
from edge.state import RowTables, StreamState


class Runner:
    """Advances a StreamState by one observation and returns the forecast (None while warming)."""

    def __init__(self, model: StepModel) -> None:
        m = model.manifest
        self.model = model
        self.manifest = m
        self.session = model.session
        self.kind = m.kind
        self.input = m.input
        self.n_features = m.n_features
        self.state_in = [s.input for s in m.state]
        self.outputs = [m.output] + [s.output for s in m.state]
        self.lookback = m.lookback if m.kind == "window" else None
        self.time_input = m.time_input  # the graph derives calendar inputs from the time
        self.last_seconds = 0.0
        # many streams per run: a step graph with a symbolic batch dimension
        self.batched = m.kind == "step" and model.dynamic_batch
        self.rows = state_rows(model.zero_state(1) if self.batched else [])

    def zero_state(self) -> list[np.ndarray]:
        return self.model.zero_state(1) if self.kind == "step" else []

    def step_one(self, st: StreamState, x: np.ndarray, t: float = 0.0) -> np.ndarray | None:
        """Advance `st` in place by the feature row `x` ([F] float32) observed at `t` (epoch
        seconds); the state changes only if the session run succeeds. `last_seconds` holds the
        session time of the last run."""
        if self.kind == "step":
            feeds = {self.input: x.reshape(1, self.n_features)}
            for name, value in zip(self.state_in, st.state, strict=True):
                feeds[name] = value
            if self.time_input:
                feeds[self.time_input] = np.array([[t]], np.float64)
            t0 = time.perf_counter()
            out = self.session.run(self.outputs, feeds)
            self.last_seconds = time.perf_counter() - t0
            st.state = out[1:]
            st.count += 1
            return np.asarray(out[0])
        assert st.window is not None
        window = np.empty_like(st.window)
        window[:-1] = st.window[1:]
        window[-1] = x
        filled = min(st.filled + 1, window.shape[0])
        y = None
        if filled == window.shape[0]:
            t0 = time.perf_counter()
            y = np.asarray(self.session.run([self.outputs[0]], {self.input: window[None]})[0])
            self.last_seconds = time.perf_counter() - t0
        st.window = window
        st.filled = filled
        st.count += 1
        return y

    def step_many(self, sts: list[StreamState], x: np.ndarray,
                  t: np.ndarray | None = None) -> np.ndarray:
        """Advance each of `sts` (distinct streams) by its row of `x` ([N, F] float32), observed
        at `t` ([N] epoch seconds), in one session run; returns the forecasts [N, ...]. All
        states change only if the run succeeds. `last_seconds` holds the session time of the
        run. Needs `batched`; with one stream it is `step_one`."""
        if len(sts) == 1 or not self.batched:
            times = [0.0] * len(sts) if t is None else np.asarray(t, np.float64).reshape(-1)
            ys = [self.step_one(st, row, float(ti))
                  for st, row, ti in zip(sts, x, times, strict=True)]
            return np.concatenate([y for y in ys if y is not None])
        rows = self.rows
        idx = rows.rows(sts)
        feeds = {self.input: x}
        for name, table in zip(self.state_in, rows.tables, strict=True):
            feeds[name] = table[idx]
        if self.time_input:
            feeds[self.time_input] = np.asarray(t if t is not None else np.zeros(len(sts)),
                                                np.float64).reshape(-1, 1)
        t0 = time.perf_counter()
        out = self.session.run(self.outputs, feeds)
        self.last_seconds = time.perf_counter() - t0
        for table, new in zip(rows.tables, out[1:], strict=True):
            table[idx] = new
        for st in sts:
            st.count += 1
        return np.asarray(out[0])


def _state(st: StreamState) -> list[np.ndarray]:
    return st.state


def _put_state(st: StreamState, r: int, tables: list[np.ndarray]) -> None:
    st.state = [t[r : r + 1] for t in tables]


def state_rows(zero: list[np.ndarray]) -> RowTables:
    """The model states of streams stepped together (h and c of each layer), one row each."""
    return RowTables([z.shape[1:] for z in zero], np.float32, _state, _put_state)
