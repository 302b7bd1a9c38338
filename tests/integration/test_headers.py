"""Header hygiene through a real gateway (docs/architecture.md invariant 3: only the gateway speaks for identity).

The bundled echo app answers with the exact header list it received, so every assertion here is about
what an upstream really sees on the wire, not about what a function returned. Two gateways are shared
per module: one that trusts nobody (every client is untrusted) and one that trusts 127.0.0.1 as a
proxy in front of it. Response-side checks use a tiny HTTP/1.1 upstream that sends the headers a
well-behaved gateway must drop or keep.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

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
    run_gateway,
)

REQUEST_ID = re.compile(r"^[0-9a-f]{32}$")
SPOOF = "attacker@evil.test"

# --------------------------------------------------------------------------------------------------
# A small upstream for response-header checks: several Set-Cookie headers and hop-by-hop headers.
# --------------------------------------------------------------------------------------------------

UPSTREAM_COOKIES = (
    "sid=abc123; Path=/; HttpOnly; Secure",
    "theme=dark; Expires=Wed, 21 Oct 2099 07:28:00 GMT",  # a comma inside one cookie
    "lang=en",
)
# The app's try at planting its own session and CSRF token under the gateway's cookie names.
TOSSED_COOKIES = (
    "__Host-gateway_session=ATTACKERS-SESSION; Path=/; Secure; HttpOnly",
    "__host-GATEWAY_SESSION=; Path=/; Secure; Max-Age=0",
    "__Host-gateway_csrf=FIXED; Path=/; Secure",
)


class _ResponseHeadersHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = b"upstream body"
        self.send_response(200)
        for cookie in (*UPSTREAM_COOKIES, *TOSSED_COOKIES):
            self.send_header("Set-Cookie", cookie)
        self.send_header("Connection", "X-Upstream-Secret")
        self.send_header("X-Upstream-Secret", "internal-token")
        self.send_header("Keep-Alive", "timeout=5, max=100")
        self.send_header("Proxy-Authenticate", 'Basic realm="internal"')
        self.send_header("Trailer", "X-Checksum")
        self.send_header("Upgrade", "h2c")
        self.send_header("X-Request-Id", "chosen-by-upstream")
        # Clearing the cookies would sign the person out of the gateway on every host of the site.
        self.send_header("Clear-Site-Data", '"cache", "cookies"')
        self.send_header("Clear-Site-Data", '"*"')
        self.send_header("X-App", "kept")
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture(scope="module")
def header_upstream() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ResponseHeadersHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


# --------------------------------------------------------------------------------------------------
# Gateways
# --------------------------------------------------------------------------------------------------


def _routes(echo: Echo, tripwire: Tripwire, header_upstream: str) -> list[dict[str, Any]]:
    return [
        echo_route(echo),
        echo_route(
            echo,
            name="route-headers",
            host="route-headers.test",
            request_headers={"X-Env": "production", "User-Agent": "gateway-route"},
            response_headers={"Content-Type": "text/x-route", "X-Frame-Options": "DENY"},
        ),
        echo_route(echo, name="preserve", host="preserve.test", preserve_host=True),
        echo_route(header_upstream, name="response-headers", host="response-headers.test"),
        echo_route(tripwire.url, name="tripwire", host="tripwire.test", timeouts={"response": "1s"}),
    ]


@pytest.fixture(scope="module")
def gw(
    tmp_path_factory: pytest.TempPathFactory, echo: Echo, tripwire: Tripwire, header_upstream: str
) -> Iterator[Gateway]:
    """A gateway with no trusted proxies: every client is untrusted. Header limit 8 KiB."""
    tmp = tmp_path_factory.mktemp("untrusted")
    port = free_port()
    config = gateway_config(
        tmp, port, _routes(echo, tripwire, header_upstream), limits={"max_header_bytes": "8KiB"}
    )
    with run_gateway(tmp, config) as gateway:
        yield gateway


@pytest.fixture(scope="module")
def trusted_gw(tmp_path_factory: pytest.TempPathFactory, echo: Echo) -> Iterator[Gateway]:
    """A gateway that believes forwarding headers from 127.0.0.1 (the test client is 'the proxy')."""
    tmp = tmp_path_factory.mktemp("trusted")
    port = free_port()
    config = gateway_config(tmp, port, [echo_route(echo)], trusted_proxies=["127.0.0.1/32"])
    with run_gateway(tmp, config) as gateway:
        yield gateway


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def _upstream_saw(resp: httpx.Response) -> list[tuple[str, str]]:
    """The header list the echo app received (names lower-cased by the ASGI server)."""
    assert resp.status_code == 200, resp.text
    seen = json.loads(resp.text)
    assert "headers" in seen, f"not an echo-app answer: {resp.text}"
    return [(name, value) for name, value in seen["headers"]]


def _values(headers: list[tuple[str, str]], name: str) -> list[str]:
    return [v for n, v in headers if n.lower() == name.lower()]


def _norm(name: str) -> str:
    return name.lower().replace("_", "-")


def _get(gw: Gateway, path: str = "/", **kwargs: Any) -> httpx.Response:
    return httpx.get(f"{gw.url}{path}", timeout=30, **kwargs)


# --------------------------------------------------------------------------------------------------
# Identity headers (invariant 3)
# --------------------------------------------------------------------------------------------------

IDENTITY_SPELLINGS = [
    "X-Gateway-User",
    "x-gateway-user",
    "X_GATEWAY_USER",
    "x_gateway_user",
    "X-Gateway_User",
    "X-Gateway-Email",
    "x_Gateway_eMail",
    "X-Gateway-Roles",
    "X-Gateway_Roles",
    "X-GATEWAY-ROLES",
    "X-Gateway-Assertion",
    "x-GATEWAY-assertion",
    "X_Gateway_Assertion",
    "X-Gateway-Claim-Not-Invented-Yet",
]


@pytest.mark.parametrize("name", IDENTITY_SPELLINGS)
def test_identity_header_in_any_spelling_never_reaches_upstream(gw: Gateway, name: str) -> None:
    """A client cannot assert an identity: X-Gateway-* is dropped whatever its case or '_'/'-' spelling,
    because CGI/WSGI/Rails fold '_' and '-' into the same variable upstream."""
    seen = _upstream_saw(_get(gw, "/whoami", headers={name: SPOOF}))
    assert not [n for n, _ in seen if _norm(n).startswith("x-gateway-")]
    assert not [v for _, v in seen if SPOOF in v]


def test_all_identity_spellings_at_once_and_repeated_are_all_dropped(gw: Gateway) -> None:
    """Sending every spelling together (and a name twice) does not let any one of them through."""
    headers = [(name, SPOOF) for name in IDENTITY_SPELLINGS] + [("X-Gateway-User", "second@evil.test")]
    seen = _upstream_saw(_get(gw, "/whoami", headers=headers))
    assert not [n for n, _ in seen if _norm(n).startswith("x-gateway-")]
    assert not [v for _, v in seen if "evil.test" in v]


def test_identity_headers_from_a_trusted_proxy_are_dropped_too(trusted_gw: Gateway) -> None:
    """Trusting a proxy for forwarding information never extends to identity: only the gateway speaks
    for who the user is."""
    headers = [(name, SPOOF) for name in ("X-Gateway-User", "X_Gateway_Roles", "x-gateway-assertion")]
    seen = _upstream_saw(_get(trusted_gw, "/whoami", headers=headers))
    assert not [n for n, _ in seen if _norm(n).startswith("x-gateway-")]
    assert not [v for _, v in seen if SPOOF in v]


# --------------------------------------------------------------------------------------------------
# Forwarding headers from an untrusted client
# --------------------------------------------------------------------------------------------------

SPOOFED_FORWARDING = [
    ("X-Forwarded-For", "6.6.6.6"),
    ("x_forwarded_for", "6.6.6.6"),
    ("X-Forwarded-Proto", "https"),
    ("X_Forwarded_Proto", "https"),
    ("X-Forwarded-Host", "evil.test"),
    ("X-Forwarded-Port", "8443"),
    ("X-Forwarded-Prefix", "/evil"),
    ("Forwarded", "for=6.6.6.6;host=evil.test;proto=https"),
    ("FORWARDED", "for=6.6.6.6"),
    ("X-Real-IP", "6.6.6.6"),
    ("x_real_ip", "6.6.6.6"),
    ("X-Client-IP", "6.6.6.6"),
    ("X-Original-Forwarded-For", "6.6.6.6"),
    ("Client-IP", "6.6.6.6"),
    ("True-Client-IP", "6.6.6.6"),
    ("CF-Connecting-IP", "6.6.6.6"),
    ("Fastly-Client-IP", "6.6.6.6"),
    ("X-Cluster-Client-IP", "6.6.6.6"),
    ("X-Originating-IP", "6.6.6.6"),
    ("X-Forwarded-Path", "/evil"),
    ("X-Envoy-Original-Path", "/evil"),
    ("X-Script-Name", "/evil"),
    # An attack run: gunicorn took SCRIPT_NAME (and PATH_INFO) from its trusted peer, the gateway, and
    # cut an allowed prefix off the path; its app's /admin handlers answered a public path's request.
    ("SCRIPT_NAME", "/evil"),
    ("Script-Name", "/evil"),
    ("PATH_INFO", "/evil"),
    ("REQUEST_URI", "/evil"),
    ("REMOTE_ADDR", "6.6.6.6"),
    # httpoxy, and Rack::Sendfile's request-side mapping (the client chose the file nginx would send).
    ("Proxy", "http://evil.test:1/"),
    ("X-Sendfile-Type", "X-Accel-Redirect"),
    ("X-Accel-Mapping", "/evil/=/etc/"),
    # Pyramid's traverser prefixes the path with X-Vhm-Root, always (a re-attack run: the admin panel
    # on a public "/"); WebSphere's $WSRA is the remote address it believes.
    ("X-Vhm-Root", "/evil"),
    ("$WSRA", "6.6.6.6"),
    ("X-Request-Id", "attacker-chosen-id"),
    ("x_request_id", "attacker-chosen-id"),
]


def _assert_gateway_forwarding(gw: Gateway, resp: httpx.Response, *, host: str | None = None) -> None:
    """The upstream sees exactly the forwarding set the gateway derived from the TCP peer."""
    seen = _upstream_saw(resp)
    host = host or f"127.0.0.1:{gw.port}"
    assert _values(seen, "x-forwarded-for") == ["127.0.0.1"]
    assert _values(seen, "x-forwarded-proto") == ["http"]
    assert _values(seen, "x-forwarded-host") == [host]
    assert _values(seen, "forwarded") == [f'for=127.0.0.1;host="{host}";proto=http']
    for absent in (
        "x-real-ip",
        "x-forwarded-port",
        "x-forwarded-prefix",
        "x-client-ip",
        "client-ip",
        "true-client-ip",
        "cf-connecting-ip",
        "fastly-client-ip",
        "x-cluster-client-ip",
        "x-originating-ip",
        "x-forwarded-path",
        "x-envoy-original-path",
        "x-script-name",
        "script-name",
        "path-info",
        "request-uri",
        "remote-addr",
        "proxy",
        "x-sendfile-type",
        "x-accel-mapping",
        "x-vhm-root",
        "$wsra",
    ):
        assert not _values(seen, absent), absent
    assert not [n for n, _ in seen if "_" in n], "an underscore spelling slipped through"
    request_ids = _values(seen, "x-request-id")
    assert len(request_ids) == 1
    assert REQUEST_ID.match(request_ids[0])
    assert resp.headers.get_list("x-request-id") == request_ids


@pytest.mark.parametrize(("name", "value"), SPOOFED_FORWARDING)
def test_untrusted_client_forwarding_headers_are_replaced(gw: Gateway, name: str, value: str) -> None:
    """An untrusted client cannot choose the client IP, scheme, host or request id the upstream sees."""
    resp = _get(gw, "/", headers={name: value})
    _assert_gateway_forwarding(gw, resp)
    if value not in ("https", "8443"):  # a bare scheme or number may legitimately appear elsewhere
        assert not [v for _, v in _upstream_saw(resp) if value in v]


def test_untrusted_client_sending_every_forwarding_header_at_once(gw: Gateway) -> None:
    """All spoofed forwarding headers together still yield only the gateway's own values."""
    resp = _get(gw, "/", headers=SPOOFED_FORWARDING)
    _assert_gateway_forwarding(gw, resp)
    seen = _upstream_saw(resp)
    assert not [v for _, v in seen if "6.6.6.6" in v or "evil" in v or "attacker" in v]


