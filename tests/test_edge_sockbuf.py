"""The read-buffered socket hands paho exactly the bytes a plain socket would, and says when
bytes are waiting in memory (paho then reads without waiting in select)."""

from __future__ import annotations

import socket

import paho.mqtt.client as mqtt
import pytest
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


def test_installs_on_a_paho_client() -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2)
    assert buffer_reads(client)
