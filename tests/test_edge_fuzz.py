"""Hostile input: hypothesis against the payload codec, topic parsing and the processor (no
broker), then 10,000 hostile messages through mosquitto into a running daemon."""

from __future__ import annotations

import json
import math
import random
import signal
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from conftest import Mosquitto, free_port
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion

from edge.codec import Decoder, PayloadError, StreamRouter, stream_id_from_value
from edge.config import EdgeConfig
from edge.model import StepModel
from edge.service import Processor, load_model

FORBIDDEN = set("/+#\x00")

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=20,
)
fields = st.sampled_from(["ts", "temp", "value", "hum", "id", ""])
objects = st.dictionaries(fields, json_values | st.integers(min_value=-(10**40),
                                                             max_value=10**40), max_size=5)


def encoded(doc: Any) -> bytes:
    return json.dumps(doc, allow_nan=True).encode()


def check_observation(payload: bytes, decoder: Decoder) -> None:
    try:
        obs = decoder.decode(payload)
    except PayloadError as exc:
        assert exc.reason and exc.detail
        return
    assert obs.values.dtype == np.float32 and np.isfinite(obs.values).all()
    assert math.isfinite(obs.t)
    if obs.stream is not None:
        assert obs.stream and len(obs.stream) <= 256 and not FORBIDDEN & set(obs.stream)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=512))
def test_decode_random_bytes(payload: bytes) -> None:
    check_observation(payload, Decoder(["temp"]))
    check_observation(payload, Decoder(["temp", "hum"], stream_field="id"))


@settings(max_examples=400, deadline=None)
@given(objects | json_values)
def test_decode_random_json(doc: Any) -> None:
    payload = encoded(doc)
    check_observation(payload, Decoder(["temp"]))
    check_observation(payload, Decoder(["temp", "hum"], {"hum": "value"}, stream_field="id"))


@pytest.mark.parametrize("payload", [
    b"[" * 100_000 + b"]" * 100_000,
    b'{"ts": 1, "temp": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    b'{"ts": 1, "temp": ' + b"9" * 5000 + b"}",  # past Python's int-conversion digit limit
    b'{"ts": ' + b"9" * 5000 + b', "temp": 1}',
    b'{"ts": 1e999, "temp": 1}',
    b'{"ts": 1, "temp": 1e999}',
    b'{"ts": 1, "temp": 3.5e38}',
    b'{"ts": "9999-12-31T23:59:59", "temp": 1}',
    b'{"ts": -1e20, "temp": 1}',
    b'{"ts": 1, "temp": 1, "id": "a/b"}',
    b'{"ts": 1, "temp": 1, "id": "a\\u0000b"}',
    b'{"ts": 1, "temp": 1, "id": ""}',
    b'{"ts": 1, "temp": 1, "id": true}',
    b'{"ts": 1, "temp": 1, "id": "' + b"x" * 300 + b'"}',
    b'{"ts": 1, "temp": 1, "id": "\\ud800"}',
    b"\xef\xbb\xbf{}",
    b"",
])
def test_decode_hostile_cases(payload: bytes) -> None:
    check_observation(payload, Decoder(["temp"], max_payload=1 << 20))
    check_observation(payload, Decoder(["temp"], max_payload=1 << 20, stream_field="id"))


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=300), json_values))
def test_stream_ids_from_payload_are_topic_safe(value: Any) -> None:
    try:
        text = stream_id_from_value(value, "id")
    except PayloadError:
        return
    assert text and len(text) <= 256 and not FORBIDDEN & set(text)


topics = st.lists(
    st.one_of(st.text(max_size=12), st.sampled_from(["..", ".", "", "+", "#", "\x00", "é"])),
    min_size=1, max_size=8,
).map("/".join)


@settings(max_examples=400, deadline=None)
@given(topics, st.sampled_from(["sensors/+/temp", "a/#", "+/+/x", "s/#"]),
       st.one_of(st.none(), st.integers(0, 4)))
