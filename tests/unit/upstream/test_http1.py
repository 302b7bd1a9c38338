"""The proxy stage's HTTP/1.1 client against scripted upstreams on real sockets.

Each upstream is a small asyncio server that reads requests and answers with exactly the bytes a test
gives it, so the framing cases (interim responses, HEAD, close-delimited and chunked bodies, truncation,
garbage, stale keep-alive connections) are the real thing on the wire, not mocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from gateway.upstream.http1 import (
    Http1Client,
    UpstreamBusy,
    UpstreamConnectError,
    UpstreamConnectTimeout,
    UpstreamProtocolError,
)
from gateway.upstream.target import Target
from tests.support.certs import self_signed
from tests.support.wait import wait_until_async

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
Clients = Callable[[int], Http1Client]


@pytest.fixture
async def clients() -> AsyncIterator[Clients]:
    """Make clients; every one is closed (its idle connections too) when the test ends."""
    made: list[Http1Client] = []

    def make(limit: int = 4) -> Http1Client:
        made.append(Http1Client(max_connections=limit))
        return made[-1]

    yield make
    for client in made:
        await client.close()
    # The transports finish closing on the loop's next turns; there is nothing to poll for, and an
    # unclosed one would be a ResourceWarning (an error here).
    await asyncio.sleep(0.01)


def usable_idle(client: Http1Client) -> int:
    """Idle connections the client would reuse (open ones)."""
    return sum(not conn.closed for idle in client._idle.values() for conn in idle)


class Upstream:
    """A scripted upstream: ``handler(reader, writer, connection_number)`` per connection."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> Target:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            self.writers.append(writer)
            with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
                await self.handler(reader, writer, self.connections)
            writer.close()

        self.server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return Target.from_url(f"http://127.0.0.1:{port}")

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:  # the server's side of every connection, even mid-handler
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        await self.server.wait_closed()

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        self.requests.append(head)
        return head


