"""Canonical paths and routing through a real gateway (docs/architecture.md invariant 1: authorize what you forward).

Paths are sent byte-exact over a raw socket (client libraries normalise dot segments themselves)
and the echo app reports the request target it received, so these tests prove that the one canonical
spelling the gateway routes on is also what the upstream serves. Two echo apps (A and B) tell routes
apart: each sees its own ``host:port`` in the Host header. Requests that must never be forwarded go to
a route whose upstream is a tripwire socket, which counts connection attempts.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.integration.harness import (
    Echo,
    Gateway,
    Tripwire,
    echo_route,
    free_port,
    gateway_config,
    raw_request,
    run_echo,
    run_gateway,
)
from tests.support.wait import wait_until

# --------------------------------------------------------------------------------------------------
# Fixtures: two echo apps, a tripwire and one gateway for the whole module
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def echo_a() -> Iterator[Echo]:
    with run_echo() as app:
        yield app


@pytest.fixture(scope="module")
def echo_b() -> Iterator[Echo]:
    with run_echo() as app:
        yield app


@pytest.fixture(scope="module")
def gw(
    tmp_path_factory: pytest.TempPathFactory, echo_a: Echo, echo_b: Echo, tripwire: Tripwire
) -> Iterator[Gateway]:
    routes = [
        echo_route(echo_a, name="root-a"),
        echo_route(echo_b, name="app-b", path="/b-app"),
        echo_route(echo_a, name="app-b-deeper-a", path="/b-app/deeper"),
        echo_route(echo_b, name="admin-b", path="/admin"),
        echo_route(echo_a, name="exact-a", host="app.example.test"),
        echo_route(echo_a, name="echo-exact-a", host="echo.example.test"),
        echo_route(echo_b, name="wildcard-b", host="*.example.test"),
        echo_route(echo_a, name="params-a", host="params.test", allow_path_params=True),
        echo_route(
            tripwire.url,
            name="params-private",
            host="params-private.test",
            allow_path_params=True,
            public_paths=["/*.css"],
            timeouts={"response": "2s"},
        ),
        echo_route(
            echo_a, name="params-css", host="params-css.test", allow_path_params=True, public_paths=["/*.css"]
        ),
        echo_route(tripwire.url, name="tripwire", host="tripwire.test", timeouts={"response": "2s"}),
        echo_route(
            tripwire.url,
            name="private",
            host="private.test",
            public_paths=["/public/*"],
            timeouts={"response": "2s"},
        ),
        echo_route(echo_a, name="private-echo", host="private-echo.test", public_paths=["/public/*"]),
    ]
    tmp = tmp_path_factory.mktemp("routing")
    port = free_port()
    with run_gateway(tmp, gateway_config(tmp, port, routes)) as gateway:
        yield gateway


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def send(
    gw: Gateway, raw_path: bytes, *, host: str | None = None, accept: str | None = None
) -> httpx.Response:
    """GET with the request target exactly as given, over a raw socket.

    Client libraries (httpx included) normalise dot segments before sending, which would make the
    traversal cases test the client instead of the gateway.
    """
    lines = [b"GET " + raw_path + b" HTTP/1.1", b"Host: " + (host or f"127.0.0.1:{gw.port}").encode()]
    if accept is not None:
        lines.append(b"Accept: " + accept.encode())
    lines += [b"Connection: close", b"", b""]
    return parse_response(raw_request(gw.port, b"\r\n".join(lines), timeout=30))


def parse_response(data: bytes) -> httpx.Response:
    """Parse one HTTP/1.1 response read until the server closed the connection."""
    head, sep, body = data.partition(b"\r\n\r\n")
    assert sep, f"incomplete response: {data!r}"
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    pairs = [
        (name.strip(), value.strip()) for name, _, value in (line.partition(":") for line in header_lines)
    ]
    if any(n.lower() == "transfer-encoding" and "chunked" in v.lower() for n, v in pairs):
        body = dechunk(body)
        pairs = [(n, v) for n, v in pairs if n.lower() != "transfer-encoding"]
    return httpx.Response(int(status_line.split(" ", 2)[1]), headers=pairs, content=body)


def dechunk(data: bytes) -> bytes:
    out = b""
    while True:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return out
        out += rest[:size]
        data = rest[size + 2 :]


def upstream_view(resp: httpx.Response) -> dict[str, Any]:
    assert resp.status_code == 200, resp.text
    seen: dict[str, Any] = json.loads(resp.text)
    assert "target" in seen, f"not an echo-app answer: {resp.text}"
    return seen


def served_by(resp: httpx.Response) -> int:
    """The port of the echo app that answered (its own authority is in the Host it received)."""
    hosts = [v for n, v in upstream_view(resp)["headers"] if n == "host"]
    assert len(hosts) == 1
    return int(hosts[0].rsplit(":", 1)[1])


def gateway_error(resp: httpx.Response, status: int, reason: str) -> dict[str, Any]:
    """Assert the answer is the gateway's own JSON error (not something an upstream produced)."""
    assert resp.status_code == status, resp.text
    body: dict[str, Any] = resp.json()
    assert body["error"] == reason
    assert body["status"] == status
    assert body["request_id"] == resp.headers["x-request-id"]
    assert "target" not in body
    return body


