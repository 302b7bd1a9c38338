"""A TCP relay that can be cut: a backend outage for one test, without touching the shared servers.

Point the gateway at :attr:`TcpRelay.port` instead of the real server (PostgreSQL, Redis). While the
relay runs, every connection is forwarded; :meth:`TcpRelay.cut` ends every open connection and leaves
the port bound but not listening, so new connections are refused (``ECONNREFUSED``) exactly as when the
server is down — and no other process can take the port meanwhile.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["TcpRelay", "run_relay"]

_ACCEPT_POLL_S = 0.1


class TcpRelay:
    """Forwards ``127.0.0.1:<port>`` to ``target`` until :meth:`cut`."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._listener.settimeout(_ACCEPT_POLL_S)
        self.port: int = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._holder: socket.socket | None = None
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True)
        self._acceptor.start()

    def _start(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, server]
            self._start(self._pump, client, server)
            self._start(self._pump, server, client)

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        """The outage: every open connection is ended, new ones are refused from now on."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._acceptor.join(timeout=5)  # it polls the flag at least every _ACCEPT_POLL_S
        self._listener.close()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        # Bound but not listening: connections are refused and the port stays ours.
        holder = socket.socket()
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", self.port))
        self._holder = holder

    def close(self) -> None:
        """Stop relaying and release everything (idempotent)."""
        self.cut()
        with self._lock:
            sockets, threads = list(self._sockets), list(self._threads)
        for sock in sockets:
            sock.close()
        for thread in threads:
            thread.join(timeout=5)
        if self._holder is not None:
            self._holder.close()


@contextmanager
def run_relay(host: str, port: int) -> Iterator[TcpRelay]:
    relay = TcpRelay((host, port))
    try:
        yield relay
    finally:
        relay.close()
