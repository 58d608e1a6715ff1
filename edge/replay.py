"""`statecast-replay`: publish a recorded series as sensor messages, for demos, tests and benches.

Rows of a CSV (stdlib `csv`, no pandas) become `{"ts": ISO-8601, "<feature>": number, ...}` on
TOPIC with `{stream}` filled from the series column (or `--stream`). QoS 1 with a bounded window of
unacknowledged messages, so nothing is lost and the broker is never flooded.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import socket
import sys
import time
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge.config import PASSWORD_ENV, BrokerURL
from edge.errors import EdgeError

log = logging.getLogger(__name__)

TIME_FORMATS = (
    "%Y/%m/%d %H:%M:%S", "%Y/%m/%d %H:%M", "%Y/%m/%d", "%d.%m.%Y %H:%M:%S", "%d.%m.%Y %H:%M",
    "%m/%d/%Y %H:%M:%S", "%m/%d/%Y %H:%M", "%m/%d/%Y",
)

EPILOG = """\
examples:
  statecast-replay --data examples/data/seattle-temps.csv --time-col date \\
      --broker mqtt://localhost:1883 --topic 'sensors/{stream}/temp' --stream seattle
  statecast-replay --data obs.csv --time-col ts --series-col station --features temp hum \\
      --broker mqtt://localhost:1883 --topic 'sensors/{stream}/obs' --speed 3600
  statecast-replay --data examples/data/seattle-temps.csv --time-col date --skip 7000 \\
      --broker mqtt://localhost:1883 --topic 'sensors/seattle/temp' --rate 50
  statecast-replay --data held-out.csv --time-col date --broker mqtt://localhost:1883 \\
      --topic 'sensors/{stream}/temp' --forecasts 'forecasts/{stream}' --season 24

With --forecasts, the daemon's forecasts for the replayed rows are collected and the run ends
with a summary per horizon step: MAE and RMSE, interval coverage and mean width, and the MAE of
persistence and seasonal naive on the same actuals.
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="statecast-replay",
        description="Publish a recorded series (CSV) as statecast sensor messages.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = p.add_argument
    add("--data", required=True, metavar="FILE.csv", help="recorded series")
    add("--time-col", required=True, metavar="C", help="timestamp column")
    add("--broker", required=True, metavar="URL", help="mqtt://HOST:PORT or mqtts://HOST:PORT")
    add("--topic", required=True, metavar="TEMPLATE", help="topic, {stream} is filled in")
    add("--series-col", metavar="C", help="column holding the stream id")
    add("--stream", default="default", metavar="NAME", help="stream id without --series-col")
    add("--features", nargs="+", metavar="NAME",
        help="columns to send (default: every column but time and series)")
    add("--rename", nargs="+", default=[], metavar="COL=KEY", help="send column COL as KEY")
    pace = p.add_mutually_exclusive_group()
    pace.add_argument("--rate", type=float, metavar="R", help="messages per second")
    pace.add_argument("--speed", type=float, metavar="X",
                      help="X times the recorded pace (3600: one hour per second)")
    add("--skip", type=int, default=0, metavar="N", help="skip the first N rows")
    add("--count", type=int, metavar="N", help="send at most N rows")
    add("--time-format", metavar="FMT", help="strptime format of the time column "
        "(default: ISO 8601 or a common format, detected)")
    add("--ts-format", choices=("iso", "epoch", "epoch_ms"), default="iso",
        help="how to send timestamps (default iso)")
    add("--qos", type=int, choices=(0, 1), default=1)
    add("--window", type=int, default=100, metavar="N", help="unacknowledged messages at most")
    add("--client-id", default="", metavar="ID")
    add("--username")
    add("--password-file", metavar="FILE", help=f"or set ${PASSWORD_ENV}")
    add("--ca-file", "--tls-ca", dest="tls_ca", metavar="FILE", help="CA of the broker (mqtts://)")
    add("--quiet", action="store_true", help="no summary line")
    add("--forecasts", metavar="TEMPLATE", help="the daemon's forecast topic ({stream} "
        "becomes +): collect the forecasts and end with a score summary")
    add("--target", metavar="KEY", help="the forecast target among the sent keys (default the "
        "first)")
    add("--season", type=int, metavar="N", help="season in rows for the seasonal-naive column")
    add("--wait", type=float, default=30.0, metavar="S", help="with --forecasts, wait at most S "
        "seconds for the last forecasts (default 30)")
    add("--summary-json", metavar="FILE", help="also write the summary as JSON")
    return p


