"""Recording: accepted observations appended to one CSV file per UTC day, to train on later.

`Recorder` writes the files; it knows nothing of MQTT. `statecast-edge --record DIR` calls
`append_one` for every observation it accepts and `sync` from its worker at most once a second.
`statecast-record` runs it without a model behind the daemon's own pieces: its transport
(persistent session, TLS, credentials, reconnects), `StreamRouter` and `Decoder`, so it accepts
and rejects exactly what the daemon does.

Files: ``DIR/YYYY-MM-DD.csv`` (the observation's UTC date) with the columns
``ts,stream,<features>``; ``ts`` is the observation's time in UTC, ISO 8601 without an offset
(naive times are UTC everywhere in statecast), to the millisecond, so one file has one format.
`statecast-train --data DIR --time-col ts --series-col stream` reads the directory.

Crash reasoning (`statecast-record`): rows are written, then flushed and fsync'd, then the QoS 1
messages that produced them are acknowledged — when the queue runs dry, after 1,000 rows, or
after a second at the latest. A crash before the fsync loses at most that second of rows, and
the broker delivers those messages again to the next session (same client id, no clean start),
so nothing acknowledged is lost. A crash between the fsync and the acknowledgements also gets
those messages again; the restarted recorder has read each stream's latest time back from the
end of its newest files, so they are dropped as duplicates (reported, as the daemon reports
duplicates) and not written twice. A kill in the middle of a write leaves a torn last line: it
is cut when the file is opened again, so a restart appends whole rows after whole rows, and the
header is written only into a new file.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import logging
import math
import os
import queue
import signal
import socket
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from types import FrameType
from typing import IO, Any

from edge.codec import (
    UNKNOWN_STREAM,
    Decoder,
    Observation,
    PayloadError,
    StreamRouter,
    epoch,
    error_payload,
    truncate,
)
from edge.config import EdgeConfig, read_toml
from edge.errors import EdgeError
from edge.metrics import LogLimiter, Metrics

log = logging.getLogger(__name__)

OPEN_DAYS = 4  # files kept open at once
TAIL_BYTES = 1 << 20  # read back at start: far more than the rows a crash leaves unacknowledged
SYNC_INTERVAL = 1.0  # seconds: the most rows a crash can lose
COMMIT_ROWS = 1000  # ... or this many rows, whichever comes first (statecast-record)
LOG_EVERY = 60.0
_STOP = object()


def _csv_field(text: str) -> str:
    """`text` as one CSV field, quoted as the csv module quotes it."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="").writerow([text])
    return buf.getvalue()