# --------------------------------------------------------------------------------------------------
# Forwarding headers from a trusted proxy
# --------------------------------------------------------------------------------------------------


def test_trusted_proxy_xff_is_appended_and_proto_honoured_and_the_host_is_the_routed_one(
    trusted_gw: Gateway,
) -> None:
    """Behind a trusted proxy the real client address survives (appended chain) and the original
    scheme is passed on, in both X-Forwarded-* and RFC 7239 Forwarded; the host is the one the gateway
    routed and decided on, never the proxy's X-Forwarded-Host (an attack run: a load balancer that
    passes a client's own on named a host to the app that no route authorized)."""
    resp = _get(
        trusted_gw,
        "/",
        headers={
            "X-Forwarded-For": "203.0.113.7",
            "X-Forwarded-Proto": "https",
            "X-Forwarded-Host": "app.example.test",
            "Forwarded": "for=6.6.6.6;proto=http",
        },
    )
    seen = _upstream_saw(resp)
    routed = urlsplit(trusted_gw.url).netloc
    assert _values(seen, "x-forwarded-for") == ["203.0.113.7, 127.0.0.1"]
    assert _values(seen, "x-forwarded-proto") == ["https"]
    assert _values(seen, "x-forwarded-host") == [routed]
    assert _values(seen, "forwarded") == [f'for=203.0.113.7, for=127.0.0.1;host="{routed}";proto=https']