def _epoch(value: Any) -> float:
    """Epoch seconds of a payload time: ISO 8601 (naive read as UTC) or epoch s/ms."""
    if isinstance(value, (int, float)):
        return float(value) / 1000 if value > 1e11 else float(value)
    ts = datetime.fromisoformat(str(value))
    return (ts if ts.tzinfo is not None else ts.replace(tzinfo=timezone.utc)).timestamp()


class Scoreboard:
    """The replayed actuals and the daemon's forecasts; `summary()` scores every forecast whose
    target time was replayed, per horizon step, beside persistence and seasonal naive."""

    def __init__(self, target: str | None, season: int | None) -> None:
        self.target = target
        self.season = season
        self.actual: dict[str, dict[float, float]] = {}
        self.order: dict[str, list[float]] = {}
        self.forecasts: list[tuple[str, float, list[Any], dict[str, Any], list[Any]]] = []

    def sent(self, stream: str, ts: datetime, values: dict[str, Any]) -> None:
        key = self.target or next(iter(values))
        v = values.get(key)
        if isinstance(v, (int, float)):
            t = _epoch(encode_ts(ts, "iso"))
            self.actual.setdefault(stream, {})[t] = float(v)
            self.order.setdefault(stream, []).append(t)

    def received(self, payload: bytes) -> None:
        try:
            doc = json.loads(payload)
            self.forecasts.append((str(doc["stream"]), _epoch(doc["ts"]), doc["forecast"],
                                   doc.get("intervals") or {}, doc.get("at") or []))
        except (ValueError, KeyError, TypeError):
            pass

    def summary(self) -> dict[str, Any]:
        rows: dict[int, dict[str, list[float]]] = {}
        for stream, t0, fc, intervals, at in self.forecasts:
            actual = self.actual.get(stream, {})
            times = self.order.get(stream, [])
            period = (times[1] - times[0]) if len(times) > 1 else None
            now = actual.get(t0)
            for h, (f, when) in enumerate(zip(fc, at, strict=False)):
                if not isinstance(f, (int, float)):
                    continue  # classifiers and several targets are not summarised here
                y = actual.get(_epoch(when))
                if y is None:
                    continue
                r = rows.setdefault(h, {})
                r.setdefault("err", []).append(f - y)
                if now is not None:
                    r.setdefault("persistence", []).append(now - y)
                if self.season and period:
                    back = self.season * math.ceil((h + 1) / self.season)
                    old = actual.get(_epoch(when) - back * period)
                    if old is not None:
                        r.setdefault("seasonal", []).append(old - y)
                for c, bounds in intervals.items():
                    lo, hi = bounds[h]
                    r.setdefault(f"cov {c}", []).append(float(lo <= y <= hi))
                    r.setdefault(f"width {c}", []).append(float(hi - lo))
        out: dict[str, Any] = {"horizon": []}
        for h in sorted(rows):
            r = rows[h]
            e = r["err"]
            step: dict[str, Any] = {
                "h": h + 1, "n": len(e), "mae": sum(map(abs, e)) / len(e),
                "rmse": math.sqrt(sum(x * x for x in e) / len(e)),
            }
            for name in ("persistence", "seasonal"):
                if r.get(name):
                    step[f"{name}_mae"] = sum(map(abs, r[name])) / len(r[name])
            for key, vals in r.items():
                if key.startswith(("cov ", "width ")):
                    kind, c = key.split(" ")
                    step.setdefault("coverage" if kind == "cov" else "width", {})[c] = \
                        sum(vals) / len(vals)
            out["horizon"].append(step)
        return out


def summary_lines(summary: dict[str, Any]) -> list[str]:
    steps = summary["horizon"]
    if not steps:
        return ["no forecasts for the replayed rows were received"]
    covs = sorted(steps[0].get("coverage", {}), key=float)
    head = f"{'h':>3} {'n':>6} {'MAE':>8} {'RMSE':>8} {'persist.':>8} {'seasonal':>8}"
    head += "".join(f" {'cov ' + c:>8} {'width ' + c:>10}" for c in covs)
    lines = ["score of the daemon's forecasts over the replayed rows (MAE of the baselines "
             "on the same actuals):", head]
    for st in steps:
        def num(v: Any, w: int) -> str:
            return f"{v:>{w}.3f}" if isinstance(v, float) else f"{'n/a':>{w}}"
        row = (f"{st['h']:>3} {st['n']:>6} {num(st['mae'], 8)} {num(st['rmse'], 8)} "
               f"{num(st.get('persistence_mae'), 8)} {num(st.get('seasonal_mae'), 8)}")
        for c in covs:
            row += f" {num(st['coverage'].get(c), 8)} {num(st['width'].get(c), 10)}"
        lines.append(row)
    return lines


