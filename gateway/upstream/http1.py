"""The proxy stage's HTTP/1.1 client: keep-alive connections per target, responses parsed by llhttp.

Why not aiohttp's client (which the gateway still uses for WebSockets and health checks): on the
signed-in hot path its request machinery (``ClientRequest``/``ClientResponse`` objects, CIMultiDict
headers, str/bytes round trips, per-read timer rescheduling) was about 45% of a worker's CPU in the
profile, more than the whole gateway pipeline. A proxy needs far less: the headers arrive as bytes
and leave as bytes, the response head is handed on as it came, and the body is streamed. This module
does only that, with httptools (the llhttp parser Node.js uses) for the response side.

What it guarantees, the same as the aiohttp path did:

- the request head is written in one ``write``; a body is streamed from an async iterator with the
  client's framing (``Content-Length`` or chunked), never buffered whole, with write back-pressure;
- the response head is awaited for at most ``read_timeout`` after the request was sent, and every
  wait for more of the body too (nginx's ``proxy_read_timeout``); such a timeout raises
  :class:`TimeoutError`;
- :class:`UpstreamConnectError` means no connection was made (nothing was sent: the caller may try
  another target), also when connecting (TCP and TLS) took longer than ``connect_timeout``
  (:class:`UpstreamConnectTimeout`); any other failure is :class:`UpstreamProtocolError` (garbage, a
  close before the response was complete);
- a connection goes back to the pool only after a complete response that allows keep-alive; a
  reused connection that the upstream had closed meanwhile is retried once on a new connection for
  idempotent requests without a body;
- 1xx interim responses are skipped; responses to HEAD and 204/304 have no body; a response without
  length or chunking ends when the upstream closes;
- one exchange is one response: a byte after a complete response (the start of a second one in the
  same write, or a body longer than its ``Content-Length``) is never parsed into this exchange, its
  head or its body: the connection is closed and never reused, and the client gets exactly the
  response as framed (nginx does the same: it keeps the declared length and drops the connection).
  llhttp skips bare CR/LF between messages (nothing is parsed from them);
- the response head (interim responses included) is at most ``_MAX_HEAD`` bytes with at most
  ``_MAX_HEADERS`` fields, or the exchange fails (a 502) and the connection is closed; a chunked
  answer's trailers are dropped (never merged into the head) and may take at most
  ``_MAX_STALL`` bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Final

import httptools

from gateway.upstream.target import Target
from gateway.upstream.tls import TlsClient, describe_tls_error

__all__ = [
    "Http1Client",
    "UpstreamBusy",
    "UpstreamConnectError",
    "UpstreamConnectTimeout",
    "UpstreamProtocolError",
    "UpstreamResponse",
    "UpstreamTlsError",
]

# Buffered response bytes above which the connection stops reading until the client catches up.
_HIGH_WATER: Final = 256 * 1024
_IDLE_SECONDS: Final = 50.0  # below the common 60 s keep-alive timeout of upstream servers
_MAX_IDLE_PER_TARGET: Final = 256
_IDEMPOTENT: Final = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
# The response head's limits. An upstream's head otherwise grows a worker without bound (an endless
# list of headers took GBs in seconds, one endless value blocked the loop: httptools joins a value's
# pieces per read). 64 KiB is more than nginx (proxy_buffer_size, one page: 4 or 8 KiB; a bigger head
# is its "upstream sent too big header", a 502) and Node.js (16 KiB) accept, so an app that works
# behind them works here; 100 fields is Apache httpd's LimitRequestFields.
_MAX_HEAD: Final = 64 * 1024
_MAX_HEADERS: Final = 100
# A chunked answer's bytes in a row that carry no body (its trailers, or chunk framing alone): a
# trailer section is dropped, and this bounds what it may cost (the same as a head).
_MAX_STALL: Final = 64 * 1024


class UpstreamConnectError(Exception):
    """No connection to the target could be made; nothing was sent."""


class UpstreamConnectTimeout(UpstreamConnectError):
    """Connecting (TCP and TLS) took longer than the connect timeout; nothing was sent.

    A connect error like any other, on purpose: the caller counts it towards passive ejection and
    may try another target, as for a refused connection (a target whose backlog is full or whose
    host is gone drops the connection attempt silently instead of refusing it).
    """


class UpstreamBusy(Exception):
    """Every connection this worker may hold to the applications is in use, and none came free within
    the connect timeout; nothing was sent. Not the target's fault: it counts for no ejection (an attack
    run held every slot with request bodies trickled a byte at a time, and requests to every route
    waited for ever)."""


class UpstreamTlsError(UpstreamConnectError):
    """The TLS handshake failed: the app's certificate (CA, name, pin) or ours was refused; nothing was sent."""