def test_trusted_proxy_multiple_xff_headers_are_joined_in_order(trusted_gw: Gateway) -> None:
    """Several X-Forwarded-For lines form one chain, oldest hop first, with our peer last; the app is
    told the part from the client on (the right-most hop not trusted): what the client wrote to its
    left proves nothing, and an app reading the first entry took it for the client (an attack run)."""
    headers = [("X-Forwarded-For", "203.0.113.7, 198.51.100.1"), ("x-forwarded-for", "198.51.100.2")]
    seen = _upstream_saw(_get(trusted_gw, "/", headers=headers))
    assert _values(seen, "x-forwarded-for") == ["198.51.100.2, 127.0.0.1"]
    assert _values(seen, "forwarded")[0].startswith("for=198.51.100.2, for=127.0.0.1;")


def test_trusted_proxy_garbage_xff_entries_are_dropped(trusted_gw: Gateway) -> None:
    """Only well-formed addresses survive, so a value cannot inject Forwarded parameters upstream."""
    headers = {"X-Forwarded-For": 'unknown, 203.0.113.7;proto=https, "evil", 198.51.100.9'}
    seen = _upstream_saw(_get(trusted_gw, "/", headers=headers))
    assert _values(seen, "x-forwarded-for") == ["198.51.100.9, 127.0.0.1"]
    forwarded = _values(seen, "forwarded")
    assert forwarded == [f'for=198.51.100.9, for=127.0.0.1;host="127.0.0.1:{trusted_gw.port}";proto=http']


