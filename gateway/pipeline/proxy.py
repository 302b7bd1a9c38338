"""The proxy stage: stream one HTTP exchange to an upstream target and back.

Bodies are never buffered whole: the request body is pulled from the ASGI ``receive`` channel as
the upstream client (:mod:`gateway.upstream.http1`) writes it, and the response is pushed to ``send``
chunk by chunk, so memory stays flat for a 1 GiB upload or download. Failures before the response starts become gateway errors
(502/503/504, rendered by the caller); failures after it started can only abort the connection.

An answer that took longer than ``WATCH_INTERVAL`` to come (a long poll) is checked again before its
head goes out, whatever its kind: streamed ones were checked only at their first chunk, after the
head, and a long poll whose access had ended meanwhile got granian's bare 500, or a bodiless one the
app's 204 (an attack run). A streamed answer's head goes out as soon as it comes, with an empty piece
of body after it: granian writes a head only with the first body message, so a Server-Sent Events
stream's head would otherwise wait for its first event (a test: 30 s and more). From then on a refusal
cuts the connection.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Final, Protocol

from gateway.errors import (
    BodyTooLarge,
    ErrorReason,
    Forbidden,
    ServiceUnavailable,
    UpstreamError,
    UpstreamTimeout,
)
from gateway.observe.tracing import FailedAttempt
from gateway.pipeline.asgi import Message, Receive, Send, receive_body_within
from gateway.pipeline.headers import clean_response_headers
from gateway.pipeline.overrides import BodyScan, body_scan
from gateway.pipeline.snapshot import RouteRuntime
from gateway.upstream import Target
from gateway.upstream.http1 import (
    Http1Client,
    UpstreamBusy,
    UpstreamConnectError,
    UpstreamProtocolError,
    UpstreamResponse,
    UpstreamTlsError,
)

__all__ = ["NO_BODY", "BodyFraming", "ClientDisconnected", "Overrides", "ProxyOutcome", "forward_http"]

logger = logging.getLogger("gateway.proxy")

# Methods RFC 9110 §9.2.2 calls idempotent: safe to send again to another target after a connect failure.
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
_SMALL_BODY = 64 * 1024
_NO_BODY_STATUS = frozenset({204, 304})
# The access log's status for a client that left before its answer started (nginx's code).
_CLIENT_LEFT = 499


class ClientDisconnected(Exception):
    """The client went away while its request body was being forwarded, or while its answer streamed to
    it (it left, or read nothing for ``limits.body_timeout``)."""


@dataclass(frozen=True, slots=True)
class BodyFraming:
    """How the client framed its request body (RFC 9112 §6), read from the original headers.

    ``unsized``: an HTTP/2 request without ``Content-Length``, whose body (if any) ends with its
    stream; whether there is one is known from the first read (:func:`_sized`). ``has_body`` is false
    for it, so that a browser's preflight over HTTP/2 is still one.
    """

    content_length: int | None = None
    chunked: bool = False
    unsized: bool = False

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)


NO_BODY = BodyFraming()
CHUNKED = BodyFraming(chunked=True)
UNSIZED = BodyFraming(unsized=True)


async def _sized(receive: Receive, seconds: float) -> tuple[Receive, BodyFraming]:
    """For an ``unsized`` request: its first read decides between no body and a chunked one (an attack
    run: an HTTP/2 upload without ``Content-Length`` was answered 200 and reached the app empty).

    Returns:
        A receive that gives that first message again, and the framing to send upstream.
    """
    first = await receive_body_within(receive, seconds)
    if first["type"] == "http.request" and not first.get("body") and not first.get("more_body", False):
        return receive, NO_BODY
    replayed = False

    async def again() -> Message:
        nonlocal replayed
        if replayed:
            return await receive()
        replayed = True
        return first

    return again, CHUNKED


# How often a long exchange (a streamed answer, a WebSocket) is checked again (gateway.pipeline.watch):
# the bound the README promises for a revocation.
WATCH_INTERVAL: Final = 1.0


class Watched(Protocol):
    """A request whose exchange may outlive its head (the request context)."""

    @property
    def started_at(self) -> float:
        """When the request arrived (Unix time)."""
        ...

    async def still_allowed(self) -> bool:
        """Whether the checks a new request would face still let it through."""
        ...


def _first_due(watch: Watched | None) -> float:
    """When a request's exchange is first checked again (Unix time; 0 without a watch)."""
    return watch.started_at + WATCH_INTERVAL if watch is not None else 0.0


async def _recheck(watch: Watched) -> float:
    """Ask the checks again; when the next check is due (Unix time) if they still let the request
    through.

    Raises:
        Forbidden: (403 ``access-ended``) access has ended since the request's head was decided.
    """
    if not await watch.still_allowed():
        raise Forbidden("Access ended while the request was under way.", reason=ErrorReason.ACCESS_ENDED)
    return time.time() + WATCH_INTERVAL