class Recorder:
    """Appends observations to ``DIR/YYYY-MM-DD.csv``; see the module docstring."""

    def __init__(
        self, directory: str | Path, features: Sequence[str], *, fsync: bool = True,
        interval: float = SYNC_INTERVAL,
    ) -> None:
        self.directory = Path(directory)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise EdgeError(f"cannot create the record directory {directory} ({exc})") from None
        self.features = tuple(features)
        self.header = ["ts", "stream", *self.features]
        self.fsync = fsync
        self.interval = interval
        self.rows = 0
        # the open days, most recent last: a sensor whose clock is a day off, or rows around
        # midnight, do not reopen (and sync) a file per row
        self._open_days: OrderedDict[str, tuple[IO[str], Any]] = OrderedDict()
        self._day: str | None = None
        self._writer: Any = None
        self._fh: IO[str] | None = None
        self._dirty: set[str] = set()
        self._stamps: dict[float, tuple[str, str]] = {}  # epoch seconds -> (day, ISO text)
        self._fields: dict[str, str] = {}  # stream id -> its CSV field (quoted when it must be)
        self._last_sync = time.monotonic()

    def append_one(self, stream: str, obs: Observation) -> None:
        """Write one row (buffered; `sync` makes it durable)."""
        stamp = self._stamps.get(obs.t)  # a fleet's streams share their timestamps
        if stamp is None:
            ts = obs.ts
            if ts.tzinfo is not None:
                ts = ts.astimezone(timezone.utc).replace(tzinfo=None)
            stamp = (f"{ts.year:04d}-{ts.month:02d}-{ts.day:02d}",
                     ts.isoformat(timespec="milliseconds"))
            if len(self._stamps) >= 4096:
                self._stamps.clear()
            self._stamps[obs.t] = stamp
        day, text = stamp
        if day != self._day:
            self._use(day)
        field = self._fields.get(stream)
        if field is None:
            field = self._fields[stream] = _csv_field(stream)
            if len(self._fields) > 100_000:
                self._fields.clear()
        assert self._fh is not None
        self._fh.write(f"{text},{field},{','.join([str(v) for v in obs.values])}\n")
        self._dirty.add(day)
        self.rows += 1

    def sync(self, force: bool = False) -> bool:
        """Flush and fsync what was written, if anything was and (unless `force`) the last sync
        is `interval` old. True if it synced. Raises OSError when the disk refuses."""
        if not self._dirty:
            return False
        now = time.monotonic()
        if not force and now - self._last_sync < self.interval:
            return False
        for day in sorted(self._dirty):
            fh = self._open_days[day][0]
            fh.flush()
            if self.fsync:
                os.fsync(fh.fileno())
        self._dirty.clear()
        self._last_sync = now
        return True

    def close(self) -> None:
        """Sync and close every open file."""
        try:
            self.sync(force=True)
        finally:
            for fh, _ in self._open_days.values():
                fh.close()
            self._open_days.clear()
            self._day = None
            self._fh = self._writer = None

    def path(self, day: str) -> Path:
        return self.directory / f"{day}.csv"

    def last_times(self, tail_bytes: int = TAIL_BYTES) -> dict[str, float]:
        """The latest time (epoch seconds) of each stream in the last rows of the most recently
        written files: what a restarted recorder needs to drop the messages the broker delivers
        again (rows written, fsync'd, not yet acknowledged)."""
        files = sorted(self.directory.glob("*.csv"), key=lambda f: f.stat().st_mtime)
        last: dict[str, float] = {}
        for path in files[-OPEN_DAYS:]:
            with open(path, "rb") as fh:
                size = fh.seek(0, os.SEEK_END)
                start = max(0, size - tail_bytes)
                fh.seek(max(0, start - 1))  # from the byte before: is `start` a line start?
                data = fh.read()
            lines = data.decode("utf-8", "replace").split("\n")
            if start > 0:
                lines = lines[1:]  # the part of a line before `start` (or nothing)
            for row in csv.reader(lines[:-1]):  # the last is empty or torn
                if len(row) != len(self.header) or row[:2] == ["ts", "stream"]:
                    continue
                try:
                    t = epoch(datetime.fromisoformat(row[0]))
                except ValueError:
                    continue
                if t > last.get(row[1], -math.inf):
                    last[row[1]] = t
        return last

    def _use(self, day: str) -> None:
        """Make `day`'s file the one rows go to, opening it (at most OPEN_DAYS stay open)."""
        entry = self._open_days.get(day)
        if entry is None:
            if len(self._open_days) >= OPEN_DAYS:
                old, (fh, _) = next(iter(self._open_days.items()))
                if old in self._dirty:
                    fh.flush()
                    if self.fsync:
                        os.fsync(fh.fileno())
                    self._dirty.discard(old)
                fh.close()
                del self._open_days[old]
            entry = self._open(day)
            self._open_days[day] = entry
        else:
            self._open_days.move_to_end(day)
        self._day = day
        self._fh, self._writer = entry

    def _open(self, day: str) -> tuple[IO[str], Any]:
        """Open `day`'s file for appending: cut a torn tail, check the header (or write it into
        a new file)."""
        path = self.path(day)
        fresh = _cut_torn_tail(path)
        fh = open(path, "a", encoding="utf-8", newline="")  # noqa: SIM115 - kept open
        writer = csv.writer(fh, lineterminator="\n")
        if fresh:
            writer.writerow(self.header)
            self._dirty.add(day)
        else:
            with open(path, encoding="utf-8", newline="") as rd:
                first = next(csv.reader(rd), [])
            if first != self.header:
                fh.close()
                raise EdgeError(
                    f"{path} has the columns {','.join(first)}, not {','.join(self.header)}; "
                    "record these features into another directory"
                )
        log.info("Recording to %s", path)
        return fh, writer


