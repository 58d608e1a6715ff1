"""A bare-socket MQTT 3.1.1 client for the benchmarks: load generator and collector in one.

paho-mqtt in Python tops out near the rates the daemon is asked to reach, so a paho generator
would measure itself. This client does only what the benchmarks need — CONNECT (clean session),
SUBSCRIBE, PUBLISH at QoS 0/1 (sending and receiving, PUBACK both ways) — on one non-blocking
socket driven by `select`, writing many packets per `send()` and parsing many per `recv()`.
It is not a general MQTT client and never part of statecast.
"""

from __future__ import annotations

import select
import socket
import struct
import time
from collections.abc import Callable

Handler = Callable[[str, bytes, float], None]


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _str(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("!H", len(b)) + b


class RawClient:
    """One MQTT connection; call `pump()` in a loop to send what is queued and read what came."""

    def __init__(self, host: str, port: int, client_id: str, on_message: Handler) -> None:
        self.sock = socket.create_connection((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.on_message = on_message
        self.out = bytearray()
        self.inbuf = bytearray()
        self.pid = 0
        self.acked = 0
        self.suback = 0
        body = _str("MQTT") + bytes([4, 0x02]) + struct.pack("!H", 0) + _str(client_id)
        self.sock.sendall(b"\x10" + _varint(len(body)) + body)
        head = self._read_exact(4)
        if head[0] != 0x20 or head[3] != 0:
            raise ConnectionError(f"broker refused the connection: {head!r}")
        self.sock.setblocking(False)

    def _read_exact(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("broker closed the connection")
            data += chunk
        return data

    def _next_pid(self) -> int:
        self.pid = self.pid % 65535 + 1
        return self.pid

    def subscribe(self, topics: list[tuple[str, int]], timeout: float = 10.0) -> None:
        body = struct.pack("!H", self._next_pid())
        for t, q in topics:
            body += _str(t) + bytes([q])
        self.out += b"\x82" + _varint(len(body)) + body
        deadline = time.monotonic() + timeout
        while not self.suback:
            if time.monotonic() > deadline:
                raise TimeoutError("no SUBACK")
            self.pump(0.05)

    def publish(self, topic: bytes, payload: bytes, qos: int = 0) -> None:
        """Queue one PUBLISH (`topic` already encoded)."""
        t = struct.pack("!H", len(topic)) + topic
        if qos:
            body = t + struct.pack("!H", self._next_pid()) + payload
            self.out += b"\x32" + _varint(len(body)) + body
        else:
            body = t + payload
            self.out += b"\x30" + _varint(len(body)) + body

    def pump(self, timeout: float = 0.0) -> None:
        """Write what is queued, read what is there (waiting up to `timeout`), dispatch it."""
        wlist = [self.sock] if self.out else []
        r, w, _ = select.select([self.sock], wlist, [], timeout)
        if w:
            try:
                sent = self.sock.send(self.out)
                del self.out[:sent]
            except BlockingIOError:
                pass
        if r:
            try:
                data = self.sock.recv(1 << 20)
            except BlockingIOError:
                return
            if not data:
                raise ConnectionError("broker closed the connection")
            self.inbuf += data
            self._parse(time.perf_counter())

    def _parse(self, now: float) -> None:
        buf = self.inbuf
        i = 0
        n = len(buf)
        while i + 2 <= n:
            kind = buf[i]
            length = 0
            mult = 1
            j = i + 1
            while True:
                if j >= n:
                    del buf[:i]
                    return
                b = buf[j]
                length += (b & 0x7F) * mult
                mult *= 128
                j += 1
                if not b & 0x80:
                    break
            if j + length > n:
                break
            body = bytes(buf[j : j + length])
            i = j + length
            ptype = kind >> 4
            if ptype == 3:
                qos = (kind >> 1) & 3
                tlen = struct.unpack_from("!H", body)[0]
                topic = body[2 : 2 + tlen].decode()
                k = 2 + tlen
                if qos:
                    self.out += b"\x40\x02" + body[k : k + 2]
                    k += 2
                self.on_message(topic, body[k:], now)
            elif ptype == 4:
                self.acked += 1
            elif ptype == 9:
                self.suback += 1
        del buf[:i]

    def flush(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while self.out and time.monotonic() < deadline:
            self.pump(0.01)

    def close(self) -> None:
        try:
            self.sock.setblocking(True)
            self.sock.sendall(b"\xe0\x00")
        except OSError:
            pass
        self.sock.close()