# (scheme, host, port, TLS settings): a connection is reused only for the same TLS settings, so after a
# reload with a renewed certificate every new exchange runs on a connection made with it.
_Key = tuple[str, str, int, TlsClient | None]


class UpstreamProtocolError(Exception):
    """The upstream broke the exchange: malformed response, or closed before it was complete."""


# What feed_data raises on a response it will not parse on: HttpParserUpgrade is no HttpParserError (an
# attack run's 101 from the app escaped into the event loop's "Fatal error on transport").
_PARSE_ERRORS: Final = (httptools.HttpParserError, httptools.HttpParserUpgrade)


class _Stop(Exception):
    """Raised from a parser callback to stop parsing there (feed_data then raises HttpParserError)."""


class _Dropped(list[tuple[bytes, bytes]]):
    """Where header fields go once the head is done (a trailer section): nowhere."""

    __slots__ = ()

    def append(self, item: tuple[bytes, bytes], /) -> None:
        pass


_TRAILERS: Final = _Dropped()
_FRAMING: Final = frozenset({b"content-length", b"transfer-encoding"})


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection to a target, carrying one exchange at a time."""

    def __init__(self, key: _Key) -> None:
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.in_use = True
        self.counted_out = False  # its pool slot was freed (see Http1Client._forget)
        self.idle_since = 0.0
        self.reused = False
        # The head of the response under way, once it is complete (``headers`` then takes trailers).
        self.response_headers: list[tuple[bytes, bytes]] = []
        self.stalled = 0  # a chunked answer's bytes in a row without body (see _feed_chunked)
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_room = _MAX_HEAD  # bytes the head may still take
        self.content_length: int | None = None
        self.chunked = False
        self.head_done = False
        self.complete = False
        self.keep_alive = False
        self.received_any = False
        self.error: Exception | None = None
        self.body: deque[bytes] = deque()
        self.buffered = 0
        self.waiter: asyncio.Future[None] | None = None
        self.reading_paused = False
        self.writing_paused = False
        self.drain_waiter: asyncio.Future[None] | None = None

    # -- asyncio.Protocol --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if not self.in_use:
            self.close()  # bytes nobody asked for: the connection's framing can no longer be trusted
            return
        self.received_any = True
        if not self.head_done:
            self.head_room -= len(data)
            if self.head_room < 0:
                self._feed_past_head_room(data)
                return
        elif self.chunked:
            self._feed_chunked(data)
            return
        try:
            self.parser.feed_data(data)
        except _PARSE_ERRORS as exc:
            self._broken(exc)

    def _broken(self, exc: Exception) -> None:
        # After a complete response (on_message_begin) the exchange stands as it was; the error only
        # matters to one that is not complete.
        self._fail(UpstreamProtocolError(f"malformed response from the application ({exc})"))
        self.close()

    def _feed_past_head_room(self, data: bytes) -> None:
        """A read that takes the bytes before the head's end past ``_MAX_HEAD``: only the room left
        may still be head; the rest is parsed only if the head ended within it."""
        room = self.head_room + len(data)
        try:
            self.parser.feed_data(data[:room])
            if self.head_done:
                self.parser.feed_data(data[room:])
        except _PARSE_ERRORS as exc:
            self._broken(exc)
            return
        if not self.head_done:
            self._fail(UpstreamProtocolError(f"the application's response head exceeds {_MAX_HEAD} bytes"))
            self.close()

    def _feed_chunked(self, data: bytes) -> None:
        """A read of a chunked body: bytes that carry none (a trailer section) are bounded."""
        before = self.buffered
        try:
            self.parser.feed_data(data)
        except _PARSE_ERRORS as exc:
            self._broken(exc)
            return
        if self.buffered != before or self.complete:
            self.stalled = 0
            return
        self.stalled += len(data)
        if self.stalled > _MAX_STALL:
            self._fail(
                UpstreamProtocolError(f"the application sent {_MAX_STALL} bytes of trailers or chunk framing")
            )
            self.close()

    def eof_received(self) -> bool:
        return False  # close our side too; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.head_done and not self.complete and self.content_length is None and not self.chunked:
            # A response framed by closing the connection (RFC 9112 §6.3, last rule) ends here.
            self.complete = True
            self.keep_alive = False
            self._wake()
        elif not self.complete:
            self._fail(UpstreamProtocolError("the application closed the connection"))
        self._wake_drain()

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        self._wake_drain()

    # -- httptools callbacks -----------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.complete:
            # A byte after the complete response (the start of another, or a body longer than its
            # Content-Length): nothing of it is parsed, and the connection is not reused (the caller
            # of feed_data closes it). Only the message's start is looked at, not every header.
            self.keep_alive = False
            raise _Stop

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        headers = self.headers
        if status < 200:
            # An interim response (100 Continue, 103 Early Hints): wait for the real one. It has no
            # content (RFC 9110 §15.2); one framed with a body had that body put before the real
            # answer's (an attack run): the exchange is broken, 502, and the connection not reused.
            if any(name.lower() in _FRAMING for name, _ in headers):
                self._fail(
                    UpstreamProtocolError("the application sent an interim (1xx) response with a body")
                )
                raise _Stop
            self.headers = []
            return
        if len(headers) > _MAX_HEADERS:
            self._fail(
                UpstreamProtocolError(f"the application's response has more than {_MAX_HEADERS} headers")
            )
            raise _Stop  # stops the parser; data_received closes the connection
        if status > 599:
            # RFC 9110 §15: three digits from 100 to 599; a client has no meaning for 600 or 999.
            self._fail(UpstreamProtocolError(f"the application answered with status {status}"))
            raise _Stop
        self.status = status
        # A chunked answer's trailer section arrives as header fields too: it is dropped, so it can
        # never become part of the head (RFC 9110 §6.5.1: a trailer is not to be merged blindly).
        self.response_headers = headers
        self.headers = _TRAILERS
        codings: list[bytes] = []
        for name, value in headers:
            lname = name.lower()
            if lname == b"content-length":
                self.content_length = int(value) if value.strip().isdigit() else None
            elif lname == b"transfer-encoding":
                codings.extend(c.strip().lower() for c in value.split(b","))
        if codings:
            if codings != [b"chunked"]:
                # Transfer-Encoding is hop-by-hop, so a gzip (or gzip, chunked) body would reach the
                # client unlabelled, and one ended by closing looked like a broken chunked one: 502, as
                # nginx answers an unknown coding.
                self._fail(
                    UpstreamProtocolError(
                        f"the application's Transfer-Encoding is {b', '.join(codings)[:60]!r}, not chunked"
                    )
                )
                raise _Stop
            self.chunked = True
            self.stalled = 0
        self.head_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)
        self.buffered += len(body)
        if self.buffered > _HIGH_WATER and not self.reading_paused and self.transport is not None:
            self.reading_paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if not self.head_done:
            return  # the end of an interim response
        self.complete = True
        self.keep_alive = self.parser.should_keep_alive()
        self._wake()

    # -- used by the client ------------------------------------------------------------------------

    def _fail(self, exc: Exception) -> None:
        if self.error is None:
            self.error = exc
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _wake_drain(self) -> None:
        waiter = self.drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self, within: float | None) -> None:
        """Wait for the parser to make progress (or the connection to fail), at most ``within`` seconds."""
        loop = asyncio.get_running_loop()
        waiter = self.waiter = loop.create_future()
        timer = None if within is None else loop.call_later(within, _expire, waiter)
        try:
            await waiter
        finally:
            self.waiter = None
            if timer is not None:
                timer.cancel()

    async def drain(self) -> None:
        """Wait until the transport accepts more data (back-pressure on request bodies)."""
        while self.writing_paused and not self.closed:
            self.drain_waiter = asyncio.get_running_loop().create_future()
            try:
                await self.drain_waiter
            finally:
                self.drain_waiter = None

    def take_body(self) -> bytes:
        data = self.body.popleft() if len(self.body) == 1 else b"".join(self.body)
        if len(self.body) > 1:
            self.body.clear()
        self.buffered = 0
        if self.reading_paused and self.transport is not None and not self.closed:
            self.reading_paused = False
            self.transport.resume_reading()
        return data

    def write(self, data: bytes) -> None:
        if self.closed or self.transport is None:
            raise UpstreamProtocolError("the application closed the connection")
        self.transport.write(data)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class UpstreamResponse:
    """A response whose head has arrived; the body is read with :meth:`read` or :meth:`chunks`.

    Always call :meth:`release` (it returns the connection to the pool only if the exchange ended
    cleanly, and closes it otherwise).
    """

    __slots__ = ("_client", "_conn", "_read_timeout", "_reusable", "headers", "status")

    def __init__(
        self, client: Http1Client, conn: _Connection, read_timeout: float | None, head_only: bool
    ) -> None:
        self._client = client
        self._conn = conn
        self._read_timeout = read_timeout
        self.status = conn.status
        self.headers = conn.response_headers
        self._reusable = not head_only
        if head_only:
            # HEAD answers carry a Content-Length but no body, and llhttp cannot know the request was
            # a HEAD: the exchange ends with the head, and the connection is not reused.
            conn.complete = True

    @property
    def content_length(self) -> int | None:
        """The length the upstream declared, or None (chunked or until close)."""
        return None if self._conn.chunked else self._conn.content_length

    async def read(self) -> bytes:
        """The whole (small) body. Raises UpstreamProtocolError if it was cut short."""
        parts = [chunk async for chunk in self.chunks()]
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives. Raises UpstreamProtocolError or TimeoutError."""
        conn = self._conn
        while True:
            if conn.body:
                yield conn.take_body()
                continue
            if conn.complete:
                return
            if conn.error is not None:
                raise conn.error
            await conn.wait(self._read_timeout)

    def release(self) -> None:
        """Hand the connection back (clean, complete, keep-alive) or close it."""
        conn = self._conn
        if self._reusable and conn.complete and conn.keep_alive and not conn.body and not conn.closed:
            self._client._give_back(conn)
        else:
            conn.close()
            self._client._forget(conn)


