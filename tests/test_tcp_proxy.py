"""The cuttable TCP proxy of the history test, against an echo server of its own."""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import TYPE_CHECKING

import pytest

from tests.tcp_proxy import TcpProxy

if TYPE_CHECKING:
    from collections.abc import Iterator


@pytest.fixture
def echo_port() -> Iterator[int]:
    """An echo server on a free loopback port."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            while data := conn.recv(4096):
                conn.sendall(data)

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        listener.close()


def echo(port: int, payload: bytes = b"ping", timeout: float = 1.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(payload)
        return sock.recv(4096)


def test_forwards_cuts_and_restores(echo_port: int) -> None:
    with TcpProxy(echo_port) as proxy:
        assert echo(proxy.port) == b"ping"
        held = socket.create_connection(("127.0.0.1", proxy.port), timeout=1)
        with held:
            held.sendall(b"a")
            assert held.recv(10) == b"a"
            assert proxy.cut("hang") >= 1
            assert held.recv(10) == b""  # the open connection was closed
        with pytest.raises(TimeoutError):
            echo(proxy.port, timeout=0.3)  # accepted, never answered
        proxy.restore()
        assert echo(proxy.port) == b"ping"
        proxy.cut("refuse")
        with pytest.raises(ConnectionRefusedError):
            echo(proxy.port)
        proxy.restore()
        assert echo(proxy.port, b"back") == b"back"