class TimeParser:
    def __init__(self, fmt: str | None) -> None:
        self.fmt = fmt
        self._detected: str | None = None

    def __call__(self, text: str) -> datetime:
        text = text.strip()
        if self.fmt:
            return datetime.strptime(text, self.fmt)
        if self._detected is not None:
            try:
                return datetime.strptime(text, self._detected)
            except ValueError:
                pass
        try:
            return datetime.fromisoformat(text)
        except ValueError:
            pass
        try:
            value = float(text)
            if math.isfinite(value):
                return datetime.fromtimestamp(value / 1000 if value > 1e11 else value, timezone.utc)
        except (ValueError, OverflowError, OSError):
            pass
        for fmt in TIME_FORMATS:
            try:
                ts = datetime.strptime(text, fmt)
            except ValueError:
                continue
            self._detected = fmt
            return ts
        raise ValueError(f"cannot read the time {text!r}; pass --time-format")


def rows(args: argparse.Namespace) -> Iterator[tuple[str, datetime, dict[str, Any]]]:
    """(stream, ts, {key: value}) per selected row."""
    path = Path(args.data)
    if not path.is_file():
        raise EdgeError(f"data file {path} does not exist")
    parse_time = TimeParser(args.time_format)
    renames = {}
    for item in args.rename:
        col, sep, key = item.partition("=")
        if not sep or not col or not key:
            raise EdgeError(f"--rename {item!r} is not COL=KEY")
        renames[col] = key
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        for col in [args.time_col, args.series_col, *(args.features or [])]:
            if col is not None and col not in header:
                raise EdgeError(f"column {col!r} is not in {path} (it has {', '.join(header)})")
        features = args.features or [
            c for c in header if c not in (args.time_col, args.series_col)
        ]
        keys = [renames.get(c, c) for c in features]
        sent = 0
        for i, row in enumerate(reader):
            if i < args.skip:
                continue
            if args.count is not None and sent >= args.count:
                break
            try:
                ts = parse_time(row[args.time_col])
            except ValueError as exc:
                raise EdgeError(f"row {i + 2} of {path}: {exc}") from None
            values: dict[str, Any] = {}
            for col, key in zip(features, keys, strict=True):
                values[key] = _number(row[col])
            stream = row[args.series_col] if args.series_col else args.stream
            sent += 1
            yield stream, ts, values


def _number(text: str | None) -> Any:
    if text is None or text.strip() == "":
        return None
    try:
        value = float(text)
    except ValueError:
        return text
    return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() \
        else value


def encode_ts(ts: datetime, how: str) -> Any:
    if how == "iso":
        return ts.isoformat()
    aware = ts if ts.tzinfo is not None else ts.replace(tzinfo=timezone.utc)
    return aware.timestamp() if how == "epoch" else round(aware.timestamp() * 1000)