def _cut_torn_tail(path: Path) -> bool:
    """Cut a last line without its newline (a write torn by a crash); True if the file is new
    or empty afterwards."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return True
    if size == 0:
        return True
    with open(path, "r+b") as fh:
        fh.seek(size - 1)
        if fh.read(1) == b"\n":
            return False
        pos = size
        keep = 0
        while pos > 0:
            start = max(0, pos - 65536)
            fh.seek(start)
            chunk = fh.read(pos - start)
            i = chunk.rfind(b"\n")
            if i >= 0:
                keep = start + i + 1
                break
            pos = start
        log.warning("Cut a torn last line of %d bytes from %s", size - keep, path)
        fh.truncate(keep)
        fh.flush()
        os.fsync(fh.fileno())
    return keep == 0


# ---------------------------------------------------------------------------------------------
# statecast-record


class RecordService:
    """Subscribe like the daemon and record what it would accept; no model.

    Threads as in the daemon: paho's network thread only enqueues, one worker decodes, writes,
    syncs and acknowledges (see the module docstring for the order)."""

    def __init__(self, config: EdgeConfig, features: Sequence[str]) -> None:
        from edge.transport import Transport  # paho, only when a service is made

        if config.record is None:
            raise EdgeError("no record directory given; pass --out DIR")
        self.config = config
        self.features = tuple(features)
        self.recorder = Recorder(config.record, self.features, fsync=config.fsync)
        self.decoder = Decoder(self.features, config.field_map, config.max_payload,
                               stream_field=config.stream_field, ts_field=config.ts_field,
                               arrival=config.ts == "arrival")
        self.router = StreamRouter(config.subscribe, config.stream_level)
        self.metrics = Metrics("record")
        self.queue: queue.Queue[Any] = queue.Queue()
        self.fatal: str | None = None
        self.stopping = threading.Event()
        self.status_topic = config.status.format(client_id=config.client_id, model="",
                                                 stream="")
        self.transport = Transport(
            config, self.enqueue, status_topic=self.status_topic,
            online=lambda: self._status("online"), offline=self._status("offline"),
            metrics=self.metrics, on_fatal=self._on_fatal,
        )
        self.worker = threading.Thread(target=self._work, name="statecast-record-worker",
                                       daemon=True)
        # the last time of each stream, for the duplicate check: after a restart, from the
        # newest rows on disk, so a message written but not acknowledged before a crash (and
        # delivered again) is not written twice
        self._last_t: dict[str, float] = self.recorder.last_times()
        self._log_limit = LogLimiter(LOG_EVERY)
        self._acks: list[tuple[int, int]] = []
        self._since = time.monotonic()

    def _status(self, status: str) -> bytes:
        return json.dumps({"status": status, "client_id": self.config.client_id,
                           "subscribe": list(self.config.subscribe), "record": self.config.record,
                           "features": list(self.features)}).encode()

    def _on_fatal(self, why: str) -> None:
        self.fatal = why
        self.stopping.set()

    def enqueue(self, topic: str, payload: bytes, mid: int, qos: int) -> None:
        """paho's network thread: hand over, never wait (as `Service.enqueue`)."""
        if qos == 0 and self.queue.qsize() >= self.config.queue_size:
            self.metrics.drop("queue_full")
            return
        self.queue.put((topic, payload, mid | (self.transport.connects << 16), qos))

    def handle_one(self, topic: str, payload: bytes) -> bool:
        """Decode and write one message; a bad one is reported. True if a row was written."""
        self.metrics.messages_in += 1
        if topic == self.transport.command_topic:
            return False
        stream = UNKNOWN_STREAM
        try:
            if self.config.stream_field is None:
                stream = self.router.stream(topic)
            obs = self.decoder.decode(payload)
            if obs.stream is not None:
                stream = obs.stream
            last = self._last_t.get(stream)
            if last is not None and obs.t <= last and self.config.late == "drop":
                reason = "duplicate" if obs.t == last else "out_of_order"
                raise PayloadError(reason, f"timestamp {obs.ts_raw!r} is not later than the last")
            self.recorder.append_one(stream, obs)
            if len(self._last_t) >= self.config.max_streams:
                self._last_t.clear()  # duplicates are only a convenience to catch here
            self._last_t[stream] = max(obs.t, last) if last is not None else obs.t
            return True
        except PayloadError as exc:
            self._report(stream, exc.reason, exc.detail, topic, payload)
        except OSError:
            raise  # the disk: nothing is acknowledged, the worker ends, the process restarts
        except Exception as exc:
            log.exception("Unexpected failure on %s (payload %r)", topic, truncate(payload))
            self._report(stream, "internal", f"{type(exc).__name__}: {exc}", topic, payload)
        return False

    def _report(self, stream: str, reason: str, detail: str, topic: str, payload: bytes) -> None:
        self.metrics.drop(reason)
        body = error_payload(stream, reason, detail, payload, topic, None)
        if self.transport.publish(self.config.topic(self.config.errors, stream, ""), body,
                                  self.config.qos):
            self.metrics.errors_out += 1
        if self._log_limit.due(stream):
            log.warning("Dropped a message on %s (stream %s, %s): %s; payload %r (further "
                        "problems on this stream are logged at most once a minute)",
                        topic, stream, reason, detail, truncate(payload, 120))

    def _commit(self) -> bool:
        """fsync, then acknowledge what the synced rows came from (this connection's only)."""
        try:
            self.recorder.sync(force=True)
        except OSError as exc:
            log.warning("Could not sync the record to %s (%s); messages stay unacknowledged",
                        self.config.record, exc)
            return False
        connection = self.transport.connects
        for tagged, qos in self._acks:
            if qos and tagged >> 16 == connection:
                self.transport.ack(tagged & 0xFFFF, qos)
        self._acks.clear()
        return True

    def _work(self) -> None:
        """The worker: decode and write; at QoS 1 fsync and acknowledge when the queue runs dry,
        after COMMIT_ROWS rows or SYNC_INTERVAL, whichever comes first. A disk that refuses a
        write ends it (nothing unwritten is acknowledged) and the recorder exits 1."""
        try:
            self._work_loop()
        except OSError as exc:
            log.error("Could not write the record to %s (%s); stopping", self.config.record, exc)

    def _work_loop(self) -> None:
        running = True
        while running:
            wait = SYNC_INTERVAL
            if self._acks:
                wait = max(0.0, self._since + SYNC_INTERVAL - time.monotonic())
            try:
                item = self.queue.get(timeout=wait)
            except queue.Empty:
                item = None
            while item is not None:
                if item is _STOP:
                    running = False
                    break
                topic, payload, mid, qos = item
                self.handle_one(topic, payload)
                if not self._acks:
                    self._since = time.monotonic()
                self._acks.append((mid, qos))
                if len(self._acks) >= COMMIT_ROWS:
                    break
                try:
                    item = self.queue.get_nowait()
                except queue.Empty:
                    item = None
            if any(qos for _, qos in self._acks):
                self._commit()  # QoS 1: fsync now, then acknowledge
            else:
                self._acks.clear()  # QoS 0: nothing to acknowledge; sync once a second
                try:
                    self.recorder.sync()
                except OSError as exc:
                    log.warning("Could not sync the record to %s (%s)", self.config.record, exc)
        self._commit()
        self.recorder.close()

    def run(self) -> int:
        self.worker.start()
        self.transport.start()
        status = 0
        while not self.stopping.wait(0.5):
            if not self.worker.is_alive() or not self.transport.alive():
                log.error("The %s thread died; stopping with exit status 1",
                          "worker" if not self.worker.is_alive() else "MQTT")
                status = 1
                break
        log.info("Stopping: writing the rows in hand")
        self.transport.pause()
        if self.worker.is_alive():
            self.queue.put(_STOP)
            self.worker.join(30.0)
        self.transport.close()
        log.info("Stopped after %d rows", self.recorder.rows)
        return 3 if self.fatal is not None else status

    def stop(self) -> None:
        self.stopping.set()


