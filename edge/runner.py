"""Step one stream's state through the onnxruntime session. No I/O; tested without a broker.

It calls the session that `StepModel` opened directly, with feed names prepared once, to keep the
per-message path short; the numbers are the same as `StepModel.step`.
"""

from __future__ import annotations

import time

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
        self.last_seconds = 0.0

    def zero_state(self) -> list[np.ndarray]:
        return self.model.zero_state(1) if self.kind == "step" else []

    def step_one(self, st: StreamState, x: np.ndarray) -> np.ndarray | None:
        """Advance `st` in place by the feature row `x` ([F] float32); the state changes only if
        the session run succeeds. `last_seconds` holds the session time of the last run."""
        if self.kind == "step":
            feeds = {self.input: x.reshape(1, self.n_features)}
            for name, value in zip(self.state_in, st.state, strict=True):
                feeds[name] = value
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
