"""Upstream failures through a real gateway: clear answers, no replayed side effects, fail closed.

A dead upstream is a port that is bound but never listening (connection refused); a slow one is the echo
app's ``/__echo/sleep/S``; a broken one is a small socket server that answers garbage or cuts a
response short. Retries are made deterministic with ``round_robin`` over ``[dead, live]`` and one
worker: a GET always moves the cursor back to the dead target (see the retry tests).
"""

from __future__ import annotations

import json
import re
import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import pytest

from tests.integration.harness import (
    Echo,
    Gateway,
    dead_port,
    echo_route,
    free_port,
    gateway_config,
    run_gateway,
)

BROWSER = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
NO_EJECTION = {"consecutive_failures": 1000}  # effectively never ejected in these tests

# --------------------------------------------------------------------------------------------------
# A misbehaving upstream: answers by path with garbage or a truncated response
# --------------------------------------------------------------------------------------------------


class _BrokenHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                return
            data += chunk
        target = data.split(b" ", 2)[1]
        if target.startswith(b"/garbage"):
            sock.sendall(b"THIS IS NOT HTTP AT ALL\r\n\r\n")
        elif target.startswith(b"/truncated-small"):
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"s" * 10)
        elif target.startswith(b"/truncated-large"):
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + b"L" * 200_000)
        elif target.startswith(b"/close"):
            pass  # close without a byte of response
        elif target.startswith(b"/stall-small"):
            # Headers and part of a small body, then silence with the connection open: the stall is
            # the scenario (the gateway's read timeout must end it first), not a wait for something.
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"s" * 10)
            time.sleep(3)
        sock.shutdown(socket.SHUT_RDWR)


@pytest.fixture(scope="module")
def broken_upstream() -> Iterator[str]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _BrokenHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


# --------------------------------------------------------------------------------------------------
# Gateway
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dead_ports() -> Iterator[tuple[int, int, int]]:
    """Three ports that refuse connections for the whole module (nothing else can bind them)."""
    with ExitStack() as stack:
        yield (
            stack.enter_context(dead_port()),
            stack.enter_context(dead_port()),
            stack.enter_context(dead_port()),
        )


@pytest.fixture(scope="module")
def gw(
    tmp_path_factory: pytest.TempPathFactory,
    echo: Echo,
    broken_upstream: str,
    dead_ports: tuple[int, int, int],
) -> Iterator[Gateway]:
    dead, dead1, dead2 = dead_ports
    routes = [
        echo_route(echo, passive_health_check={"consecutive_failures": 1, "ejection_time": "10m"}),
        echo_route(
            f"http://127.0.0.1:{dead}", name="down", host="down.test", passive_health_check=NO_EJECTION
        ),
        echo_route(
            echo,
            name="slow",
            host="slow.test",
            timeouts={"response": "1s"},
            passive_health_check=dict(NO_EJECTION),
        ),
        echo_route(
            echo,
            name="retry",
            host="retry.test",
            upstreams=[f"http://127.0.0.1:{dead}", echo.url],
            balance="round_robin",
            passive_health_check=dict(NO_EJECTION),
        ),
        echo_route(
            echo,
            name="ejected",
            host="ejected.test",
            upstreams=[f"http://127.0.0.1:{dead1}", f"http://127.0.0.1:{dead2}"],
            passive_health_check={"consecutive_failures": 1, "ejection_time": "10m"},
        ),
        echo_route(
            broken_upstream, name="broken", host="broken.test", passive_health_check=dict(NO_EJECTION)
        ),
        echo_route(
            broken_upstream,
            name="broken-slow",
            host="broken-slow.test",
            timeouts={"response": "1s"},
            passive_health_check=dict(NO_EJECTION),
        ),
    ]
    tmp = tmp_path_factory.mktemp("upstream-errors")
    port = free_port()
    with run_gateway(tmp, gateway_config(tmp, port, routes)) as gateway:
        assert len(gateway.worker_pids()) == 1  # the retry tests rely on one round-robin cursor
        yield gateway


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def _request(gw: Gateway, method: str, path: str, *, host: str, **kwargs: Any) -> httpx.Response:
    headers = {"Host": host, **kwargs.pop("headers", {})}
    return httpx.request(method, f"{gw.url}{path}", headers=headers, timeout=30, **kwargs)