def test_router_never_yields_an_unsafe_stream(topic: str, pattern: str, level: int | None) -> None:
    router = StreamRouter([pattern], level)
    try:
        stream = router.stream(topic)
    except PayloadError:
        return
    assert stream and len(stream) <= 256 and not FORBIDDEN & set(stream)
    assert stream in topic.split("/")


@pytest.fixture(scope="module")
def processor(models: dict[str, Path]) -> tuple[Processor, list[tuple[str, bytes]]]:
    cfg = EdgeConfig(model=str(models["step"]), subscribe=("sensors/+/temp",), client_id="t")
    model, freq = load_model(cfg)
    out: list[tuple[str, bytes]] = []

    def publish(topic: str, payload: bytes, qos: int) -> bool:
        out.append((topic, payload))
        return True

    proc = Processor(cfg, model, freq, publish)
    assert proc.handle("sensors/k/temp", b'{"ts": "2011-01-01T00:00:00", "temp": 50}')
    return proc, out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=256) | objects.map(encoded), topics)
def test_processor_rejects_without_touching_state(
    processor: tuple[Processor, list[tuple[str, bytes]]], payload: bytes, topic: str
) -> None:
    """Whatever arrives, `handle` returns; a message that is not a valid observation leaves every
    state as it was and produces exactly one error report."""
    proc, out = processor
    before = {k: ([a.copy() for a in s.state], s.last_t, s.count)
              for k, s in proc.store.streams.items()}
    out.clear()
    try:
        Decoder(["temp"]).decode(payload)
        proc.router.stream(topic)
        return  # a valid observation (rare): stepping it is allowed
    except PayloadError:
        pass
    assert proc.handle(topic, payload) is False
    assert len(out) == 1 and json.loads(out[0][1])["reason"]
    after = {k: ([a.copy() for a in s.state], s.last_t, s.count)
             for k, s in proc.store.streams.items()}
    assert after.keys() == before.keys()
    for k, (state, last_t, count) in before.items():
        assert after[k][1:] == (last_t, count)
        for x, y in zip(after[k][0], state, strict=True):
            np.testing.assert_array_equal(x, y)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.text(max_size=300))
def test_error_reports_are_always_json(
    processor: tuple[Processor, list[tuple[str, bytes]]], payload: bytes, topic: str
) -> None:
    body = json.loads(processor[0].encoder.error("s", "reason", "detail", payload, topic))
    assert body["reason"] == "reason" and isinstance(body["payload"], str)


# -- the whole daemon -------------------------------------------------------------------------


def hostile(rng: random.Random, i: int) -> tuple[str, bytes]:
    """One hostile message (topic level and payload), never a valid observation."""
    kind = i % 10
    if kind == 0:
        payload = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 200)))
        if payload[:1].isdigit() or payload[:1] in (b"-", b" ", b"{", b"\t", b"\n"):
            payload = b"\xff" + payload
    elif kind == 1:
        depth = rng.randint(100, 5000)
        payload = b"[" * depth + b"]" * depth
    elif kind == 2:
        payload = b'{"ts": "2011-01-01T00:00:00", "temp": ' + b"9" * rng.randint(310, 5000) + b"}"
    elif kind == 3:
        payload = json.dumps({"ts": "2011-01-01T00:00:00",
                              "temp": rng.choice(["x", None, [], {}, True, "1"])}).encode()
    elif kind == 4:
        payload = json.dumps({"ts": rng.choice([None, [], "soon", True, 1e300, -1e300]),
                              "temp": 1.0}).encode()
    elif kind == 5:
        payload = b'{"ts": 1, "temp": ' + rng.choice([b"NaN", b"Infinity", b"-Infinity",
                                                      b"1e999", b"3.5e38"]) + b"}"
    elif kind == 6:
        payload = b'{"ts": 1, "temp": 1, "pad": "' + b"x" * 20_000 + b'"}'
    elif kind == 7:
        payload = json.dumps(rng.choice([[], "text", None, True, {"temp": 1}])).encode()
    elif kind == 8:
        payload = b'{"ts": "2011-01-01T00:00:00", "temp": 1'  # truncated
    else:
        return "k", json.dumps({"ts": "2010-01-01T00:00:00", "temp": 50.0}).encode()  # late
    level = rng.choice(["k", "..", ".", "é/..", "k\u202e", "x" * rng.randint(1, 2000), "a/b/c"])
    return level, payload


