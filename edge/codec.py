"""Bytes ⇄ observations and predictions, and the topic helpers the daemon needs.

No I/O here: everything takes and returns plain values, so it is tested without a broker.

Payloads (one observation per message, all features of it)::

    {"ts": "2010-03-01T05:00:00", "temp": 51.3}      # one number per feature, by name
    {"ts": 1267419600, "value": 51.3}                  # univariate models only
    51.3                                               # univariate, timestamped on arrival

``ts`` is an ISO 8601 string (naive means UTC) or epoch seconds / milliseconds as a number.
A field map may name nested keys with dots (``"DS18B20.Temperature"``); the timestamp key is
``ts`` unless `ts_field` (or ``field_map["ts"]``) says otherwise, and with `arrival` a payload
without one is stamped with the time it is decoded. Other fields are ignored.

Predictions::

    {"stream": "s1", "ts": <ts exactly as received>, "forecast": [H numbers],
     "at": [H ISO timestamps, ts + k·freq], "model": "<model_id>"}

With a grid (the manifest's `grid`), a forecast is made per period: ``"period"`` is the period
time T (ISO) and ``at`` is T + k·period; ``ts`` is the observation that closed the period, as
received (a period closed by the timer gives the epoch seconds of its last observation).

Several targets: ``forecast`` is H lists of K (one per target, in manifest order) and a
``"targets"`` list names them. Classifiers: ``forecast`` is H class labels (the most probable
class at each step) and ``"probabilities"`` maps each class to its probability — one number when
H is 1, a list of H numbers otherwise. ``at`` is null when the manifest has no usable ``freq``.
"""

from __future__ import annotations

import json
import math
import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Protocol

import numpy as np

from edge.errors import EdgeError
from edge.manifest import Manifest

try:  # several times faster than the standard library on the per-message path; optional
    import orjson

    def _loads(payload: bytes) -> Any:
        return orjson.loads(payload)

    def _dumps(value: Any) -> bytes:
        return orjson.dumps(value)

    _FAST_ERRORS: tuple[type[Exception], ...] = (orjson.JSONDecodeError,)
except ImportError:  # pragma: no cover - the edge extra installs orjson

    def _loads(payload: bytes) -> Any:
        return json.loads(payload.decode("utf-8"))

    def _dumps(value: Any) -> bytes:
        return json.dumps(value, separators=(",", ":")).encode()

    _FAST_ERRORS = (ValueError, RecursionError)

UNKNOWN_STREAM = "_unknown"
TRUNCATE = 200
# Above this a numeric timestamp is read as milliseconds (1e11 s is the year 5138; 1e11 ms 1973),
# so epoch milliseconds before 1973-03-03 are misread as seconds.
MS_THRESHOLD = 1e11
F32_MAX = float(np.finfo(np.float32).max)
AT_CACHE = 4096

_FREQ_RE = re.compile(r"^\s*([0-9]*\.?[0-9]*)\s*([A-Za-z]+)\s*$")
_FREQ_UNITS: dict[str, float] = {
    "us": 1e-6, "U": 1e-6, "N": 1e-9, "ns": 1e-9,
    "ms": 1e-3, "L": 1e-3,
    "s": 1.0, "S": 1.0, "sec": 1.0, "second": 1.0, "seconds": 1.0,
    "min": 60.0, "T": 60.0, "minute": 60.0, "minutes": 60.0,
    "h": 3600.0, "H": 3600.0, "hour": 3600.0, "hours": 3600.0,
    "D": 86400.0, "d": 86400.0, "day": 86400.0, "days": 86400.0,
    "W": 604800.0, "w": 604800.0,
}