def test_trusted_proxy_ipv6_client_is_quoted_in_forwarded(trusted_gw: Gateway) -> None:
    """RFC 7239 §6: an IPv6 node is bracketed and quoted, so the header parses unambiguously."""
    seen = _upstream_saw(_get(trusted_gw, "/", headers={"X-Forwarded-For": "2001:db8::1"}))
    assert _values(seen, "x-forwarded-for") == ["2001:db8::1, 127.0.0.1"]
    assert _values(seen, "forwarded")[0].startswith('for="[2001:db8::1]", for=127.0.0.1;')


@pytest.mark.parametrize("proto", ["javascript", "ftp", "https, http", ""])
def test_trusted_proxy_invalid_proto_falls_back_to_connection_scheme(trusted_gw: Gateway, proto: str) -> None:
    """Only http/https are believed even from a trusted proxy."""
    seen = _upstream_saw(_get(trusted_gw, "/", headers={"X-Forwarded-Proto": proto}))
    assert _values(seen, "x-forwarded-proto") == ["http"]


def test_trusted_proxy_x_real_ip_is_still_removed(trusted_gw: Gateway) -> None:
    """The gateway does not re-create X-Real-IP, so none from any sender may reach the upstream."""
    seen = _upstream_saw(_get(trusted_gw, "/", headers={"X-Real-IP": "6.6.6.6", "X_Real_Ip": "6.6.6.7"}))
    assert not _values(seen, "x-real-ip")
    assert not [v for _, v in seen if "6.6.6." in v]


