"""An answer that came after access ended: nothing of it reaches the client, and the target is not blamed.

An attack run: a long poll whose session was revoked before its first byte got a 500, not a 403. The
proxy stage had sent a streamed answer's head before checking again; granian writes a head only with
the first piece of its body, so the refusal raised between the two became its bare 500 (and the
access log said 200). Here the proxy stage runs against raw-socket upstreams with a request that
arrived longer than ``WATCH_INTERVAL`` ago, and the ASGI messages it sends are what the tests look at.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any, cast

import pytest

from gateway.errors import ErrorReason, Forbidden
from gateway.pipeline.proxy import NO_BODY, WATCH_INTERVAL, ClientDisconnected, ProxyOutcome, forward_http
from gateway.pipeline.snapshot import RouteRuntime
from gateway.settings.schema import Duration, PassiveHealthCheck
from gateway.upstream import UpstreamPool
from gateway.upstream.http1 import Http1Client

_CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
# What the upstream sends, and the body the client must get of it.
ANSWERS: dict[str, tuple[bytes, bytes]] = {
    "small": (b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecret", b"secret"),
    "chunked": (_CHUNKED + b"6\r\nsecret\r\n0\r\n\r\n", b"secret"),
    "chunked-empty": (_CHUNKED + b"0\r\n\r\n", b""),
    "large": (b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"s" * 100_000, b"s" * 100_000),
    "no-content": (b"HTTP/1.1 204 No Content\r\n\r\n", b""),
}


class _Watch:
    """A request that arrived ``age`` seconds ago, whose access has ended (or not)."""

    def __init__(self, *, age: float, allowed: bool) -> None:
        self.started_at = time.time() - age
        self.allowed = allowed
        self.asked = 0

    async def still_allowed(self) -> bool:
        self.asked += 1
        return self.allowed


@contextlib.asynccontextmanager
async def raw_upstream(answer: bytes) -> AsyncIterator[str]:
    """Answers every request with ``answer``."""
    writers: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(answer)
            await writer.drain()
            await reader.read()  # until the gateway closes its side
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        for writer in writers:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        await server.wait_closed()


def _route(url: str) -> RouteRuntime:
    # One failure ejects the target: a refusal counted against it would show in the pool at once.
    pool = UpstreamPool(
        "app",
        (url,),
        balance="round_robin",
        passive=PassiveHealthCheck(consecutive_failures=1, ejection_time=Duration(30)),
        active=None,
    )
    return cast(
        RouteRuntime,
        SimpleNamespace(
            pool=pool,
            route=SimpleNamespace(preserve_host=False, name="app"),
            connect_timeout=5.0,
            read_timeout=5.0,
            max_body_size=1024,
            body_timeout=5.0,
            response_headers=(),
            own_set_cookies=frozenset(),
        ),
    )


async def _nothing() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _proxied(
    client: Http1Client, rt: RouteRuntime, watch: _Watch, method: str = "GET"
) -> tuple[list[dict[str, Any]], ProxyOutcome]:
    """One request through the proxy stage: the ASGI messages sent, and the outcome."""
    sent: list[dict[str, Any]] = []
    outcome = ProxyOutcome()

    async def send(message: Any) -> None:
        sent.append(message)

    with contextlib.suppress(Forbidden):
        await forward_http(
            method=method,
            path_and_query="/poll",
            headers=[(b"host", b"app")],
            receive=_nothing,
            send=send,
            rt=rt,
            client=client,
            request_id="rid",
            outcome=outcome,
            body_framing=NO_BODY,
            watch=watch,
        )
    return sent, outcome


@pytest.fixture
async def client() -> AsyncIterator[Http1Client]:
    made = Http1Client(max_connections=4)
    yield made
    await made.close()


@pytest.mark.parametrize(("answer", "method"), [(a, "GET") for a in ANSWERS] + [("small", "HEAD")])
async def test_a_late_answer_after_access_ended_sends_nothing(
    client: Http1Client, answer: str, method: str
) -> None:
    """Nothing went out: the caller can still answer 403 ``access-ended`` (the response not started)."""
    watch = _Watch(age=WATCH_INTERVAL + 1, allowed=False)
    async with raw_upstream(ANSWERS[answer][0]) as url:
        rt = _route(url)
        with pytest.raises(Forbidden) as refused:
            await forward_http(
                method=method,
                path_and_query="/poll",
                headers=[(b"host", b"app")],
                receive=_nothing,
                send=_must_not_send,
                rt=rt,
                client=client,
                request_id="rid",
                outcome=(outcome := ProxyOutcome()),
                body_framing=NO_BODY,
                watch=watch,
            )
    assert refused.value.reason is ErrorReason.ACCESS_ENDED
    assert outcome.status == 0  # the caller renders the 403 page, not a cut connection
    assert outcome.bytes_out == 0
    assert watch.asked == 1


class _Sent:
    """What the proxy sent the client."""

    def __init__(self) -> None:
        self.messages: list[Any] = []

    async def append_message(self, message: Any) -> None:
        self.messages.append(message)


async def _must_not_send(message: Any) -> None:
    raise AssertionError(f"sent after access ended: {message['type']}")


@pytest.mark.parametrize("answer", ["small", "chunked"])
async def test_a_refused_late_answer_does_not_count_against_the_target(
    client: Http1Client, answer: str
) -> None:
    """A long poll of each signed-out session must not eject the application for everyone."""
    async with raw_upstream(ANSWERS[answer][0]) as url:
        rt = _route(url)
        sent, _ = await _proxied(client, rt, _Watch(age=WATCH_INTERVAL + 1, allowed=False))
    assert sent == []
    (row,) = rt.pool.snapshot()
    assert row["outstanding"] == 0
    assert row["consecutive_failures"] == 0


@pytest.mark.parametrize("answer", list(ANSWERS))
async def test_a_late_answer_still_allowed_goes_out_whole(client: Http1Client, answer: str) -> None:
    watch = _Watch(age=WATCH_INTERVAL + 1, allowed=True)
    async with raw_upstream(ANSWERS[answer][0]) as url:
        sent, outcome = await _proxied(client, _route(url), watch)
    assert [m["type"] for m in sent][:1] == ["http.response.start"]
    assert not sent[-1].get("more_body", False)  # ended, not cut
    body = b"".join(m.get("body", b"") for m in sent[1:])
    assert body == ANSWERS[answer][1]
    assert outcome.status == sent[0]["status"]
    assert outcome.bytes_out == len(body)
    assert watch.asked == 1


async def test_a_prompt_answer_is_not_checked_again(client: Http1Client) -> None:
    watch = _Watch(age=0, allowed=False)
    async with raw_upstream(ANSWERS["chunked"][0]) as url:
        sent, outcome = await _proxied(client, _route(url), watch)
    assert outcome.status == 200
    assert b"".join(m.get("body", b"") for m in sent[1:]) == b"secret"
    assert watch.asked == 0


async def test_a_client_that_left_before_the_first_chunk_is_logged_as_gone(client: Http1Client) -> None:
    """The head goes out at once; a client that left before the first chunk gets none of the body, and
    the access log says 499 (it left), not the application's 200 with a broken body."""
    left = asyncio.Event()

    async def leaves() -> dict[str, Any]:
        left.set()
        return {"type": "http.disconnect"}

    done = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(_CHUNKED)
            await left.wait()  # the body only once the client is gone
            writer.write(b"6\r\nsecret\r\n0\r\n\r\n")
            await writer.drain()
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
        done.set()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    outcome, sent = ProxyOutcome(), _Sent()
    async with server:
        with pytest.raises(ClientDisconnected):
            await forward_http(
                method="GET",
                path_and_query="/poll",
                headers=[(b"host", b"app")],
                receive=leaves,
                send=sent.append_message,
                rt=_route(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"),
                client=client,
                request_id="rid",
                outcome=outcome,
                body_framing=NO_BODY,
            )
        await done.wait()  # the upstream's side closed too: nothing left open after the test
    # The head, and the empty piece that has the server send it at once: none of the body.
    assert [(m["type"], m.get("body")) for m in sent.messages] == [
        ("http.response.start", None),
        ("http.response.body", b""),
    ]
    assert outcome.status == 499
    assert outcome.bytes_out == 0
