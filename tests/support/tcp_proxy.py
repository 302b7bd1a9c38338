"""A TCP forwarder that a test can take down and bring back: a backing service's outage on demand.

Point a gateway at :attr:`TcpProxy.port` instead of the real PostgreSQL or Redis port. :meth:`stop`
behaves like the server going away (every open connection is cut, new ones are refused) without
touching the real server, which other tests share; :meth:`start` brings it back on the same port.
Everything runs in threads of the test process and ends with the context manager, also on failure.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable
from types import TracebackType

__all__ = ["TcpProxy"]

_CHUNK = 65536


class TcpProxy:
    """Forward ``127.0.0.1:<port>`` to ``backend`` until stopped.

    Args:
        backend: The real service's ``(host, port)``.
    """

    def __init__(self, backend: tuple[str, int]) -> None:
        self.backend = backend
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port: int = probe.getsockname()[1]
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        """Listen (again) on :attr:`port`."""
        with self._lock:
            if self._listener is not None:
                return
            listener = socket.socket()
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", self.port))
            listener.listen(128)
            self._listener = listener
        self._spawn(self._accept_loop, listener)

    def stop(self) -> None:
        """Refuse new connections and cut every open one, as a server that went down."""
        with self._lock:
            listener, self._listener = self._listener, None
            conns, self._open = self._open, set()
        if listener is not None:
            # shutdown() wakes the thread blocked in accept(); close() alone may not.
            _quietly_shutdown(listener)
            listener.close()
        for conn in conns:
            _quietly_shutdown(conn)
            conn.close()

    def close(self) -> None:
        """Stop and wait for every thread."""
        self.stop()
        for thread in self._threads:
            thread.join(timeout=10)

    def __enter__(self) -> TcpProxy:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # stopped
            try:
                upstream = socket.create_connection(self.backend, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                if self._listener is not listener:  # stopped meanwhile
                    client.close()
                    upstream.close()
                    return
                self._open.update((client, upstream))
            self._spawn(self._pump, client, upstream)
            self._spawn(self._pump, upstream, client)

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):  # either side cut off: the connection is over
            while data := source.recv(_CHUNK):
                sink.sendall(data)
        # One side ended: end both, so neither peer waits on a half-dead connection. Each pump
        # closes the socket it reads; the other pump's recv has been woken by the shutdown.
        for sock in (source, sink):
            _quietly_shutdown(sock)
        with self._lock:
            self._open.discard(source)
        source.close()


def _quietly_shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already shut down or closed
        sock.shutdown(socket.SHUT_RDWR)