# --------------------------------------------------------------------------------------------------
# Request ids
# --------------------------------------------------------------------------------------------------


def test_request_id_is_generated_returned_and_unique(gw: Gateway) -> None:
    """Every request gets a fresh 128-bit id that the upstream and the client both see."""
    ids = []
    for _ in range(3):
        resp = _get(gw, "/")
        upstream_ids = _values(_upstream_saw(resp), "x-request-id")
        assert upstream_ids == resp.headers.get_list("x-request-id")
        assert REQUEST_ID.match(upstream_ids[0])
        ids.append(upstream_ids[0])
    assert len(set(ids)) == 3


def test_trusted_proxy_valid_request_id_is_passed_on(trusted_gw: Gateway) -> None:
    """A request id set by the trusted proxy in front links both access logs."""
    resp = _get(trusted_gw, "/", headers={"X-Request-Id": "lb-7f3a.01:XYZ_z-9"})
    assert _values(_upstream_saw(resp), "x-request-id") == ["lb-7f3a.01:XYZ_z-9"]
    assert resp.headers.get_list("x-request-id") == ["lb-7f3a.01:XYZ_z-9"]


@pytest.mark.parametrize("bad_id", ["has space", "a" * 129, "semi;colon", 'quote"d', "<script>"])
def test_trusted_proxy_malformed_request_id_is_replaced(trusted_gw: Gateway, bad_id: str) -> None:
    """A request id that could break log lines or headers is never trusted, even from a proxy."""
    resp = _get(trusted_gw, "/", headers={"X-Request-Id": bad_id})
    upstream_ids = _values(_upstream_saw(resp), "x-request-id")
    assert len(upstream_ids) == 1
    assert REQUEST_ID.match(upstream_ids[0])
    assert resp.headers["x-request-id"] == upstream_ids[0]


def test_upstream_cannot_choose_the_request_id_returned_to_the_client(gw: Gateway) -> None:
    """The client sees the gateway's id (the one in the access log), never the application's."""
    resp = _get(gw, "/", headers={"Host": "response-headers.test"})
    assert resp.status_code == 200
    ids = resp.headers.get_list("x-request-id")
    assert len(ids) == 1
    assert REQUEST_ID.match(ids[0])


# --------------------------------------------------------------------------------------------------
# Hop-by-hop headers
# --------------------------------------------------------------------------------------------------

HOP_BY_HOP = [
    ("Connection", "keep-alive"),
    ("Keep-Alive", "timeout=99, max=7"),
    ("TE", "trailers"),
    ("Trailer", "X-Checksum"),
    ("Upgrade", "h2c"),
    ("Proxy-Authorization", "Basic cHJveHk6c2VjcmV0"),
    ("Proxy-Connection", "keep-alive"),
    ("HTTP2-Settings", "AAMAAABkAARAAAAAAAIAAAAA"),
]


@pytest.mark.parametrize(("name", "value"), HOP_BY_HOP)
def test_hop_by_hop_request_header_is_not_forwarded(gw: Gateway, name: str, value: str) -> None:
    """Hop-by-hop headers concern only the client's connection (RFC 9110 §7.6.1); forwarding
    Proxy-Authorization would leak credentials meant for us, Upgrade on plain HTTP could switch the
    upstream connection's protocol."""
    seen = _upstream_saw(_get(gw, "/", headers={name: value}))
    assert not _values(seen, name)
    assert not [v for _, v in seen if v == value]