@dataclass(slots=True)
class ProxyOutcome:
    """What happened, for the access log."""

    status: int = 0
    target: str = ""
    bytes_in: int = 0
    bytes_out: int = 0
    attempts: int = 0
    # From sending the request to the response headers (the last attempt).
    upstream_seconds: float | None = None
    # The attempts that failed to connect and were retried on another target (for tracing).
    retried: tuple[FailedAttempt, ...] = ()


class Overrides(Protocol):
    """What the methods a POST's body names are held to (the authorize stage's check)."""

    def check(self, methods: frozenset[str]) -> None:
        """Raise (403) unless the policy allows each of ``methods``."""
        ...


class _RequestBody:
    """Pulls the request body from ASGI as the upstream client writes it, enforcing the size limit."""

    __slots__ = ("complete", "due", "limit", "read", "receive", "scan", "started", "timeout", "watch")

    def __init__(
        self,
        receive: Receive,
        limit: int,
        timeout: float,
        watch: Watched | None = None,
        scan: tuple[BodyScan, Overrides] | None = None,
    ) -> None:
        self.receive = receive
        self.limit = limit
        self.timeout = timeout
        self.read = 0
        self.started = False
        # Every byte of it was read: receive() is free for the disconnect watch (_relay).
        self.complete = False
        # A long upload is checked again every WATCH_INTERVAL, as a long answer is (the re-attack run
        # trickled one into the app for as long as it liked after the account was disabled).
        self.watch = watch
        self.due = _first_due(watch)
        self.scan = scan

    def chunks(self) -> AsyncIterator[bytes]:
        return self._plain() if self.scan is None else self._scanned(*self.scan)

    async def _plain(self) -> AsyncIterator[bytes]:
        self.started = True  # on the first read: a connection that failed before it may be retried
        while True:
            message = await self._next()
            chunk: bytes = message.get("body", b"")
            if chunk:
                yield chunk
            if not message.get("more_body", False):
                self.complete = True
                return

    async def _next(self) -> Message:
        message = await receive_body_within(self.receive, self.timeout)
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        self.read += len(message.get("body", b""))
        if self.read > self.limit:
            raise BodyTooLarge(f"The request body is larger than {self.limit} bytes.")
        if self.watch is not None and time.time() >= self.due:
            self.due = await _recheck(self.watch)
        return message

    async def _scanned(self, scan: BodyScan, overrides: Overrides) -> AsyncIterator[bytes]:
        """The body of a POST whose type a framework reads parameters from: each chunk is read for
        ``_method`` before it goes on, and the last one is held back until the whole body is read and
        its methods allowed, so the application never has a complete body the policy refused (the
        connection is closed instead, and the client answered 403)."""
        self.started = True
        held = b""
        while True:
            message = await self._next()
            chunk: bytes = message.get("body", b"")
            if chunk:
                scan.feed(chunk)
                if held:
                    yield held
                held = chunk
            if not message.get("more_body", False):
                self.complete = True
                overrides.check(scan.finish())
                if held:
                    yield held
                return


async def forward_http(
    *,
    method: str,
    path_and_query: str,
    headers: list[tuple[bytes, bytes]],
    receive: Receive,
    send: Send,
    rt: RouteRuntime,
    client: Http1Client,
    request_id: str,
    outcome: ProxyOutcome,
    body_framing: BodyFraming,
    watch: Watched | None = None,
    overrides: Overrides | None = None,
) -> None:
    """Send the request to a target of the route's pool and stream the answer back; a streamed answer
    is cut off once ``watch`` no longer lets the request through (checked every ``WATCH_INTERVAL``).
    ``overrides``: for a POST, what the methods its body names (``_method``) are held to.

    ``headers`` are already cleaned (see :mod:`gateway.pipeline.headers`), ``host`` first, without
    ``Content-Length`` (added here from ``body_framing``); the list is the caller's to give away: the
    ``host`` is replaced per target unless the route preserves the client's.

    Raises:
        BodyTooLarge, UpstreamError, UpstreamTimeout, ServiceUnavailable: before the response started.
        ClientDisconnected: the client left while sending its body.
    """
    if body_framing.unsized:
        receive, body_framing = await _sized(receive, rt.body_timeout)
    length = body_framing.content_length
    if length is not None and length > rt.max_body_size:
        raise BodyTooLarge(f"The request body is larger than {rt.max_body_size} bytes.")
    body = None
    if body_framing.has_body:
        # The headers as the application gets them: their Content-Type is the one it parses by.
        scan = None if overrides is None else body_scan(headers)
        read = None if scan is None or overrides is None else (scan, overrides)
        body = _RequestBody(receive, rt.max_body_size, rt.body_timeout, watch, read)
    # Framing comes from what the client really sent (upstream_request_headers leaves Content-Length
    # out); chunked bodies go out chunked.
    sent_headers = headers
    if length is not None:
        sent_headers.append((b"content-length", b"%d" % length))
    resp, target = await _exchange(
        client, rt, method, path_and_query, sent_headers, body, body_framing, outcome
    )
    pool = rt.pool
    outcome.bytes_in = body.read if body else 0
    # Once the request body is all read, receive() says when the client leaves.
    listen = receive if body is None or body.complete else None
    try:
        await _relay(resp, method, send, rt, request_id, outcome, watch, listen)
        pool.release(target, ok=True)
    except (ClientDisconnected, Forbidden):
        # The client's doing, or access that ended while the answer came: not the target's (a long
        # poll of each signed-out session would count towards ejecting the application otherwise).
        pool.release(target, ok=True)
        raise
    except BaseException:
        pool.release(target, ok=False)
        raise
    finally:
        resp.release()