# --------------------------------------------------------------------------------------------------
# Canonical paths reach the upstream
# --------------------------------------------------------------------------------------------------

CANONICAL = [
    (b"/a/./b/../c", "/a/c"),
    (b"/a/b/../../c", "/c"),
    (b"/%7Euser", "/~user"),
    (b"/%7euser/docs", "/~user/docs"),
    (b"/%41%62c", "/Abc"),
    (b"/x/%252e%252e/y", "/x/%252e%252e/y"),
    (b"/x/%252F/y", "/x/%252F/y"),
    (b"/a//b///c", "/a/b/c"),
    (b"/a/%2e%2e/b", "/b"),
    (b"/a/%2E/b", "/a/b"),
    (b"/a/b/", "/a/b/"),
    (b"/a/b/.", "/a/b/"),
    (b"/caf%c3%a9", "/caf%C3%A9"),
    (b"/a%3bb", "/a%3Bb"),
    (b"/a%20b", "/a%20b"),
    (b"/q?x=%2F&y=../..%2f", "/q?x=%2F&y=../..%2f"),
]


@pytest.mark.parametrize(("raw_path", "expected"), CANONICAL, ids=[c[0].decode() for c in CANONICAL])
def test_upstream_receives_the_canonical_path(gw: Gateway, raw_path: bytes, expected: str) -> None:
    """The string the router (and later the policy) judged is byte-for-byte what the upstream serves;
    the query string is passed through untouched."""
    assert upstream_view(send(gw, raw_path))["target"] == expected


def test_canonical_path_is_used_for_routing(gw: Gateway, echo_a: Echo, echo_b: Echo) -> None:
    """Dot segments are resolved before the route is chosen, so '/x/../admin' is the /admin route."""
    resp = send(gw, b"/x/../admin/users")
    assert served_by(resp) == echo_b.port
    assert upstream_view(resp)["target"] == "/admin/users"
    assert served_by(send(gw, b"/b-app/deeper/../x")) == echo_b.port
    assert served_by(send(gw, b"/b-app/./deeper/x")) == echo_a.port
    assert served_by(send(gw, b"/%61dmin")) == echo_b.port


# --------------------------------------------------------------------------------------------------
# Ambiguous paths are refused and never forwarded
# --------------------------------------------------------------------------------------------------

AMBIGUOUS = [
    b"/a%2Fb",
    b"/a%2fb",
    b"/admin%2Fsecret",
    b"/a%5Cb",
    b"/a%5cb",
    b"/a%00",
    b"/a%00.html",
    b"/..%2f",
    b"/..%2fetc/passwd",
    b"/%2e%2e/etc",
    b"/%2E%2E%2Fetc",
    b"/..",
    b"/a/../../etc",
    b"/public/..;/admin",
    b"/public/.;/admin",
    b"/public/..%3B/admin",
    b"/admin;jsessionid=x",
    b"/%C0%AF",
    b"/%c0%ae%c0%ae/etc",
    b"/%ED%A0%80",
    b"/%FF",
    b"/%zz",
    b"/%u002e%u002e/admin",
    b"/a%",
    b"/a%0d%0aSet-Cookie:%20x=1",
    b"/a%09b",
    b"/a%7F",
]


@pytest.mark.parametrize("raw_path", AMBIGUOUS, ids=[p.decode() for p in AMBIGUOUS])
def test_ambiguous_path_is_400_bad_path_and_never_proxied(
    gw: Gateway, tripwire: Tripwire, raw_path: bytes
) -> None:
    """A path with more than one plausible meaning (encoded separators, NUL, traversal, '..;', bad or
    overlong UTF-8, ';' parameters on a route that does not allow them) is refused, not guessed at."""
    tripwire.connections()
    resp = send(gw, raw_path, host="tripwire.test")
    gateway_error(resp, 400, "bad-path")
    assert tripwire.connections() == 0


RAW_AMBIGUOUS = [
    b"/a\\b",
    b"/public\\..\\admin",
    b"/a\\..\\..\\windows",
]


@pytest.mark.parametrize("raw_path", RAW_AMBIGUOUS, ids=[p.decode() for p in RAW_AMBIGUOUS])
def test_raw_backslash_in_request_line_is_400_and_never_proxied(
    gw: Gateway, tripwire: Tripwire, raw_path: bytes
) -> None:
    """A raw backslash is a separator on Windows upstreams: '/public\\..\\admin' must not slip through."""
    tripwire.connections()
    gateway_error(send(gw, raw_path, host="tripwire.test"), 400, "bad-path")
    assert tripwire.connections() == 0