class Http1Client:
    """Keep-alive connection pools for the proxy stage, with a bound on open connections."""

    def __init__(self, *, max_connections: int) -> None:
        self._limit = max(1, max_connections)
        self._open = 0
        self._idle: dict[_Key, list[_Connection]] = {}
        self._slot_waiters: deque[asyncio.Future[None]] = deque()
        self._tls = ssl.create_default_context()
        self._closed = False

    async def request(
        self,
        target: Target,
        method: str,
        path: str,
        headers: list[tuple[bytes, bytes]],
        body: AsyncIterator[bytes] | None,
        *,
        chunked: bool,
        connect_timeout: float | None,
        read_timeout: float | None,
    ) -> UpstreamResponse:
        """Send one request to ``target`` and wait for the response head.

        ``headers`` are sent as given (the caller frames the body with ``Content-Length`` or asks for
        ``chunked``). Raises UpstreamConnectError, UpstreamProtocolError or TimeoutError.
        """
        head = _request_head(method, path, headers, chunked)
        conn = await self._acquire(target, connect_timeout)
        try:
            return await self._exchange(conn, method, head, body, chunked, read_timeout)
        except UpstreamProtocolError:
            if not (conn.reused and body is None and not conn.received_any and method in _IDEMPOTENT):
                raise
        # Most likely the upstream had closed this idle keep-alive connection before our request
        # reached it. It may also have crashed while processing it: so only idempotent methods are
        # sent again (RFC 9110 §9.2.2, as nginx's proxy_next_upstream does).
        conn = await self._acquire(target, connect_timeout, fresh=True)
        return await self._exchange(conn, method, head, body, chunked, read_timeout)

    async def _exchange(
        self,
        conn: _Connection,
        method: str,
        head: bytes,
        body: AsyncIterator[bytes] | None,
        chunked: bool,
        read_timeout: float | None,
    ) -> UpstreamResponse:
        try:
            conn.write(head)
            if body is not None:
                try:
                    await _send_body(conn, body, chunked)
                except UpstreamProtocolError:
                    if not conn.head_done:
                        raise
                    # The application answered early (e.g. 413) and hung up: its answer is what counts.
            while not conn.head_done:
                if conn.error is not None:
                    raise conn.error
                await conn.wait(read_timeout)
        except BaseException:
            conn.close()
            self._forget(conn)
            raise
        return UpstreamResponse(self, conn, read_timeout, head_only=method == "HEAD")

    # -- the pool ----------------------------------------------------------------------------------

    async def _acquire(
        self, target: Target, connect_timeout: float | None, *, fresh: bool = False
    ) -> _Connection:
        key = (target.scheme, target.host, target.port, target.tls)
        while True:
            conn = None if fresh else self._idle_connection(key)
            if conn is not None:
                return conn
            if self._open < self._limit or self._evict_idle():
                break
            # At the limit with nothing idle: wait until a connection is handed back or closed, for
            # as long as a connection may take to open.
            waiter = asyncio.get_running_loop().create_future()
            self._slot_waiters.append(waiter)
            try:
                async with asyncio.timeout(connect_timeout):
                    await waiter
            except TimeoutError:
                if waiter.done() and not waiter.cancelled():
                    self._wake_one()  # woken as the time ran out: the wake is the next waiter's
                raise UpstreamBusy(
                    f"all {self._limit} connections to the applications are in use "
                    "(limits.max_upstream_connections)"
                ) from None
            finally:
                with contextlib.suppress(ValueError):
                    self._slot_waiters.remove(waiter)
        self._open += 1
        try:
            return await self._connect(key, target, connect_timeout)
        except BaseException:
            self._release_slot()
            raise

    def _idle_connection(self, key: _Key) -> _Connection | None:
        idle = self._idle.get(key)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if conn.closed or now - conn.idle_since > _IDLE_SECONDS:
                conn.close()
                self._forget(conn)
                continue
            conn.reused = conn.in_use = True
            conn._reset()
            return conn
        return None

    async def _connect(self, key: _Key, target: Target, within: float | None) -> _Connection:
        loop = asyncio.get_running_loop()
        tls: ssl.SSLContext | None = None
        server_name: str | None = None
        if target.scheme == "https":
            route_tls = target.tls
            tls = self._tls if route_tls is None else route_tls.context
            server_name = target.host if route_tls is None else route_tls.server_name or target.host
        try:
            async with asyncio.timeout(within):
                _, conn = await loop.create_connection(
                    lambda: _Connection(key), target.host, target.port, ssl=tls, server_hostname=server_name
                )
        except TimeoutError as exc:
            raise UpstreamConnectTimeout("connect timed out") from exc
        except ssl.SSLError as exc:
            raise UpstreamTlsError(f"TLS handshake failed: {describe_tls_error(exc)}") from exc
        except OSError as exc:
            raise UpstreamConnectError(f"{type(exc).__name__}: {exc}") from exc
        return conn

    def _give_back(self, conn: _Connection) -> None:
        if self._closed:
            conn.close()
            self._forget(conn)
            return
        idle = self._idle.setdefault(conn.key, [])
        if len(idle) >= _MAX_IDLE_PER_TARGET:
            conn.close()
            self._forget(conn)
            return
        conn.idle_since = time.monotonic()
        conn.in_use = False
        idle.append(conn)
        self._wake_one()

    def _forget(self, conn: _Connection) -> None:
        # Called once per connection that will not be used again: it frees its slot.
        if not conn.counted_out:
            conn.counted_out = True
            self._release_slot()

    def _release_slot(self) -> None:
        self._open -= 1
        self._wake_one()

    def _wake_one(self) -> None:
        while self._slot_waiters:
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _evict_idle(self) -> bool:
        # At the limit, an idle connection to some other target is worth less than a new one here.
        for idle in self._idle.values():
            if idle:
                conn = idle.pop(0)
                conn.close()
                conn.counted_out = True
                self._open -= 1  # its slot goes to the caller at once, not to a waiter
                return True
        return False

    async def close(self) -> None:
        """Close every idle connection; connections in use close when released."""
        self._closed = True
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
            idle.clear()


