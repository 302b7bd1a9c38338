"""The proxy stage against upstreams that break HTTP/1.1 framing: what the client is sent.

An attack run against ``gateway serve``: an app answered ``Content-Length: 2``, ``ok`` and a whole
second response (with ``Set-Cookie: gateway_session=…``) in the same write; the client received that
response raw after ``ok``, past the Set-Cookie filter, and read it as its next answer. Here the proxy
stage (:func:`forward_http` with the real upstream client) runs against raw-socket upstreams, and the
ASGI messages it sends are what the tests look at.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any, cast

import pytest

from gateway.errors import UpstreamError
from gateway.pipeline.proxy import NO_BODY, ProxyOutcome, forward_http
from gateway.pipeline.snapshot import RouteRuntime
from gateway.settings.schema import Duration, PassiveHealthCheck
from gateway.upstream import UpstreamPool
from gateway.upstream.http1 import Http1Client, UpstreamProtocolError

OWN = frozenset({b"gateway_session", b"gateway_csrf"})
PLANTED = (
    b"HTTP/1.1 200 OK\r\nSet-Cookie: gateway_session=ATTACKER-CHOSEN; Path=/; HttpOnly\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 23\r\n\r\nplanted by the wiki app"
)


@contextlib.asynccontextmanager
async def raw_upstream(*answers: bytes) -> AsyncIterator[tuple[str, list[int]]]:
    """Answers the n-th request (on any connection) with ``answers[n]``, the last one after that."""
    connections = [0]
    requests = [0]
    writers: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections[0] += 1
        writers.append(writer)
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(answers[min(requests[0], len(answers) - 1)])
                requests[0] += 1
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", connections
    finally:
        server.close()
        for writer in writers:  # the server's side of every connection, even mid-answer
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        await server.wait_closed()


def _route(url: str) -> RouteRuntime:
    pool = UpstreamPool(
        "app",
        (url,),
        balance="round_robin",
        passive=PassiveHealthCheck(consecutive_failures=1000, ejection_time=Duration(30)),
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
            own_set_cookies=OWN,
        ),
    )


async def _nothing() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def proxied(client: Http1Client, rt: RouteRuntime) -> tuple[list[dict[str, Any]], bytes]:
    """One GET through the proxy stage: the ASGI messages sent and the body they carry."""
    sent: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        sent.append(message)

    await forward_http(
        method="GET",
        path_and_query="/page",
        headers=[(b"host", b"app")],
        receive=_nothing,
        send=send,
        rt=rt,
        client=client,
        request_id="rid",
        outcome=ProxyOutcome(),
        body_framing=NO_BODY,
    )
    return sent, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def _headers(sent: list[dict[str, Any]]) -> list[tuple[bytes, bytes]]:
    return [h for h in sent[0]["headers"] if h[0] != b"x-request-id"]


@pytest.fixture
async def client() -> AsyncIterator[Http1Client]:
    made = Http1Client(max_connections=4)
    yield made
    await made.close()
    await asyncio.sleep(0.01)


async def test_a_second_response_after_the_declared_length_never_reaches_the_client(
    client: Http1Client,
) -> None:
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    second = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(PLANTED) + PLANTED
    async with raw_upstream(ok + second) as (url, connections):
        rt = _route(url)
        for _ in range(2):
            sent, body = await proxied(client, rt)
            assert body == b"ok"
            assert _headers(sent) == [(b"content-length", b"2")]
    assert connections[0] == 2  # the connection that sent too much was closed, not reused


async def test_a_next_users_answer_never_carries_anothers_head(client: Http1Client) -> None:
    """A body longer than its Content-Length (an app counting characters, not UTF-8 bytes) ends in
    the start of a head the attacker chose; the next request on that pooled connection got it."""
    trap = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 302 Found\r\nLocation: https://evil.example/?r="
    alice = (
        b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 17\r\n\r\n{"user": "alice"}'
    )
    async with raw_upstream(trap, alice) as (url, _connections):
        rt = _route(url)
        assert (await proxied(client, rt))[1] == b"ok"
        sent, body = await proxied(client, rt)
    assert sent[0]["status"] == 200
    assert body == b'{"user": "alice"}'
    assert not any(name == b"location" for name, _ in sent[0]["headers"])


async def test_a_streamed_answer_stops_at_its_declared_length(client: Http1Client) -> None:
    size = 100_000  # past the one-read path: the body is streamed
    big = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size + b"x" * size
    async with raw_upstream(big + PLANTED) as (url, connections):
        rt = _route(url)
        for _ in range(2):
            _sent, body = await proxied(client, rt)
            assert body == b"x" * size
    assert connections[0] == 2


async def test_nameless_and_quoted_set_cookies_for_the_gateways_cookie_are_dropped(
    client: Http1Client,
) -> None:
    answer = (
        b"HTTP/1.1 200 OK\r\nSet-Cookie: =gateway_session=x; Path=/\r\n"
        b'Set-Cookie: "gateway_session"=x\r\nSet-Cookie:  Gateway_Session =x\r\n'
        b"Set-Cookie: app=fine\r\nContent-Length: 2\r\n\r\nok"
    )
    async with raw_upstream(answer) as (url, _connections):
        sent, _body = await proxied(client, _route(url))
    assert [v for name, v in sent[0]["headers"] if name == b"set-cookie"] == [b"app=fine"]


async def test_trailers_are_dropped_not_merged_into_the_head(client: Http1Client) -> None:
    answer = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;a=b\r\nhello\r\n0\r\n"
        b"Set-Cookie: app=from-a-trailer\r\nX-Trailer: t\r\n\r\n"
    )
    async with raw_upstream(answer) as (url, _connections):
        sent, body = await proxied(client, _route(url))
    assert body == b"hello"
    assert _headers(sent) == []  # transfer-encoding is hop-by-hop; no trailer became a header


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\n" + b"X-Filler: " + b"a" * 70_000 + b"\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\n" + b"X-N: 1\r\n" * 101 + b"Content-Length: 2\r\n\r\nok",
    ],
    ids=["too-large", "too-many"],
)
async def test_a_head_over_the_limits_is_a_502(client: Http1Client, head: bytes) -> None:
    async with raw_upstream(head) as (url, _connections):
        with pytest.raises(UpstreamError, match="broke the exchange") as info:
            await proxied(client, _route(url))
    assert isinstance(info.value.__cause__, UpstreamProtocolError)


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\nx",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\n",  # then the app closes
        b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 70_000,  # streamed, then closed
    ],
)
async def test_an_answer_that_breaks_after_it_started_is_a_gateway_error(
    client: Http1Client, answer: bytes
) -> None:
    """An attack run: the app's broken chunk size (or a close midway) after the head escaped as an
    UpstreamProtocolError, and the access log said 200 and success. It is an UpstreamError now: the
    pipeline notes its reason and re-raises it, which aborts the client's connection."""

    async def answer_and_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer_and_close, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    async with server:
        outcome = ProxyOutcome()
        sent: list[dict[str, Any]] = []

        async def send(message: Any) -> None:
            sent.append(message)

        with pytest.raises(UpstreamError, match="broke off"):
            await forward_http(
                method="GET", path_and_query="/page", headers=[(b"host", b"app")], receive=_nothing,
                send=send, rt=_route(url), client=client, request_id="rid", outcome=outcome,
                body_framing=NO_BODY,
            )  # fmt: skip
    assert outcome.status == 200  # the answer had started: only aborting was left
    assert not any(m["type"] == "http.response.body" and not m.get("more_body") for m in sent)
