"""The daemon's settings: one frozen dataclass, validated on construction, read from TOML and
command-line flags (flags win). Secrets come from a file or the environment, never a flag value.

An example `edge.toml` (keys are the long flag names, with `-` or `_`)::

    model = "models/seattle.onnx"          # relative paths are relative to this file
    broker = "mqtts://broker.local:8883"
    subscribe = ["sensors/+/temp"]
    publish = "forecasts/{stream}"
    errors = "statecast/errors/{stream}"
    client_id = "edge-greenhouse-1"
    qos = 1
    state_dir = "/var/lib/statecast"
    username = "edge"
    password_file = "/etc/statecast/mqtt-password"
    ca_file = "/etc/statecast/ca.crt"
    metrics_port = 9108
    record = "/var/lib/statecast/record"   # also append every accepted observation to CSV
    ha_discovery = "homeassistant"         # announce forecasts to Home Assistant
    ha_steps = [1, 6]

    [field_map]                            # model feature -> payload key (dots: nested)
    temp = "t"
"""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: --config needs 3.11
    tomllib = None  # type: ignore[assignment]

from edge.codec import check_filter, check_template
from edge.errors import EdgeError
from edge.score import ScoreSettings

PASSWORD_ENV = "STATECAST_MQTT_PASSWORD"
SCHEMES = {"mqtt": (1883, False), "tcp": (1883, False), "mqtts": (8883, True), "ssl": (8883, True)}
PATH_KEYS = ("model", "state_dir", "record", "password_file", "ca_file", "cert_file", "key_file")
# Earlier names of settings, still accepted.
ALIASES = {"tls_ca": "ca_file", "tls_cert": "cert_file", "tls_key": "key_file"}


