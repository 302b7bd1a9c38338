"""Bodies and WebSockets through a real gateway: streamed both ways, bounded, never buffered whole.

The 1 GiB transfers prove memory stays flat by reading the worker's peak RSS (``VmHWM``) before and
after: a gateway that buffered the body would raise its high-water mark by about a gigabyte. The
size limit must hold both when the client announces the size (refused before any upstream contact)
and when it does not (chunked). WebSocket checks run against the echo app and against a small
``websockets`` server that selects a subprotocol and reports the handshake headers it received.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect
from websockets.sync.server import ServerConnection, serve
from websockets.typing import Subprotocol

from tests.integration.harness import (
    Echo,
    Gateway,
    Tripwire,
    echo_route,
    free_port,
    gateway_config,
    raw_request,
    run_gateway,
    worker_peak_rss_kib,
)

GIB = 1024**3
MIB = 1024**2
RSS_GROWTH_LIMIT_KIB = 150 * 1024

# --------------------------------------------------------------------------------------------------
# A WebSocket upstream that picks a subprotocol and reports the handshake headers it received
# --------------------------------------------------------------------------------------------------


def _ws_handler(conn: ServerConnection) -> None:
    assert conn.request is not None
    conn.send(json.dumps({"headers": [[k, v] for k, v in conn.request.headers.raw_items()]}))
    for message in conn:
        conn.send(message)


@pytest.fixture(scope="module")
def ws_upstream() -> Iterator[str]:
    server = serve(_ws_handler, "127.0.0.1", 0, subprotocols=[Subprotocol("chat.v2")])
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.socket.getsockname()[1]}"
    finally:
        server.shutdown()
        thread.join(timeout=10)


# --------------------------------------------------------------------------------------------------
# Gateway
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gw(
    tmp_path_factory: pytest.TempPathFactory, echo: Echo, tripwire: Tripwire, ws_upstream: str
) -> Iterator[Gateway]:
    routes = [
        echo_route(echo),
        echo_route(echo, name="small", host="small.test", max_body_size="1MiB"),
        echo_route(
            tripwire.url,
            name="small-tripwire",
            host="small-tripwire.test",
            max_body_size="1MiB",
            timeouts={"response": "2s"},
        ),
        echo_route(tripwire.url, name="ws-off", host="ws-off.test", websockets=False),
        echo_route(tripwire.url, name="private", host="private.test", public_paths=["/public/*"]),
        echo_route(ws_upstream, name="ws-peer", host="ws-peer.test"),
    ]
    tmp = tmp_path_factory.mktemp("streaming")
    port = free_port()
    with run_gateway(tmp, gateway_config(tmp, port, routes)) as gateway:
        yield gateway


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def _body(total: int, chunk: int = MIB) -> Iterator[bytes]:
    """A request body produced on the fly: the test process never holds it either."""
    block = b"u" * chunk
    while total > 0:
        piece = block if total >= chunk else block[:total]
        total -= len(piece)
        yield piece


def _worker(gw: Gateway) -> int:
    pids = gw.worker_pids()
    assert len(pids) == 1, pids
    return pids[0]


def _warm_up(gw: Gateway) -> None:
    """One ordinary round trip first, so imports and pools are not counted as body buffering."""
    assert httpx.post(f"{gw.url}/__echo/upload", content=b"warm" * 1024, timeout=30).status_code == 200
    with httpx.stream("GET", f"{gw.url}/__echo/bytes/{4 * MIB}", timeout=30) as resp:
        assert sum(len(c) for c in resp.iter_bytes()) == 4 * MIB


def _ws_connect(gw: Gateway, host: str, path: str = "/ws", **kwargs: Any) -> ClientConnection:
    """Open a WebSocket through the gateway with a chosen Host (the socket still goes to 127.0.0.1)."""
    sock = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    try:
        conn: ClientConnection = connect(
            f"ws://{host}:{gw.port}{path}", sock=sock, open_timeout=10, close_timeout=5, **kwargs
        )
        return conn
    except BaseException:
        sock.close()
        raise


# --------------------------------------------------------------------------------------------------
# 1 GiB both ways with flat memory
# --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_1gib_download_streams_with_flat_worker_memory(gw: Gateway) -> None:
    """A 1 GiB response arrives complete while the worker's peak RSS grows by far less than the body:
    the gateway relays chunks instead of buffering (a buffering proxy is a memory DoS)."""
    _warm_up(gw)
    pid = _worker(gw)
    before = worker_peak_rss_kib(pid)
    received = 0
    with httpx.stream("GET", f"{gw.url}/__echo/bytes/{GIB}", timeout=120) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-length"] == str(GIB)
        for chunk in resp.iter_bytes():
            received += len(chunk)
    assert received == GIB
    growth = worker_peak_rss_kib(pid) - before
    assert growth < RSS_GROWTH_LIMIT_KIB, f"worker peak RSS grew by {growth} KiB"


@pytest.mark.slow
@pytest.mark.parametrize(
    "framing",
    [
        "content-length",
        "chunked",
    ],
)
def test_1gib_upload_streams_with_flat_worker_memory(gw: Gateway, framing: str) -> None:
    """A 1 GiB upload reaches the upstream byte-exact, with and without Content-Length, while the
    worker's peak RSS stays flat (the body is pulled from the client as it is written upstream)."""
    _warm_up(gw)
    pid = _worker(gw)
    before = worker_peak_rss_kib(pid)
    headers = {"Content-Length": str(GIB)} if framing == "content-length" else {}
    resp = httpx.post(f"{gw.url}/__echo/upload", content=_body(GIB), headers=headers, timeout=120)
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"body_bytes": GIB}
    growth = worker_peak_rss_kib(pid) - before
    assert growth < RSS_GROWTH_LIMIT_KIB, f"worker peak RSS grew by {growth} KiB"