def answering(upstream_box: list[Upstream], *responses: bytes, keep_open: bool = True) -> Handler:
    """Answer each request on a connection with the next of ``responses``."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _n: int) -> None:
        for response in responses:
            await upstream_box[0].read_request(reader)
            writer.write(response)
            await writer.drain()
        if keep_open:
            await reader.read()  # until the client closes

    return handler


def scripted(*responses: bytes, keep_open: bool = True) -> Upstream:
    box: list[Upstream] = []
    upstream = Upstream(answering(box, *responses, keep_open=keep_open))
    box.append(upstream)
    return upstream


async def get(
    client: Http1Client, target: Target, method: str = "GET", *, read_timeout: float = 5.0
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    resp = await client.request(
        target,
        method,
        "/x?y=1",
        [(b"host", b"app")],
        None,
        chunked=False,
        connect_timeout=5,
        read_timeout=read_timeout,
    )
    try:
        return resp.status, resp.headers, await resp.read()
    finally:
        resp.release()


async def test_keep_alive_reuses_one_connection_and_sends_the_head_as_given(clients: Clients) -> None:
    upstream = scripted(OK, OK)
    async with upstream as target:
        client = clients(4)
        assert await get(client, target) == (200, [(b"Content-Length", b"2")], b"ok")
        assert (await get(client, target))[2] == b"ok"
    assert upstream.connections == 1
    assert upstream.requests[0] == b"GET /x?y=1 HTTP/1.1\r\nhost: app\r\n\r\n"


async def test_interim_responses_are_skipped(clients: Clients) -> None:
    interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"
    async with scripted(interim + OK) as target:
        status, headers, body = await get(clients(4), target)
    assert (status, headers, body) == (200, [(b"Content-Length", b"2")], b"ok")


@pytest.mark.parametrize(
    "interim",
    [
        b"HTTP/1.1 150 Odd\r\nContent-Length: 12\r\n\r\nSMUGGLED-BIT",
        b"HTTP/1.1 103 Hints\r\nTransfer-Encoding: chunked\r\n\r\n",
    ],
)
async def test_an_interim_response_with_a_body_breaks_the_exchange(clients: Clients, interim: bytes) -> None:
    """An attack run: a 1xx answer framed with a body had that body put before the real answer's. It
    has no content (RFC 9110 §15.2): the exchange is a 502 and the connection is not reused."""
    box: list[Upstream] = []

    async def first_broken(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while True:
            await box[0].read_request(reader)
            writer.write((interim if n == 1 else b"") + OK)
            await writer.drain()

    upstream = Upstream(first_broken)
    box.append(upstream)
    async with upstream as target:
        client = clients(4)
        with pytest.raises(UpstreamProtocolError, match="interim"):
            await get(client, target)
        assert (await get(client, target))[2] == b"ok"
    assert upstream.connections == 2


async def test_head_has_no_body_and_its_connection_is_not_reused(clients: Clients) -> None:
    box: list[Upstream] = []

    async def by_method(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _n: int) -> None:
        while True:
            head = await box[0].read_request(reader)
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n" if head.startswith(b"HEAD") else OK
            )
            await writer.drain()

    upstream = Upstream(by_method)
    box.append(upstream)
    async with upstream as target:
        client = clients(4)
        assert (await get(client, target, "HEAD"))[2] == b""
        assert (await get(client, target))[2] == b"ok"
    assert upstream.connections == 2


async def test_no_content_answers_keep_the_connection(clients: Clients) -> None:
    upstream = scripted(
        b"HTTP/1.1 204 No Content\r\n\r\n", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n", OK
    )
    async with upstream as target:
        client = clients(4)
        assert (await get(client, target))[:1] == (204,)
        assert (await get(client, target))[0] == 304
        assert (await get(client, target))[2] == b"ok"
    assert upstream.connections == 1


async def test_a_body_framed_by_closing_the_connection_ends_with_it(clients: Clients) -> None:
    async with scripted(b"HTTP/1.1 200 OK\r\n\r\nuntil the end", keep_open=False) as target:
        resp = await clients(4).request(
            target, "GET", "/", [(b"host", b"a")], None, chunked=False, connect_timeout=5, read_timeout=5
        )
        assert resp.content_length is None
        assert await resp.read() == b"until the end"
        resp.release()


async def test_chunked_answers_are_decoded(clients: Clients) -> None:
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    upstream = scripted(chunked, OK)
    async with upstream as target:
        client = clients(4)
        assert (await get(client, target))[2] == b"abcde"
        assert (await get(client, target))[2] == b"ok"
    assert upstream.connections == 1


async def test_a_truncated_body_is_an_error_and_the_connection_is_dropped(clients: Clients) -> None:
    async with scripted(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", keep_open=False) as target:
        with pytest.raises(UpstreamProtocolError):
            await get(clients(4), target)


async def test_garbage_is_a_protocol_error(clients: Clients) -> None:
    async with scripted(b"this is not HTTP\r\n\r\n") as target:
        with pytest.raises(UpstreamProtocolError, match="malformed"):
            await get(clients(4), target)


async def test_closing_without_an_answer_is_a_protocol_error(clients: Clients) -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _n: int) -> None:
        await reader.readuntil(b"\r\n\r\n")

    async with Upstream(hang_up) as target:
        with pytest.raises(UpstreamProtocolError, match="closed"):
            await get(clients(4), target)


async def test_a_silent_upstream_times_out(clients: Clients) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _n: int) -> None:
        await reader.read()

    async with Upstream(silent) as target:
        with pytest.raises(TimeoutError):
            await get(clients(4), target, read_timeout=0.2)


async def test_a_refused_connection_is_a_connect_error(clients: Clients) -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    with pytest.raises(UpstreamConnectError):
        await get(clients(4), Target.from_url(f"http://127.0.0.1:{port}"))


async def test_a_keep_alive_connection_closed_by_the_upstream_is_replaced_for_a_bodyless_request(
    clients: Clients,
) -> None:
    box: list[Upstream] = []

    async def one_per_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _n: int) -> None:
        await box[0].read_request(reader)
        writer.write(OK)  # keep-alive allowed, but the server closes right after
        await writer.drain()

    upstream = Upstream(one_per_connection)
    box.append(upstream)
    async with upstream as target:
        client = clients(4)
        assert (await get(client, target))[2] == b"ok"
        await wait_until_async(
            lambda: not usable_idle(client), what="the upstream's close seen by the client"
        )
        assert (await get(client, target))[2] == b"ok"
    assert upstream.connections == 2


@pytest.mark.parametrize(("method", "replayed"), [("GET", True), ("POST", False)])
async def test_only_idempotent_requests_are_sent_again_when_a_reused_connection_drops(
    clients: Clients, method: str, replayed: bool
) -> None:
    box: list[Upstream] = []

    async def second_request_drops(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _n: int
    ) -> None:
        await box[0].read_request(reader)
        writer.write(OK)
        await writer.drain()
        await box[0].read_request(reader)  # received (maybe processed), then the connection drops

    upstream = Upstream(second_request_drops)
    box.append(upstream)
    async with upstream as target:
        client = clients(4)
        assert (await get(client, target))[2] == b"ok"
        if replayed:
            assert (await get(client, target, method))[2] == b"ok"
        else:
            with pytest.raises(UpstreamProtocolError):
                await get(client, target, method)
    sent = [head for head in upstream.requests if head.startswith(method.encode() + b" ")]
    # GET: the first try (first request on connection 1 was the warm-up GET) and the retry arrive.
    assert len(sent) == (3 if replayed else 1)


def held_first(release: asyncio.Event) -> Upstream:
    """An upstream that answers its first request only once ``release`` is set, the others at once."""
    box: list[Upstream] = []

    async def slow_first(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while True:
            await box[0].read_request(reader)
            if len(box[0].requests) == 1:
                await release.wait()
            writer.write(OK)
            await writer.drain()

    box.append(Upstream(slow_first))
    return box[0]


async def test_connections_are_bounded_and_a_request_waits_for_a_free_one(clients: Clients) -> None:
    release = asyncio.Event()
    upstream = held_first(release)
    async with upstream as target:
        client = clients(1)
        first = asyncio.create_task(get(client, target))
        await wait_until_async(lambda: len(upstream.requests) == 1, what="the first request upstream")
        second = asyncio.create_task(get(client, target))
        # No second connection while the first is in use: the second request queues for a slot.
        await wait_until_async(lambda: len(client._slot_waiters) == 1, what="the second request queued")
        assert not second.done()
        assert upstream.connections == 1
        release.set()
        assert (await first)[2] == b"ok"
        assert (await second)[2] == b"ok"
    assert upstream.connections == 1


async def test_a_request_waits_for_a_slot_no_longer_than_a_connection_may_take_to_open(
    clients: Clients,
) -> None:
    """An attack run held every slot with bodies trickled a byte at a time: requests to every route
    waited for ever. The wait ends with the connect timeout, as busy (not the target's failure), and a
    slot handed back later still serves the next request."""
    release = asyncio.Event()
    upstream = held_first(release)
    async with upstream as target:
        client = clients(1)
        first = asyncio.create_task(get(client, target))
        await wait_until_async(lambda: len(upstream.requests) == 1, what="the first request upstream")
        with pytest.raises(UpstreamBusy, match="max_upstream_connections"):
            await client.request(
                target, "GET", "/", [(b"host", b"app")], None,
                chunked=False, connect_timeout=0.2, read_timeout=5.0,
            )  # fmt: skip
        assert not client._slot_waiters
        release.set()
        assert (await first)[2] == b"ok"
        assert (await get(client, target))[2] == b"ok"


@pytest.mark.parametrize(
    ("path", "header"),
    [
        ("/", (b"x-evil", b"1\r\nx-admin: yes")),
        ("/", (b"x-evil", b"1\nx-admin: yes")),
        ("/", (b"x-evil", b"1\rx-admin: yes")),
        ("/", (b"x-evil\r\nx-admin", b"yes")),
        ("/a HTTP/1.1\r\nx-admin: yes\r\nx:", (b"x-ok", b"1")),
    ],
)
async def test_a_header_with_a_line_break_is_never_sent(
    clients: Clients, path: str, header: tuple[bytes, bytes]
) -> None:
    upstream = scripted(OK)
    async with upstream as target:
        with pytest.raises(UpstreamProtocolError, match="line break"):
            await clients(4).request(
                target,
                "GET",
                path,
                [(b"host", b"a"), header],
                None,
                chunked=False,
                connect_timeout=5,
                read_timeout=5,
            )
    assert upstream.requests == []


async def test_a_streamed_body_goes_out_chunked(clients: Clients) -> None:
    received: list[bytes] = []

    async def read_chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _n: int) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        assert b"transfer-encoding: chunked" in head
        received.append(await reader.readuntil(b"0\r\n\r\n"))
        writer.write(OK)
        await writer.drain()
        await reader.read()

    async def body() -> AsyncIterator[bytes]:
        yield b"hello "
        yield b""
        yield b"world"

    async with Upstream(read_chunked) as target:
        resp = await clients(4).request(
            target, "POST", "/", [(b"host", b"a")], body(), chunked=True, connect_timeout=5, read_timeout=5
        )
        assert await resp.read() == b"ok"
        resp.release()
    assert received == [b"6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n"]


async def test_a_large_answer_pauses_reading_until_the_client_catches_up(clients: Clients) -> None:
    size = 8 * 1024 * 1024

    async def big(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _n: int) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        for _ in range(size // 65536):
            writer.write(b"x" * 65536)
            await writer.drain()
        await reader.read()

    async with Upstream(big) as target:
        resp = await clients(4).request(
            target, "GET", "/", [(b"host", b"a")], None, chunked=False, connect_timeout=5, read_timeout=5
        )
        # The upstream writes as fast as it may; nobody reads.
        conn = resp._conn
        await wait_until_async(lambda: conn.reading_paused, what="reading paused")
        assert conn.buffered < 2 * 1024 * 1024  # bounded, not the whole 8 MiB
        total = 0
        async for chunk in resp.chunks():
            total += len(chunk)
        resp.release()
    assert total == size


async def test_bytes_arriving_on_an_idle_connection_retire_it(clients: Clients) -> None:
    async def chatty(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _n: int) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(OK)
        await writer.drain()
        await asyncio.sleep(0.05)  # the scenario: the stray bytes come later, on the idle connection
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nbad")  # nobody asked
        await writer.drain()
        with contextlib.suppress(asyncio.IncompleteReadError):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(OK)
            await writer.drain()
        await reader.read()

    upstream = Upstream(chatty)
    async with upstream as target:
        client = clients(4)
        assert (await get(client, target))[2] == b"ok"
        await wait_until_async(lambda: not usable_idle(client), what="the idle connection retired")
        assert (await get(client, target))[2] == b"ok"  # from a new connection, not the stray answer
    assert upstream.connections == 2


async def test_https_upstreams_are_verified_and_spoken_to_over_tls(clients: Clients, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    seen: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            seen.append(await reader.readuntil(b"\r\n\r\n"))
            writer.write(OK)
            await writer.drain()
            await reader.read()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_tls)
    port = server.sockets[0].getsockname()[1]
    # "localhost" resolves to the listener; the certificate names localhost, signed by nobody we trust.
    target = Target.from_url(f"https://localhost:{port}")
    try:
        with pytest.raises(
            UpstreamConnectError, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify failed"
        ):
            await get(clients(4), target)
        assert seen == []
        trusting = clients(4)
        trusting._tls.load_verify_locations(cert)  # as if the certificate were in the system store
        assert (await get(trusting, target))[2] == b"ok"
        assert seen == [b"GET /x?y=1 HTTP/1.1\r\nhost: app\r\n\r\n"]
    finally:
        server.close()


async def test_a_connect_timeout_is_a_connect_error(clients: Clients) -> None:
    """A target that silently drops the connection attempt (full backlog, host gone) is a connect
    error like a refusal: nothing was sent, so the proxy may count it and try another target."""
    import socket

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        port = server.getsockname()[1]
        # Fill the accept queue: the kernel then drops further SYNs instead of answering them.
        fillers = [socket.socket() for _ in range(3)]
        try:
            for filler in fillers:
                filler.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    filler.connect(("127.0.0.1", port))
            with pytest.raises(UpstreamConnectTimeout, match="connect timed out") as info:
                await clients(4).request(
                    Target.from_url(f"http://127.0.0.1:{port}"),
                    "GET",
                    "/",
                    [(b"host", b"a")],
                    None,
                    chunked=False,
                    connect_timeout=0.3,
                    read_timeout=5,
                )
        finally:
            for filler in fillers:
                filler.close()
    assert isinstance(info.value, UpstreamConnectError)


# -- an upstream that breaks the framing: one exchange is one response ---------------------------------

PLANTED = b"HTTP/1.1 200 OK\r\nSet-Cookie: gateway_session=ATTACKER\r\nContent-Length: 7\r\n\r\nplanted"


async def test_a_second_response_in_the_same_write_is_never_parsed_into_the_first(clients: Clients) -> None:
    """An attack run: `Content-Length: 2`, `ok`, then a whole response in the same write. Its head
    was merged into the first's and its body relayed after `ok` (a client read it as the next answer)."""
    upstream = scripted(OK + PLANTED, OK)
    async with upstream as target:
        client = clients(4)
        assert await get(client, target) == (200, [(b"Content-Length", b"2")], b"ok")
        await wait_until_async(lambda: not usable_idle(client), what="the connection retired")
        assert await get(client, target) == (200, [(b"Content-Length", b"2")], b"ok")
    assert upstream.connections == 2  # the one that sent too much was never reused


async def test_a_partial_next_head_never_reaches_the_next_exchange(clients: Clients) -> None:
    """An attack run: a body longer than its Content-Length ends in the start of a head; the pooled
    connection went back with it half parsed, and the next user's answer became a 302 to evil.example."""
    trap = OK + b"HTTP/1.1 302 Found\r\nLocation: https://evil.example/phish?rest="
    victim = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nalice"

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        first = True
        while True:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(trap if n == 1 and first else victim)
            first = False
            await writer.drain()

    async with Upstream(handler) as target:
        client = clients(4)
        assert (await get(client, target))[2] == b"ok"
        assert await get(client, target) == (200, [(b"Content-Length", b"5")], b"alice")


async def test_bytes_after_the_response_in_a_later_read_retire_the_connection(clients: Clients) -> None:
    box: list[Upstream] = []

    async def late_extra(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while True:
            await box[0].read_request(reader)
            writer.write(OK)
            await writer.drain()
            if n == 1:
                await asyncio.sleep(0.02)
                writer.write(b"HTTP/1.1 302 Found\r\nLocation: https://evil.example/\r\n")
                await writer.drain()

    upstream = Upstream(late_extra)
    box.append(upstream)
    async with upstream as target:
        client = clients(4)
        resp = await client.request(
            target, "GET", "/", [(b"host", b"a")], None, chunked=False, connect_timeout=5, read_timeout=5
        )
        assert await resp.read() == b"ok"
        conn = resp._conn
        await wait_until_async(lambda: conn.closed, what="the extra bytes seen")  # before release
        resp.release()
        assert usable_idle(client) == 0
        assert await get(client, target) == (200, [(b"Content-Length", b"2")], b"ok")
    assert upstream.connections == 2


def _head_then_hang(head: bytes) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _n: int) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(head)
        await writer.drain()
        await reader.read()  # never ends the head: only the limit can

    return handler


@pytest.mark.parametrize(
    "head",
    [
        # Many long headers (the attack run's worker grew by GBs in seconds) ...
        b"HTTP/1.1 200 OK\r\n" + (b"X-Filler: " + b"a" * 8000 + b"\r\n") * 128,
        # ... one endless value (httptools joins its pieces per read: the event loop stalled) ...
        b"HTTP/1.1 200 OK\r\nX-One: " + b"a" * (1 << 20),
        # ... or interim responses without end.
        b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n" * 4000,
    ],
    ids=["many-headers", "one-endless-value", "endless-interim"],
)
async def test_a_head_larger_than_the_limit_fails_at_once(clients: Clients, head: bytes) -> None:
    async with Upstream(_head_then_hang(head)) as target:
        client = clients(4)
        started = asyncio.get_running_loop().time()
        with pytest.raises(UpstreamProtocolError, match="head exceeds 65536 bytes"):
            await get(client, target, read_timeout=5)
        assert asyncio.get_running_loop().time() - started < 4  # not the read timeout
        assert client._open == 0  # closed, its slot free


async def test_a_head_with_too_many_fields_fails(clients: Clients) -> None:
    head = (
        b"HTTP/1.1 200 OK\r\n"
        + b"".join(b"X-%d: 1\r\n" % i for i in range(101))
        + b"Content-Length: 2\r\n\r\nok"
    )
    async with scripted(head) as target:
        client = clients(4)
        with pytest.raises(UpstreamProtocolError, match="more than 100 headers"):
            await get(client, target)
        assert client._open == 0


async def test_heads_and_first_reads_within_the_limits_pass(clients: Clients) -> None:
    near = b"HTTP/1.1 200 OK\r\n" + b"X-Big: " + b"b" * 60_000 + b"\r\n" + b"Content-Length: 2\r\n\r\nok"
    hundred = (
        b"HTTP/1.1 200 OK\r\n"
        + b"".join(b"X-%d: 1\r\n" % i for i in range(99))
        + b"Content-Length: 2\r\n\r\nok"
    )
    # A small head and a large body in one write: the first read is far past the head's limit.
    big_body = b"HTTP/1.1 200 OK\r\nContent-Length: 300000\r\n\r\n" + b"z" * 300_000
    upstream = scripted(near, hundred, big_body, OK)
    async with upstream as target:
        client = clients(4)
        assert (await get(client, target))[2] == b"ok"
        assert len((await get(client, target))[1]) == 100
        assert (await get(client, target))[2] == b"z" * 300_000
        assert (await get(client, target))[2] == b"ok"
    assert upstream.connections == 1


async def test_trailers_never_become_headers(clients: Clients) -> None:
    """An attack run: a chunked answer whose trailers arrived in the same read as the head had them
    merged into the response headers."""
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;a=b\r\nhello\r\n0\r\n"
        b"Set-Cookie: gateway_session=ATTACKER\r\nX-Trailer: t\r\n\r\n"
    )
    upstream = scripted(chunked, OK)
    async with upstream as target:
        client = clients(4)
        assert await get(client, target) == (200, [(b"Transfer-Encoding", b"chunked")], b"hello")
        assert (await get(client, target))[2] == b"ok"  # a trailer section is fine framing: reused
    assert upstream.connections == 1