@dataclass(frozen=True)
class BrokerURL:
    """`mqtt://[user@]host[:port]` or `mqtts://...` (TLS)."""

    host: str
    port: int
    tls: bool
    username: str | None = None

    @classmethod
    def parse(cls, url: str) -> BrokerURL:
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            raise EdgeError(f"broker URL {url!r} has an invalid port") from None
        if parts.scheme not in SCHEMES or not parts.hostname:
            raise EdgeError(
                f"broker URL {url!r} is not of the form mqtt://HOST:PORT or mqtts://HOST:PORT"
            )
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise EdgeError(f"broker URL {url!r} must not have a path or query")
        if parts.password:
            raise EdgeError(
                f"put the broker password in a file (password_file) or ${PASSWORD_ENV}, "
                "not in the URL"
            )
        default_port, tls = SCHEMES[parts.scheme]
        return cls(
            host=parts.hostname,
            port=port if port is not None else default_port,
            tls=tls,
            username=unquote(parts.username) if parts.username else None,
        )

    def __str__(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


def default_client_id(subscribe: tuple[str, ...] = (), publish: str = "") -> str:
    """`statecast-edge-HOST-XXXXXXXX`, the suffix a hash of the subscriptions and the publish
    template: stable across restarts and model upgrades (so the persistent session is found
    again), distinct for daemons on one host that do different jobs."""
    host = "".join(c if c.isalnum() or c in "-_." else "-" for c in socket.gethostname())
    digest = hashlib.sha1("\n".join([*subscribe, publish]).encode()).hexdigest()[:8]
    return f"statecast-edge-{host[:40] or 'host'}-{digest}"


@dataclass(frozen=True)
class EdgeConfig:
    """Everything `statecast-edge` needs; invalid combinations raise EdgeError on construction."""

    model: str
    subscribe: tuple[str, ...]
    broker: str = "mqtt://localhost:1883"
    publish: str = "forecasts/{stream}"
    errors: str = "statecast/errors/{stream}"
    status: str = "statecast/status/{client_id}"
    commands: str = "statecast/cmd/{client_id}"
    score: str = "statecast/score/{stream}"
    client_id: str = ""  # default: default_client_id(subscribe, publish)
    qos: int = 1
    mqtt_version: str = "3.1.1"
    keepalive: int = 30
    session_expiry: int = 7 * 24 * 3600
    username: str | None = None
    password_file: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    tls_insecure: bool = False
    state_dir: str | None = None
    checkpoint_interval: float = 0.5
    stream_level: int | None = None
    stream_field: str | None = None
    field_map: Mapping[str, str] = field(default_factory=dict)
    max_payload: int = 16384
    on_gap: str = "reset"
    late: str = "drop"
    # the payload key of the timestamp (field_map's "ts" wins); "arrival": stamp payloads that
    # have none with the time they are decoded
    ts_field: str = "ts"
    ts: str = "payload"
    # models with a grid: seconds a period stays open after its end (and after its last
    # observation) before the timer closes it (None: 10 % of the period); which forecasts of
    # filled periods are published ("latest": only the last period's)
    grace: float | None = None
    publish_fills: str = "latest"
    max_streams: int = 100_000
    queue_size: int = 10_000
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    threads: int = 1
    reconnect_min: float = 0.5
    reconnect_max: float = 30.0
    log_level: str = "INFO"
    max_batch: int = 256
    max_delay_ms: float = 0.0
    commit_interval: float = 0.005
    commit_max: int = 256
    fsync: bool = True
    stream_ttl: float | None = None
    max_resident: int | None = None
    # append every accepted observation to DIR/YYYY-MM-DD.csv (edge/record.py)
    record: str | None = None
    # Home Assistant MQTT discovery prefix (edge/discovery.py); None: no discovery
    ha_discovery: str | None = None
    # horizon steps announced to Home Assistant (from 1); empty: the first and the last
    ha_steps: tuple[int, ...] = ()
    # retain the latest forecast of each stream on its topic
    retain_forecasts: bool = False
    # self-scoring (edge/score.py)
    scoring: bool = True
    intervals: tuple[float, ...] = (0.8, 0.95)
    score_half_life: float = 48.0
    score_every: float = 12.0
    score_lr: float = 0.05
    # the intervals' scorecaster: half-life in periods (0: none, quantile tracking alone)
    score_scorecast: float = 2.0
    score_per_stream: bool = False
    drift_baseline_ratio: float = 1.0
    drift_train_ratio: float = 2.0
    drift_periods: int = 12
    drift_min_scored: int = 48

    def __post_init__(self) -> None:
        if not self.model and not self.record:  # statecast-record needs no model
            raise EdgeError("no model given; pass --model FILE.onnx")
        if not self.subscribe:
            raise EdgeError("no subscription given; pass --subscribe PATTERN")
        for pattern in self.subscribe:
            check_filter(pattern)
        check_template(self.publish, "publish")
        check_template(self.errors, "errors")
        check_template(self.status, "status")
        check_template(self.commands, "commands")
        check_template(self.score, "score")
        if "{stream}" in self.commands or "{model}" in self.commands:
            raise EdgeError("the commands topic may use {client_id} only")
        self.broker_url  # noqa: B018 - validates
        if not self.client_id:
            object.__setattr__(self, "client_id", default_client_id(self.subscribe, self.publish))
        if not self.client_id or len(self.client_id) > 128 or any(
            c in self.client_id for c in "/+#\x00 "
        ):
            raise EdgeError(f"client id {self.client_id!r} is empty, too long or not topic-safe")
        if self.qos not in (0, 1):
            raise EdgeError(f"qos must be 0 or 1, not {self.qos!r}")
        if self.mqtt_version not in ("3.1.1", "5"):
            raise EdgeError(f"mqtt_version must be '3.1.1' or '5', not {self.mqtt_version!r}")
        if self.on_gap not in ("reset", "keep"):
            raise EdgeError(f"on_gap must be 'reset' or 'keep', not {self.on_gap!r}")
        if self.late not in ("drop", "accept"):
            raise EdgeError(f"late must be 'drop' or 'accept', not {self.late!r}")
        if self.ts not in ("payload", "arrival"):
            raise EdgeError(f"ts must be 'payload' or 'arrival', not {self.ts!r}")
        if not self.ts_field:
            raise EdgeError("ts_field must not be empty")
        if self.grace is not None and not 0 <= self.grace <= 366 * 86400:
            raise EdgeError("grace must be from 0 seconds to a year")
        if self.publish_fills not in ("latest", "all"):
            raise EdgeError(f"publish_fills must be 'latest' or 'all', not {self.publish_fills!r}")
        if self.stream_level is not None and self.stream_level < 0:
            raise EdgeError("stream_level must be 0 or more")
        if self.stream_level is not None and self.stream_field is not None:
            raise EdgeError("give stream_level or stream_field, not both")
        for name in ("keepalive", "max_payload", "max_streams", "queue_size", "threads"):
            if int(getattr(self, name)) < 1:
                raise EdgeError(f"{name} must be at least 1")
        if self.checkpoint_interval <= 0 or self.checkpoint_interval > 1.0:
            raise EdgeError("checkpoint_interval must be more than 0 and at most 1 second")
        if self.session_expiry < 0:
            raise EdgeError("session_expiry must not be negative")
        if not 0 < self.reconnect_min <= self.reconnect_max:
            raise EdgeError("reconnect_min must be positive and not above reconnect_max")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise EdgeError(f"metrics_port {self.metrics_port} is not a TCP port")
        tls_keys = [k for k in ("ca_file", "cert_file", "key_file") if getattr(self, k)]
        if self.tls_insecure:
            tls_keys.append("tls_insecure")
        if tls_keys and not self.broker_url.tls:
            raise EdgeError(
                f"{tls_keys[0]} is a TLS setting but the broker URL {self.broker} is plain TCP; "
                "use mqtts://"
            )
        if (self.cert_file is None) != (self.key_file is None):
            raise EdgeError("cert_file and key_file go together")
        for key in ("password_file", "ca_file", "cert_file", "key_file"):
            path = getattr(self, key)
            if path is not None and not Path(path).is_file():
                raise EdgeError(f"{key} {path} does not exist")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in self.field_map.items()):
            raise EdgeError("field_map must map feature names to payload keys (strings)")
        if not 0 < self.commit_interval <= 1.0:
            raise EdgeError("commit_interval must be more than 0 and at most 1 second")
        if self.commit_max < 1:
            raise EdgeError("commit_max must be at least 1")
        if self.stream_ttl is not None and self.stream_ttl <= 0:
            raise EdgeError("stream_ttl must be positive")
        if self.max_resident is not None and self.max_resident < 1:
            raise EdgeError("max_resident must be at least 1")
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise EdgeError(f"log_level {self.log_level!r} is not DEBUG, INFO, WARNING or ERROR")
        if not 1 <= self.max_batch <= 65536:
            raise EdgeError("max_batch must be from 1 to 65536")
        if not 0 <= self.max_delay_ms <= 1000:
            raise EdgeError("max_delay_ms must be from 0 to 1000")
        if self.record is not None and not self.record:
            raise EdgeError("record must name a directory")
        if self.ha_discovery is not None and (
            not self.ha_discovery or any(c in self.ha_discovery for c in "+#\x00")
        ):
            raise EdgeError(f"ha_discovery {self.ha_discovery!r} is not a topic prefix")
        if any(s < 1 for s in self.ha_steps):
            raise EdgeError("ha_steps must be horizon steps from 1")
        if any(not 0 < c < 1 for c in self.intervals) or len(set(self.intervals)) != len(
            self.intervals
        ):
            raise EdgeError("intervals must be distinct coverages between 0 and 1 (0.8, 0.95)")
        for name in ("score_half_life", "score_lr", "drift_baseline_ratio", "drift_train_ratio"):
            if not getattr(self, name) > 0:
                raise EdgeError(f"{name} must be positive")
        if self.score_every < 0:
            raise EdgeError("score_every must not be negative")
        if not self.score_scorecast >= 0:
            raise EdgeError("score_scorecast must be a half-life in periods, or 0 for none")
        if self.drift_periods < 1 or self.drift_min_scored < 0:
            raise EdgeError("drift_periods must be at least 1 and drift_min_scored at least 0")

    def score_settings(self) -> ScoreSettings:
        """What edge/score.py needs; no intervals when scoring is off."""
        return ScoreSettings(
            intervals=self.intervals if self.scoring else (), half_life=self.score_half_life,
            lr=self.score_lr, scorecast=self.score_scorecast, every=self.score_every,
            baseline_ratio=self.drift_baseline_ratio,
            train_ratio=self.drift_train_ratio, periods=self.drift_periods,
            min_scored=self.drift_min_scored,
        )

    @property
    def broker_url(self) -> BrokerURL:
        return BrokerURL.parse(self.broker)

    @property
    def tls(self) -> bool:
        return self.broker_url.tls

    def password(self) -> str | None:
        """From `password_file` (first line), else $STATECAST_MQTT_PASSWORD, else None."""
        if self.password_file is not None:
            lines = Path(self.password_file).read_text(encoding="utf-8").splitlines()
            return lines[0] if lines else ""
        return os.environ.get(PASSWORD_ENV)

    def topic(self, template: str, stream: str, model: str) -> str:
        return template.format(stream=stream, model=model, client_id=self.client_id)

    @classmethod
    def build(cls, settings: Mapping[str, Any]) -> EdgeConfig:
        """From a mapping of setting names (as in TOML; `-` or `_`) with type checks."""
        known = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        for raw_key, value in settings.items():
            key = raw_key.replace("-", "_")
            key = ALIASES.get(key, key)
            if key not in known:
                raise EdgeError(f"unknown setting {raw_key!r}")
            if value is None:
                continue
            values[key] = _coerce(key, value)
        if "model" not in values and "record" not in values:
            raise EdgeError("no model given; pass --model FILE.onnx")
        values.setdefault("model", "")
        values.setdefault("subscribe", ())
        return cls(**values)


