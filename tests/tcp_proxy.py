"""A TCP proxy on 127.0.0.1 that a test can cut: one process's view of a server goes away
(a network partition of that process alone) while everyone else still reaches it.

:meth:`TcpProxy.cut` closes every connection through the proxy; until :meth:`restore`, new
connections either hang (``"hang"``: accepted, never answered, like packets dropped) or are
refused (``"refuse"``: nothing listens on the port). Threads, blocking sockets; every
thread is a daemon and :meth:`stop` ends them.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from types import TracebackType

CutMode = Literal["hang", "refuse"]
CHUNK = 65536


def _close(sock: socket.socket) -> None:
    """Shut down (waking a thread blocked in recv on it) and close."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


class TcpProxy:
    """Forwards ``127.0.0.1:<port>`` to ``upstream_host:upstream_port``."""

    def __init__(
        self, upstream_port: int, *, upstream_host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = port
        self.cut_mode: CutMode | None = None
        self.connections = 0
        """Connections accepted and forwarded so far."""
        self.severed = 0
        """Connections closed by :meth:`cut`."""
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._parked: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._stopped = False

    # -- control -------------------------------------------------------------------------

    def start(self) -> TcpProxy:
        self._listen()
        return self

    def cut(self, mode: CutMode = "hang") -> int:
        """Sever every connection; new ones hang or are refused until :meth:`restore`.
        Returns how many connections were severed."""
        with self._lock:
            self.cut_mode = mode
            severed = list(self._open)
            self._open.clear()
            listener = None
            if mode == "refuse":
                listener, self._listener = self._listener, None
        for sock in severed:
            _close(sock)
        if listener is not None:
            _close(listener)
        self.severed += len(severed)
        return len(severed)

    def restore(self) -> None:
        """Forward again; connections that hung during the cut are closed (reset)."""
        with self._lock:
            self.cut_mode = None
            parked, self._parked = self._parked, set()
            relisten = self._listener is None and not self._stopped
        for sock in parked:
            _close(sock)
        if relisten:
            self._listen()

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            sockets = [*self._open, *self._parked]
            self._open.clear()
            self._parked.clear()
            listener, self._listener = self._listener, None
        for sock in sockets:
            _close(sock)
        if listener is not None:
            _close(listener)

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- the threads -----------------------------------------------------------------------

    def _listen(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        with self._lock:
            self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # the listener was closed: cut("refuse") or stop()
            with self._lock:
                if self._stopped:
                    _close(client)
                    return
                if self.cut_mode is not None:
                    self._parked.add(client)  # accepted, never answered
                    continue
            self._forward(client)

    def _forward(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.upstream, timeout=2)
        except OSError:
            _close(client)
            return
        upstream.settimeout(None)
        with self._lock:
            if self.cut_mode is not None or self._stopped:
                _close(client)
                _close(upstream)
                return
            self._open.update((client, upstream))
            self.connections += 1
        for source, target in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pump, args=(source, target), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(CHUNK):
                target.sendall(data)
        except OSError:
            pass
        with self._lock:
            self._open.discard(source)
            self._open.discard(target)
        _close(source)
        _close(target)