def test_asterisk_form_request_target_is_refused(gw: Gateway, tripwire: Tripwire) -> None:
    """'OPTIONS *' names no path the route table knows; it is not forwarded."""
    tripwire.connections()
    data = raw_request(gw.port, b"OPTIONS * HTTP/1.1\r\nHost: tripwire.test\r\nConnection: close\r\n\r\n")
    assert parse_response(data).status_code == 400
    assert tripwire.connections() == 0


def test_bad_path_page_for_browsers_names_reason_and_request_id(gw: Gateway) -> None:
    """A browser gets a readable HTML page that still carries the reason and request id."""
    resp = send(gw, b"/a%2Fb", accept="text/html,application/xhtml+xml")
    assert resp.status_code == 400
    assert resp.headers["content-type"].startswith("text/html")
    assert "bad-path" in resp.text
    assert resp.headers["x-request-id"] in resp.text


def test_path_params_are_allowed_where_the_route_allows_them(gw: Gateway) -> None:
    """allow_path_params: true forwards ';' parameters as they are (for apps that use them)."""
    resp = send(gw, b"/cart;jsessionid=abc/items", host="params.test")
    assert upstream_view(resp)["target"] == "/cart;jsessionid=abc/items"
    # The access log keeps the path the policy decided, and the one the app got beside it (a
    # re-attack run: only /cart/items was logged for what the app read with its parameter).
    logged = wait_until(
        lambda: [
            e["url"]
            for line in gw.log().splitlines()
            if line.startswith("{") and '"gateway.access"' in line
            for e in [json.loads(line)]
            if e["http"]["request"].get("id") == resp.headers["x-request-id"]
        ],
        what="the request's access event",
    )
    # A session id in a path parameter is redacted there, as in a query (an attack run's `;token=`).
    assert (logged[0]["path"], logged[0]["original"]) == ("/cart/items", "/cart;jsessionid=[REDACTED]/items")


def test_path_params_cannot_make_a_private_path_public(gw: Gateway, tripwire: Tripwire) -> None:
    """Tomcat, Jetty and Spring serve /admin/secret;.css as /admin/secret: a public pattern /*.css
    must not match it, and no rule may see another path than the app serves (an attack run had
    /admin;x/secret served by Jetty past a deny rule on /admin/*)."""
    tripwire.connections()
    for raw in (b"/admin/secret;.css", b"/admin;x/secret.css/x", b"/admin/;.css"):
        resp = send(gw, raw, host="params-private.test")
        assert resp.status_code in (302, 401), (raw, resp.status_code)
    assert tripwire.connections() == 0
    # Public as the app reads it; the app still gets its parameters.
    resp = send(gw, b"/style.css;v=2", host="params-css.test")
    assert upstream_view(resp)["target"] == "/style.css;v=2"


def test_dot_segment_with_params_is_refused_even_where_params_are_allowed(gw: Gateway) -> None:
    """'..;' is the Tomcat/Spring traversal; allowing parameters never allows it."""
    gateway_error(send(gw, b"/public/..;/admin", host="params.test"), 400, "bad-path")


# --------------------------------------------------------------------------------------------------
# Routing
# --------------------------------------------------------------------------------------------------

PATH_ROUTING = [
    (b"/", "a"),
    (b"/anything/else", "a"),
    (b"/b-app", "b"),
    (b"/b-app/", "b"),
    (b"/b-app/x/y", "b"),
    (b"/b-appendix", "a"),
    (b"/b-app/deeper", "a"),
    (b"/b-app/deeper/x", "a"),
    (b"/b-app/deeperx", "b"),
    (b"/admin", "b"),
    (b"/admin/", "b"),
    (b"/admin/users", "b"),
    (b"/administrator", "a"),
    (b"/admin.php", "a"),
    (b"/admin-panel", "a"),
]


@pytest.mark.parametrize(("raw_path", "which"), PATH_ROUTING, ids=[p[0].decode() for p in PATH_ROUTING])
def test_longest_path_prefix_on_segment_boundary_wins(
    gw: Gateway, echo_a: Echo, echo_b: Echo, raw_path: bytes, which: str
) -> None:
    """The most specific prefix decides, and '/admin' never covers '/administrator' (a classic bypass
    of prefix rules)."""
    expected = echo_a.port if which == "a" else echo_b.port
    assert served_by(send(gw, raw_path)) == expected


HOST_ROUTING = [
    ("app.example.test", "a"),
    ("echo.example.test", "a"),
    ("other.example.test", "b"),
    ("x-1.example.test", "b"),
    ("ECHO.Example.TEST.:8080", "a"),
    ("echo.example.test.", "a"),
    ("Echo.Example.Test:443", "a"),
    ("OTHER.EXAMPLE.TEST.", "b"),
    ("127.0.0.1", "a"),
]