class PayloadError(EdgeError):
    """An observation the daemon drops; `reason` is the short label used in metrics and errors."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def parse_freq(freq: str | None) -> timedelta | None:
    """A pandas-style fixed frequency ("1h", "H", "15min", "30s", "1D", "W") as a timedelta.

    None stays None. Calendar frequencies ("M", "MS", "Y", "W-SUN", ...) have no fixed length and
    raise EdgeError; the caller decides whether that is fatal.
    """
    if freq is None:
        return None
    match = _FREQ_RE.match(freq)
    if not match or match.group(2) not in _FREQ_UNITS:
        raise EdgeError(f"frequency {freq!r} is not a fixed pandas-style frequency such as '1h'")
    count = float(match.group(1)) if match.group(1) not in ("", ".") else 1.0
    seconds = count * _FREQ_UNITS[match.group(2)]
    if not seconds > 0:
        raise EdgeError(f"frequency {freq!r} is not positive")
    return timedelta(seconds=seconds)


def parse_ts(value: Any) -> datetime:
    """An ISO 8601 string or epoch seconds/milliseconds as a datetime (naive strings stay naive).

    Raises PayloadError("bad_ts") for anything else.
    """
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.strip())
        except ValueError:
            raise PayloadError("bad_ts", f"timestamp {value[:40]!r} is not ISO 8601") from None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
        if not math.isfinite(seconds):
            raise PayloadError("bad_ts", "timestamp is not a finite number")
        if abs(seconds) >= MS_THRESHOLD:
            seconds /= 1000.0
        try:
            return datetime.fromtimestamp(seconds, tz=timezone.utc)
        except (OverflowError, OSError, ValueError):
            raise PayloadError("bad_ts", f"timestamp {value!r} is out of range") from None
    raise PayloadError("bad_ts", "timestamp is neither an ISO 8601 string nor a number")


def epoch(ts: datetime) -> float:
    """Seconds since the epoch; naive datetimes are read as UTC."""
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=timezone.utc)
    return ts.timestamp()


@dataclass(frozen=True)
class Observation:
    """One decoded observation: `ts` as received (for echoing), parsed, and the feature row."""

    ts_raw: Any
    ts: datetime
    t: float
    values: np.ndarray
    stream: str | None = None


_MISSING: Any = object()


def _key_path(key: str) -> tuple[str, ...] | None:
    """A dotted key's path into nested objects, None for a plain key."""
    return tuple(key.split(".")) if "." in key else None


def _dig(doc: dict[str, Any], key: str, path: tuple[str, ...] | None) -> Any:
    """`doc[key]`, else (a dotted key) the value down its path; `_MISSING` when absent."""
    value = doc.get(key, _MISSING)
    if value is not _MISSING or path is None:
        return value
    node: Any = doc
    for part in path:
        if not isinstance(node, dict):
            return _MISSING
        node = node.get(part, _MISSING)
        if node is _MISSING:
            return _MISSING
    return node