def record_client_id(subscribe: Sequence[str]) -> str:
    """`statecast-record-HOST-XXXXXXXX`: stable across restarts (the persistent session is found
    again) and never the daemon's, which reads the same topics."""
    host = "".join(c if c.isalnum() or c in "-_." else "-" for c in socket.gethostname())
    digest = hashlib.sha1("\n".join(subscribe).encode()).hexdigest()[:8]
    return f"statecast-record-{host[:40] or 'host'}-{digest}"


EPILOG = """\
examples:
  statecast-record --broker mqtt://localhost:1883 --subscribe 'sensors/+/temp' \\
      --features temp --out record/
  statecast-record --config /etc/statecast/edge.toml --out /var/lib/statecast/record
  statecast-train --data record/ --time-col ts --series-col stream --target temp --out runs/t

Writes DIR/YYYY-MM-DD.csv (UTC days) with the columns ts,stream,<features>, appending after a
restart. The features come from --features, or from the manifest of --model (or of the config
file's model). The stream id, payloads, field_map and the rejection of bad input are those of
statecast-edge; rejected messages go to the error topic. With QoS 1 (the default) a message is
acknowledged only after its row is on disk, so what the broker kept while the recorder was down
is recorded when it is back.
Exit status: 0 after SIGTERM/SIGINT, 2 bad arguments or config, 3 the broker refused the
credentials or the TLS handshake, 1 an internal failure.
"""