async def _exchange(
    client: Http1Client,
    rt: RouteRuntime,
    method: str,
    path_and_query: str,
    sent_headers: list[tuple[bytes, bytes]],
    body: _RequestBody | None,
    body_framing: BodyFraming,
    outcome: ProxyOutcome,
) -> tuple[UpstreamResponse, Target]:
    """Send the request to a target (one retry on another after a connect failure); the answer's head.

    Every way out without an answer gives the target's slot back to the pool.
    """
    pool = rt.pool
    target = pool.pick()
    retried = False
    while True:
        outcome.attempts += 1
        outcome.target = target.url
        if not rt.route.preserve_host:
            sent_headers[0] = (b"host", target.authority)
        try:
            sent_at = time.perf_counter()
            resp = await client.request(
                target,
                method,
                target.base_path + path_and_query,
                sent_headers,
                body.chunks() if body is not None else None,
                chunked=body_framing.chunked,
                connect_timeout=rt.connect_timeout,
                read_timeout=rt.read_timeout,
            )
            outcome.upstream_seconds = time.perf_counter() - sent_at
            pool.responded(target)  # alive: ends a probation now, not after a long body
            return resp, target
        except UpstreamConnectError as exc:
            pool.release(target, ok=False)
            if isinstance(exc, UpstreamTlsError):
                # The operator's to fix (a certificate, CA or pin), not a passing outage: say which route.
                logger.warning("route %s: TLS with upstream %s failed: %s", rt.route.name, target.url, exc)
            failure = UpstreamError(f"Could not connect to the application ({exc}).")
            # A connection that was never made carried no bytes: another target may safely try,
            # but only once, and only if replaying cannot repeat a side effect.
            if retried or method not in _IDEMPOTENT or (body is not None and body.started):
                raise failure from exc
            try:
                next_target = pool.pick(exclude=target)
            except ServiceUnavailable:
                raise failure from exc
            # perf_counter and perf_counter_ns read one clock: the attempt's span starts at sent_at.
            attempt = FailedAttempt(
                target.url, type(exc).__name__, str(exc), int(sent_at * 1e9), time.perf_counter_ns()
            )
            outcome.retried += (attempt,)
            target, retried = next_target, True
        except UpstreamBusy as exc:
            # This worker's connections are all taken (slow uploads, say): the target is not to blame.
            pool.release(target, ok=True)
            raise ServiceUnavailable("The gateway is busy; try again in a moment.") from exc
        except TimeoutError as exc:
            pool.release(target, ok=False)
            raise UpstreamTimeout("The application did not answer in time.") from exc
        except (BodyTooLarge, ClientDisconnected):
            pool.release(target, ok=True)
            raise
        except UpstreamProtocolError as exc:
            pool.release(target, ok=False)
            raise UpstreamError(f"The application broke the exchange: {exc}.") from exc
        except BaseException:
            # Cancellation, or a bug of ours: the target is not to blame, but its slot must come back
            # (a target on probation would otherwise stay out of rotation for good).
            pool.release(target, ok=True)
            raise