class Decoder:
    """Turns payload bytes into an Observation for one model's features.

    `field_map` maps a model feature (or "ts") to the payload key a device uses for it, dotted
    for a nested key (``"DS18B20.Temperature"``); `ts_field` is the timestamp key when the map
    does not name one; with `arrival` a payload without a timestamp is stamped with the time it
    is decoded; `stream_field`, when set, names the payload key that carries the stream id.
    """

    def __init__(
        self,
        features: Sequence[str],
        field_map: Mapping[str, str] | None = None,
        max_payload: int = 16384,
        stream_field: str | None = None,
        now: Any = None,
        ts_field: str = "ts",
        arrival: bool = False,
    ) -> None:
        field_map = dict(field_map or {})
        self.features = tuple(features)
        self.keys = tuple(field_map.get(f, f) for f in self.features)
        self.ts_key = field_map.get("ts", ts_field)
        # key paths, precomputed: the per-message path looks keys up without parsing them
        self._ts_path = _key_path(self.ts_key)
        self._paths = tuple(_key_path(k) for k in self.keys)
        self._nested = any(p is not None for p in self._paths)
        self.arrival = arrival
        self.univariate = len(self.features) == 1
        self.max_payload = max_payload
        self.stream_field = stream_field
        self._now = now or (lambda: datetime.now(timezone.utc))

    def decode(self, payload: bytes) -> Observation:
        if len(payload) > self.max_payload:
            raise PayloadError(
                "too_large", f"payload of {len(payload)} bytes exceeds the {self.max_payload} limit"
            )
        try:
            doc = _loads(payload)
        except _FAST_ERRORS:
            doc = _strict_loads(payload)  # the exact reason, and NaN/Infinity as json reads them
        stream = None
        if isinstance(doc, dict):
            if self.stream_field is not None:
                stream = stream_id_from_value(doc.get(self.stream_field), self.stream_field)
            ts_raw = _dig(doc, self.ts_key, self._ts_path)
            if ts_raw is _MISSING:
                if not self.arrival:
                    raise PayloadError("missing_field",
                                       f"payload has no {self.ts_key!r} timestamp")
                ts = self._now()
                ts_raw = ts.isoformat()
            else:
                ts = parse_ts(ts_raw)
            names: Sequence[str]
            if self._nested:
                names = self.keys
                raw_values = [_dig(doc, k, p) for k, p in zip(names, self._paths, strict=True)]
                if self.univariate and raw_values[0] is _MISSING and "value" in doc:
                    raw_values, names = [doc["value"]], ("value",)
                missing = [k for k, v in zip(names, raw_values, strict=True) if v is _MISSING]
                if missing:
                    raise PayloadError("missing_field", f"payload lacks field {missing[0]!r}")
            elif self.univariate and self.keys[0] not in doc and "value" in doc:
                raw_values = [doc["value"]]
                names = ("value",)
            else:
                names = self.keys
                missing = [k for k in names if k not in doc]
                if missing:
                    raise PayloadError("missing_field", f"payload lacks field {missing[0]!r}")
                raw_values = [doc[k] for k in names]
        elif self.univariate and _is_number(doc) and self.stream_field is None:
            ts = self._now()
            ts_raw = ts.isoformat()
            raw_values = [doc]
            names = ("value",)
        else:
            raise PayloadError("not_an_object", "payload is not a JSON object")
        for name, v in zip(names, raw_values, strict=True):
            kind = type(v)
            if kind is not float and kind is not int and not _is_number(v):
                raise PayloadError("not_numeric", f"field {name!r} is not a number")
            if kind is float and not math.isfinite(v):
                raise PayloadError("not_finite", f"field {name!r} is NaN or infinite")
            if not -F32_MAX <= v <= F32_MAX:
                raise PayloadError("not_finite", f"field {name!r} overflows float32")
        values32 = np.array(raw_values, dtype=np.float32)
        return Observation(ts_raw, ts, epoch(ts), values32, stream)


def _strict_loads(payload: bytes) -> Any:
    """The standard library's reading of a payload, with the reason it cannot be read."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise PayloadError("not_utf8", "payload is not UTF-8") from None
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        raise PayloadError("malformed_json", "payload is not valid JSON") from None
    except ValueError:  # an integer longer than Python converts (4,300 digits)
        raise PayloadError("not_finite", "payload holds a number too long to read") from None


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def stream_id_from_value(value: Any, where: str) -> str:
    """A stream id from a payload field: a non-empty string or integer that is safe in a topic."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise PayloadError("bad_stream", f"stream field {where!r} is missing or not a string")
    text = str(value)
    check_stream_id(text)
    return text


def check_stream_id(text: str) -> None:
    if not text or len(text) > 256 or any(c in text for c in "/+#\x00"):
        raise PayloadError("bad_stream", f"stream id {text[:40]!r} cannot be used in a topic")


class GridTimes(Protocol):
    """The grid's times, as `edge.grid.Regulariser` gives them."""

    def after(self, label: float, k: int) -> float: ...


def iso_time(t: float, tz: Any = None) -> str:
    """ISO 8601 of epoch seconds: naive (UTC) when `tz` is None, as naive timestamps are read;
    else in that time zone."""
    if tz is None:
        return datetime.fromtimestamp(t, timezone.utc).replace(tzinfo=None).isoformat()
    return datetime.fromtimestamp(t, tz).isoformat()


