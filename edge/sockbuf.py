"""A read-buffered socket for paho-mqtt: one recv() serves many packets.

paho reads every packet with three recv() calls (command byte, length, body); under load that is
most of the network thread's time. `BufferedSocket` reads up to 64 KiB at once and hands paho
the bytes it asks for from memory; `pending()` tells paho's loop that bytes are waiting (the same
hook paho uses for TLS), so nothing buffered is left behind when select() sees no new data.

This is the daemon's one reach into paho's private API (`Client._create_socket`). pyproject.toml
pins paho-mqtt to the minor release that tests/test_edge_sockbuf.py drives through it (split
packets, many packets per read, TLS); `buffer_reads` logs which read path is active.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

import paho.mqtt

log = logging.getLogger(__name__)

CHUNK = 65536


class BufferedSocket:
    """Wraps a connected (plain or TLS) socket; everything but recv passes through."""

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._buf = b""
        self._pos = 0

    def recv(self, n: int) -> bytes:
        buf, pos = self._buf, self._pos
        if pos >= len(buf):
            data = self._sock.recv(max(n, CHUNK))  # BlockingIOError passes to paho
            if len(data) <= n:
                return data
            self._buf, self._pos = data, n
            return data[:n]
        end = pos + n
        self._pos = end
        if end >= len(buf):
            self._buf, self._pos = b"", 0
            return buf[pos:] if pos else buf
        return buf[pos:end]

    def pending(self) -> int:
        extra = self._sock.pending() if hasattr(self._sock, "pending") else 0
        return len(self._buf) - self._pos + extra

    def send(self, data: bytes | bytearray) -> int:
        return int(self._sock.send(data))

    def fileno(self) -> int:
        return int(self._sock.fileno())

    def setblocking(self, flag: bool) -> None:
        self._sock.setblocking(flag)

    def setsockopt(self, *args: Any) -> None:
        self._sock.setsockopt(*args)

    def close(self) -> None:
        self._sock.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def buffer_reads(client: Any) -> bool:
    """Make `client` (a paho-mqtt Client) read through a BufferedSocket, with TCP_NODELAY set
    on every connection it opens; logs which path is active. paho has no public hook for this:
    it wraps the client's socket factory, `_create_socket`, and does nothing — returns False,
    paho's plain (slower) reads — if a paho release no longer has it."""
    version = getattr(paho.mqtt, "__version__", "?")
    create = getattr(client, "_create_socket", None)
    if create is None or not callable(create):
        log.warning("paho-mqtt %s has no Client._create_socket: MQTT reads take paho's plain "
                    "path (three recv() calls per packet, slower); the buffered socket is tested "
                    "with the paho-mqtt release pinned in pyproject.toml", version)
        return False

    def buffered() -> BufferedSocket:
        sock = create()
        inner = getattr(sock, "_socket", sock)  # paho's TLS/websocket wrappers keep it here
        if isinstance(inner, socket.socket) and inner.family in (socket.AF_INET, socket.AF_INET6):
            inner.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return BufferedSocket(sock)

    client._create_socket = buffered
    log.info("MQTT reads go through a buffered socket (paho-mqtt %s)", version)
    return True
