"""What a client that opens connections and sends nothing can hold (``server.max_connections``,
``server.header_timeout``), on a running gateway.

Every open connection holds one of a worker's ``max_connections`` slots, an idle keep-alive one and
one that has sent half a request head included, until ``header_timeout`` closes it; beyond the
limit new connections wait in the listen backlog. The test sets both low and shows each reaches the
server: the third connection is served only once the two idle ones are closed, and well before the
default 10 s header timeout would have closed them.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from tests.integration.harness import Gateway, echo_route, free_port, gateway_config, run_gateway

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