class Encoder:
    """Prediction and error payloads for one model."""

    def __init__(self, manifest: Manifest, freq: timedelta | None,
                 grid: GridTimes | None = None) -> None:
        self.grid = grid
        self.manifest = manifest
        self.model_id = manifest.model_id
        self.freq = freq
        self.horizon = manifest.horizon
        self.classes = list(manifest.classes) if manifest.classes else None
        self.targets = list(manifest.targets)
        self.steps = [freq * k for k in range(1, self.horizon + 1)] if freq else None
        self._model_json = json.dumps(self.model_id)
        self._at_json: dict[datetime, str] = {}
        self._tail: dict[Any, bytes] = {}  # ',"at":[...],"model":"..."' by raw timestamp
        self._ptail: dict[tuple[float, Any], bytes] = {}  # the same by (period, time zone)
        self._head: dict[str, bytes] = {}  # '{"stream":"...","ts":' by stream

    def at(self, ts: datetime) -> list[str] | None:
        if self.steps is None:
            return None
        try:
            return [(ts + d).isoformat() for d in self.steps]
        except OverflowError:
            return None

    def _at_fragment(self, ts: datetime) -> str:
        """`at` as JSON text, cached by timestamp (streams of a fleet share their timestamps)."""
        text = self._at_json.get(ts)
        if text is None:
            text = json.dumps(self.at(ts), separators=(",", ":"))
            if len(self._at_json) >= AT_CACHE:
                self._at_json.clear()
            self._at_json[ts] = text
        return text

    def _period_tail(self, period: float, tz: Any) -> bytes:
        """`,"period":...,"at":[...],"model":...}` of a grid step, cached by period and zone."""
        key = (period, tz)
        tail = self._ptail.get(key)
        if tail is None:
            assert self.grid is not None
            after = self.grid.after
            at = [iso_time(after(period, k), tz) for k in range(1, self.horizon + 1)]
            tail = (f',"period":{json.dumps(iso_time(period, tz))},'
                    f'"at":{json.dumps(at, separators=(",", ":"))},"model":{self._model_json}'
                    ).encode()  # the document is closed by `prediction`
            if len(self._ptail) >= AT_CACHE:
                self._ptail.clear()
            self._ptail[key] = tail
        return tail

    def prediction(self, stream: str, obs: Observation, y: np.ndarray,
                   period: float | None = None, members: bytes = b"") -> bytes:
        """`y` is the graph output for one stream (batch dimension included or not); `period`
        the period time of a grid step (None: `at` counts from the observation's time);
        `members`: more JSON members for the document, each with its leading comma (the
        intervals), written in the same call."""
        y = np.asarray(y)
        if y.shape and y.shape[0] == 1 and y.ndim > 1:
            y = y[0]
        if self.classes is None and (y.ndim < 2 or len(self.targets) <= 1):
            # the common case, assembled from cached fragments
            head = self._head.get(stream)
            if head is None:
                head = b'{"stream":' + _dumps(stream) + b',"ts":'
                if len(self._head) < 100_000:
                    self._head[stream] = head
            tail: bytes | None
            if period is not None and self.grid is not None:
                tail = self._period_tail(period, obs.ts.tzinfo)
            else:
                tail = self._tail.get(obs.ts_raw)  # raw: a datetime hashes slowly
            if tail is None:
                tail = f',"at":{self._at_fragment(obs.ts)},"model":{self._model_json}'.encode()
                if len(self._tail) >= AT_CACHE:
                    self._tail.clear()
                self._tail[obs.ts_raw] = tail
            return b"".join((head, _dumps(obs.ts_raw), b',"forecast":',
                             _dumps(y.reshape(-1).tolist()), tail, members, b"}"))
        doc: dict[str, Any] = {"stream": stream, "ts": obs.ts_raw}
        if self.classes is not None:
            probs = y.reshape(self.horizon, len(self.classes))
            doc["forecast"] = [self.classes[i] for i in probs.argmax(axis=1).tolist()]
            if self.horizon == 1:
                doc["probabilities"] = dict(zip(self.classes, probs[0].tolist(), strict=True))
            else:
                doc["probabilities"] = dict(zip(self.classes, probs.T.tolist(), strict=True))
        elif y.ndim >= 2 and y.shape[-1] > 1 and len(self.targets) > 1:
            doc["forecast"] = y.reshape(self.horizon, -1).tolist()
            doc["targets"] = self.targets
        else:
            doc["forecast"] = y.reshape(-1).tolist()
        if period is not None and self.grid is not None:
            tz = obs.ts.tzinfo
            doc["period"] = iso_time(period, tz)
            doc["at"] = [iso_time(self.grid.after(period, k), tz)
                         for k in range(1, self.horizon + 1)]
        else:
            doc["at"] = self.at(obs.ts)
        doc["model"] = self.model_id
        body = json.dumps(doc, separators=(",", ":")).encode()
        return body[:-1] + members + b"}" if members else body

    def error(self, stream: str, reason: str, detail: str, payload: bytes, topic: str) -> bytes:
        return error_payload(stream, reason, detail, payload, topic, self.model_id)