async def _relay(
    resp: UpstreamResponse,
    method: str,
    send: Send,
    rt: RouteRuntime,
    request_id: str,
    outcome: ProxyOutcome,
    watch: Watched | None = None,
    listen: Receive | None = None,
) -> None:
    """Stream the upstream's answer to the client. ``outcome.status`` is set once the response started:
    from then on a failure can only abort the connection, before it the caller renders an error page.
    An answer that took longer than ``WATCH_INTERVAL`` to come is checked again before its head goes
    out: access may have ended meanwhile, and then the client is answered 403 ``access-ended``
    instead (the re-attack run got one a sign-out later).

    A streamed answer holds one of the worker's upstream connections: it ends (ClientDisconnected) when
    the client reads nothing for ``limits.body_timeout`` or leaves (``listen``: the request's receive,
    free once its body was read). An attack run held every connection with answers it never read, and
    abandoned ones kept theirs: granian's send to a closed connection returns without a word."""
    headers = clean_response_headers(
        resp.headers, extra=rt.response_headers, request_id=request_id, own_cookies=rt.own_set_cookies
    )
    start = {"type": "http.response.start", "status": resp.status, "headers": headers}
    due = _first_due(watch)
    if method == "HEAD" or resp.status in _NO_BODY_STATUS or resp.status < 200:
        if watch is not None and time.time() >= due:
            await _recheck(watch)
        outcome.status = resp.status
        await send(start)
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return
    length = resp.content_length
    if length is not None and length <= _SMALL_BODY:
        # Small answers (most API and page responses): one read, one send. Nothing was sent yet, so
        # a truncated answer can still become a proper 502.
        try:
            data = await resp.read() if length else b""
        except UpstreamProtocolError as exc:  # closed before Content-Length bytes arrived
            raise UpstreamError("The application's answer was cut short.") from exc
        except TimeoutError as exc:  # the rest of the body stopped coming
            raise UpstreamTimeout("The application did not answer in time.") from exc
        if watch is not None and time.time() >= due:
            await _recheck(watch)
        outcome.status = resp.status
        await send(start)
        await send({"type": "http.response.body", "body": data, "more_body": False})
        outcome.bytes_out = len(data)
        return
    if watch is not None and time.time() >= due:
        due = await _recheck(watch)
    # A streamed answer's head goes out at once: a Server-Sent Events stream may send its first event
    # minutes later, and its client (EventSource's open, a proxy's header timeout) waits for the head
    # meanwhile. granian writes the head with the first body message, so an empty one follows it.
    outcome.status = resp.status
    await send(start)
    await send({"type": "http.response.body", "body": b"", "more_body": True})
    await _stream(resp, send, rt, outcome, watch, due, listen)


async def _stream(
    resp: UpstreamResponse,
    send: Send,
    rt: RouteRuntime,
    outcome: ProxyOutcome,
    watch: Watched | None,
    due: float,
    listen: Receive | None,
) -> None:
    """The body of a streamed answer, its head sent (see :func:`_relay`). ``due``: when ``watch`` is
    next asked again."""
    sent = 0
    left = asyncio.ensure_future(_disconnect(listen)) if listen is not None else None
    try:
        async for chunk in resp.chunks():
            if watch is not None and time.time() >= due:
                # Checked before the chunk goes out: once access has ended, no byte more does.
                due = await _recheck(watch)
            if left is not None and left.done() and left.result():
                raise ClientDisconnected
            await _send_within(send, chunk, rt.body_timeout)
            sent += len(chunk)
    # Once the answer started only aborting the connection is left, which raising does. As a
    # GatewayError it is also the access log's (an attack run: a broken chunk size after the head was
    # logged 200 and success).
    except UpstreamProtocolError as exc:
        raise UpstreamError(f"The application's answer broke off: {exc}.") from exc
    except TimeoutError as exc:
        raise UpstreamTimeout("The application stopped answering midway.") from exc
    except ClientDisconnected:
        if not sent:
            # Left before any of the body: nginx's "client closed the connection" for the access log,
            # not the application's status.
            outcome.status = _CLIENT_LEFT
        raise
    finally:
        outcome.bytes_out = sent  # on every way out: what the access log says reached the client
        if left is not None:
            left.cancel()
    await send({"type": "http.response.body", "body": b"", "more_body": False})
    outcome.bytes_out = sent


async def _send_within(send: Send, chunk: bytes, within: float) -> None:
    """One piece of a streamed answer, sent within ``within`` seconds, else ClientDisconnected: a client
    that reads nothing holds an upstream connection for as long as it likes otherwise."""
    try:
        async with asyncio.timeout(within):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    except TimeoutError:
        raise ClientDisconnected from None


async def _disconnect(receive: Receive) -> bool:
    """True when the client has left (the request's body is all read: nothing else waits on it). A
    bodyless request's one ``http.request`` may come first; anything more than that, or a receive that
    fails, and this stops watching (False) rather than spin on a receive that never waits."""
    try:
        for _ in range(2):
            if (await receive())["type"] == "http.disconnect":
                return True
    except Exception:  # the answer goes on; only the watch ends
        logger.debug("the disconnect watch stopped", exc_info=True)
    return False
