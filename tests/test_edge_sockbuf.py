"""The read-buffered socket hands paho exactly the bytes a plain socket would, and says when
bytes are waiting in memory (paho then reads without waiting in select).

`edge/sockbuf.py` reaches into paho's private `Client._create_socket`, so the contract tests
here drive paho's own network loop (`Client.loop` → `loop_read`) through it, playing the broker
side of the connection byte for byte (as paho's own tests do), in plain TCP and in TLS: packets
cut at every awkward place, hundreds of packets in one read, QoS 1 acknowledgements going back.
The installed paho must be the release pyproject.toml pins.
"""

from __future__ import annotations

import logging
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from importlib.metadata import version
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from conftest import ROOT
from packaging.requirements import Requirement
from paho.mqtt.enums import CallbackAPIVersion

from edge.sockbuf import BufferedSocket, buffer_reads


def test_reads_like_a_socket_in_paho_sized_pieces() -> None:
    a, b = socket.socketpair()
    a.setblocking(False)
    sock = BufferedSocket(a)
    stream = bytes(range(256)) * 40
    b.sendall(stream)
    got = bytearray()
    sizes = [1, 1, 300, 1, 2, 5000, 7, 10_000]
    for n in sizes:
        piece = sock.recv(n)
        assert len(piece) == min(n, len(stream) - len(got))
        got += piece
        assert sock.pending() == len(stream) - len(got)
    assert bytes(got) == stream and sock.pending() == 0
    with pytest.raises(BlockingIOError):
        sock.recv(1)
    b.sendall(b"xy")
    assert sock.recv(1) == b"x" and sock.pending() == 1 and sock.recv(5) == b"y"
    b.close()
    assert sock.recv(1) == b""  # closed: paho sees the connection lost
    assert sock.fileno() == a.fileno()
    sock.close()