def error_payload(
    stream: str, reason: str, detail: str, payload: bytes, topic: str, model: str | None
) -> bytes:
    """The message published on the error topic for a dropped observation."""
    return json.dumps(
        {
            "stream": stream,
            "reason": reason,
            "detail": detail,
            "payload": truncate(payload),
            "topic": topic,
            "model": model,
        },
        separators=(",", ":"),
    ).encode()


def truncate(payload: bytes, limit: int = TRUNCATE) -> str:
    """A printable prefix of a payload for logs and error messages."""
    text = payload[:limit].decode("utf-8", errors="replace")
    return text + ("…" if len(payload) > limit else "")


# ---------------------------------------------------------------------------------------------
# Topics

def check_filter(pattern: str) -> None:
    """Raise EdgeError unless `pattern` is a valid MQTT subscription filter."""
    if not pattern or "\x00" in pattern:
        raise EdgeError(f"subscription {pattern!r} is empty or contains NUL")
    levels = pattern.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            raise EdgeError(f"subscription {pattern!r} uses '#' other than as the last level")
        if "+" in level and level != "+":
            raise EdgeError(f"subscription {pattern!r} uses '+' inside a level")


def wildcard_level(pattern: str) -> int | None:
    """The index of the topic level matched by the first `+` (or by `#`), None if neither."""
    for i, level in enumerate(pattern.split("/")):
        if level in ("+", "#"):
            return i
    return None


def topic_matches(pattern: str, topic: str) -> bool:
    p = pattern.split("/")
    t = topic.split("/")
    for i, level in enumerate(p):
        if level == "#":
            return True
        if i >= len(t):
            return False
        if level != "+" and level != t[i]:
            return False
    return len(p) == len(t)


class StreamRouter:
    """Maps an incoming topic to its stream id: a fixed topic level, or the first wildcard level
    of the subscription that matched, or the last level when that has no wildcard."""

    def __init__(self, patterns: Sequence[str], level: int | None = None) -> None:
        for p in patterns:
            check_filter(p)
        self.patterns = list(patterns)
        self.level = level
        self._cache: dict[str, str] = {}

    def stream(self, topic: str) -> str:
        cached = self._cache.get(topic)
        if cached is not None:
            return cached
        levels = topic.split("/")
        index = self.level
        if index is None:
            for p in self.patterns:
                if topic_matches(p, topic):
                    index = wildcard_level(p)
                    break
        if index is None:
            stream = levels[-1]
        elif index >= len(levels):
            raise PayloadError("bad_stream", f"topic {topic[:80]!r} has no level {index}")
        else:
            stream = levels[index]
        check_stream_id(stream)
        if len(self._cache) < 100_000:
            self._cache[topic] = stream
        return stream


TEMPLATE_FIELDS = ("stream", "model", "client_id")


def check_template(template: str, what: str) -> None:
    """Raise EdgeError unless `template` is a publishable topic with only known {fields}."""
    if not template or "+" in template or "#" in template or "\x00" in template:
        raise EdgeError(f"the {what} topic {template!r} is empty or contains a wildcard")
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise EdgeError(f"the {what} topic {template!r} is not a valid template ({exc})") from None
    for f in fields:
        if f not in TEMPLATE_FIELDS:
            raise EdgeError(
                f"the {what} topic {template!r} uses {{{f}}}; only "
                + ", ".join("{" + t + "}" for t in TEMPLATE_FIELDS)
                + " are known"
            )
