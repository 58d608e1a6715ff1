"""Home Assistant MQTT discovery: each stream's forecasts as sensors, announced by the daemon.

With ``ha_discovery = "homeassistant"`` (the discovery prefix) the daemon publishes, retained,
one sensor config per stream, chosen horizon step (``ha_steps``, default the first and the last)
and target, when it first sees the stream (and again after a reconnect or a model reload), on
``<prefix>/sensor/<node>/<object_id>/config``; ``drop STREAM`` publishes empty retained
payloads there, which removes the entities. Each sensor reads the stream's forecast topic:

- regression: the forecast for that step (one sensor per target when there are several), with
  the manifest's ``unit`` and ``device_class`` and ``state_class: measurement``;
- classification: the most probable class at that step (``device_class: enum`` with the
  classes as its options), and each class's probability at that step as attributes.

The attributes hold the time the forecast is for (``at``), the observation time it was made at
(``observed``) and the model id. With self-scoring on, each stream also gets a diagnostic
``problem`` binary sensor on ``<prefix>/binary_sensor/<node>/<object_id>_drift/config`` that reads
its retained score document: on while the drift alarm is raised ("retrain me"), the rolling
figures as attributes. Availability follows the daemon's retained status (``online``/
``offline``, also its last will). Every device is one stream (identifiers, name, model = the
model id, manufacturer statecast).

No I/O here: `Discovery` returns (topic, payload) pairs for the worker to publish.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterable
from typing import Any

from edge.config import EdgeConfig
from edge.manifest import Manifest

log = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def safe_id(text: str) -> str:
    """`text` as a discovery topic level / unique id: letters, digits, `_` and `-`; text that
    had to change gets a short hash of the original, so distinct streams stay distinct."""
    clean = _UNSAFE.sub("_", text)
    if clean != text or not clean:
        clean = f"{clean}_{hashlib.sha1(text.encode()).hexdigest()[:6]}"
    return clean


def _dump(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def _literal(text: str) -> str:
    """A Jinja string literal (JSON's escaping is Jinja's)."""
    return json.dumps(text)


class Discovery:
    """Discovery configs for one model's forecasts (rebuilt when the model changes)."""

    def __init__(self, config: EdgeConfig, manifest: Manifest, status_topic: str,
                 version: str = "") -> None:
        if config.ha_discovery is None:
            raise ValueError("ha_discovery is not set")
        self.config = config
        self.manifest = manifest
        self.prefix = config.ha_discovery.rstrip("/")
        self.node = safe_id(config.client_id)
        self.status_topic = status_topic
        self.version = version
        h = manifest.horizon
        wanted = config.ha_steps or tuple(dict.fromkeys((1, h)))
        self.steps = tuple(s for s in wanted if s <= h)
        beyond = [s for s in wanted if s > h]
        if beyond:
            log.warning("ha_steps %s are beyond the model's horizon %d and are not announced",
                        ",".join(map(str, beyond)), h)
        self.classify = manifest.task == "classify" and bool(manifest.classes)
        targets = list(manifest.targets) or list(manifest.features[:1])
        self.targets: list[str | None] = (
            [None] if self.classify or len(targets) <= 1 else list(targets)
        )
        self._announced: dict[str, int] = {}  # stream -> the connection it was announced on
        self._connection = -1

    def forecast_topic(self, stream: str) -> str:
        return self.config.topic(self.config.publish, stream, self.manifest.model_id)

    def _entities(self, stream: str) -> list[tuple[str, int, int, str | None]]:
        """(object id, step, target index, target name) of each entity of `stream`."""
        out = []
        for step in self.steps:
            for k, target in enumerate(self.targets):
                part = f"_{safe_id(target)}" if target is not None else ""
                out.append((f"{safe_id(stream)}{part}_step{step}", step, k, target))
        return out

    def topic(self, object_id: str, component: str = "sensor") -> str:
        return f"{self.prefix}/{component}/{self.node}/{object_id}/config"

    def _drift_topic(self, stream: str) -> str | None:
        """Where the drift sensor of `stream` is announced; None without self-scoring."""
        if not self.config.scoring:
            return None
        return self.topic(f"{safe_id(stream)}_drift", "binary_sensor")

    def configs(self, stream: str) -> list[tuple[str, bytes]]:
        """The retained discovery messages that announce `stream`'s entities."""
        out = [(self.topic(oid), _dump(self.config_for(stream, step, k, target)))
               for oid, step, k, target in self._entities(stream)]
        drift = self._drift_topic(stream)
        if drift is not None:
            out.append((drift, _dump(self.drift_config(stream))))
        return out

    def removals(self, stream: str) -> list[tuple[str, bytes]]:
        """The empty retained messages that remove `stream`'s entities."""
        out = [(self.topic(oid), b"") for oid, *_ in self._entities(stream)]
        drift = self._drift_topic(stream)
        return out + ([(drift, b"")] if drift is not None else [])

    def _common(self, stream: str) -> dict[str, Any]:
        """What every entity of `stream` shares: availability, QoS, device and origin."""
        return {
            "availability_topic": self.status_topic,
            "availability_template": "{{ value_json.status }}",
            "payload_available": "online",
            "payload_not_available": "offline",
            "qos": self.config.qos,
            "device": {
                "identifiers": [safe_id(f"statecast_{self.config.client_id}_{stream}")],
                "name": stream,
                "model": self.manifest.model_id,
                "manufacturer": "statecast",
            },
            "origin": {"name": "statecast",
                       "sw_version": self.version or self.manifest.statecast_version},
        }

    def drift_config(self, stream: str) -> dict[str, Any]:
        """The drift alarm of `stream` as a binary sensor on its retained score document (the
        document's figures are its attributes)."""
        scores = self.config.topic(self.config.score, stream, self.manifest.model_id)
        return {
            "name": f"{stream} forecast drift",
            "unique_id": safe_id(f"{self.config.client_id}_{stream}_drift"),
            "state_topic": scores,
            "value_template": "{{ 'ON' if value_json.alarm else 'OFF' }}",
            "device_class": "problem",
            "entity_category": "diagnostic",
            "json_attributes_topic": scores,
            **self._common(stream),
        }

    def config_for(self, stream: str, step: int, k: int, target: str | None) -> dict[str, Any]:
        m = self.manifest
        i = step - 1
        state = self.forecast_topic(stream)
        label = f"{stream} {target}" if target is not None else stream
        uid = safe_id(f"{self.config.client_id}_{stream}_{target or ''}_{step}")
        attrs = [
            f'"at": (value_json.at[{i}] if value_json.at else none)',
            '"observed": value_json.ts',
            '"model": value_json.model',
            f'"step": {step}',
        ]
        if m.task != "classify" and self.config.scoring:
            for c in self.config.intervals:  # the step's interval, [lo, hi], per coverage
                pick = f"[{i}][{k}]" if target is not None else f"[{i}]"
                attrs.append(f'"interval_{round(c * 100):d}": (value_json.intervals'
                             f'[{_literal(f"{c:g}")}]{pick} if value_json.intervals is defined '
                             'else none)')
        if target is not None:
            value = f"{{{{ value_json.forecast[{i}][{k}] }}}}"
            attrs.append(f'"target": {_literal(target)}')
        else:
            value = f"{{{{ value_json.forecast[{i}] }}}}"
        doc: dict[str, Any] = {
            "name": f"{label} forecast +{step}",
            "unique_id": uid,
            "state_topic": state,
            "value_template": value,
            "json_attributes_topic": state,
            **self._common(stream),
        }
        if self.classify:
            assert m.classes is not None
            one = m.horizon == 1
            probs = ", ".join(
                f"{_literal(c)}: value_json.probabilities[{_literal(c)}]"
                + ("" if one else f"[{i}]")
                for c in m.classes
            )
            attrs.append(f'"probabilities": {{{probs}}}')
            doc["device_class"] = "enum"
            doc["options"] = list(m.classes)
        else:
            doc["state_class"] = "measurement"
            if m.unit:
                doc["unit_of_measurement"] = m.unit
            if m.device_class:
                doc["device_class"] = m.device_class
        doc["json_attributes_template"] = "{{ {" + ", ".join(attrs) + "} | tojson }}"
        return doc

    # -- what the daemon has announced ---------------------------------------------------------

    def announce_one(self, stream: str, connection: int) -> list[tuple[str, bytes]]:
        """The configs of a stream not announced yet on this connection (else nothing)."""
        if self._announced.get(stream) == connection:
            return []
        if len(self._announced) >= 100_000:
            self._announced.clear()
        self._announced[stream] = connection
        return self.configs(stream)

    def announce_resident(self, streams: Iterable[str], connection: int) -> list[tuple[str, bytes]]:
        """After a (re)connect or a model change: the configs of every resident stream not yet
        announced on this connection (a broker that lost its retained messages gets them
        again)."""
        if connection == self._connection:
            return []
        self._connection = connection
        out: list[tuple[str, bytes]] = []
        for stream in streams:
            out += self.announce_one(stream, connection)
        return out

    def forget(self, stream: str) -> list[tuple[str, bytes]]:
        """The removals of a dropped stream's entities."""
        self._announced.pop(stream, None)
        return self.removals(stream)
