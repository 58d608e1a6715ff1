"""End to end with a real mosquitto: Home Assistant discovery configs (retained, cleared by
`drop`), retained forecasts, and MQTT 5 forecast properties."""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from conftest import Mosquitto
from jinja2.sandbox import ImmutableSandboxedEnvironment
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

pytestmark = pytest.mark.broker


class Retained:
    """A fresh MQTT 5 subscriber: collects what the broker holds (retained) and what follows,
    with each message's retain flag and properties."""

    def __init__(self, broker: Mosquitto, topic: str) -> None:
        self.messages: list[tuple[str, bytes, bool, Any]] = []
        self.lock = threading.Lock()
        ready = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_connect = lambda c, u, f, r, p: c.subscribe(topic, 1)
        self.client.on_subscribe = lambda *a: ready.set()
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        assert ready.wait(10)

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.append((msg.topic, msg.payload, bool(msg.retain), msg.properties))

    def wait(self, n: int, timeout: float = 10.0) -> list[tuple[str, bytes, bool, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.messages) >= n:
                    break
            time.sleep(0.02)
        time.sleep(0.2)  # nothing more
        with self.lock:
            return list(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def command(broker: Mosquitto, topic: str, text: str) -> None:
    c = mqtt.Client(CallbackAPIVersion.VERSION2)
    c.connect(broker.host, broker.port)
    c.loop_start()
    c.publish(topic, text, qos=1).wait_for_publish(5)
    c.loop_stop()
    c.disconnect()


def observe(broker: Mosquitto, cid: str, streams: list[str], n: int) -> None:
    c = mqtt.Client(CallbackAPIVersion.VERSION2)
    c.connect(broker.host, broker.port)
    c.loop_start()
    for i in range(n):
        for s in streams:
            c.publish(f"{cid}/{s}/temp", json.dumps({"ts": f"2010-03-01T0{i}:00:00",
                                                     "temp": 40.0 + i}), qos=1).wait_for_publish(5)
    c.loop_stop()
    c.disconnect()


def test_discovery_configs_are_retained_and_drop_clears_them(
    broker: Mosquitto, models: dict[str, Path], daemon_factory: Any, collector_factory: Any,
) -> None:
    cid = f"e{uuid.uuid4().hex[:8]}"
    prefix = f"ha{cid}"
    col = collector_factory(broker, [f"{cid}-out/#", f"statecast/status/{cid}"])
    mark = col.mark()
    d = daemon_factory("--model", str(models["step"]), "--broker", broker.url, "--subscribe",
                       f"{cid}/+/temp", "--publish", f"{cid}-out/{{stream}}", "--client-id", cid,
                       "--ha-discovery", prefix, "--ha-steps", "1,3")
    assert col.wait_status(cid, "online", mark), d.log()
    observe(broker, cid, ["kitchen", "hall"], 2)
    forecasts = col.wait_for(f"{cid}-out/kitchen", 2)
    assert len(forecasts) == 2

    seen = Retained(broker, f"{prefix}/#")
    configs = seen.wait(6)
    assert sorted(t for t, *_ in configs) == sorted(
        [f"{prefix}/sensor/{cid}/{s}_step{k}/config" for s in ("kitchen", "hall") for k in (1, 3)]
        + [f"{prefix}/binary_sensor/{cid}/{s}_drift/config" for s in ("kitchen", "hall")])
    assert all(retain for _, _, retain, _ in configs)
    env = ImmutableSandboxedEnvironment()
    status = [p for t, p, _ in col.messages if t == f"statecast/status/{cid}"][-1]
    last = [p for t, p, _ in col.messages if t == f"{cid}-out/kitchen"][-1]
    for topic, body, _, _ in configs:
        doc = json.loads(body)
        assert doc["availability_topic"] == f"statecast/status/{cid}"
        assert env.from_string(doc["availability_template"]).render(
            value_json=json.loads(status)) == doc["payload_available"]
        if "/kitchen_step3/" in topic:
            assert doc["state_topic"] == f"{cid}-out/kitchen"
            value = env.from_string(doc["value_template"]).render(value_json=json.loads(last))
            assert float(value) == pytest.approx(json.loads(last)["forecast"][2])
    seen.close()

    command(broker, f"statecast/cmd/{cid}", "drop kitchen")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        after = Retained(broker, f"{prefix}/#")
        left = sorted(t for t, body, _, _ in after.wait(3, timeout=2) if body)
        after.close()
        if len(left) == 3:
            break
    assert left == sorted([f"{prefix}/sensor/{cid}/hall_step{k}/config" for k in (1, 3)]
                          + [f"{prefix}/binary_sensor/{cid}/hall_drift/config"])
    assert d.stop() == 0


@pytest.mark.parametrize("version", ["5", "3.1.1"])
def test_forecasts_retained_with_mqtt5_properties(
    broker: Mosquitto, models: dict[str, Path], daemon_factory: Any, collector_factory: Any,
    version: str, tmp_path: Path,
) -> None:
    cid = f"e{uuid.uuid4().hex[:8]}"
    col = collector_factory(broker, [f"statecast/status/{cid}"])
    mark = col.mark()
    d = daemon_factory("--model", str(models["step"]), "--broker", broker.url, "--subscribe",
                       f"{cid}/+/temp", "--publish", f"{cid}-out/{{stream}}", "--client-id", cid,
                       "--mqtt-version", version, "--retain-forecasts",
                       "--state-dir", str(tmp_path / "state"))
    assert col.wait_status(cid, "online", mark), d.log()
    live = Retained(broker, f"{cid}-out/#")
    observe(broker, cid, ["kitchen"], 3)
    got = live.wait(3)
    live.close()
    assert len(got) == 3
    later = Retained(broker, f"{cid}-out/#")
    kept = later.wait(1)
    later.close()
    assert len(kept) == 1 and kept[0][2]  # the latest, retained
    assert json.loads(kept[0][1])["ts"] == "2010-03-01T02:00:00"
    props: Properties = got[-1][3]
    if version == "5":
        assert props.ContentType == "application/json"
        assert props.UserProperty == [("model", "test-step")]
        assert 3590 <= props.MessageExpiryInterval <= 3600  # one period, 1h
    else:
        assert not hasattr(props, "ContentType")
    command(broker, f"statecast/cmd/{cid}", "drop kitchen")
    time.sleep(0.5)
    gone = Retained(broker, f"{cid}-out/#")
    assert gone.wait(1, timeout=1.5) == []
    gone.close()
    assert d.stop() == 0


def test_properties_are_built_once_per_model() -> None:
    from edge.transport import forecast_properties

    props = forecast_properties("m1", 1800.0)
    assert props.packetType == PacketTypes.PUBLISH
    assert props.MessageExpiryInterval == 1800
    assert forecast_properties("m1", None).json().get("MessageExpiryInterval") is None


def test_a_model_reload_announces_the_streams_again(
    broker: Mosquitto, models: dict[str, Path], daemon_factory: Any, collector_factory: Any,
    tmp_path: Path,
) -> None:
    import os
    import shutil

    cid = f"e{uuid.uuid4().hex[:8]}"
    prefix = f"ha{cid}"
    model = tmp_path / "live.onnx"
    shutil.copyfile(models["step"], model)
    col = collector_factory(broker, [f"{cid}-out/#", f"statecast/status/{cid}", f"{prefix}/#"])
    mark = col.mark()
    d = daemon_factory("--model", str(model), "--broker", broker.url, "--subscribe",
                       f"{cid}/+/temp", "--publish", f"{cid}-out/{{stream}}", "--client-id", cid,
                       "--ha-discovery", prefix)
    assert col.wait_status(cid, "online", mark), d.log()
    observe(broker, cid, ["kitchen"], 1)
    col.wait_for(f"{prefix}/", 3)
    time.sleep(1.5)  # the worker's upkeep after connecting announces nothing twice
    first = col.json(f"{prefix}/")
    assert len(first) == 3  # two forecast sensors and the drift sensor
    assert {c["device"]["model"] for c in first} == {"test-step"}
    mark = col.mark()
    tmp = tmp_path / "next.onnx"
    shutil.copyfile(models["step2"], tmp)
    os.replace(tmp, model)  # the daemon sees the new file and reloads
    again = col.wait_for(f"{prefix}/", 3, since=mark)
    assert {c["device"]["model"] for c in again} == {"test-step-other"}, d.log()
    assert sorted(c["unique_id"] for c in again) == sorted(c["unique_id"] for c in first)
    assert d.stop() == 0