def _gateway_json_error(resp: httpx.Response, status: int, reason: str) -> None:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/json"
    body = resp.json()
    assert body["error"] == reason
    assert body["status"] == status
    assert body["request_id"] == resp.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", body["request_id"])


def _gateway_html_error(resp: httpx.Response, status: int, reason: str) -> None:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("text/html")
    assert f"reason: {reason}" in resp.text
    assert f"request id: {resp.headers['x-request-id']}" in resp.text


def _echo_answer(resp: httpx.Response, echo: Echo) -> dict[str, Any]:
    assert resp.status_code == 200, resp.text
    seen: dict[str, Any] = json.loads(resp.text)
    assert [v for k, v in seen["headers"] if k == "host"] == [f"127.0.0.1:{echo.port}"]
    return seen


# --------------------------------------------------------------------------------------------------
# Upstream down, slow, broken
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_upstream_down_is_502_json_for_api_clients(gw: Gateway, method: str) -> None:
    """Connection refused becomes the gateway's own 502 with a reason and request id."""
    _gateway_json_error(_request(gw, method, "/x", host="down.test"), 502, "upstream-error")


def test_upstream_down_is_502_page_for_browsers(gw: Gateway) -> None:
    """A browser gets a readable page, not a raw error, still naming reason and request id."""
    resp = _request(gw, "GET", "/x", host="down.test", headers={"Accept": BROWSER})
    _gateway_html_error(resp, 502, "upstream-error")


def test_slow_upstream_is_504(gw: Gateway) -> None:
    """An upstream that does not send response headers within timeouts.response gets a 504."""
    _gateway_json_error(_request(gw, "GET", "/__echo/sleep/3", host="slow.test"), 504, "upstream-timeout")


def test_slow_upstream_is_504_page_for_browsers(gw: Gateway) -> None:
    resp = _request(gw, "GET", "/__echo/sleep/3", host="slow.test", headers={"Accept": BROWSER})
    _gateway_html_error(resp, 504, "upstream-timeout")


def test_upstream_answering_within_the_timeout_passes(gw: Gateway) -> None:
    """The response timeout bounds waiting; it does not cut off an answer that arrives in time."""
    resp = _request(gw, "GET", "/__echo/sleep/0.1", host="slow.test")
    assert resp.status_code == 200
    assert resp.text == "slept"


def test_upstream_garbage_is_502(gw: Gateway) -> None:
    """A reply that is not HTTP is the upstream's failure, reported as 502 (never passed on raw)."""
    resp = _request(gw, "GET", "/garbage", host="broken.test")
    _gateway_json_error(resp, 502, "upstream-error")
    assert "NOT HTTP" not in resp.text


def test_upstream_closing_without_answer_is_502(gw: Gateway) -> None:
    """A connection closed before any response byte is a 502, not an empty 200."""
    _gateway_json_error(_request(gw, "GET", "/close", host="broken.test"), 502, "upstream-error")


def test_upstream_truncating_a_small_response_is_502(gw: Gateway) -> None:
    """The gateway reads small answers whole before replying, so a truncated one is still a clean 502."""
    _gateway_json_error(_request(gw, "GET", "/truncated-small", host="broken.test"), 502, "upstream-error")


def test_upstream_stalling_in_a_small_body_is_504(gw: Gateway) -> None:
    """timeouts.response also bounds each wait for more of the body: a small answer whose body stops
    coming is read whole before replying, so it is still a clean 504."""
    _gateway_json_error(_request(gw, "GET", "/stall-small", host="broken-slow.test"), 504, "upstream-timeout")


