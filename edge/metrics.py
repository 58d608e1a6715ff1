"""Prometheus text exposition without a client library, and a tiny HTTP server for it.

Counters are written by the worker (and reconnects by the network supervisor) and read by the
HTTP thread; a torn read of a Python int is impossible under the GIL, so there are no locks.
"""

from __future__ import annotations

import bisect
import json
import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from edge.score import Scorer

log = logging.getLogger(__name__)

STEP_BUCKETS = (
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05,
)


class LogLimiter:
    """At most one log line per key (a stream) every `every` seconds: a sensor sending garbage
    ten times a second must not flood the log."""

    def __init__(self, every: float = 60.0, keys: int = 100_000) -> None:
        self.every = every
        self.keys = keys
        self._last: dict[str, float] = {}

    def due(self, key: str) -> bool:
        """True (and remembered) when `key` has not been logged for `every` seconds."""
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.every:
            return False
        if len(self._last) > self.keys:
            self._last.clear()
        self._last[key] = now
        return True


class Histogram:
    def __init__(self, buckets: tuple[float, ...] = STEP_BUCKETS) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1


class Metrics:
    """The daemon's numbers. `render()` gives Prometheus text format 0.0.4."""

    def __init__(self, model_id: str = "") -> None:
        self.model_id = model_id
        self.messages_in = 0
        self.predictions_out = 0
        self.errors_out = 0
        self.dropped: dict[str, int] = {}
        self.resets: dict[str, int] = {}
        self.step_seconds = Histogram()
        self.model_runs = 0
        self.reconnects = 0
        self.checkpoints = 0
        self.reloads = 0
        self.reloads_failed = 0
        self.connected = 0
        self.streams = 0
        self.warming = 0
        self.queue_depth: Callable[[], int] = lambda: 0
        self.scorer: Scorer | None = None
        self.per_stream = False
        self.stream_scores: dict[str, dict[str, Any]] = {}

    def adopt_scorer(self, scorer: Scorer, per_stream: bool) -> None:
        """Report this scorer's figures; a model with the same horizon and coverages keeps
        counting where the last left off (counters never go back)."""
        old = self.scorer
        if old is not None and old.totals.shape == scorer.totals.shape:
            scorer.totals = old.totals
        self.scorer = scorer
        self.per_stream = per_stream

    def stream_score(self, stream: str, scorer: Scorer, extra: np.ndarray) -> None:
        """Keep a stream's latest rolling figures for the per-stream gauges (when enabled)."""
        if not self.per_stream:
            return
        if stream not in self.stream_scores and len(self.stream_scores) >= 100_000:
            return
        self.stream_scores[stream] = scorer.summary(extra)

    def drop(self, reason: str, n: int = 1) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + n

    def reset(self, reason: str, n: int = 1) -> None:
        self.resets[reason] = self.resets.get(reason, 0) + n

    def render(self) -> str:
        p = "statecast_edge_"
        lines = [
            f"# HELP {p}model_info The model this daemon runs.",
            f"# TYPE {p}model_info gauge",
            f'{p}model_info{{model_id="{_label(self.model_id)}"}} 1',
        ]

        def scalar(name: str, kind: str, help_: str, value: float) -> None:
            lines.extend(
                [f"# HELP {p}{name} {help_}", f"# TYPE {p}{name} {kind}", f"{p}{name} {value}"]
            )

        scalar("messages_received_total", "counter", "Sensor messages taken in.", self.messages_in)
        scalar("predictions_published_total", "counter", "Predictions published.",
               self.predictions_out)
        scalar("errors_published_total", "counter", "Error reports published.", self.errors_out)
        lines += [
            f"# HELP {p}dropped_total Observations dropped, by reason.",
            f"# TYPE {p}dropped_total counter",
        ]
        lines += [
            f'{p}dropped_total{{reason="{_label(r)}"}} {n}' for r, n in sorted(self.dropped.items())
        ]
        lines += [
            f"# HELP {p}state_resets_total Stream states reset, by reason.",
            f"# TYPE {p}state_resets_total counter",
        ]
        lines += [
            f'{p}state_resets_total{{reason="{_label(r)}"}} {n}'
            for r, n in sorted(self.resets.items())
        ]
        h = self.step_seconds
        lines += [
            f"# HELP {p}step_seconds Model time per observation (a batched run's share).",
            f"# TYPE {p}step_seconds histogram",
        ]
        cumulative = 0
        for bound, n in zip(h.buckets, h.counts, strict=False):
            cumulative += n
            lines.append(f'{p}step_seconds_bucket{{le="{bound:g}"}} {cumulative}')
        lines.append(f'{p}step_seconds_bucket{{le="+Inf"}} {h.count}')
        lines.append(f"{p}step_seconds_sum {h.sum:.9f}")
        lines.append(f"{p}step_seconds_count {h.count}")
        scalar("model_runs_total", "counter", "onnxruntime session runs (one steps a batch).",
               self.model_runs)
        scalar("active_streams", "gauge", "Streams with a state.", self.streams)
        scalar("warming_streams", "gauge", "Window streams not yet full.", self.warming)
        scalar("reconnects_total", "counter", "Reconnections to the broker.", self.reconnects)
        scalar("checkpoints_total", "counter", "State checkpoints written.", self.checkpoints)
        scalar("model_reloads_total", "counter", "Models put in service while running.",
               self.reloads)
        scalar("model_reloads_rejected_total", "counter",
               "Replacement models rejected (the live one kept serving).", self.reloads_failed)
        scalar("connected", "gauge", "1 while connected to the broker.", self.connected)
        scalar("queue_depth", "gauge", "Messages waiting for the worker.", self.queue_depth())
        if self.scorer is not None:
            lines += _score_lines(p, self.scorer, self.stream_scores if self.per_stream else {})
        return "\n".join(lines) + "\n"