_HEADER_JOIN: Final = b": ".join


def _request_head(method: str, path: str, headers: list[tuple[bytes, bytes]], chunked: bool) -> bytes:
    lines = [f"{method} {path} HTTP/1.1".encode("latin-1")]
    # map() with a bound join walks the headers in C: a generator here was ~150 of the request's
    # ~3,800 Python bytecodes (loadtests.stages).
    lines += map(_HEADER_JOIN, headers)
    if chunked:
        lines.append(b"transfer-encoding: chunked")
    # A CR or LF inside a name or value would start a header or a request of its own upstream
    # (response splitting). The ASGI server refuses them from clients; this keeps anything the
    # gateway itself adds honest too. The lines joined without separators are searched with memchr:
    # counting the line breaks of the head instead was ~7,700 instructions per request (callgrind).
    flat = b"".join(lines)
    if b"\n" in flat or b"\r" in flat:
        raise UpstreamProtocolError("refusing to send a header with a line break in it")
    return b"\r\n".join(lines) + b"\r\n\r\n"


async def _send_body(conn: _Connection, body: AsyncIterator[bytes], chunked: bool) -> None:
    async for chunk in body:
        if not chunk:
            continue  # an empty chunk would end a chunked body
        conn.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
        if conn.writing_paused:
            await conn.drain()
    if chunked:
        conn.write(b"0\r\n\r\n")