def test_upstream_truncating_a_streamed_response_aborts_the_client_connection(gw: Gateway) -> None:
    """Once streaming started the only honest signal is an aborted connection: the client must not
    receive a short body that looks complete."""
    with pytest.raises(httpx.RemoteProtocolError):
        _request(gw, "GET", "/truncated-large", host="broken.test")


# --------------------------------------------------------------------------------------------------
# Upstream error statuses are responses, passed through unchanged
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503, 504, 404, 401, 403, 418])
def test_upstream_error_status_is_passed_through_unchanged(gw: Gateway, status: int) -> None:
    """The application's own error answer reaches the client as it was sent (status and body), so a
    gateway 502 always means the gateway could not talk to the app."""
    resp = _request(gw, "GET", f"/__echo/status/{status}", host="127.0.0.1")
    assert resp.status_code == status
    assert resp.text == f"status {status}"
    assert resp.headers["content-type"] == "text/plain"
    assert re.fullmatch(r"[0-9a-f]{32}", resp.headers["x-request-id"])


def test_upstream_5xx_answers_do_not_eject_the_target(gw: Gateway, echo: Echo) -> None:
    """An HTTP error is a response, not a transport failure: even with consecutive_failures: 1 the
    target keeps serving after a run of 500s."""
    for _ in range(3):
        assert _request(gw, "GET", "/__echo/status/500", host="127.0.0.1").status_code == 500
    _echo_answer(_request(gw, "GET", "/after", host="127.0.0.1"), echo)


# --------------------------------------------------------------------------------------------------
# Retries: only where replaying cannot repeat a side effect
# --------------------------------------------------------------------------------------------------


def test_get_is_retried_on_the_live_target_after_connect_failure(gw: Gateway, echo: Echo) -> None:
    """With round_robin over [dead, live] every GET succeeds: after a GET the cursor is back on the
    dead target, so each of these first fails to connect there and is retried on the live one."""
    for i in range(4):
        seen = _echo_answer(_request(gw, "GET", f"/item/{i}", host="retry.test"), echo)
        assert seen["target"] == f"/item/{i}"


def test_put_with_body_is_retried_and_the_body_arrives_whole(gw: Gateway, echo: Echo) -> None:
    """An idempotent request whose body was not yet read is replayed safely, body included."""
    _echo_answer(_request(gw, "GET", "/reset-cursor", host="retry.test"), echo)
    resp = _request(gw, "PUT", "/__echo/upload", host="retry.test", content=b"p" * 50_000)
    assert resp.status_code == 200
    assert resp.json() == {"body_bytes": 50_000}


@pytest.mark.parametrize("body", [b"", b"amount=100&to=mallory"], ids=["empty", "form"])
def test_post_hitting_the_dead_target_is_not_retried(gw: Gateway, echo: Echo, body: bytes) -> None:
    """A POST is never replayed on another target (it could charge twice): it fails with 502, and the
    next request proves the live target was there all along."""
    _echo_answer(_request(gw, "GET", "/reset-cursor", host="retry.test"), echo)  # cursor → dead target
    resp = _request(gw, "POST", "/transfer", host="retry.test", content=body)
    _gateway_json_error(resp, 502, "upstream-error")
    seen = _echo_answer(_request(gw, "POST", "/transfer", host="retry.test", content=body), echo)
    assert seen["body_bytes"] == len(body)


def test_all_targets_ejected_is_503(gw: Gateway) -> None:
    """With every target passively ejected the gateway answers 503 at once instead of trying them."""
    first = _request(gw, "GET", "/x", host="ejected.test")
    # Both targets fail once (the GET is retried on the second) and each is ejected at the first failure.
    _gateway_json_error(first, 502, "upstream-error")
    _gateway_json_error(_request(gw, "GET", "/x", host="ejected.test"), 503, "unavailable")
    resp = _request(gw, "GET", "/x", host="ejected.test", headers={"Accept": BROWSER})
    _gateway_html_error(resp, 503, "unavailable")