async def test_endless_trailers_fail_the_exchange(clients: Clients) -> None:
    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _n: int) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)  # the body's read first, then the trailers in reads of their own
        for _ in range(64):
            writer.write(b"X-Trailer: " + b"t" * 16_000 + b"\r\n")
            await writer.drain()
        await reader.read()

    async with Upstream(endless) as target:
        client = clients(4)
        resp = await client.request(
            target, "GET", "/", [(b"host", b"a")], None, chunked=False, connect_timeout=5, read_timeout=5
        )
        received: list[bytes] = []

        async def read_all() -> None:
            async for chunk in resp.chunks():
                received.append(chunk)

        started = asyncio.get_running_loop().time()
        with pytest.raises(UpstreamProtocolError, match="trailers"):
            await read_all()
        assert asyncio.get_running_loop().time() - started < 4  # not the read timeout
        resp.release()
        assert b"".join(received) == b"hello"
        assert client._open == 0


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        # A 101 nobody asked for: httptools raises HttpParserUpgrade, which is no HttpParserError, and
        # it escaped into the event loop ("Fatal error on transport") in an attack run.
        (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\nRAW", "malformed"),
        (b"HTTP/1.1 600 Odd\r\nContent-Length: 2\r\n\r\nok", "status 600"),
        (b"HTTP/1.1 999 Odd\r\nContent-Length: 2\r\n\r\nok", "status 999"),
        # Transfer-Encoding is hop-by-hop: a gzip body would reach the client unlabelled.
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n\x1f\x8b...", "not chunked"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", "not chunked"),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "not",
        ),
    ],
)
async def test_answers_the_client_could_not_read_as_sent_are_protocol_errors(
    clients: Clients, answer: bytes, message: str
) -> None:
    async with scripted(answer, keep_open=False) as target:
        with pytest.raises(UpstreamProtocolError, match=message):
            await get(clients(4), target)


async def test_a_chunked_answer_in_any_case_is_still_chunked(clients: Clients) -> None:
    answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding:  Chunked \r\n\r\n2\r\nok\r\n0\r\n\r\n"
    async with scripted(answer) as target:
        assert (await get(clients(4), target))[:1] == (200,)