def test_header_named_in_connection_is_not_forwarded(gw: Gateway) -> None:
    """A header the client declares hop-by-hop via Connection stops at the gateway."""
    headers = {
        "Connection": "X-Hop-Secret, x-other-hop",
        "X-Hop-Secret": "s1",
        "X-OTHER-HOP": "s2",
        "X-Keep": "k",
    }
    seen = _upstream_saw(_get(gw, "/", headers=headers))
    assert not _values(seen, "x-hop-secret")
    assert not _values(seen, "x-other-hop")
    assert _values(seen, "x-keep") == ["k"]


def test_connection_cannot_remove_gateway_set_headers(gw: Gateway) -> None:
    """'Connection: X-Forwarded-For, X-Request-Id, Forwarded' must not strip what the gateway itself
    adds: otherwise a client could hide its address from the upstream and break log correlation."""
    headers = {
        "Connection": "X-Forwarded-For, X-Forwarded-Proto, X-Forwarded-Host, X-Request-Id, Forwarded",
        "X-Forwarded-For": "6.6.6.6",
    }
    resp = _get(gw, "/", headers=headers)
    _assert_gateway_forwarding(gw, resp)


def test_connection_cannot_remove_the_host_header(gw: Gateway) -> None:
    """Naming Host in Connection does not leave the upstream without a Host."""
    seen = _upstream_saw(_get(gw, "/", headers={"Connection": "Host"}))
    assert len(_values(seen, "host")) == 1


def test_hop_by_hop_response_headers_are_removed_and_cookies_survive(gw: Gateway) -> None:
    """Upstream hop-by-hop headers (and those it names in Connection) stop at the gateway, while every
    Set-Cookie line is passed on separately (folding them would corrupt cookies with commas); the
    app's Set-Cookie lines for the gateway's own cookies (``TOSSED_COOKIES``) stop too, and so does
    its ``Clear-Site-Data`` of cookies (the rest of its clearing is kept)."""
    resp = _get(gw, "/", headers={"Host": "response-headers.test"})
    assert resp.status_code == 200
    assert resp.text == "upstream body"
    assert resp.headers.get_list("set-cookie") == list(UPSTREAM_COOKIES)
    assert set(resp.cookies.keys()) == {"sid", "theme", "lang"}
    for name in ("x-upstream-secret", "keep-alive", "proxy-authenticate", "trailer", "upgrade"):
        assert name not in resp.headers, name
    assert "X-Upstream-Secret" not in resp.headers.get("connection", "")
    assert resp.headers["x-app"] == "kept"
    cleared = resp.headers.get_list("clear-site-data")
    assert cleared[0] == '"cache"'
    assert '"storage"' in cleared[1]
    assert not [value for value in cleared if "cookies" in value or "*" in value]


# --------------------------------------------------------------------------------------------------
# Route header settings and Host
# --------------------------------------------------------------------------------------------------


def test_route_request_headers_are_set(gw: Gateway) -> None:
    """Headers configured on the route reach the upstream."""
    seen = _upstream_saw(_get(gw, "/", headers={"Host": "route-headers.test"}))
    assert _values(seen, "x-env") == ["production"]


def test_route_request_headers_override_client_values(gw: Gateway) -> None:
    """A client cannot pre-empt a route-configured header: the upstream sees only the route's value."""
    headers = {"Host": "route-headers.test", "X-Env": "attacker", "User-Agent": "client-agent"}
    seen = _upstream_saw(_get(gw, "/", headers=headers))
    assert _values(seen, "x-env") == ["production"]
    assert _values(seen, "user-agent") == ["gateway-route"]


