"""An open WebSocket or a streamed download ends when access ends: a real ``gateway serve`` and the CLI.

An attack run kept a WebSocket echoing and a 2 GB download flowing after ``gateway user disable``,
``gateway incident block-ip`` and ``gateway lockdown on``: the stages decided once, at the head. Now
each long exchange is checked again every second (``gateway/pipeline/watch.py``).
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from gateway.echo import CLOSE_MESSAGE
from tests.integration.harness import (
    ALLOW_SIGNED_IN,
    Gateway,
    add_user,
    echo_route,
    free_port,
    gateway_config,
    run_cli,
    run_echo,
    run_gateway,
    wait_until,
)
from tests.integration.http_client import PASSWORD, SESSION_COOKIE, browser, cookie, login

# The watch runs every second; a revocation reaches the worker within about a second more.
ENDS_WITHIN = 5.0


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("long-exchanges")
    with run_echo() as echo:
        route = echo_route(echo, public_paths=[], websockets=True)
        config = gateway_config(tmp, free_port(), [route], session={"insecure_cookies": True})
        with run_gateway(tmp, config) as gateway:
            yield gateway


def _signed_in(gw: Gateway, user: str) -> str:
    add_user(gw.config_path, user, PASSWORD)
    with browser(gw) as client:
        assert login(client, user).status_code == 302
        session = cookie(client, SESSION_COOKIE)
    assert session
    return session


def _websocket(gw: Gateway, session: str, origin: str | None = None) -> ClientConnection:
    sock = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    headers: Any = {"Cookie": f"{SESSION_COOKIE}={session}", **({"Origin": origin} if origin else {})}
    return connect(
        f"ws://127.0.0.1:{gw.port}/ws",
        sock=sock,
        open_timeout=10,
        close_timeout=5,
        additional_headers=headers,
    )


def _cli(gw: Gateway, *args: str) -> None:
    result = run_cli(*args, "--config", str(gw.config_path))
    assert result.returncode == 0, result.stdout + result.stderr


def _closed_for_policy(ws: ClientConnection) -> int:
    """Keep talking until the gateway closes the socket; the close code."""
    deadline = time.monotonic() + ENDS_WITHIN
    try:
        while time.monotonic() < deadline:
            ws.send("still here?")
            ws.recv(timeout=1)
            time.sleep(0.2)
    except ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd is not None else 0
    except TimeoutError:
        pass
    raise AssertionError(f"the WebSocket was still open {ENDS_WITHIN}s after access ended")


def test_a_websocket_of_a_disabled_account_is_closed(gw: Gateway) -> None:
    session = _signed_in(gw, "ws-disabled")
    with _websocket(gw, session) as ws:
        ws.send("before")
        assert ws.recv(timeout=10) == "before"
        _cli(gw, "user", "disable", "ws-disabled")
        assert _closed_for_policy(ws) == 1008
    # The access log says the socket was refused when access ended, not that it was allowed.
    events = wait_until(
        lambda: [
            e
            for line in gw.log().splitlines()
            if line.startswith("{") and '"gateway.access"' in line and '"ws-disabled"' in line
            for e in [json.loads(line)]
            if e["gateway"]["kind"] == "websocket"
        ],
        what="the WebSocket's access event",
    )
    assert [(e["gateway"]["decision"], e["gateway"]["reason"], e["event"]["type"]) for e in events] == [
        ("deny", "access-ended", ["access", "denied"])
    ]


def test_a_silent_websocket_is_closed_when_access_ends(gw: Gateway) -> None:
    """An attack run: a client that sent nothing after access ended kept its socket open (the close
    waited in the server behind the pending receive), and its next message, seconds later, reached the
    app before the close. The client must get the close without sending anything."""
    session = _signed_in(gw, "ws-silent")
    with _websocket(gw, session) as ws:
        ws.send("before")
        assert ws.recv(timeout=10) == "before"
        _cli(gw, "user", "disable", "ws-silent")
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=ENDS_WITHIN)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1008


def test_the_apps_close_reaches_a_silent_client_at_once(gw: Gateway) -> None:
    """A re-attack run: when the app closed first, the close waited in the server behind the pending
    receive until the client sent again, and that message still reached the app."""
    session = _signed_in(gw, "ws-app-closes")
    with _websocket(gw, session) as ws:
        ws.send(CLOSE_MESSAGE)
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=ENDS_WITHIN)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 4000


def test_a_websocket_is_closed_by_a_lockdown(gw: Gateway) -> None:
    session = _signed_in(gw, "ws-lockdown")
    try:
        with _websocket(gw, session) as ws:
            ws.send("before")
            assert ws.recv(timeout=10) == "before"
            _cli(gw, "lockdown", "on", "--reason", "test of open sockets")
            assert _closed_for_policy(ws) == 1008
    finally:
        _cli(gw, "lockdown", "off", "--reason", "test done")


def test_a_streamed_download_of_a_disabled_account_is_cut_off(gw: Gateway) -> None:
    session = _signed_in(gw, "dl-disabled")
    received = 0
    with httpx.stream(
        "GET",
        f"{gw.url}/__echo/bytes/20000000000",
        headers={"Cookie": f"{SESSION_COOKIE}={session}"},
        timeout=30,
    ) as resp:
        assert resp.status_code == 200
        chunks = resp.iter_raw()
        while received < 8_000_000:
            received += len(next(chunks))
        _cli(gw, "user", "disable", "dl-disabled")
        disabled_at = time.monotonic()
        cut_off = False
        try:
            for chunk in chunks:
                received += len(chunk)
                assert time.monotonic() - disabled_at < ENDS_WITHIN, f"{received} bytes and still flowing"
        except httpx.HTTPError:
            cut_off = True
    assert cut_off  # the connection was aborted, not ended as if the body were complete
    assert received < 20_000_000_000


def test_an_upload_of_a_disabled_account_is_cut_off(gw: Gateway) -> None:
    """The re-attack run trickled an upload into the app for as long as it liked after the account was
    disabled: a long upload is checked again every second too."""
    session = _signed_in(gw, "up-disabled")
    sent = 0

    def body() -> Iterator[bytes]:
        nonlocal sent
        for n in range(40):
            if n == 3:
                _cli(gw, "user", "disable", "up-disabled")
            sent += 1000
            yield b"u" * 1000
            time.sleep(0.25)

    started = time.monotonic()
    try:
        answer = httpx.post(
            f"{gw.url}/__echo/upload",
            content=body(),
            headers={"Cookie": f"{SESSION_COOKIE}={session}", "Content-Length": "40000"},
            timeout=30,
        )
        status = answer.status_code
    except httpx.HTTPError:
        status = 0  # the connection was closed on the upload
    assert status in (0, 403), status
    assert sent < 40_000, "the whole upload went through"
    assert time.monotonic() - started < 3 + ENDS_WITHIN + 3


def test_a_page_of_another_origin_cannot_open_the_websocket_as_the_visitor(gw: Gateway) -> None:
    """An attack run: a handshake with the visitor's cookie and `Origin: http://evil.test` reached the
    app with the full identity (a sibling host's script would send the cookie along)."""
    from websockets.exceptions import InvalidStatus

    session = _signed_in(gw, "ws-origin")
    with pytest.raises(InvalidStatus) as refused:
        _websocket(gw, session, origin="http://evil.test").close()
    assert refused.value.response.status_code == 403
    with _websocket(gw, session, origin=f"http://127.0.0.1:{gw.port}") as ws:  # the route's own page
        ws.send("mine")
        assert ws.recv(timeout=10) == "mine"


def test_a_websocket_the_new_policy_denies_is_closed_and_no_other(gw: Gateway, tmp_path: Path) -> None:
    """A role removed or a deny rule added while a WebSocket is open: the open one ends as the next
    request would be refused, and another person's, still allowed, stays open."""
    denied, kept = _signed_in(gw, "ws-policy"), _signed_in(gw, "ws-policy-kept")
    policy = tmp_path / "deny-ws.csv"
    policy.write_text(ALLOW_SIGNED_IN.read_text() + "p, user:ws-policy, *, /ws, *, deny\n")
    try:
        with _websocket(gw, denied) as ws, _websocket(gw, kept) as other:
            ws.send("before")
            assert ws.recv(timeout=10) == "before"
            _cli(gw, "policy", "import", str(policy), "--reason", "test of open sockets")
            assert _closed_for_policy(ws) == 1008
            other.send("after")
            assert other.recv(timeout=10) == "after"
    finally:
        _cli(gw, "policy", "import", str(ALLOW_SIGNED_IN), "--reason", "test done")


def test_a_websocket_from_an_address_blocked_later_is_closed(gw: Gateway) -> None:
    """Last in this module: it blocks the address every test here connects from."""
    session = _signed_in(gw, "ws-blocked")
    with _websocket(gw, session) as ws:
        ws.send("before")
        assert ws.recv(timeout=10) == "before"
        _cli(gw, "incident", "block-ip", "127.0.0.1", "--for", "10m")
        assert _closed_for_policy(ws) == 1008


def test_a_websocket_on_a_path_a_reload_makes_private_is_closed(tmp_path: Path) -> None:
    """A re-attack run: an anonymous WebSocket on a public path kept echoing after a reload made the
    path private, where a new request got 401. The watch compares the route with the one the
    exchange was decided under; a change to it ends the exchange."""
    with run_echo() as echo:
        config = gateway_config(tmp_path, free_port(), [echo_route(echo, websockets=True)])
        with run_gateway(tmp_path, config) as gateway:
            sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=10)
            with connect(f"ws://127.0.0.1:{gateway.port}/ws", sock=sock, open_timeout=10) as ws:
                ws.send("public")
                assert ws.recv(timeout=10) == "public"
                private = gateway_config(
                    tmp_path, gateway.port, [echo_route(echo, public_paths=[], websockets=True)]
                )
                gateway.rewrite_config(private)
                gateway.sighup()
                wait_until(
                    lambda: httpx.get(f"{gateway.url}/x", timeout=5).status_code == 401,
                    timeout=10,
                    what="the path private for a new request",
                )
                assert _closed_for_policy(ws) == 1008