# --------------------------------------------------------------------------------------------------
# Ordinary bodies and the size limit
# --------------------------------------------------------------------------------------------------


def test_body_with_content_length_reaches_upstream_exactly(gw: Gateway) -> None:
    """A plain POST body is forwarded byte-exact."""
    resp = httpx.post(f"{gw.url}/__echo/upload", content=b"z" * 300_000, timeout=30)
    assert resp.json() == {"body_bytes": 300_000}


def test_chunked_body_reaches_upstream_exactly(gw: Gateway) -> None:
    """A body without Content-Length (Transfer-Encoding: chunked) is forwarded byte-exact."""
    resp = httpx.post(f"{gw.url}/__echo/upload", content=_body(300_000, chunk=65536), timeout=30)
    assert resp.json() == {"body_bytes": 300_000}


def test_body_at_the_limit_is_accepted(gw: Gateway) -> None:
    """max_body_size is inclusive: exactly 1 MiB passes on a 1 MiB route."""
    resp = httpx.post(
        f"{gw.url}/__echo/upload",
        headers={"Host": "small.test"},
        content=b"m" * MIB,
        timeout=30,
    )
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"body_bytes": MIB}


def test_content_length_over_limit_is_413_before_contacting_upstream(gw: Gateway, tripwire: Tripwire) -> None:
    """An announced oversized body is refused from the headers alone: the upstream is never contacted
    and the gateway does not wait for the body (here it is never sent at all)."""
    tripwire.connections()
    data = raw_request(
        gw.port,
        b"POST /upload HTTP/1.1\r\nHost: small-tripwire.test\r\nContent-Length: 10737418240\r\n"
        b"Content-Type: application/octet-stream\r\n\r\n",
        timeout=30,
    )
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), data[:200]
    assert json.loads(body)["error"] == "body-too-large"
    assert tripwire.connections() == 0


def test_content_length_over_limit_with_body_is_413(gw: Gateway, tripwire: Tripwire) -> None:
    """The same with a client that sends the whole 2 MiB body."""
    tripwire.connections()
    resp = httpx.post(
        f"{gw.url}/upload", headers={"Host": "small-tripwire.test"}, content=b"o" * (2 * MIB), timeout=30
    )
    assert resp.status_code == 413
    assert resp.json()["error"] == "body-too-large"
    assert tripwire.connections() == 0


def test_chunked_body_over_limit_is_413(gw: Gateway) -> None:
    """Without Content-Length the limit is enforced while streaming: the upload is cut off with 413."""
    resp = httpx.post(
        f"{gw.url}/__echo/upload",
        headers={"Host": "small.test"},
        content=_body(2 * MIB, chunk=64 * 1024),
        timeout=30,
    )
    assert resp.status_code == 413
    assert resp.json()["error"] == "body-too-large"


# --------------------------------------------------------------------------------------------------
# WebSockets
# --------------------------------------------------------------------------------------------------


def test_websocket_text_and_binary_messages_echo_through(gw: Gateway) -> None:
    """Frames are relayed both ways with their type intact (text stays str, binary stays bytes)."""
    with _ws_connect(gw, "127.0.0.1") as ws:
        ws.send("hello ✓")
        assert ws.recv(timeout=10) == "hello ✓"
        payload = bytes(range(256)) * 1024
        ws.send(payload)
        assert ws.recv(timeout=10) == payload
        ws.send("")
        assert ws.recv(timeout=10) == ""


