"""The daemon: the only module that wires transport, codec, state and runner together.

Threads: paho's network thread only enqueues (`Transport` → `Service.enqueue`); one worker thread
owns the stream states and the onnxruntime session, so nothing needs a lock; the main thread
waits for SIGTERM/SIGINT, pings systemd's watchdog while every thread the daemon needs is alive
(and exits with FAILED_EXIT when one is not), watches the model file, loads a replacement
beside the live model and queues the swap, so the worker changes models between two messages.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Container, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import numpy as np

from edge.codec import (
    UNKNOWN_STREAM,
    Decoder,
    Encoder,
    Observation,
    PayloadError,
    StreamRouter,
    parse_freq,
    truncate,
)
from edge.config import EdgeConfig
from edge.discovery import Discovery
from edge.errors import EdgeError
from edge.grid import Closed, Regulariser
from edge.metrics import LogLimiter, Metrics, MetricsServer
from edge.model import StepModel
from edge.notify import Notifier
from edge.runner import Runner
from edge.score import EXTRA as SCORE
from edge.score import Scorer
from edge.state import StateStore, StreamState
from edge.transport import Transport, forecast_properties

if TYPE_CHECKING:
    from edge.record import Recorder

log = logging.getLogger(__name__)

LOG_EVERY = 60.0
MAX_UNCONFIRMED = 5000  # publications waiting for the broker before the worker stops taking
TICK = 0.25  # seconds between two runs of the grid's timer (`Processor.tick`)
_STOP = object()
FATAL_EXIT = 3  # the broker refused us for good (credentials, TLS): retrying cannot help
FAILED_EXIT = 1  # a thread the daemon needs died: systemd restarts it (Restart=on-failure)

# (topic, payload, retain) -> accepted
Publisher = Callable[[str, bytes, int], bool]
# one model step waiting in `Processor._pending`: (stream, its state, the step's time t, its
# feature row x, the observation behind it, topic, payload, the period time (grid) or None,
# whether its forecast is published)
Pending = tuple[str, StreamState, float, np.ndarray, Observation, str, bytes, float | None, bool]


def load_model(config: EdgeConfig) -> tuple[StepModel, timedelta | None]:
    """Open and check the model; the frequency must be fixed (or absent) to compute `at`."""
    model = StepModel(config.model, threads=config.threads)
    m = model.manifest
    freq = None
    if m.freq is not None:
        try:
            freq = parse_freq(m.freq)
        except EdgeError as exc:
            if m.grid is None:  # a grid places calendar months itself (`edge.grid`)
                log.warning("%s: forecasts will carry no 'at' times and gaps are not checked",
                            exc)
    if m.kind == "step" and model.dynamic_batch:
        log.info("Model %s has a dynamic batch: streams are stepped together, up to %d per run",
                 m.model_id, config.max_batch)
    missing = [k for k in config.field_map if k not in m.features and k != "ts"]
    if missing:
        raise EdgeError(f"field_map names {missing[0]!r}, which is not a model feature")
    return model, freq


def file_identity(path: str) -> tuple[int, int, int] | None:
    """(inode, size, mtime) of a file, None if it is missing: changes when it is replaced."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


@dataclass(frozen=True)
class Command:
    """A line from the commands topic, run by the worker between two messages."""

    text: bytes


@dataclass(frozen=True)
class Swap:
    """A validated replacement model for the worker to put in service."""

    model: StepModel
    freq: timedelta | None
    source: str