class Publisher:
    """A single-threaded paho client with a bounded window of unacknowledged QoS 1 messages.

    No network thread: `publish` writes to the socket directly and the acknowledgements are read
    here whenever the window is full (or every few messages), which avoids GIL hand-offs.
    """

    POLL_EVERY = 32

    def __init__(self, args: argparse.Namespace) -> None:
        self.url = BrokerURL.parse(args.broker)
        self.qos = args.qos
        self.window = max(1, args.window)
        self.outstanding = 0
        self.connected = False
        self.failed: str | None = None
        self._since_poll = 0
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=args.client_id, protocol=mqtt.MQTTv311
        )
        client.max_inflight_messages_set(self.window)
        client.max_queued_messages_set(0)
        username = args.username or self.url.username
        if username:
            password = None
            if args.password_file:
                lines = Path(args.password_file).read_text(encoding="utf-8").splitlines()
                password = lines[0] if lines else ""
            else:
                password = os.environ.get(PASSWORD_ENV)
            client.username_pw_set(username, password)
        if self.url.tls or args.tls_ca:
            client.tls_set(ca_certs=args.tls_ca)
        client.on_connect = self._on_connect
        client.on_publish = self._on_publish
        self.subscribe: str | None = None
        self.on_forecast: Any = None
        client.on_message = lambda _c, _u, msg: self.on_forecast and self.on_forecast(
            msg.payload)
        self.client = client

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            self.failed = str(reason)
            return
        sock = client.socket()
        if isinstance(sock, socket.socket):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.subscribe:
            client.subscribe(self.subscribe, qos=1)
        self.connected = True

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        if self.qos > 0:
            self.outstanding -= 1

    def _loop(self, timeout: float) -> None:
        rc = self.client.loop(timeout)
        if rc != mqtt.MQTT_ERR_SUCCESS:
            raise ConnectionError(f"lost the connection to {self.url} ({mqtt.error_string(rc)})")

    def connect(self, timeout: float = 10.0) -> None:
        try:
            self.client.connect(self.url.host, self.url.port, keepalive=30)
        except OSError as exc:
            raise ConnectionError(f"cannot reach {self.url} ({exc})") from None
        deadline = time.monotonic() + timeout
        while not self.connected and not self.failed and time.monotonic() < deadline:
            self._loop(0.1)
        if not self.connected:
            raise ConnectionError(f"{self.url} did not accept the connection ({self.failed})")

    def publish(self, topic: str, payload: bytes) -> None:
        while self.qos > 0 and self.outstanding >= self.window:
            self._loop(1.0)
        info = self.client.publish(topic, payload, qos=self.qos)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise ConnectionError(f"publishing failed ({mqtt.error_string(info.rc)})")
        if self.qos > 0:
            self.outstanding += 1
        self._since_poll += 1
        if self._since_poll >= self.POLL_EVERY:
            self._since_poll = 0
            self._loop(0.0)

    def pump(self, seconds: float) -> None:
        """Run the network loop for `seconds` (acknowledgements, collected forecasts)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self._loop(0.05)

    def close(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self.outstanding > 0 and time.monotonic() < deadline:
            self._loop(0.1)
        self.client.disconnect()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.window < 1 or args.skip < 0 or (args.count is not None and args.count < 0):
        parser.error("--window must be at least 1 and --skip/--count not negative")
    if (args.rate is not None and args.rate <= 0) or (args.speed is not None and args.speed <= 0):
        parser.error("--rate and --speed must be positive")
    try:
        BrokerURL.parse(args.broker)
        if "+" in args.topic or "#" in args.topic:
            raise EdgeError(f"topic {args.topic!r} contains a wildcard")
        source = rows(args)
        first = next(source, None)
    except EdgeError as exc:
        parser.exit(2, f"statecast-replay: error: {exc}\n")
    pub = Publisher(args)
    board = Scoreboard(args.target, args.season) if args.forecasts else None
    if board is not None:
        pub.subscribe = args.forecasts.replace("{stream}", "+")
        pub.on_forecast = board.received
    try:
        pub.connect()
        if board is not None:
            pub.pump(0.3)  # the subscription is in place before the first observation
    except ConnectionError as exc:
        parser.exit(1, f"statecast-replay: error: {exc}\n")
    sent = 0
    streams: set[str] = set()
    t0 = time.monotonic()
    ts0: datetime | None = None
    try:
        item = first
        while item is not None:
            stream, ts, values = item
            if args.rate:
                _sleep_until(t0 + sent / args.rate)
            elif args.speed:
                ts0 = ts0 or ts
                _sleep_until(t0 + (ts - ts0).total_seconds() / args.speed)
            body = {"ts": encode_ts(ts, args.ts_format), **values}
            pub.publish(args.topic.format(stream=stream), json.dumps(body).encode())
            if board is not None:
                board.sent(stream, ts, values)
            streams.add(stream)
            sent += 1
            item = next(source, None)
    except EdgeError as exc:
        pub.close()
        parser.exit(2, f"statecast-replay: error: {exc}\n")
    except ConnectionError as exc:
        parser.exit(1, f"statecast-replay: error: {exc}\n")
    except KeyboardInterrupt:
        pass
    elapsed = time.monotonic() - t0
    if board is not None:
        deadline = time.monotonic() + args.wait
        while len(board.forecasts) < sent and time.monotonic() < deadline:
            pub.pump(0.1)
    pub.close()
    if not args.quiet:
        print(
            f"statecast-replay: published {sent} messages on {len(streams)} streams in "
            f"{elapsed:.2f} s ({sent / elapsed if elapsed > 0 else 0:.0f} msg/s)",
            file=sys.stderr,
        )
    if board is not None:
        summary = board.summary()
        print("\n".join(summary_lines(summary)))
        if args.summary_json:
            Path(args.summary_json).write_text(json.dumps(summary, indent=2) + "\n")
    return 0


def _sleep_until(t: float) -> None:
    delay = t - time.monotonic()
    if delay > 0:
        time.sleep(delay)


if __name__ == "__main__":
    sys.exit(main())