def test_websocket_subprotocol_negotiation_passes_through(gw: Gateway) -> None:
    """The client's offer reaches the application and the application's choice reaches the client."""
    with _ws_connect(gw, "ws-peer.test", subprotocols=["chat.v1", "chat.v2"]) as ws:
        assert ws.subprotocol == "chat.v2"
        seen = json.loads(ws.recv(timeout=10))["headers"]
        offered = [v for k, v in seen if k.lower() == "sec-websocket-protocol"]
        assert len(offered) == 1
        assert [p.strip() for p in offered[0].split(",")] == ["chat.v1", "chat.v2"]
        ws.send("ping")
        assert ws.recv(timeout=10) == "ping"


def test_websocket_handshake_strips_identity_and_spoofed_forwarding(gw: Gateway) -> None:
    """Invariant 3 holds for the WebSocket handshake too: identity headers in any spelling and
    untrusted forwarding headers never reach the application."""
    spoofed = [
        ("X-Gateway-User", "attacker@evil.test"),
        ("x_gateway_roles", "admin"),
        ("X-GATEWAY-ASSERTION", "forged.jwt.token"),
        ("X-Forwarded-For", "6.6.6.6"),
        ("X-Real-IP", "6.6.6.6"),
        ("Forwarded", "for=6.6.6.6"),
    ]
    with _ws_connect(gw, "ws-peer.test", additional_headers=spoofed, subprotocols=["chat.v2"]) as ws:
        seen = json.loads(ws.recv(timeout=10))["headers"]
    names = [k.lower().replace("_", "-") for k, _ in seen]
    assert not [n for n in names if n.startswith("x-gateway-")]
    assert "x-real-ip" not in names
    assert not [v for _, v in seen if "6.6.6.6" in v or "evil.test" in v or "forged" in v]
    assert [v for k, v in seen if k.lower() == "x-forwarded-for"] == ["127.0.0.1"]


def test_websocket_refused_when_route_disables_websockets(gw: Gateway, tripwire: Tripwire) -> None:
    """websockets: false refuses the handshake (403) without opening an upstream connection."""
    tripwire.connections()
    with pytest.raises(InvalidStatus) as info:
        _ws_connect(gw, "ws-off.test")
    assert info.value.response.status_code == 403
    assert tripwire.connections() == 0


@pytest.mark.parametrize(
    ("host", "path"),
    [
        ("private.test", "/secret"),
        ("127.0.0.1", "/.gateway/health"),
        ("127.0.0.1", "/a%2Fb"),
        ("unknown.test", "/ws"),
    ],
    ids=["non-public", "reserved-prefix", "bad-path", "no-route"],
)
def test_websocket_refused_where_http_would_be(gw: Gateway, tripwire: Tripwire, host: str, path: str) -> None:
    """The WebSocket path runs the same receive/route checks as HTTP and fails closed."""
    tripwire.connections()
    with pytest.raises(InvalidStatus) as info:
        _ws_connect(gw, host, path)
    assert info.value.response.status_code == 403
    assert tripwire.connections() == 0


# --------------------------------------------------------------------------------------------------
# An answer nobody reads does not hold the app's connection
# --------------------------------------------------------------------------------------------------


def test_an_answer_the_client_never_reads_or_left_gives_its_upstream_connection_back(
    tmp_path_factory: pytest.TempPathFactory, echo: Echo
) -> None:
    """An attack run asked for large answers and read none (or left): each held one of the worker's
    upstream connections for good, and every route answered 503 (the client's send never ended; an
    abandoned one returned at once and the gateway read the app's whole body into nowhere). One
    connection here, and two seconds to read: the next request gets it."""
    tmp = tmp_path_factory.mktemp("unread")
    config = gateway_config(
        tmp,
        free_port(),
        [echo_route(echo)],
        server={"workers": 1},
        limits={"max_upstream_connections": 1, "body_timeout": "2s"},
    )
    request = b"GET /__echo/bytes/%d HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % GIB
    with run_gateway(tmp, config) as gateway:
        for how in ("never reads", "leaves"):
            sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=10)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                sock.sendall(request)
                assert sock.recv(64).startswith(b"HTTP/1.1 200"), how
                if how == "leaves":
                    sock.close()
                resp = httpx.get(f"{gateway.url}/__echo/status/204", timeout=20)
                assert resp.status_code == 204, (how, resp.status_code, resp.text)
            finally:
                sock.close()