class Processor:
    """Turns one message into a prediction or an error; owns the states. No threads, no I/O:
    `publish` is injected (the worker passes the transport's), so it is tested without a broker.
    """

    def __init__(
        self,
        config: EdgeConfig,
        model: StepModel,
        freq: timedelta | None,
        publish: Publisher,
        metrics: Metrics | None = None,
        store: StateStore | None = None,
        *,
        on_admit: Callable[[str, Observation], None] | None = None,
        publish_forecast: Publisher | None = None,
        publish_retained: Publisher | None = None,
        events_topic: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        m = model.manifest
        self.config = config
        self.manifest = m
        self.model_id = m.model_id
        self.publish = publish
        # forecasts may go out differently (retained, MQTT 5 properties); errors never do
        self.publish_forecast = publish_forecast or publish
        # told of every observation that passed `_admit` (recording, discovery)
        self.on_admit = on_admit
        self.metrics = metrics or Metrics(m.model_id)
        self.runner = Runner(model)
        self.decoder = Decoder(
            m.features, config.field_map, config.max_payload, stream_field=config.stream_field,
            ts_field=config.ts_field, arrival=config.ts == "arrival",
        )
        # a model trained on a grid: each stream is regularised to one step per period
        self.grid = Regulariser(m, config.grace) if m.grid is not None else None
        self.clock = clock  # wall clock: arrivals and the grid's timer
        self.encoder = Encoder(m, freq, self.grid)
        self.router = StreamRouter(config.subscribe, config.stream_level)
        # what other parts keep per stream besides the model's state: name -> a new stream's value
        extras: dict[str, np.ndarray] = {}
        if self.grid is not None:
            extras[self.grid.name] = self.grid.template()
        # self-scoring (edge/score.py): regression models, and classifiers whose class the
        # device can tell (Brier score, no intervals)
        scorer = Scorer(m, config.score_settings()) if config.scoring else None
        self.scorer = scorer if scorer is not None and scorer.enabled else None
        if self.scorer is not None:
            extras[SCORE] = self.scorer.template
            self.metrics.adopt_scorer(self.scorer, config.score_per_stream)
        self.publish_retained = publish_retained or publish
        self.period = freq.total_seconds() if freq is not None else None
        # drift events go next to the daemon's status (the Service's topic, fixed at start)
        self.events_topic = events_topic or config.status.format(
            client_id=config.client_id, model=m.model_id, stream="") + "/events"
        fresh = StateStore(
            m.model_id,
            self.runner.zero_state(),
            lookback=self.runner.lookback,
            n_features=m.n_features,
            max_streams=config.max_streams,
            ttl=config.stream_ttl,
            max_resident=config.max_resident,
            fsync=config.fsync,
            extras=extras,
        )
        if store is not None and store.same_layout(fresh):
            store.rename(m.model_id, extras)
            fresh = store
        self.store = fresh
        self.max_gap = (  # without a grid: the longest gap between observations
            freq.total_seconds() * m.max_gap
            if freq is not None and m.max_gap and self.grid is None else None
        )
        self.qos = config.qos
        self._topics: dict[tuple[str, str], str] = {}
        self._log_limit = LogLimiter(LOG_EVERY)
        # observations admitted and waiting for their step: one per stream, at most `_limit`
        # (a batch-1 graph steps them one by one, and they are scored and published together)
        self._limit = config.max_batch
        self._pending: list[Pending] = []
        self._fills = config.publish_fills == "all"
        # grid: stream -> when the timer closes its open period (built from the store at the
        # first tick; streams evicted since are skipped, and close when they come back)
        self._due: dict[str, float] | None = None
        self._seen: set[str] = set()

    def topic(self, template: str, stream: str) -> str:
        key = (template, stream)
        t = self._topics.get(key)
        if t is None:
            t = self.config.topic(template, stream, self.model_id)
            if len(self._topics) < 100_000:
                self._topics[key] = t
        return t

    def handle(self, topic: str, payload: bytes) -> bool:
        """Process one message; True if it made a forecast. Never raises. (`handle_many` with
        one message: there is one path.)"""
        return self.handle_many(((topic, payload),)) > 0

    def report(
        self,
        stream: str,
        reason: str,
        detail: str,
        topic: str,
        payload: bytes,
        *,
        drop: bool = True,
    ) -> None:
        """Count, publish and (rate-limited per stream) log one dropped observation or fault."""
        if drop:
            self.metrics.drop(reason)
        body = self.encoder.error(stream, reason, detail, payload, topic)
        if self.publish(self.topic(self.config.errors, stream), body, self.qos):
            self.metrics.errors_out += 1
        if self._log_limit.due(stream):
            log.warning(
                "%s on %s (stream %s, %s): %s; payload %r "
                "(further problems on this stream are logged at most once a minute)",
                "Dropped a message" if drop else "Accepted a message",
                topic, stream, reason, detail, truncate(payload, 120),
            )

    def _admit(self, stream: str, obs: Observation, topic: str, payload: bytes) -> StreamState:
        """The checks before a step: the stream's state (created when new), late and duplicate
        timestamps (PayloadError), and a gap that resets the state (reported, not dropped)."""
        st = self.store.get(stream)
        if st is None:
            try:
                st = self.store.create(stream)
            except EdgeError as exc:
                raise PayloadError("too_many_streams", str(exc)) from None
            log.debug("New stream %s", stream)
        elif st.last_t is not None:
            if obs.t <= st.last_t and self.config.late == "drop":
                reason = "duplicate" if obs.t == st.last_t else "out_of_order"
                raise PayloadError(reason, f"timestamp {obs.ts_raw!r} is not later than the last")
            if self.grid is not None:
                self.grid.check(st.extra[self.grid.name], obs.t)
            if self.max_gap is not None and obs.t - st.last_t > self.max_gap:
                detail = (
                    f"gap of {obs.t - st.last_t:g} s exceeds max_gap "
                    f"({self.manifest.max_gap} × {self.manifest.freq})"
                )
                if self.config.on_gap == "reset":  # the model's state; scores carry on
                    st = self.store.reset(stream, keep=(SCORE,))
                    self.metrics.reset("gap")
                    detail += "; state reset"
                self.report(stream, "gap", detail, topic, payload, drop=False)
        return st

    def _emit(self, stream: str, obs: Observation, y: np.ndarray,
              period: float | None = None, intervals: bytes | None = None) -> None:
        """Encode and publish one prediction (`y` with its batch dimension of 1), with the
        JSON of its intervals when given."""
        body = self.encoder.prediction(stream, obs, y, period,
                                       b',"intervals":' + intervals if intervals else b"")
        if self.publish_forecast(self.topic(self.config.publish, stream), body, self.qos):
            self.metrics.predictions_out += 1
        else:
            self.metrics.drop("publish_refused")

    def handle_many(self, messages: Sequence[tuple[str, bytes]]) -> int:
        """Process messages in arrival order; returns the number of forecasts. Never raises.

        Every message takes the same steps: decode and route, admit (the checks against its
        stream's state), then wait in `_pending` to be stepped (`_step_pending`: run the model,
        tell the store, publish). With a grid model the message goes into its stream's open
        period first (`_regularise`) and what waits are the steps of the periods it closes, in
        order (fills first), each with its period time. With a dynamic-batch step graph the
        pending streams are stepped together in one session run (micro-batching); otherwise
        each is stepped at once.
        A run holds at most one observation per stream (a second one for the same stream first
        steps what is pending) and at most `max_batch`, so each stream sees its observations in
        order, is checked against its up-to-date state, and gets the forecasts it would get
        stepped alone.
        """
        made = 0
        pending, seen, limit = self._pending, self._seen, self._limit
        router = self.router.stream if self.config.stream_field is None else None
        decode = self.decoder.decode
        for topic, payload in messages:
            self.metrics.messages_in += 1
            stream = UNKNOWN_STREAM
            try:
                if router is not None:
                    stream = router(topic)
                obs = decode(payload)
                if obs.stream is not None:
                    stream = obs.stream
                if stream in seen:
                    made += self._step_pending()
                st = self._admit(stream, obs, topic, payload)
                if self.on_admit is not None:
                    self.on_admit(stream, obs)
                if self.grid is not None:
                    made += self._regularise(stream, st, obs, topic, payload)
                    continue
                pending.append((stream, st, obs.t, obs.values, obs, topic, payload, None, True))
                seen.add(stream)
                if len(pending) >= limit:
                    made += self._step_pending()
            except PayloadError as exc:
                if stream in seen:  # the stream's pending forecast goes out before this error
                    made += self._step_pending()
                self.report(stream, exc.reason, exc.detail, topic, payload)
            except Exception as exc:
                log.exception("Unexpected failure on %s (payload %r)", topic, truncate(payload))
                if stream in seen:
                    made += self._step_pending()
                self.report(stream, "internal", f"{type(exc).__name__}: {exc}", topic, payload)
        return made + self._step_pending()

    def _regularise(self, stream: str, st: StreamState, obs: Observation, topic: str,
                    payload: bytes) -> int:
        """Grid models: put the observation in its stream's open period; queue the steps of the
        periods it closes (see `edge.grid`). Returns the forecasts made on the way."""
        grid = self.grid
        assert grid is not None
        g = st.extra[grid.name]
        closed = grid.add_one(g, obs.t, obs.values, self.clock())
        if self._due is not None:
            at = grid.due_at(g)
            if at is None:
                self._due.pop(stream, None)
            else:
                self._due[stream] = at
        made = 0
        for c in closed:
            n, st = self._queue(stream, st, c, obs, topic, payload)
            made += n
        self.store.advance(stream, obs.t)  # the open period changed: journaled next commit
        return made

    def _queue(self, stream: str, st: StreamState, closed: Closed, obs: Observation,
               topic: str, payload: bytes) -> tuple[int, StreamState]:
        """Queue the steps of one closed period in order (a long gap before it resets the state
        first, as the trainer split its segments there); a stream has one step per run."""
        assert self.grid is not None
        made = 0
        if closed.gap:
            if stream in self._seen:
                made += self._step_pending()
            detail = (f"gap of {closed.gap} missing periods exceeds max_gap "
                      f"({self.manifest.max_gap} × {self.manifest.freq})")
            if self.config.on_gap == "reset":
                st = self.store.reset(stream, keep_last_t=True, keep=(self.grid.name, SCORE))
                self.metrics.reset("gap")
                detail += "; state reset"
            self.report(stream, "gap", detail, topic, payload, drop=False)
        pending, seen = self._pending, self._seen
        for step in closed.steps:
            if stream in seen:
                made += self._step_pending()
            pending.append((stream, st, step.t, step.values.astype(np.float32), obs, topic,
                            payload, step.t, self._fills or not step.fill))
            seen.add(stream)
            if len(pending) >= self._limit:
                made += self._step_pending()
        return made, st

    def tick(self, now: float | None = None) -> int:
        """Grid models: close the periods whose timer is due at wall-clock `now` (see
        `edge.grid`), step and publish them; returns the forecasts made. Never raises."""
        grid = self.grid
        if grid is None:
            return 0
        now = self.clock() if now is None else now
        name = grid.name
        streams = self.store.streams
        if self._due is None:
            self._due = {k: at for k, v in streams.items()
                         if (at := grid.due_at(v.extra[name])) is not None}
        made = 0
        try:
            for stream in [k for k, at in self._due.items() if now >= at]:
                del self._due[stream]
                st = streams.get(stream)
                if st is None or not grid.due(st.extra[name], now):  # evicted, reset, dropped
                    continue
                last = st.last_t if st.last_t is not None else now
                ts = datetime.fromtimestamp(last, timezone.utc).replace(tzinfo=None)  # UTC
                obs = Observation(last, ts, last, np.zeros(0, np.float32), stream)
                made += self._queue(stream, st, grid.close_one(st.extra[name]), obs,
                                    "(timer)", b"")[0]
                self.store.advance(stream, last)
        except Exception:
            log.exception("The grid timer failed")
        return made + self._step_pending()

    def _step_pending(self) -> int:
        """Step the pending observations (distinct streams), record each step in the store and
        publish the forecasts; returns the number of forecasts. Never raises."""
        n = len(self._pending)
        if not n:
            return 0
        pending = self._pending.copy()
        self._pending.clear()
        self._seen.clear()
        try:
            ran = self._run([p[1] for p in pending], [p[2] for p in pending],
                            [p[3] for p in pending])
        except Exception as exc:  # a batched run: nothing stepped
            log.exception("The model failed on %d observation(s)", n)
            for stream, _, _, _, _, topic, payload, _, _ in pending:
                self.report(stream, "internal", f"{type(exc).__name__}: {exc}", topic, payload)
            return 0
        ys = ran.ys
        intervals = self._score(pending, ys, ran.batch, ran.failed)
        advance = self.store.advance
        made = 0
        for i, ((stream, _, _, _, obs, topic, payload, period, publish), y) in enumerate(
                zip(pending, ys, strict=True)):
            if i in ran.failed:  # one at a time: that stream alone was not stepped
                err = ran.failed[i]
                self.report(stream, "internal", f"{type(err).__name__}: {err}", topic, payload)
                continue
            advance(stream, obs.t)
            if y is None or not publish:  # a window graph still warming up; a quiet fill
                continue
            made += 1
            try:
                self._emit(stream, obs, y, period, intervals[i] if intervals else None)
            except Exception as exc:
                log.exception("Unexpected failure on %s (payload %r)", topic, truncate(payload))
                self.report(stream, "internal", f"{type(exc).__name__}: {exc}", topic, payload)
        if made:
            self.metrics.model_runs += ran.runs
            observe = self.metrics.step_seconds.observe
            per = ran.seconds / n
            for _ in range(made):
                observe(per)
        return made

    def _score(
        self, pending: list[Pending],
        ys: list[np.ndarray | None],
        batch: tuple[np.ndarray, np.ndarray] | None = None,
        failed: Container[int] = (),
    ) -> list[bytes | None]:
        """Self-scoring of one model step (edge/score.py): the actuals just observed score the
        forecasts that targeted them, the new forecasts get their intervals (their JSON is
        returned by position in `pending`), due scores and drift alarms are published. Its
        state is the stream's extra `SCORE`, recorded with the step by `store.advance`. Never
        raises. `batch`: the rows and forecasts of a batched run, which spares stacking them;
        `failed`: the positions whose run failed (not stepped: not scored either). A window
        graph filling its window forecasts nothing (None), but its actual is still scored."""
        sc = self.scorer
        if sc is None:
            return []
        try:
            at = [i for i in range(len(ys)) if i not in failed]
            if not at:
                return []
            items = [pending[i] for i in at]
            t = np.fromiter((p[2] for p in items), np.float64, len(items))
            tau = t / self.period if self.period else np.full(len(items), np.nan)
            issue = None
            if batch is not None and len(at) == len(ys):
                values, y = batch[0], batch[1].reshape(len(at), sc.horizon, -1)
            else:
                values = np.stack([p[3] for p in items])
                made = [ys[i] for i in at]
                if any(f is None for f in made):  # NaN forecasts: not issued, never scored
                    issue = np.array([f is not None for f in made])
                    none = np.full((sc.horizon, sc.layout.k), np.nan, np.float32)
                    made = [none if f is None else f for f in made]
                y = np.stack([np.asarray(f).reshape(sc.horizon, -1) for f in made])
            out = sc.step_states([p[1] for p in items], tau, values, y, issue)
            if out.changed:
                summaries = sc.summaries([items[j][1].extra[SCORE] for j, _ in out.changed])
                for (j, raised), summary in zip(out.changed, summaries, strict=True):
                    self._drift(items[j][0], raised, summary)
            if out.due:
                due = [items[j] for j in out.due]
                bodies = sc.payloads([p[0] for p in due], [p[4].ts_raw for p in due],
                                     self.model_id, [p[1].extra[SCORE] for p in due])
                for (stream, st, *_), body in zip(due, bodies, strict=True):
                    self.publish_retained(self.topic(self.config.score, stream), body, self.qos)
                    self.metrics.stream_score(stream, sc, st.extra[SCORE])
            if out.radii is None:
                return []
            issued = sc.intervals_many(y, out.radii)
            if len(at) == len(pending):
                return list(issued)
            by: list[bytes | None] = [None] * len(pending)
            for i, text in zip(at, issued, strict=True):
                by[i] = text
            return by
        except Exception:
            log.exception("Scoring failed on %d forecast(s); they go out without intervals",
                          len(pending))
            return []

    def _drift(self, stream: str, raised: bool, summary: dict[str, Any]) -> None:
        """Publish a drift alarm raised or cleared on the events topic, with the stream's
        rolling figures (`summary`); count it."""
        assert self.scorer is not None
        if raised:
            self.scorer.alarms.add(stream)
        else:
            self.scorer.alarms.discard(stream)
        body = {"event": "drift", "model": self.model_id, "stream": stream, "alarm": raised,
                **{k: summary[k] for k in summary if k.endswith(("rmse", "brier"))},
                "train_rmse": self.scorer.train_rmse}
        log.info("Drift alarm %s on stream %s", "raised" if raised else "cleared", stream)
        self.publish(self.events_topic, json.dumps(body).encode(), 1)

    def recount_alarms(self) -> None:
        """The streams in drift alarm, from their states (after a restore or a swap)."""
        if self.scorer is not None:
            self.scorer.alarms = {s for s, st in self.store.streams.items()
                                  if SCORE in st.extra and self.scorer.alarm_of(st.extra[SCORE])}

    def _run(self, states: list[StreamState], times: list[float], rows: list[np.ndarray]
             ) -> Ran:
        """The one place the model runs: advance each state (distinct streams) by its step (time
        and feature row), all in one session run with a dynamic-batch graph (all or nothing: it
        raises), one at a time otherwise (a stream whose run fails is left as it was and listed
        in `failed`); forecasts keep a batch dimension of 1 (None while a window graph warms
        up)."""
        runner = self.runner
        if not runner.batched:
            ys: list[np.ndarray | None] = []
            failed: dict[int, Exception] = {}
            seconds = 0.0
            for i, (st, ti, xi) in enumerate(zip(states, times, rows, strict=True)):
                try:
                    ys.append(runner.step_one(st, xi, ti))
                    seconds += runner.last_seconds
                except Exception as exc:
                    log.exception("The model failed on one observation")
                    ys.append(None)
                    failed[i] = exc
            return Ran(ys, None, failed, seconds, sum(y is not None for y in ys))
        x = rows[0].reshape(1, -1) if len(rows) == 1 else np.stack(rows)
        t = np.fromiter(times, np.float64, len(times)) \
            if runner.time_input else None  # only graphs with calendar inputs take it
        out = runner.step_many(states, x, t)
        return Ran([out[i : i + 1] for i in range(len(states))], (x, out), {},
                   runner.last_seconds, 1)


@dataclass
class Ran:
    """What one `Processor._run` did: the forecasts by position, the stacked rows and forecasts
    of a batched run, the streams whose run failed (one at a time only), the session time and
    the number of session runs."""

    ys: list[np.ndarray | None]
    batch: tuple[np.ndarray, np.ndarray] | None
    failed: dict[int, Exception]
    seconds: float
    runs: int


class Service:
    """Runs the daemon until `stop()`: restore, connect, process, checkpoint, shut down."""

    def __init__(self, config: EdgeConfig, model: StepModel, freq: timedelta | None) -> None:
        self.config = config
        self.model = model
        self.manifest = model.manifest
        self.metrics = Metrics(self.manifest.model_id)
        # unbounded: paho's thread must never wait (see `enqueue`); QoS 0 is cut at queue_size
        self.queue: queue.Queue[Any] = queue.Queue()
        self.metrics.queue_depth = self.queue.qsize
        self.fatal: str | None = None
        self.notifier = Notifier()
        self._model_file = file_identity(config.model)
        self._reload_wanted = threading.Event()
        self._beat = time.monotonic()
        self._status_counts = (0, 0)
        # (topic, payload, qos, retain, MQTT 5 properties or None)
        self._outbox: list[tuple[str, bytes, int, bool, Any]] = []
        self.status_topic = config.status.format(
            client_id=config.client_id, model=self.manifest.model_id, stream=""
        )
        self.transport = Transport(
            config,
            self.enqueue,
            status_topic=self.status_topic,
            online=lambda: self._status("online", *self._status_counts),
            offline=self._status("offline"),
            metrics=self.metrics,
            on_fatal=self._on_fatal,
        )
        self.events_topic = f"{self.status_topic}/events"
        self.command_topic = self.transport.command_topic
        self.recorder: Recorder | None = None
        if config.record:
            from edge.record import Recorder  # not at import: `python -m edge.record` runs it

            self.recorder = Recorder(config.record, self.manifest.features, fsync=config.fsync)
        self._log_limit = LogLimiter(LOG_EVERY)
        self.discovery: Discovery | None = None
        self._forecast_props: Any = None
        self._model_extras(model, freq)
        self.processor = Processor(config, model, freq, self._publish, self.metrics,
                                   **self._hooks())
        self.stopping = threading.Event()
        self.worker = threading.Thread(target=self._work, name="statecast-worker", daemon=True)
        self.metrics_server: MetricsServer | None = None
        self._last_checkpoint = time.monotonic()
        self._pending: list[tuple[int, int]] = []  # (connection << 16 | mid, qos) to acknowledge
        self._pending_since = time.monotonic()
        self._sent: list[Any] = []  # paho MQTTMessageInfo of publications not yet confirmed
        self._next_tick = 0.0

    def _status(self, status: str, streams: int = 0, warming: int = 0) -> bytes:
        """The retained status: online/offline, the live model, how many streams there are
        (and how many window streams are still warming up), and the number of the connection."""
        return json.dumps(
            {
                "status": status,
                "model": self.manifest.model_id,
                "client_id": self.config.client_id,
                "subscribe": list(self.config.subscribe),
                "streams": streams,
                "warming": warming,
                "connection": getattr(getattr(self, "transport", None), "connects", 0),
                "commands": self.config.commands.format(client_id=self.config.client_id),
            }
        ).encode()

    def _publish(self, topic: str, payload: bytes, qos: int) -> bool:
        """Collect for `_flush` (the worker publishes a batch at once)."""
        self._outbox.append((topic, payload, qos, False, None))
        return True

    def _publish_retained(self, topic: str, payload: bytes, qos: int) -> bool:
        """Collect a retained publication (a stream's scores) for `_flush`."""
        self._outbox.append((topic, payload, qos, True, None))
        return True

    def _publish_forecast(self, topic: str, payload: bytes, qos: int) -> bool:
        """As `_publish`, retained with `retain_forecasts` and with the model's MQTT 5
        properties."""
        self._outbox.append((topic, payload, qos, self.config.retain_forecasts,
                             self._forecast_props))
        return True

    # -- recording and discovery (edge/record.py, edge/discovery.py) --------------------------

    def _model_extras(self, model: StepModel, freq: timedelta | None) -> None:
        """What depends on the live model besides the processor: discovery configs (announced
        again for the new model) and the forecasts' MQTT 5 properties."""
        cfg = self.config
        if cfg.ha_discovery is not None:
            from edge import __version__

            self.discovery = Discovery(cfg, model.manifest, self.status_topic, __version__)
        if cfg.mqtt_version == "5":
            self._forecast_props = forecast_properties(
                model.manifest.model_id, freq.total_seconds() if freq is not None else None)

    def _hooks(self) -> dict[str, Any]:
        """The processor's hooks: only what is switched on costs anything per message."""
        hooks: dict[str, Any] = {"publish_retained": self._publish_retained,
                                 "events_topic": self.events_topic}
        if self.recorder is not None or self.discovery is not None:
            hooks["on_admit"] = self._admitted
        if self.config.retain_forecasts or self._forecast_props is not None:
            hooks["publish_forecast"] = self._publish_forecast
        return hooks

    def _admitted(self, stream: str, obs: Observation) -> None:
        """Worker: an observation passed the checks; record it, announce a new stream."""
        if self.recorder is not None:
            try:
                self.recorder.append_one(stream, obs)
            except OSError as exc:  # the forecast still goes out
                self.metrics.drop("record_failed")
                if self._log_limit.due("record"):
                    log.warning("Could not record an observation in %s (%s); further failures "
                                "are logged at most once a minute", self.config.record, exc)
        if self.discovery is not None:
            self._retained(self.discovery.announce_one(stream, self.transport.connects))

    def _retained(self, messages: list[tuple[str, bytes]]) -> None:
        for topic, body in messages:
            self.transport.publish(topic, body, 1, retain=True)

    def _upkeep(self) -> None:
        """Worker, after each batch and when idle: sync the record (at most once a second);
        announce the resident streams after a (re)connect or a model change."""
        if self.recorder is not None:
            try:
                self.recorder.sync()
            except OSError as exc:
                log.warning("Could not sync the record in %s (%s)", self.config.record, exc)
        if self.discovery is not None and self.transport.connected.is_set():
            self._retained(self.discovery.announce_resident(
                self.processor.store, self.transport.connects))

    def enqueue(self, topic: str, payload: bytes, mid: int, qos: int) -> None:
        """Called by paho's network thread: hand the message to the worker, nothing else.

        This thread never waits: it also reads the broker's acknowledgements of our predictions
        and writes them out, which a commit waits for. A QoS 0 message that finds `queue_size`
        messages waiting is dropped and counted (`queue_full`): the newest is dropped, nothing
        in hand is. QoS 1 messages are bounded by the broker's in-flight window (the MQTT 5
        receive-maximum, 1000): the worker acknowledges them only after the commit that covers
        them. The message id carries the connection number above bit 16, so an
        acknowledgement is never sent on a later connection, where the broker may have reused
        the id (it redelivers the message instead). A message on the commands topic travels in
        the same queue, so it runs between the messages that came before and after it."""
        item: Any = Command(payload) if topic == self.command_topic else topic
        if qos == 0:
            if self.queue.qsize() >= self.config.queue_size:
                self.metrics.drop("queue_full")
                return
            self.queue.put((item, payload, mid, qos))
            return
        self.queue.put((item, payload, mid | (self.transport.connects << 16), qos))

    def _on_fatal(self, why: str) -> None:
        self.fatal = why
        self.stop()

    def threads(self) -> dict[str, bool]:
        """Whether each thread the daemon needs is alive: the worker, the MQTT supervisor (it
        keeps paho's network thread and the connection going) and the metrics server."""
        alive = {"worker": self.worker.is_alive(), "mqtt": self.transport.alive()}
        if self.metrics_server is not None:
            alive["metrics"] = self.metrics_server.alive()
        return alive

    def health(self) -> dict[str, Any]:
        """What `/healthz` says: ok while connected and every needed thread is alive."""
        threads = self.threads()
        connected = self.transport.connected.is_set()
        return {
            "ok": connected and all(threads.values()),
            "connected": connected,
            "worker": threads["worker"],
            "threads": threads,
            "model": self.manifest.model_id,
            "streams": self.metrics.streams,
            "warming": self.metrics.warming,
        }

    # -- run -----------------------------------------------------------------------------------

    def start(self) -> None:
        cfg = self.config
        if cfg.state_dir is not None:
            n = self.processor.store.load(cfg.state_dir)
            if n:
                log.info("Restored the state of %d streams from %s", n, cfg.state_dir)
            self.processor.recount_alarms()
        self._update_gauges()
        if cfg.metrics_port is not None:
            try:
                self.metrics_server = MetricsServer(
                    self.metrics, cfg.metrics_host, cfg.metrics_port, self.health
                )
            except OSError as exc:
                raise EdgeError(
                    f"cannot serve metrics on port {cfg.metrics_port} ({exc})"
                ) from None
            self.metrics_server.start()
            log.info("Serving metrics on http://%s:%d/metrics", cfg.metrics_host,
                     self.metrics_server.port)
        self.worker.start()
        self.transport.start()

    def stop(self) -> None:
        self.stopping.set()

    def run(self) -> int:
        """Start, serve until `stop()`, shut down in order; returns the exit status."""
        self.start()
        return self.serve()

    def serve(self) -> int:
        """Main thread, after `start`: tell systemd we are ready, ping its watchdog while every
        needed thread is alive, watch the model file; on `stop()` or a dead thread, shut down.
        Returns the exit status: 0, FATAL_EXIT, or FAILED_EXIT when a thread died."""
        notify = self.notifier
        notify.send(READY="1", STATUS=f"serving model {self.manifest.model_id}")
        tick = min(0.5, notify.watchdog_interval or 0.5)
        status = 0
        while not self.stopping.wait(tick):
            dead = [name for name, alive in self.threads().items() if not alive]
            if dead and not self.stopping.is_set():
                why = f" ({self.transport.failure})" if self.transport.failure else ""
                log.error("The %s thread died%s; stopping with exit status %d so that the "
                          "service manager restarts the daemon", ", ".join(dead), why,
                          FAILED_EXIT)
                status = FAILED_EXIT
                break
            # The worker wakes at least once a second; a longer silence means it is stuck.
            if notify.watchdog_interval is not None and time.monotonic() - self._beat < 10.0:
                notify.send(WATCHDOG="1")
            self._watch_model()
        notify.send(STOPPING="1")
        self.shutdown()
        return FATAL_EXIT if self.fatal is not None else status

    # -- model rollout -------------------------------------------------------------------------

    def _watch_model(self) -> None:
        """Reload when asked, or when the model file was replaced and has stopped changing."""
        now = file_identity(self.config.model)
        if now != self._model_file and now is not None:
            time.sleep(0.2)  # a file still being written changes again
            if file_identity(self.config.model) != now:
                return
            self._model_file = now
            self.reload("file")
        elif self._reload_wanted.is_set():
            self._reload_wanted.clear()
            self._model_file = now
            self.reload("command")

    def request_reload(self) -> None:
        """Ask for a reload of the model file (SIGHUP, the `reload` command); the main thread
        does it within half a second."""
        self._reload_wanted.set()

    def reload(self, source: str) -> bool:
        """Load and check the model file beside the live model; queue the swap if it is fit.
        A file that cannot serve is rejected and reported, and the live model keeps serving."""
        live = self.manifest
        try:
            model, freq = load_model(self.config)
            m = model.manifest
            if m.features != live.features:
                raise EdgeError(
                    f"it takes features {list(m.features)}, but the sensors send "
                    f"{list(live.features)} (a new feature set needs a restart)"
                )
            model.step(np.zeros(m.n_features, np.float32) if m.kind == "step" else
                       np.zeros((m.lookback or 1, m.n_features), np.float32), model.zero_state())
        except Exception as exc:  # an EdgeError, or onnxruntime failing on the test step
            detail = " ".join(str(exc).split())
            log.error("Rejected the new model file %s: %s; model %s keeps serving",
                      self.config.model, detail, live.model_id)
            self.metrics.reloads_failed += 1
            self._event("reload", ok=False, source=source, detail=detail)
            return False
        if m.model_id == live.model_id:
            log.info("Model file %s holds the live model %s already", self.config.model,
                     live.model_id)
            self._event("reload", ok=True, source=source, states="unchanged", previous=None)
            return True
        log.info("Loaded model %s from %s; switching from %s", m.model_id, self.config.model,
                 live.model_id)
        self.queue.put(Swap(model, freq, source))
        return True

    def _swap(self, swap: Swap) -> None:
        """Worker: put the new model in service between two messages, keeping the states when
        their layout is the same and starting them afresh (reported) when it is not."""
        old_id = self.manifest.model_id
        directory = self.config.state_dir
        self._maybe_checkpoint(force=True)  # the old model's states, durable under its id
        old_store = self.processor.store
        old_spill = old_store.spill_dir(directory) if directory is not None else None
        proc = Processor(self.config, swap.model, swap.freq, self._publish, self.metrics,
                         store=old_store, **self._hooks())  # the same hooks: the same settings
        self._model_extras(swap.model, swap.freq)
        kept = proc.store is old_store
        if directory is not None:
            if kept and old_spill is not None and old_spill.is_dir():
                new_spill = proc.store.spill_dir(directory)
                if not new_spill.exists():  # evicted streams carry over too
                    os.replace(old_spill, new_spill)
            elif not kept:
                proc.store.load(directory)  # e.g. a rollback to a model seen before
        self.processor, self.model, self.manifest = proc, swap.model, swap.model.manifest
        proc.recount_alarms()
        self.metrics.model_id = self.manifest.model_id
        self.metrics.reloads += 1
        if not kept:
            self.metrics.reset("reload", len(old_store))
        if directory is not None:
            self._maybe_checkpoint(force=True)  # a snapshot under the new model's id
        log.info("Model %s is live (was %s); the states of %d streams were %s", self.manifest
                 .model_id, old_id, len(old_store), "kept" if kept else "reset")
        self._event("reload", ok=True, source=swap.source, previous=old_id,
                    states="kept" if kept else "reset", streams=len(old_store))
        self._status_counts = (-1, -1)  # republish the retained status with the new model id
        self._update_gauges()

    def _command(self, text: bytes) -> None:
        """Worker: `reload`, `reset STREAM` or `drop STREAM` from the commands topic."""
        words = text.decode("utf-8", "replace").split(maxsplit=1)
        verb = words[0].lower() if words else ""
        if verb == "reload" and len(words) == 1:
            self.request_reload()
            return
        store = self.processor.store
        if verb in ("reset", "drop") and len(words) == 2:
            stream = words[1].strip()
            known = store.get(stream) is not None
            if known and verb == "reset":
                store.reset(stream, keep_last_t=True)
                self.metrics.reset("command")
            elif known:
                store.drop(stream)
            if verb == "drop":
                self._unpublish(stream)
            log.info("Command %s %s: %s", verb, stream, "done" if known else "unknown stream")
            self._event(verb, ok=known, stream=stream,
                        **({} if known else {"detail": "unknown stream"}))
            return
        log.warning("Ignored the command %r on %s", truncate(text, 80), self.command_topic)
        self._event("command", ok=False, detail=f"unknown command {truncate(text, 80)!r}; "
                    "expected 'reload', 'reset STREAM' or 'drop STREAM'")

    def _unpublish(self, stream: str) -> None:
        """`drop STREAM`: remove its Home Assistant entities and its retained forecast."""
        if self.discovery is not None:
            self._retained(self.discovery.forget(stream))
        if self.config.retain_forecasts:
            topic = self.config.topic(self.config.publish, stream, self.manifest.model_id)
            self.transport.publish(topic, b"", 1, retain=True)

    def _event(self, event: str, **fields: Any) -> None:
        """Publish a non-retained event (reloads, commands) next to the status topic."""
        body = {"event": event, "model": self.manifest.model_id, **fields}
        self.transport.publish(self.events_topic, json.dumps(body).encode(), 1)

    def shutdown(self) -> None:
        log.info("Stopping: finishing the messages in hand")
        self.transport.pause()
        if self.worker.is_alive():
            try:
                self.queue.put(_STOP, timeout=30.0)
            except queue.Full:
                log.warning("The worker did not drain its queue in time")
            self.worker.join(30.0)
        self.transport.close()
        if self.metrics_server is not None:
            self.metrics_server.stop()
        log.info("Stopped")

    # -- worker --------------------------------------------------------------------------------

    def _work(self) -> None:
        """The worker loop: take what is queued (up to `max_batch`, waiting at most
        `max_delay_ms` for more after the first), process it in order — stepping the streams
        together when the graph has a dynamic batch — hand the results to paho, and
        group-commit: the states and the acknowledgements go out together once the queue runs
        dry, `commit_max` observations wait, or the oldest has waited `commit_interval` (see
        `_commit`)."""
        limit = self.config.max_batch
        proc = self.processor
        running = True
        while running:
            self._beat = time.monotonic()
            batch = self._take(limit)
            if not batch:
                self._tick(proc)
                self._maybe_checkpoint()
                self._upkeep()
                continue
            # Messages go to the processor together; a command or a model swap is run between
            # the messages before and after it.
            acks: list[tuple[int, int]] = []
            messages: list[tuple[str, bytes]] = []
            for item in batch:
                if item is _STOP:
                    running = False
                    break
                if isinstance(item, Swap):
                    self._process(proc, messages)
                    messages = []
                    self._flush(acks)
                    acks = []
                    try:
                        self._swap(item)
                    except Exception as exc:  # the old model serves on
                        log.exception("Could not put model %s in service", item.model.manifest
                                      .model_id)
                        self.metrics.reloads_failed += 1
                        self._event("reload", ok=False, source=item.source, detail=str(exc))
                    proc = self.processor
                    continue
                topic, payload, mid, qos = item
                if isinstance(topic, Command):
                    self._process(proc, messages)
                    messages = []
                    try:
                        self._command(topic.text)
                    except Exception:
                        log.exception("The command %r failed", truncate(topic.text, 80))
                else:
                    messages.append((topic, payload))
                acks.append((mid, qos))
            self._process(proc, messages)
            if len(proc.store) != self.metrics.streams:
                self._update_gauges()  # the gauge and status follow new streams at once
            self._flush(acks)
            self._tick(proc)
            if self._commit_due():
                self._commit()
            if time.monotonic() - self._last_checkpoint >= self.config.checkpoint_interval:
                self._maybe_checkpoint()
            self._upkeep()
        self._maybe_checkpoint(force=True)
        if self.recorder is not None:
            try:
                self.recorder.close()
            except OSError as exc:
                log.warning("Could not sync the record in %s (%s)", self.config.record, exc)

    def _tick(self, proc: Processor) -> None:
        """Run the grid's timer (at most every `TICK` seconds) and hand what it published to
        paho; the states it changed go out with the next commit."""
        if proc.grid is None:
            return
        now = time.monotonic()
        if now < self._next_tick:
            return
        self._next_tick = now + TICK
        proc.tick()
        if self._outbox:
            self._flush([])

    @staticmethod
    def _process(proc: Processor, messages: list[tuple[str, bytes]]) -> None:
        if not messages:
            return
        try:
            proc.handle_many(messages)
        except Exception:  # handle_many() reports its own failures; this is the last guard
            log.exception("Failed to process a batch of %d messages", len(messages))

    def _flush(self, acks: list[tuple[int, int]]) -> None:
        """Publish what the batch produced, in order, and hand its acknowledgements to the next
        commit (without a state directory there is nothing to make durable: acknowledge now)."""
        publish = self.transport.publish
        track = self.config.state_dir is not None
        refused = 0
        for topic, payload, qos, retain, props in self._outbox:
            if track and qos > 0:
                info = self.transport.publish_tracked(topic, payload, qos, retain, props)
                if info is None:
                    refused += 1
                else:
                    self._sent.append(info)
            elif not publish(topic, payload, qos, retain, props):
                refused += 1
        self._outbox.clear()
        if refused:
            self.metrics.drop("publish_refused", refused)
        if not self._pending:
            self._pending_since = time.monotonic()
        self._pending.extend(acks)
        if not track:
            self._commit()

    def _take(self, n: int) -> list[Any]:
        """Up to `n` queued messages in order (waiting for the first at most until a commit is
        due; [] if none came). While `MAX_UNCONFIRMED` publications wait for the broker, no more
        are taken: the commit that needs them is retried first (backpressure while the broker
        is away, and paho's message ids never wrap round)."""
        while len(self._sent) >= MAX_UNCONFIRMED and not self.stopping.is_set():
            if self._commit():
                break
        batch: list[Any] = []
        try:
            batch.append(self.queue.get(timeout=self._commit_wait()))
        except queue.Empty:
            return batch
        get, get_nowait = self.queue.get, self.queue.get_nowait
        delay = self.config.max_delay_ms / 1000.0
        deadline = time.monotonic() + delay
        while len(batch) < n:
            try:
                batch.append(get_nowait())
            except queue.Empty:
                left = deadline - time.monotonic() if delay else 0.0
                if left <= 0:
                    break
                try:
                    batch.append(get(timeout=left))
                except queue.Empty:
                    break
        return batch

    def _commit_wait(self) -> float:
        """How long the worker may wait for the next message before a commit is due."""
        if self._pending or self._sent:
            return max(0.0, self._pending_since + self.config.commit_interval - time.monotonic())
        if self.processor.store.dirty:
            return max(0.0, self._last_checkpoint + self.config.checkpoint_interval
                       - time.monotonic())
        return TICK if self.processor.grid is not None else 1.0

    def _commit_due(self) -> bool:
        return bool(self._pending) and (
            self.queue.empty()
            or len(self._pending) >= self.config.commit_max
            or time.monotonic() - self._pending_since >= self.config.commit_interval
        )

    def _commit(self, final: bool = False) -> bool:
        """Group commit. In this order: (1) wait until the broker has acknowledged every
        prediction and error published since the last commit, (2) make the states durable (one
        journal append), (3) acknowledge the observations that produced them. A crash before (2)
        redelivers the observations and they are stepped again from the committed state, giving
        the same predictions; a crash after (2) redelivers observations whose `ts` the state
        already holds, which are dropped as duplicates and never stepped twice. Returns False
        (nothing acknowledged, retried later) while the broker has not confirmed or the write
        failed."""
        cfg = self.config
        if cfg.state_dir is not None:
            if not self._confirm(10.0 if final else 0.5):
                if final:
                    log.warning("The broker did not confirm the last predictions; their "
                                "observations stay unacknowledged and will be redelivered")
                return False
            store = self.processor.store
            store.evict()
            try:
                if store.commit(cfg.state_dir, snapshot=final):
                    self.metrics.checkpoints += 1
            except OSError as exc:
                log.warning("Could not commit the state to %s (%s); observations stay "
                            "unacknowledged", cfg.state_dir, exc)
                return False
        connection = self.transport.connects
        ack = self.transport.ack
        for tagged, qos in self._pending:
            if qos == 0:
                continue
            if tagged >> 16 == connection:  # older connections' ids may have been reused
                ack(tagged & 0xFFFF, qos)
        self._pending.clear()
        return True

    def _confirm(self, timeout: float) -> bool:
        """Wait (up to `timeout`) until the broker has acknowledged every tracked publication."""
        deadline = time.monotonic() + timeout
        sent = self._sent
        while sent:
            if not self.transport.delivered(sent[0], min(0.05, timeout)):
                if time.monotonic() >= deadline:
                    return False
                continue
            # broker acknowledgements come in order: skip what is already confirmed
            i = 1
            while i < len(sent) and self.transport.delivered(sent[i], 0.0):
                i += 1
            del sent[:i]
        return True

    def _update_gauges(self) -> None:
        store = self.processor.store
        self.metrics.streams = len(store)
        self.metrics.warming = store.warming() if store.lookback is not None else 0
        counts = (self.metrics.streams, self.metrics.warming)
        if (
            counts != self._status_counts
            and self.transport.connected.is_set()
            and not self.stopping.is_set()
        ):
            self._status_counts = counts
            self.transport.publish(
                self.status_topic, self._status("online", *counts), 1, retain=True
            )

    def _maybe_checkpoint(self, force: bool = False) -> None:
        """Idle-time upkeep: commit what is pending, evict idle streams, update the gauges. State
        is written only through `_commit`, after the broker confirmed its predictions."""
        store = self.processor.store
        if self._pending or self._sent or store.dirty or force or store.ttl:
            self._commit(final=force)
        if self.config.state_dir is None:
            store.evict()
        self._update_gauges()
        self._last_checkpoint = time.monotonic()