def test_route_response_headers_are_set_and_override_upstream(gw: Gateway) -> None:
    """Route response headers are added, and replace (not duplicate) the upstream's same-named header."""
    resp = _get(gw, "/", headers={"Host": "route-headers.test"})
    assert resp.status_code == 200
    assert resp.headers.get_list("content-type") == ["text/x-route"]
    assert resp.headers.get_list("x-frame-options") == ["DENY"]
    assert json.loads(resp.text)["method"] == "GET"


def test_default_host_header_is_the_upstreams(gw: Gateway, echo: Echo) -> None:
    """Without preserve_host the upstream gets its own authority, not the name the client used."""
    seen = _upstream_saw(_get(gw, "/", headers={"Host": "route-headers.test"}))
    assert _values(seen, "host") == [f"127.0.0.1:{echo.port}"]
    assert _values(seen, "x-forwarded-host") == ["route-headers.test"]


def test_preserve_host_passes_the_clients_host(gw: Gateway) -> None:
    """With preserve_host: true the upstream sees the client's Host exactly once."""
    seen = _upstream_saw(_get(gw, "/", headers={"Host": "preserve.test"}))
    assert _values(seen, "host") == ["preserve.test"]


# --------------------------------------------------------------------------------------------------
# Malformed header blocks
# --------------------------------------------------------------------------------------------------


def _raw_status(raw: bytes) -> tuple[int, dict[str, Any] | None]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    try:
        return status, json.loads(body)
    except ValueError:
        return status, None


@pytest.mark.parametrize(
    "host_lines",
    [
        b"Host: tripwire.test\r\nHost: tripwire.test\r\n",
        b"Host: tripwire.test\r\nhost: other.test\r\n",
        b"Host: tripwire.test\r\nHOST: tripwire.test:80\r\n",
        b"",
    ],
    ids=["duplicate", "different-case-and-value", "upper-case-with-port", "missing"],
)
def test_request_without_exactly_one_host_is_400_and_not_proxied(
    gw: Gateway, tripwire: Tripwire, host_lines: bytes
) -> None:
    """Two Host headers let two components disagree about the target (request smuggling); none is
    ambiguous too. Either is refused before routing."""
    tripwire.connections()
    raw = raw_request(gw.port, b"GET /x HTTP/1.1\r\n" + host_lines + b"Connection: close\r\n\r\n")
    status, body = _raw_status(raw)
    assert status == 400
    if body is not None:  # the ASGI server may refuse it first; if the gateway did, it says why
        assert body["error"] == "bad-headers"
    assert tripwire.connections() == 0


def test_headers_over_the_limit_get_431_and_are_not_proxied(gw: Gateway, tripwire: Tripwire) -> None:
    """limits.max_header_bytes bounds the header block (8 KiB here) before anything is forwarded."""
    tripwire.connections()
    resp = _get(gw, "/", headers={"Host": "tripwire.test", "X-Big": "a" * 12 * 1024})
    assert resp.status_code == 431
    assert resp.json()["error"] == "headers-too-large"
    assert tripwire.connections() == 0


def test_many_small_headers_over_the_limit_get_431(gw: Gateway, tripwire: Tripwire) -> None:
    """The limit is on the whole block, not per header."""
    tripwire.connections()
    headers = [(f"X-Part-{i}", "b" * 200) for i in range(60)]
    resp = _get(gw, "/", headers=[("Host", "tripwire.test"), *headers])
    assert resp.status_code == 431
    assert resp.json()["error"] == "headers-too-large"
    assert tripwire.connections() == 0


def test_headers_under_the_limit_pass(gw: Gateway) -> None:
    """A large-but-allowed header block is proxied intact."""
    seen = _upstream_saw(_get(gw, "/", headers={"X-Big": "a" * 4 * 1024}))
    assert _values(seen, "x-big") == ["a" * 4 * 1024]


def test_tripwire_is_a_working_witness(gw: Gateway, tripwire: Tripwire) -> None:
    """Sanity check of the 'not proxied' assertions above: a routed request does connect to it."""
    tripwire.connections()
    resp = _get(gw, "/", headers={"Host": "tripwire.test"})
    assert resp.status_code == 504  # the tripwire never answers; the route waits 1 s
    assert tripwire.connections() >= 1