def _score_lines(p: str, sc: Scorer, streams: dict[str, dict[str, Any]]) -> list[str]:
    """Self-scoring, summed over streams per horizon step (counters: divide their rates, e.g.
    rate(abs_error_sum) / rate(scored_total) is the MAE over any window), the drift alarm
    gauge and, when enabled, each stream's rolling figures."""
    t = sc.totals
    lines: list[str] = []

    def family(name: str, kind: str, help_: str, rows: list[tuple[str, float]]) -> None:
        lines.extend([f"# HELP {p}{name} {help_}", f"# TYPE {p}{name} {kind}"])
        lines.extend(f"{p}{name}{{{labels}}} {value:.9g}" for labels, value in rows)

    hs = [f'h="{h + 1}"' for h in range(sc.horizon)]
    family("score_scored_total", "counter", "Forecasts scored against their actual, by "
           "horizon step.", list(zip(hs, t.scored.tolist(), strict=True)))
    family("score_abs_error_sum", "counter", "Sum of absolute forecast errors (targets "
           "averaged).", list(zip(hs, t.abs_err.tolist(), strict=True)))
    family("score_sq_error_sum", "counter", "Sum of squared forecast errors.",
           list(zip(hs, t.sq_err.tolist(), strict=True)))
    base = ["persistence", "seasonal"] if sc.season else ["persistence"]
    for name, arr in (("scored_total", t.base_n), ("abs_error_sum", t.base_abs),
                      ("sq_error_sum", t.base_sq)):
        family(f"score_baseline_{name}", "counter", f"The naive baselines' {name} on the same "
               "actuals.", [(f'baseline="{b}",{h}', float(arr[k, i]))
                            for k, b in enumerate(base) for i, h in enumerate(hs)])
    if sc.coverages:
        family("score_covered_total", "counter", "Forecasts whose actual fell inside the "
               "published interval.", [(f'coverage="{c:g}",{h}', float(t.covered[k, i]))
                                       for k, c in enumerate(sc.coverages)
                                       for i, h in enumerate(hs)])
        family("score_width_sum", "counter", "Sum of the published intervals' widths.",
               [(f'coverage="{c:g}",{h}', float(t.width[k, i]))
                for k, c in enumerate(sc.coverages) for i, h in enumerate(hs)])
    lines += [f"# HELP {p}retrain_needed Streams whose rolling error is in drift alarm.",
              f"# TYPE {p}retrain_needed gauge", f"{p}retrain_needed {len(sc.alarms)}"]
    if streams:
        rows = []
        for stream, doc in sorted(streams.items()):
            label = f'stream="{_label(stream)}"'
            for key in ("rmse", "brier"):  # regression, classifiers
                got = [v for v in doc.get(key, []) if v is not None]
                if key in doc:
                    rows.append((f"{p}stream_{key}{{{label}}}",
                                 float(np.mean(got)) if got else 0.0))
            rows.append((f"{p}stream_alarm{{{label}}}", float(doc["alarm"])))
            for c, cov in doc.get("coverage", {}).items():
                got = [v for v in cov if v is not None]
                rows.append((f'{p}stream_coverage{{{label},coverage="{c}"}}',
                             float(np.mean(got)) if got else 0.0))
        lines += [f"# HELP {p}stream_rmse A stream's rolling RMSE (horizon steps averaged).",
                  f"# TYPE {p}stream_rmse gauge",
                  f"# HELP {p}stream_brier A classifier stream's rolling Brier score.",
                  f"# TYPE {p}stream_brier gauge",
                  f"# HELP {p}stream_alarm 1 while a stream is in drift alarm.",
                  f"# TYPE {p}stream_alarm gauge",
                  f"# HELP {p}stream_coverage A stream's rolling interval coverage.",
                  f"# TYPE {p}stream_coverage gauge"]
        lines += [f"{name} {value:.9g}" for name, value in rows]
    return lines


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


REQUEST_TIMEOUT = 10.0  # seconds a connection may take to send its request


class _Server(ThreadingHTTPServer):
    """One daemon thread per request; a client that goes away mid-request is not an error."""

    daemon_threads = True  # a stalled client never holds up shutdown

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("metrics: a request from %s failed", client_address, exc_info=True)


class MetricsServer:
    """Serves `/metrics` and `/healthz` (stdlib http.server): a named daemon thread accepts, and
    each request gets its own daemon thread, so a stalled scrape never holds up the health
    check; a connection that sends nothing is closed after REQUEST_TIMEOUT."""

    def __init__(
        self, metrics: Metrics, host: str, port: int, health: Callable[[], dict[str, Any]]
    ) -> None:
        self.metrics = metrics
        self.health = health
        server_self = self

        class Handler(BaseHTTPRequestHandler):
            timeout = REQUEST_TIMEOUT

            def do_GET(self) -> None:
                if self.path.split("?")[0] == "/metrics":
                    body = server_self.metrics.render().encode()
                    self._send(200, "text/plain; version=0.0.4; charset=utf-8", body)
                elif self.path.split("?")[0] == "/healthz":
                    state = server_self.health()
                    code = 200 if state.get("ok") else 503
                    self._send(code, "application/json", json.dumps(state).encode())
                else:
                    self._send(404, "text/plain", b"not found\n")

            def _send(self, code: int, ctype: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("metrics: " + format, *args)

        self.httpd = _Server((host, port), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, name="statecast-metrics", daemon=True
        )

    def start(self) -> None:
        self.thread.start()

    def alive(self) -> bool:
        """True while the accepting thread serves."""
        return self.thread.is_alive()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