_INT_KEYS = {
    "qos", "keepalive", "session_expiry", "stream_level", "max_payload", "max_streams",
    "queue_size", "metrics_port", "threads", "max_batch", "commit_max", "max_resident",
    "drift_periods", "drift_min_scored",
}
_FLOAT_KEYS = {
    "checkpoint_interval", "reconnect_min", "reconnect_max", "max_delay_ms", "commit_interval",
    "stream_ttl", "grace", "score_half_life", "score_every", "score_lr", "drift_baseline_ratio",
    "drift_train_ratio", "score_scorecast",
}


def _coerce(key: str, value: Any) -> Any:
    if key == "subscribe":
        if isinstance(value, str):
            return (value,)
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise EdgeError("subscribe must be a topic filter or a list of them")
    if key == "field_map":
        if not isinstance(value, Mapping):
            raise EdgeError("field_map must be a table of feature = payload key")
        return dict(value)
    if key == "ha_steps":
        if isinstance(value, int) and not isinstance(value, bool):
            return (value,)
        if isinstance(value, str):
            try:
                return tuple(int(v) for v in value.split(",") if v.strip())
            except ValueError:
                raise EdgeError(f"ha_steps must be steps such as 1,6, not {value!r}") from None
        if isinstance(value, (list, tuple)) and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        ):
            return tuple(value)
        raise EdgeError("ha_steps must be a list of horizon steps such as [1, 6]")
    if key == "intervals":
        if isinstance(value, (list, tuple)) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
        ):
            return tuple(float(v) for v in value)
        raise EdgeError("intervals must be a list of coverages, e.g. [0.8, 0.95]")
    if key in ("tls_insecure", "fsync", "retain_forecasts", "scoring", "score_per_stream"):
        if not isinstance(value, bool):
            raise EdgeError(f"{key} must be true or false")
        return value
    if key in _INT_KEYS:
        if isinstance(value, bool) or not isinstance(value, int):
            raise EdgeError(f"{key} must be an integer, not {value!r}")
        return value
    if key in _FLOAT_KEYS:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise EdgeError(f"{key} must be a number, not {value!r}")
        return float(value)
    if key == "mqtt_version":
        return str(value)
    if not isinstance(value, str):
        raise EdgeError(f"{key} must be a string, not {value!r}")
    return value


def read_toml(path: str | Path) -> dict[str, Any]:
    """Settings from a TOML file, with relative paths made relative to the file."""
    if tomllib is None:
        raise EdgeError("reading --config needs Python 3.11 or later (tomllib)")
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EdgeError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise EdgeError(f"config file {path} cannot be read ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise EdgeError(f"config file {path} is not valid TOML ({exc})") from None
    out: dict[str, Any] = {}
    for key, value in data.items():
        norm = key.replace("-", "_")
        norm = ALIASES.get(norm, norm)
        if norm in PATH_KEYS and isinstance(value, str) and not Path(value).is_absolute():
            out[norm] = str(path.parent / value)
        else:
            out[norm] = value
    return out