def test_installs_on_the_pinned_paho_and_says_so(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The installed paho is the pinned release, the buffered path is taken on it, and the log
    says which path is active, also when a paho release has no `_create_socket`."""
    found = re.search(r'"(paho-mqtt[^"]*)"', (ROOT / "pyproject.toml").read_text())
    assert found is not None
    pin = Requirement(found.group(1))
    assert version("paho-mqtt") in pin.specifier, (version("paho-mqtt"), str(pin))
    with caplog.at_level(logging.INFO, logger="edge.sockbuf"):
        assert buffer_reads(mqtt.Client(CallbackAPIVersion.VERSION2))
    assert "MQTT reads go through a buffered socket" in caplog.text
    caplog.clear()
    monkeypatch.delattr(mqtt.Client, "_create_socket")
    with caplog.at_level(logging.INFO, logger="edge.sockbuf"):
        assert not buffer_reads(mqtt.Client(CallbackAPIVersion.VERSION2))
    assert "MQTT reads take paho's plain path" in caplog.text


# -- the contract: paho's own read loop through the buffered socket ----------------------------


def remaining_length(n: int) -> bytes:
    """MQTT's variable-length integer (1 to 4 bytes)."""
    out = bytearray()
    while True:
        n, byte = divmod(n, 128)
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def publish_packet(topic: str, payload: bytes, mid: int | None = None) -> bytes:
    """A PUBLISH packet: QoS 0, or QoS 1 with message id `mid`."""
    t = topic.encode()
    body = len(t).to_bytes(2, "big") + t + (b"" if mid is None else mid.to_bytes(2, "big"))
    body += payload
    return bytes([0x30 if mid is None else 0x32]) + remaining_length(len(body)) + body


CONNACK = b"\x20\x02\x00\x00"


class FakeBroker:
    """The broker's end of one connection on a free loopback port, plain or TLS: it reads the
    client's packets and writes exactly the bytes it is given, when it is told to."""

    def __init__(self, tls: ssl.SSLContext | None) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(10)
        self.port = self.server.getsockname()[1]
        self.tls = tls
        self.conn: socket.socket | None = None
        # accepted (and the TLS handshake answered) in a thread: paho's connect() waits for it
        self._accepting = threading.Thread(target=self._accept, name="test-fake-broker")
        self._accepting.start()

    def _accept(self) -> None:
        conn, _ = self.server.accept()
        conn.settimeout(10)
        self.conn = conn if self.tls is None else self.tls.wrap_socket(conn, server_side=True)

    def accepted(self) -> socket.socket:
        self._accepting.join(10)
        assert self.conn is not None, "the client did not connect"
        return self.conn

    def send(self, data: bytes) -> None:
        self.accepted().sendall(data)

    def read_packet(self) -> tuple[int, bytes]:
        """(packet type and flags, body) of the client's next packet."""
        first = self._exactly(1)[0]
        n, shift = 0, 0
        while True:
            byte = self._exactly(1)[0]
            n |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return first, self._exactly(n)

    def _exactly(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.accepted().recv(n - len(buf))
            assert chunk, "the client closed the connection"
            buf += chunk
        return buf

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.server.close()


@pytest.fixture(params=["plain", "tls"])
def fake_broker(request: pytest.FixtureRequest, tls_certs: Path) -> Iterator[FakeBroker]:
    tls = None
    if request.param == "tls":
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(tls_certs / "server.crt", tls_certs / "server.key")
    broker = FakeBroker(tls)
    yield broker
    broker.close()


def drive(client: mqtt.Client, done: Callable[[], bool], timeout: float = 20.0) -> None:
    """Run paho's own network loop (select, loop_read, loop_write, loop_misc) in this thread
    until `done()`."""
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "paho did not get there"
        rc = client.loop(0.2)
        assert rc == mqtt.MQTT_ERR_SUCCESS, mqtt.error_string(rc)


def test_paho_reads_split_and_coalesced_packets_through_the_buffer(
    fake_broker: FakeBroker, tls_certs: Path
) -> None:
    """Hundreds of packets in one write (one recv() takes them: paho must learn from
    `pending()` that more are waiting, select() would not tell it), then packets cut inside the
    fixed header, the remaining length and the body, one piece per loop: every message arrives
    whole and in order, and the QoS 1 acknowledgements go back with the right ids."""
    broker = fake_broker
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="sockbuf-contract")
    assert buffer_reads(client)
    if broker.tls is not None:
        client.tls_set(ca_certs=str(tls_certs / "ca.crt"), cert_reqs=ssl.CERT_REQUIRED)
    got: list[tuple[str, bytes, int]] = []
    client.on_message = lambda c, u, msg: got.append((msg.topic, msg.payload, msg.qos))
    client.connect("localhost" if broker.tls else "127.0.0.1", broker.port, keepalive=60)
    assert isinstance(client.socket(), BufferedSocket)  # paho reads through our factory's socket
    kind, _ = broker.read_packet()
    assert kind == 0x10  # CONNECT
    broker.send(CONNACK)
    drive(client, client.is_connected)

    sent: list[tuple[str, bytes, int]] = []
    acks: list[int] = []

    def packet(topic: str, payload: bytes, mid: int | None = None) -> bytes:
        sent.append((topic, payload, 0 if mid is None else 1))
        if mid is not None:
            acks.append(mid)
        return publish_packet(topic, payload, mid)

    many = b"".join(packet("t/many", b"%d" % i, mid=1000 + i if i % 25 == 0 else None)
                    for i in range(400))
    broker.send(many)
    drive(client, lambda: len(got) == len(sent))

    # 20,480 bytes of payload (a 3-byte remaining length), 300 (2 bytes), none (1 byte)
    stream = (packet("t/split", bytes(range(256)) * 80, mid=7) + packet("t/split", b"x" * 300)
              + packet("t/split", b"", mid=8) + packet("t/split", b"end"))
    cuts = sorted({*range(1, 9), 100, 8000, 16_390, 20_493, 20_494, 20_495, 20_496, 20_497,
                   20_800, 20_803, 20_806, 20_810, len(stream) - 2})
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        broker.send(stream[start:end])
        client.loop(1.0)  # reads this piece (maybe less of it: more cuts, never fewer)
    drive(client, lambda: len(got) == len(sent))
    assert got == sent

    for mid in acks:  # the byte stream stayed in step both ways: one PUBACK per QoS 1 id
        assert broker.read_packet() == (0x40, mid.to_bytes(2, "big"))
    client.disconnect()
    assert broker.read_packet() == (0xE0, b"")  # DISCONNECT
