"""Step stream states through the onnxruntime session. No I/O; tested without a broker.

It calls the session that `StepModel` opened directly, with feed names prepared once, to keep the
per-message path short; the numbers are the same as `StepModel.step`. `step_many` advances many
streams by one observation each in one run of a dynamic-batch step graph (micro-batching); each
row of a batched LSTM is computed independently, so the results equal stepping each stream alone.
"""

from __future__ import annotations

import time
import weakref

import numpy as np

from edge.model import StepModel
from edge.state import StreamState


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
        self.rows = StateRows(model.zero_state(1)) if self.batched else StateRows([])

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
        idx = np.fromiter((rows.row(st) for st in sts), np.intp, len(sts))
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


class StateRows:
    """The states of the streams that are stepped together, one row per stream in one table per
    state tensor, so a batched run gathers and scatters them with one numpy call per tensor.

    A stream's `state` arrays become views of its rows (checkpoints and `step_one` read them as
    before). A stream whose arrays are not views of the current tables — new, reset, restored
    from a checkpoint or stepped alone — is copied in on its next batched step. Rows of streams
    that no longer exist are reused; the tables double when full.
    """

    def __init__(self, zero: list[np.ndarray], capacity: int = 256) -> None:
        self.tables = [np.zeros((capacity, *z.shape[1:]), np.float32) for z in zero]
        self._owners: list[weakref.ref[StreamState] | None] = [None] * capacity
        self._row: dict[int, int] = {}  # id(stream state) -> row
        self._free = list(range(capacity - 1, -1, -1))

    def row(self, st: StreamState) -> int:
        """The row of `st`, copying its state in first when its arrays are not our views."""
        r = self._row.get(id(st))
        if r is not None and st.state[0].base is self.tables[0]:
            return r
        if r is None or self._owner(r) is not st:
            r = self._take()
            self._owners[r] = weakref.ref(st)
            self._row[id(st)] = r
        for table, value in zip(self.tables, st.state, strict=True):
            table[r] = value[0]
        st.state = [table[r : r + 1] for table in self.tables]
        return r

    def _owner(self, r: int) -> StreamState | None:
        ref = self._owners[r]
        return ref() if ref is not None else None

    def _take(self) -> int:
        if not self._free:
            for r, ref in enumerate(self._owners):  # rows of streams that are gone
                st = ref() if ref is not None else None
                if st is None or self._row.get(id(st)) != r:
                    self._owners[r] = None
                    self._free.append(r)
            self._row = {i: r for i, r in self._row.items()
                         if self._owners[r] is not None and id(self._owner(r)) == i}
        if not self._free:
            self._grow()
        return self._free.pop()

    def _grow(self) -> None:
        n = len(self._owners)
        old = self.tables
        self.tables = [np.zeros((2 * n, *t.shape[1:]), np.float32) for t in old]
        for new, t in zip(self.tables, old, strict=True):
            new[:n] = t
        self._owners += [None] * n
        self._free = list(range(2 * n - 1, n - 1, -1))
        for r in range(n):  # point the live streams at the new tables
            st = self._owner(r)
            if st is not None and st.state and st.state[0].base is old[0]:
                st.state = [t[r : r + 1] for t in self.tables]