def test_daemon_survives_10000_hostile_messages(
    broker: Mosquitto, models: dict[str, Path], tmp_path: Path, daemon_factory: Any,
    collector_factory: Any,
) -> None:
    """Random bytes, deep JSON, huge numbers, wrong types, huge topics and odd stream ids, 10,000
    of them over MQTT: the daemon stays up, every one is counted as dropped and reported, no
    state changes, and the next good observation gets the forecast it would have had."""
    cid = f"z{uuid.uuid4().hex[:8]}"
    port = free_port()
    col = collector_factory(broker, [f"{cid}-out/#", f"statecast/status/{cid}"])
    mark = col.mark()
    d = daemon_factory("--model", str(models["step"]), "--broker", broker.url,
                       "--subscribe", f"{cid}/#",
                       "--publish", f"{cid}-out/{{stream}}", "--errors", f"{cid}-err/{{stream}}",
                       "--client-id", cid, "--metrics-port", str(port),
                       "--state-dir", str(tmp_path / "state"))
    assert col.wait_status(cid, "online", mark), d.log()
    errors: list[bytes] = []
    err = mqtt.Client(CallbackAPIVersion.VERSION2)
    err.on_message = lambda c, u, m: errors.append(m.payload)
    err.connect(broker.host, broker.port)
    err.subscribe(f"{cid}-err/#", 1)
    err.loop_start()
    pub = mqtt.Client(CallbackAPIVersion.VERSION2)
    pub.max_inflight_messages_set(200)
    pub.connect(broker.host, broker.port)
    pub.loop_start()
    good = [json.dumps({"ts": f"2011-01-01T{h:02d}:00:00", "temp": 50.0 + h}).encode()
            for h in range(3)]
    pub.publish(f"{cid}/k/temp", good[0], qos=1).wait_for_publish(10)
    assert len(col.wait_for(f"{cid}-out/", 1)) == 1
    rng = random.Random(11)
    n = 10_000
    infos = []
    for i in range(n):
        level, payload = hostile(rng, i)
        infos.append(pub.publish(f"{cid}/{level}/temp", payload, qos=i % 2))
    for info in infos:
        if info.rc == mqtt.MQTT_ERR_SUCCESS and info.mid:
            info.wait_for_publish(30)
    deadline = time.monotonic() + 60
    text = ""
    while time.monotonic() < deadline:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
        if (f"statecast_edge_messages_received_total {n + 1}" in text
                and "statecast_edge_active_streams 1\n" in text):
            break
        time.sleep(0.2)
    dropped = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                  if line.startswith("statecast_edge_dropped_total{"))
    assert f"statecast_edge_messages_received_total {n + 1}" in text, text
    assert dropped == n, text
    assert "statecast_edge_predictions_published_total 1" in text
    assert "statecast_edge_active_streams 1\n" in text  # no stream was created
    deadline = time.monotonic() + 30
    while len(errors) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(errors) == n
    assert all(json.loads(e)["reason"] for e in errors)
    pub.publish(f"{cid}/k/temp", good[1], qos=1).wait_for_publish(10)
    preds = col.wait_for(f"{cid}-out/", 2)
    want, _ = StepModel(models["step"]).run_sequence(np.array([[50.0], [51.0]], np.float32))
    np.testing.assert_allclose([p["forecast"] for p in preds], want, atol=1e-6, rtol=0)
    assert d.proc.poll() is None
    assert d.stop(signal.SIGTERM) == 0
    assert "Traceback" not in d.log()
    for c in (pub, err):
        c.disconnect()
        c.loop_stop()
