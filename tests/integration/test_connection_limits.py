"""What a client that opens connections and sends nothing can hold (``server.max_connections``,
``server.header_timeout``), on a running gateway.

Every open connection holds one of a worker's ``max_connections`` slots, an idle keep-alive one and
one that has sent half a request head included, until ``header_timeout`` closes it; beyond the
limit new connections wait in the listen backlog. The test sets both low and shows each reaches the
server: the third connection is served only once the two idle ones are closed, and well before the
default 10 s header timeout would have closed them. Over TLS the same holds with ``tls.http2: false``.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator

import pytest

from tests.integration.harness import Gateway, echo_route, free_port, gateway_config, run_gateway
from tests.support.certs import self_signed

HEADER_TIMEOUT = 4.0
HEALTH = b"GET /.gateway/health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("connection-limits")
    port = free_port()
    server = {"max_connections": 2, "header_timeout": f"{HEADER_TIMEOUT}s"}
    config = gateway_config(tmp, port, [echo_route("http://127.0.0.1:9")], server=server)
    with run_gateway(tmp, config) as gateway:
        yield gateway


def _answer(sock: socket.socket) -> bytes:
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def test_idle_connections_hold_a_slot_only_until_the_header_timeout(gw: Gateway) -> None:
    held = [socket.create_connection(("127.0.0.1", gw.port), timeout=30) for _ in range(2)]
    try:
        held[1].sendall(b"GET / HTTP/1.1\r\nHo")  # half a request head holds a slot the same way
        time.sleep(0.3)  # both accepted
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", gw.port), timeout=30) as third:
            third.sendall(HEALTH)
            answer = _answer(third)
        waited = time.monotonic() - started
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        # Not before the idle connections were closed (max_connections: 2 reached the server)...
        assert waited >= HEADER_TIMEOUT - 0.6, waited
        # ...and by header_timeout, not by the default 10 s.
        assert waited < 8, waited
        for sock in held:
            assert sock.recv(100) == b""  # closed by the server, without an answer
    finally:
        for sock in held:
            sock.close()


def test_below_the_limit_a_connection_is_served_at_once(gw: Gateway) -> None:
    with socket.create_connection(("127.0.0.1", gw.port), timeout=30):  # one idle connection
        time.sleep(0.3)
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", gw.port), timeout=30) as second:
            second.sendall(HEALTH)
            answer = _answer(second)
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        assert time.monotonic() - started < HEADER_TIMEOUT - 0.6  # no wait for the idle one


@pytest.fixture(scope="module")
def tls_gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """The same limits over TLS with ``tls.http2: false``: HTTP/1.1 only, so idle connections close."""
    tmp = tmp_path_factory.mktemp("connection-limits-tls")
    cert, key = self_signed(tmp, ips=["127.0.0.1"])
    port = free_port()
    server = {"max_connections": 2, "header_timeout": f"{HEADER_TIMEOUT}s"}
    tls = {"certificate": str(cert), "key": str(key), "http2": False}
    config = gateway_config(
        tmp,
        port,
        [echo_route("http://127.0.0.1:9")],
        server=server,
        tls=tls,
        public_url=f"https://127.0.0.1:{port}",
    )
    with run_gateway(tmp, config, scheme="https") as gateway:
        yield gateway


def _tls(port: int) -> ssl.SSLSocket:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2", "http/1.1"])
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    return context.wrap_socket(sock, server_hostname="127.0.0.1")


def test_over_tls_without_http2_idle_connections_also_close_at_the_header_timeout(tls_gw: Gateway) -> None:
    """With HTTP/2 on, the server waits without a timeout for the first bytes after the handshake (to
    tell HTTP/2 from HTTP/1.1), so such a connection keeps its slot; ``tls.http2: false`` closes it."""
    held = [_tls(tls_gw.port) for _ in range(2)]
    try:
        assert {sock.selected_alpn_protocol() for sock in held} == {"http/1.1"}  # no HTTP/2 offered
        time.sleep(0.3)
        started = time.monotonic()
        with _tls(tls_gw.port) as third:
            third.sendall(HEALTH)
            answer = _answer(third)
        waited = time.monotonic() - started
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        assert HEADER_TIMEOUT - 0.6 <= waited < 8, waited
    finally:
        for sock in held:
            sock.close()