@pytest.mark.parametrize(("host", "which"), HOST_ROUTING)
def test_exact_host_beats_wildcard_and_hosts_are_normalised(
    gw: Gateway, echo_a: Echo, echo_b: Echo, host: str, which: str
) -> None:
    """Hosts match case-insensitively without port or trailing dot; an exact host beats '*.example.test'."""
    expected = echo_a.port if which == "a" else echo_b.port
    assert served_by(send(gw, b"/", host=host)) == expected


@pytest.mark.parametrize("host", ["example.test", "a.b.example.test", "unknown.test", "example.test.evil"])
def test_unknown_host_is_404_json_for_api_clients(gw: Gateway, host: str) -> None:
    """No route means no access; a wildcard covers exactly one label, like a TLS certificate."""
    body = gateway_error(send(gw, b"/", host=host), 404, "no-route")
    assert body["message"]


def test_unknown_host_is_404_html_page_for_browsers(gw: Gateway) -> None:
    """A browser gets a finished-looking page carrying the reason and the request id."""
    resp = send(gw, b"/somewhere", host="nowhere.test", accept="text/html,*/*;q=0.8")
    assert resp.status_code == 404
    assert resp.headers["content-type"].startswith("text/html")
    assert "reason: no-route" in resp.text
    assert f"request id: {resp.headers['x-request-id']}" in resp.text
    assert resp.text.lstrip().lower().startswith("<!doctype html>")


@pytest.mark.parametrize("host", ["evil.test@127.0.0.1", "127.0.0.1/admin", "a b.test", "[::1"])
def test_malformed_host_is_400(gw: Gateway, host: str) -> None:
    """A Host that is not a plain name[:port] could make two components disagree about the target."""
    gateway_error(send(gw, b"/", host=host), 400, "bad-headers")


# --------------------------------------------------------------------------------------------------
# The reserved /.gateway/ prefix
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "app.example.test", "other.example.test", "unknown.test", "tripwire.test", "private.test"],
)
def test_health_endpoint_answers_on_every_host(gw: Gateway, tripwire: Tripwire, host: str) -> None:
    """/.gateway/ belongs to the gateway on every host, routed or not, public or not."""
    tripwire.connections()
    resp = send(gw, b"/.gateway/health", host=host)
    assert resp.status_code == 200
    assert "target" not in resp.json()
    assert tripwire.connections() == 0


RESERVED = [
    b"/.gateway/anything-unknown",
    b"/.gateway/",
    b"/.gateway",
    b"//.gateway/anything-unknown",
    b"/x/../.gateway/anything-unknown",
    b"/%2egateway/anything-unknown",
    b"/./.gateway/admin",
]


@pytest.mark.parametrize("raw_path", RESERVED, ids=[p.decode() for p in RESERVED])
@pytest.mark.parametrize("host", ["tripwire.test", "private.test"])
def test_unknown_reserved_path_is_never_proxied(
    gw: Gateway, tripwire: Tripwire, raw_path: bytes, host: str
) -> None:
    """An application can never shadow (or be reached through) the gateway's own prefix, whatever the
    spelling: the reserved check runs on the canonical path."""
    tripwire.connections()
    resp = send(gw, raw_path, host=host)
    assert resp.status_code == 404
    assert tripwire.connections() == 0


def test_unknown_reserved_path_answer_comes_from_the_gateway(gw: Gateway) -> None:
    """On a route to a real app, /.gateway/unknown is the gateway's 404, not the app's page."""
    resp = send(gw, b"/.gateway/anything-unknown")
    assert resp.status_code == 404
    assert "target" not in resp.text
    assert "python-httpx" not in resp.text


# --------------------------------------------------------------------------------------------------
# Non-public paths (sign-in is not built yet: they must fail closed)
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw_path", [b"/", b"/secret", b"/publicity", b"/public", b"/public/../secret"])
def test_non_public_path_is_401_json_and_never_proxied(
    gw: Gateway, tripwire: Tripwire, raw_path: bytes
) -> None:
    """Deny by default: without a session a non-public path is refused before any upstream contact, and
    '/public/../secret' is judged as the '/secret' it really is."""
    tripwire.connections()
    gateway_error(send(gw, raw_path, host="private.test"), 401, "authentication-required")
    assert tripwire.connections() == 0


def test_public_path_on_a_private_route_is_proxied(gw: Gateway, echo_a: Echo) -> None:
    """public_paths open exactly what they name."""
    resp = send(gw, b"/public/logo.png", host="private-echo.test")
    assert served_by(resp) == echo_a.port
    assert upstream_view(resp)["target"] == "/public/logo.png"