def build_parser() -> argparse.ArgumentParser:
    from edge.cli import _Parser, add_connection_flags

    p = _Parser(
        prog="statecast-record",
        description="Record the sensor observations statecast-edge would accept to one CSV "
        "file per day, for statecast-train.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", metavar="DIR", help="directory of the daily CSV files")
    p.add_argument("--features", metavar="A,B", help="the payload fields to record, in order")
    p.add_argument("--model", metavar="FILE.onnx", help="take the features from this model's "
                   "manifest instead")
    add_connection_flags(p, publish=False)
    p.add_argument("--no-fsync", dest="fsync", action="store_const", const=False,
                   help="do not fsync: survives a crash of the recorder, not a power cut")
    return p


RECORD_KEYS = (
    "broker", "subscribe", "errors", "client_id", "qos", "mqtt_version", "username",
    "password_file", "ca_file", "cert_file", "key_file", "tls_insecure", "stream_level",
    "stream_field", "max_payload", "late", "log_level", "fsync", "model", "ts_field", "ts",
)
# settings of the daemon's config file that the recorder reads
SHARED_KEYS = (*RECORD_KEYS, "status", "commands", "field_map", "keepalive", "session_expiry",
               "queue_size", "max_streams", "reconnect_min", "reconnect_max")


def config_from_args(args: argparse.Namespace) -> tuple[EdgeConfig, tuple[str, ...]]:
    """The recorder's settings and features from flags and (optionally) the daemon's config."""
    file: dict[str, Any] = read_toml(args.config) if args.config else {}
    settings = {k: v for k, v in file.items() if k in SHARED_KEYS}
    if "client_id" in settings:  # the daemon's session is not ours
        settings["client_id"] = f"{settings['client_id']}-record"
    for key in RECORD_KEYS:
        value = getattr(args, key, None)
        if value is not None:
            settings[key] = tuple(value) if key == "subscribe" else value
    if not args.out:
        raise EdgeError("no record directory given; pass --out DIR")
    settings["record"] = args.out
    if args.features:
        features = tuple(f.strip() for f in args.features.split(",") if f.strip())
        if not features:
            raise EdgeError("--features needs one or more comma-separated names")
    elif settings.get("model"):
        from edge.model import StepModel

        features = StepModel(settings["model"]).manifest.features
    else:
        raise EdgeError("no features given; pass --features A,B or --model FILE.onnx")
    if "client_id" not in settings and settings.get("subscribe"):
        sub = settings["subscribe"]
        settings["client_id"] = record_client_id((sub,) if isinstance(sub, str) else sub)
    config = EdgeConfig.build(settings)
    missing = [k for k in config.field_map if k not in features and k != "ts"]
    if missing:
        raise EdgeError(f"field_map names {missing[0]!r}, which is not a recorded feature")
    return config, features


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level or "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    try:
        config, features = config_from_args(args)
        logging.getLogger().setLevel(config.log_level.upper())
        service = RecordService(config, features)
    except EdgeError as exc:
        text = " ".join(str(exc).split())
        parser.exit(2, f"statecast-record: error: {text if text.endswith('.') else text + '.'}\n")

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("Received %s", signal.Signals(signum).name)
        service.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info("Recording %s from %s (%s) as %s into %s", ",".join(features), config.broker_url,
             " ".join(config.subscribe), config.client_id, config.record)
    status = service.run()
    if service.fatal is not None:
        print(f"statecast-record: error: {service.fatal}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
