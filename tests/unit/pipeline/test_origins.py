"""Which pages may open a route's WebSockets: the route's own host, the origins it lists, or any ("*")."""

from __future__ import annotations

import pytest

from gateway.pipeline.origins import (
    CrossOriginRefused,
    WebSocketOriginRefused,
    check_own_origin,
    check_websocket_handshake,
    check_websocket_origin,
    normal_origin,
)
from gateway.settings.checks.routes import origin_problem

HOST = b"chat.example.com"


def check(origin: bytes | None, allowed: frozenset[str] | None = frozenset(), proto: str = "https") -> None:
    headers = [(b"host", HOST)] + ([(b"origin", origin)] if origin is not None else [])
    check_websocket_origin(headers, host=HOST, proto=proto, allowed=allowed)


@pytest.mark.parametrize(
    "origin", [b"https://chat.example.com", b"https://CHAT.example.com:443", b"https://chat.example.com."]
)
def test_the_routes_own_host_may(origin: bytes) -> None:
    check(origin)


def test_a_client_that_sends_no_origin_is_not_a_browser_and_passes() -> None:
    check(None)


@pytest.mark.parametrize(
    "origin",
    [
        b"https://wiki.example.com",  # a sibling app of the same site: the attack
        b"http://chat.example.com",  # another scheme is another origin
        b"https://chat.example.com:8443",
        b"https://chat.example.com.evil.test",
        b"null",  # a sandboxed frame, a file
        b"https://chat.example.com/path",
        b"",
    ],
)
def test_another_origin_is_refused(origin: bytes) -> None:
    with pytest.raises(WebSocketOriginRefused):
        check(origin)


def test_listed_origins_and_any() -> None:
    portal = normal_origin("https://portal.example.com")
    assert portal == "https://portal.example.com:443"
    listed = frozenset({portal})
    check(b"https://portal.example.com", listed)
    with pytest.raises(WebSocketOriginRefused):
        check(b"https://wiki.example.com", listed)
    check(b"https://wiki.example.com", None)


def test_two_origins_are_refused() -> None:
    headers = [(b"origin", b"https://chat.example.com"), (b"Origin", b"https://evil.test")]
    with pytest.raises(WebSocketOriginRefused):
        check_websocket_origin(headers, host=HOST, proto="https", allowed=frozenset())


@pytest.mark.parametrize(
    ("entry", "ok"),
    [
        ("https://app.example.com", True),
        ("http://10.0.0.5:8080", True),
        ("app.example.com", False),
        ("https://app.example.com/chat", False),
        ("ftp://app.example.com", False),
        ("https://user@app.example.com", False),
        ("https://app.example.com:x", False),
    ],
)
def test_the_config_takes_origins_only(entry: str, ok: bool) -> None:
    assert (origin_problem(entry) is None) is ok


def test_a_proxys_question_about_a_handshake_is_checked_too() -> None:
    """The re-attack run: through nginx's forward-auth, another origin's handshake (and one to a route
    without WebSockets) got 101; the question carries Sec-WebSocket-Key, not Upgrade."""
    question = [(b"origin", b"http://evil.test"), (b"sec-websocket-key", b"dGhlIHNhbXBsZSBub25jZQ==")]
    with pytest.raises(WebSocketOriginRefused):
        check_websocket_handshake(
            question, asked=True, enabled=True, host=HOST, proto="https", allowed=frozenset()
        )
    with pytest.raises(WebSocketOriginRefused):
        check_websocket_handshake(
            [question[1]], asked=True, enabled=False, host=HOST, proto="https", allowed=frozenset()
        )
    # An ordinary request asked about: not a handshake, nothing to check here.
    check_websocket_handshake(
        [(b"origin", b"http://evil.test")],
        asked=True,
        enabled=False,
        host=HOST,
        proto="https",
        allowed=frozenset(),
    )


# -- the gateway's own pages ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        # An attack run: a page on another port of the same host planted the CSRF cookie and posted.
        [(b"origin", b"http://localhost:18710")],
        [(b"origin", b"https://localhost")],  # the host's other port, read with the origin's scheme
        [(b"origin", b"http://evil.test:18701")],
        [(b"origin", b"null"), (b"sec-fetch-site", b"same-site")],
        [(b"origin", b"http://localhost:18701"), (b"origin", b"http://localhost:18701")],
        [(b"sec-fetch-site", b"same-site")],
        [(b"Sec-Fetch-Site", b"cross-site"), (b"origin", b"http://localhost:18701")],
        # Where browsers send no Fetch Metadata (plain HTTP off localhost), "null" is anyone's page.
        [(b"origin", b"null")],
        [(b"origin", b"null"), (b"sec-fetch-site", b"none")],
    ],
)
def test_a_change_from_another_origin_is_refused(headers: list[tuple[bytes, bytes]]) -> None:
    with pytest.raises(CrossOriginRefused) as caught:
        check_own_origin(headers, method="POST", host=b"localhost:18701")
    assert caught.value.status == 403


@pytest.mark.parametrize(
    ("headers", "method", "host"),
    [
        (
            [(b"origin", b"http://localhost:18701"), (b"sec-fetch-site", b"same-origin")],
            "POST",
            b"localhost:18701",
        ),
        ([(b"origin", b"https://auth.example.com")], "POST", b"auth.example.com"),  # TLS ended in front
        ([(b"origin", b"https://auth.example.com")], "POST", b"auth.example.com:443"),
        ([], "POST", b"auth.example.com"),  # a script or the identity provider's back-channel logout
        # Chromium's own form post from a page with Referrer-Policy: no-referrer (every page here before).
        ([(b"origin", b"null"), (b"sec-fetch-site", b"same-origin")], "POST", b"auth.example.com"),
        ([(b"sec-fetch-site", b"none")], "POST", b"auth.example.com"),
        ([(b"origin", b"http://evil.test"), (b"sec-fetch-site", b"cross-site")], "GET", b"auth.example.com"),
    ],
)
def test_own_origin_scripts_and_reads_pass(
    headers: list[tuple[bytes, bytes]], method: str, host: bytes
) -> None:
    check_own_origin(headers, method=method, host=host)
