"""Header hygiene: identity and forwarding headers in every spelling, hop-by-hop, Connection tricks."""

from __future__ import annotations

import base64

import pytest

from gateway.identity.cookies import cookie_in
from gateway.pipeline.headers import (
    Forwarding,
    TrustedProxies,
    clean_response_headers,
    forwarding_for,
    normalize_name,
    upstream_request_headers,
)

NO_PROXIES = TrustedProxies([])
LB = TrustedProxies(["10.0.0.0/8", "127.0.0.1/32"])


def _fwd(
    headers: list[tuple[bytes, bytes]], peer: str = "203.0.113.9", trusted: TrustedProxies = NO_PROXIES
) -> Forwarding:
    return forwarding_for(
        peer_ip=peer, scheme="https", host="app.example.com", headers=headers, trusted=trusted
    )


def _out(headers: list[tuple[bytes, bytes]], **kw: object) -> dict[bytes, list[bytes]]:
    fwd = _fwd(headers, **kw)  # type: ignore[arg-type]
    result: dict[bytes, list[bytes]] = {}
    for name, value in upstream_request_headers(headers, fwd=fwd):
        result.setdefault(name, []).append(value)
    return result


@pytest.mark.parametrize(
    "name",
    [
        b"x-gateway-user",
        b"X-Gateway-User",
        b"X-GATEWAY-USER",
        b"x_gateway_user",
        b"X_Gateway_Roles",
        b"x-gateway_email",
        b"X-Gateway-Assertion",
        b"x-gateway-anything-new",
        # PHP reads "." as "_" too (an attack run: X.Gateway.User: bob reached a PHP app as
        # HTTP_X_GATEWAY_USER on a public path), and other punctuation may be folded elsewhere.
        b"X.Gateway.User",
        b"x.gateway_roles",
        b"X~Gateway|Auth",
    ],
)
def test_identity_headers_are_removed_in_every_spelling(name: bytes) -> None:
    out = _out([(b"host", b"app"), (name, b"admin")])
    assert not any(normalize_name(n).startswith(b"x-gateway-") for n in out)
    assert b"admin" not in b"".join(v for vs in out.values() for v in vs)


@pytest.mark.parametrize(
    "name", [b"X.HTTP.Method.Override", b"X.Original.URL", b"X.Real.IP", b"Remote.User", b"X.Forwarded.For"]
)
def test_overrides_and_forwarding_headers_are_removed_in_dotted_spellings(name: bytes) -> None:
    out = _out([(b"host", b"app"), (name, b"6.6.6.6")])
    assert name.lower() not in out
    assert b"6.6.6.6" not in b"".join(v for vs in out.values() for v in vs)


def test_ordinary_names_keep_their_spelling() -> None:
    out = _out([(b"host", b"app"), (b"X.Custom_Thing", b"1"), (b"Accept", b"*/*")])
    assert out[b"x.custom_thing"] == [b"1"]
    assert normalize_name(b"X-Gateway-User") == normalize_name(b"x.gateway_user") == b"x-gateway-user"


@pytest.mark.parametrize(
    "name",
    [b"x-forwarded-for", b"X_Forwarded_For", b"x-real-ip", b"X-Real_IP", b"forwarded", b"x-forwarded-host"],
)
def test_untrusted_forwarding_headers_are_replaced(name: bytes) -> None:
    out = _out([(b"host", b"app"), (name, b"1.2.3.4")])
    assert out[b"x-forwarded-for"] == [b"203.0.113.9"]
    assert b"1.2.3.4" not in b"".join(v for vs in out.values() for v in vs)
    assert out[b"x-forwarded-host"] == [b"app.example.com"]


@pytest.mark.parametrize(
    "name",
    [
        b"X-Forwarded-Protocol",
        b"X-Forwarded-Https",
        b"X-Forwarded-Client-Ip",
        b"X-Forwarded-Url",
        b"X_Forwarded_Anything",
        b"X-Original-Host",
        b"X-Host",
        b"X-HTTP-Host-Override",
        b"Front-End-Https",
        b"X-Url-Scheme",
        b"X-Original-Method",
        b"X-Scheme",
        b"X-Proxied-Https",
        b"Proxy-Auth-Cert",
        b"X-Forwarded",
        b"Forwarded-For",
        b"CF-Visitor",
        b"CloudFront-Viewer-Country",
        b"X-Envoy-Original-Host",
        b"X-Middleware-Subrequest",
        b"X-Invoke-Path",
        b"X-Matched-Path",
        b"X-Now-Route-Matches",
        b"X-Pathname",
        b"X-AppEngine-User-Is-Admin",
        b"MS-ASPNETCORE-CLIENTCERT",
    ],
)
def test_every_forwarding_header_of_the_client_is_dropped_not_only_the_known_names(name: bytes) -> None:
    """An attack run passed X-Forwarded-Protocol (gunicorn's scheme), -Https, -Client-Ip and ten more
    X-Forwarded-* names, and the host and scheme under other frameworks' names."""
    out = _out([(b"host", b"app"), (name, b"evil")])
    assert b"evil" not in b"".join(v for vs in out.values() for v in vs), out


def test_trusted_proxy_chain_is_extended_and_client_is_rightmost_untrusted() -> None:
    headers = [(b"host", b"app"), (b"x-forwarded-for", b"6.6.6.6, 198.51.100.7, 10.1.2.3")]
    fwd = _fwd(headers, peer="10.0.0.2", trusted=LB)
    # 6.6.6.6 was written by the client itself; the first untrusted hop from the right is the client.
    assert fwd.client_ip == "198.51.100.7"
    assert fwd.chain == ("198.51.100.7", "10.1.2.3", "10.0.0.2")


def test_the_app_is_told_only_the_verified_part_of_the_chain() -> None:
    """An attack run behind a trusted proxy: the client's own `X-Forwarded-For: 6.6.6.6` reached the
    app as the left-most entry and as the first `for=` of the gateway's own `Forwarded`, which an app
    reading the first entry (Express with `trust proxy`) took for the client's address."""
    headers = [(b"host", b"app"), (b"x-forwarded-for", b"6.6.6.6, 203.0.113.9")]
    out = _out(headers, peer="127.0.0.1", trusted=LB)
    assert out[b"x-forwarded-for"] == [b"203.0.113.9, 127.0.0.1"]
    assert out[b"forwarded"][0].startswith(b"for=203.0.113.9, for=127.0.0.1;")
    assert b"6.6.6.6" not in b"".join(v for vs in out.values() for v in vs)


def test_garbage_in_trusted_xff_is_dropped() -> None:
    headers = [(b"host", b"app"), (b"x-forwarded-for", b'unknown, 1.2.3.4;proto=http, "x", 198.51.100.7')]
    fwd = _fwd(headers, peer="10.0.0.2", trusted=LB)
    assert fwd.chain == ("198.51.100.7", "10.0.0.2")


@pytest.mark.parametrize(
    "chain",
    [
        b"192.0.2.99, unknown",
        b"192.0.2.99, unix:",
        b"192.0.2.99, _hidden",
        b"192.0.2.99, 203.0.113.5:x",
        # A port of digits that are not ASCII ones (latin-1's superscript two) is no port either.
        b"192.0.2.99, 203.0.113.5:\xb2",
        b"192.0.2.99, [2001:db8::1]:\xb3",
    ],
)
def test_an_unreadable_entry_ends_the_walk_the_client_cannot_choose_its_address(chain: bytes) -> None:
    # An attack run: a trusted proxy that writes 'unknown' (or a port) after the client's own entry made
    # the client's choice, 192.0.2.99, the address blocks and rate limits counted.
    fwd = _fwd([(b"x-forwarded-for", chain)], peer="127.0.0.1", trusted=LB)
    assert fwd.client_ip == "127.0.0.1"


@pytest.mark.parametrize(
    ("entry", "address"),
    [
        (b"203.0.113.5:41234", "203.0.113.5"),
        (b"[2001:db8::1]:443", "2001:db8::1"),
        (b"[2001:db8::1]", "2001:db8::1"),
    ],
)
def test_an_entry_with_a_port_is_read_without_it(entry: bytes, address: str) -> None:
    fwd = _fwd([(b"x-forwarded-for", b"192.0.2.99, " + entry)], peer="127.0.0.1", trusted=LB)
    assert fwd.client_ip == address
    assert fwd.chain == (address, "127.0.0.1")


@pytest.mark.parametrize("spelling", [b"X_Forwarded_For", b"x_forwarded-for", b"X-Forwarded_For"])
def test_an_underscore_spelling_from_behind_a_trusted_proxy_is_not_believed(spelling: bytes) -> None:
    """An attack run behind Caddy: the client's `X_Forwarded_For: 6.6.6.6` was passed on after the
    proxy's own header and read as the right-most entry; a blocked client got through as 6.6.6.6."""
    headers = [
        (b"x-forwarded-for", b"127.0.0.2"),
        (spelling, b"6.6.6.6"),
        (b"x_forwarded_host", b"evil.example"),
    ]
    fwd = _fwd(headers, peer="127.0.0.1", trusted=LB)
    assert fwd.client_ip == "127.0.0.2"
    assert fwd.host == "app.example.com"


def test_trusted_proto_and_request_id_are_honoured_and_the_host_is_the_routed_one() -> None:
    """An attack run: behind a trusted load balancer that passes a client's own X-Forwarded-Host on,
    the app was told a host the gateway never routed or authorized."""
    headers = [
        (b"x-forwarded-proto", b"http"),
        (b"x-request-id", b"abc-123"),
        (b"x-forwarded-host", b"ext.example"),
    ]
    fwd = _fwd(headers, peer="10.0.0.2", trusted=LB)
    assert (fwd.proto, fwd.request_id, fwd.host) == ("http", "abc-123", "app.example.com")
    sent = dict(upstream_request_headers([(b"host", b"app.example.com"), *headers], fwd=fwd))
    assert sent[b"x-forwarded-host"] == b"app.example.com"
    assert b'host="app.example.com"' in sent[b"forwarded"]


def test_untrusted_request_id_and_proto_are_ignored() -> None:
    fwd = _fwd([(b"x-forwarded-proto", b"http"), (b"x-request-id", b"abc-123")])
    assert fwd.proto == "https"
    assert fwd.request_id != "abc-123"
    assert len(fwd.request_id) == 32


@pytest.mark.parametrize("value", [b"a" * 200, b"evil\r\nx: y", b"has space", b""])
def test_malformed_request_id_from_trusted_proxy_is_replaced(value: bytes) -> None:
    fwd = _fwd([(b"x-request-id", value)], peer="10.0.0.2", trusted=LB)
    assert fwd.request_id != value.decode("latin-1")


@pytest.mark.parametrize(
    "name",
    [
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authorization",
    ],
)
def test_hop_by_hop_headers_are_removed(name: bytes) -> None:
    out = _out([(b"host", b"app"), (name, b"x")])
    assert name not in out


def test_connection_nominated_headers_are_removed_but_never_the_gateways_own() -> None:
    headers = [
        (b"host", b"app"),
        (b"connection", b"x-secret, X-Forwarded-For, x-request-id, forwarded, x-forwarded-proto, host"),
        (b"x-secret", b"1"),
    ]
    out = _out(headers)
    assert b"x-secret" not in out
    for own in (b"x-forwarded-for", b"x-request-id", b"forwarded", b"x-forwarded-proto", b"host"):
        assert own in out, own


@pytest.mark.parametrize(
    "name", [b"Transfer_Encoding", b"Content_Length", b"Keep.Alive", b"Proxy_Authorization"]
)
def test_framing_and_hop_by_hop_names_are_removed_in_every_spelling(name: bytes) -> None:
    """An attack run: Transfer_Encoding and Content_Length reached the app, which a server that folds
    `_` into `-` (CGI's HTTP_TRANSFER_ENCODING) would read as the body's framing."""
    out = _out([(b"host", b"app"), (name, b"chunked")])
    assert name.lower() not in out


@pytest.mark.parametrize(
    "name",
    [
        b"X-Goog-Authenticated-User-Email",
        b"X-MS-CLIENT-PRINCIPAL-NAME",
        b"X-Amzn-Oidc-Identity",
        b"Cf-Access-Authenticated-User-Email",
        b"X-Authenticated-User",
        b"X-Forwarded-Client-Cert",
        b"X-SSL-Client-S-DN",
        # Whole families (a re-attack run found these passed on).
        b"X-Consumer-Groups",
        b"X-Credential-Identifier",
        b"X-MS-TOKEN-AAD-ID-TOKEN",
        b"X-Apigateway-Api-Userinfo",
        b"X-SSL-Client-Fingerprint",
        b"X-ARR-ClientCert",
        b"X-Forwarded-Tls-Client-Cert-Info",
        b"X-Amzn-Mtls-Clientcert-Leaf",
        b"Client-Cert-Chain",
        b"SSL_CLIENT_S_DN",
        b"X-Client-Cert-Present",
        # A second re-attack run's.
        b"X-Pomerium-Claim-Email",
        b"X-Authentik-Username",
        b"Tailscale-User-Login",
        b"X-Userinfo",
        b"X-Jwt-Payload",
        b"OIDC-Claim-Email",
        b"Shib-Identity-Provider",
        b"X-Auth-Email",
        b"Cf-Cert-Subject-Dn",
        b"X-Tls-Client-Cert",
        # A third re-attack run's: enterprise access managers, WebLogic's and WebSphere's own headers.
        b"SM_USER",
        b"SMUSER",
        b"iv-user",
        b"iv-groups",
        b"OAM_REMOTE_USER",
        b"X-Token-User-Email",
        b"X-JWT-Assertion",
        b"X-Auth-User",
        b"X-User",
        b"X-Proxy-User",
        b"WL-Proxy-Client-Cert",
        b"WL-Proxy-Client-IP",
        b"$WSRU",
        b"$WSRA",
        b"$WSSN",
        b"X-Envoy-Original-Dst-Host",
        b"Proxy-Client-IP",
        b"HTTP_X_FORWARDED_FOR",
        b"Fly-Client-IP",
        b"X-Vhm-Root",
    ],
)
def test_other_proxies_identity_and_client_certificates_never_reach_the_app(name: bytes) -> None:
    """An attack run: apps written for Google IAP, Azure, AWS ALB, Cloudflare Access, Kong or an mTLS
    terminator received these as the client sent them."""
    out = _out([(b"host", b"app"), (name, b"admin@example.com")])
    assert name.lower() not in out


@pytest.mark.parametrize(
    "name", [b"X-Auth-Token", b"X-Access-Token", b"X-Ssl", b"Client-Hints", b"X-Api-Key", b"X-User-Agent"]
)
def test_an_apps_own_credentials_and_hints_pass(name: bytes) -> None:
    out = _out([(b"host", b"app"), (name, b"v")])
    assert name.lower() in out


def test_the_clients_content_length_is_left_to_the_proxy() -> None:
    # The proxy stage writes the framing from what receive checked (a Content-Length or chunked),
    # so the client's header never travels as is: one value upstream, whatever the client sent.
    out = _out([(b"host", b"app"), (b"content-length", b"5"), (b"Content-Length", b"5")])
    assert b"content-length" not in out


def test_forwarded_header_brackets_ipv6() -> None:
    out = _out([(b"host", b"app")], peer="2001:db8::1")
    assert out[b"forwarded"] == [b'for="[2001:db8::1]";host="app.example.com";proto=https']


def test_response_headers_hop_by_hop_and_overrides() -> None:
    raw = [
        (b"Content-Type", b"text/plain"),
        (b"Connection", b"close, x-internal"),
        (b"X-Internal", b"1"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Set-Cookie", b"a=1"),
        (b"Set-Cookie", b"b=2"),
        (b"X-Frame-Options", b"ALLOW"),
        (b"X-Request-Id", b"spoofed"),
    ]
    out = clean_response_headers(raw, extra=((b"x-frame-options", b"DENY"),), request_id="rid")
    assert out == [
        (b"content-type", b"text/plain"),
        (b"set-cookie", b"a=1"),
        (b"set-cookie", b"b=2"),
        (b"x-frame-options", b"DENY"),
        (b"x-request-id", b"rid"),
    ]


def test_an_app_cannot_set_the_gateways_cookies() -> None:
    """Cookie tossing: the app answers with its own session (or a blank one) under the gateway's name."""
    own = frozenset({b"__host-gateway_session", b"gateway_csrf", b"__host-gateway_csrf"})
    raw = [
        (b"Set-Cookie", b"__Host-gateway_session=ATTACKER; Path=/; Secure; HttpOnly"),
        (b"set-cookie", b" __HOST-Gateway_Session=x; Path=/; Secure"),  # prefixes match in any case
        (b"SET-COOKIE", b"gateway_csrf=fixed"),
        (b"Set-Cookie", b"app_session=fine; Path=/"),
        (b"Set-Cookie", b"gateway_session_hint=also-fine"),  # another name that only starts alike
    ]
    out = clean_response_headers(raw, request_id="rid", own_cookies=own)
    assert [value for name, value in out if name == b"set-cookie"] == [
        b"app_session=fine; Path=/",
        b"gateway_session_hint=also-fine",
    ]


@pytest.mark.parametrize(
    "value",
    [
        b"=gateway_session=ATTACKER; Path=/",  # nameless: a browser sends it back as gateway_session=...
        b" = gateway_session=ATTACKER",
        b"=__Host-gateway_session=ATTACKER; Path=/; Secure",
        b'"gateway_session"=ATTACKER',  # a quoted name is no cookie name
        b'"__Host-gateway_session"=ATTACKER; Path=/; Secure',
        b"gateway_session",  # no "=": nameless too, its value the gateway's name
        b"gateway_session; Path=/",
        b"app=gateway_session=ATTACKER",  # a value that reads as the gateway's pair
    ],
)
def test_an_app_cannot_set_the_gateways_cookies_under_no_name_or_a_quoted_one(value: bytes) -> None:
    own = frozenset({b"gateway_session", b"__host-gateway_session", b"gateway_csrf"})
    raw = [(b"Set-Cookie", value), (b"Set-Cookie", b"app=fine=yes; Path=/")]
    out = clean_response_headers(raw, request_id="rid", own_cookies=own)
    assert [v for name, v in out if name == b"set-cookie"] == [b"app=fine=yes; Path=/"]


@pytest.mark.parametrize(
    ("sent", "passed"),
    [
        (b'"cookies"', None),
        (b'"Cookies"', None),  # any case, quoted or not: no browser's reading is let through
        (b"cookies", None),
        (b'"cache", "cookies"', b'"cache"'),
        (b' "cookies" ,"storage" ', b'"storage"'),
        (b'"cache", "storage"', b'"cache", "storage"'),  # nothing to take out: passed as it came
        (
            b'"*"',
            b'"cache", "storage", "executionContexts", "clientHints", "prefetchCache", "prerenderCache"',
        ),
        (
            b'"cache", "*"',
            b'"cache", "storage", "executionContexts", "clientHints", "prefetchCache", "prerenderCache"',
        ),
    ],
)
def test_an_app_cannot_clear_the_gateways_cookies(sent: bytes, passed: bytes | None) -> None:
    """``Clear-Site-Data: "cookies"`` clears every cookie of the registrable domain, the gateway's
    session on every host included: the directive is taken out, the app's other clearing kept."""
    own = frozenset({b"__host-gateway_session"})
    out = clean_response_headers([(b"Clear-Site-Data", sent)], request_id="rid", own_cookies=own)
    cleared = [value for name, value in out if name == b"clear-site-data"]
    assert cleared == ([] if passed is None else [passed])


def test_gateway_cookies_never_reach_the_upstream() -> None:
    headers = [
        (b"host", b"app"),
        (b"cookie", b"app=1; gateway_session=SECRET; __Host-gateway_csrf=T; other=2"),
    ]
    fwd = _fwd(headers)
    out = upstream_request_headers(
        headers, fwd=fwd, own_cookies=frozenset({b"gateway_session", b"__Host-gateway_csrf"})
    )
    cookies = [v for n, v in out if n == b"cookie"]
    assert cookies == [b"app=1; other=2"]
    only_ours = [(b"host", b"app"), (b"cookie", b"gateway_session=SECRET")]
    out = upstream_request_headers(
        only_ours, fwd=_fwd(only_ours), own_cookies=frozenset({b"gateway_session"})
    )
    assert not [v for n, v in out if n == b"cookie"]


def test_cookies_sent_as_several_fields_reach_the_app_as_one_header() -> None:
    """An attack run: HTTP/2 cookie fields reached the HTTP/1.1 app as several Cookie headers (RFC
    9113 §8.2.3 says join them with "; "), which a server joining repeated headers with "," loses."""
    headers = [
        (b"host", b"app"),
        (b"cookie", b"a=1"),
        (b"accept", b"*/*"),
        (b"cookie", b"gateway_session=SECRET"),
        (b"cookie", b"b=2; c=3"),
    ]
    out = upstream_request_headers(headers, fwd=_fwd(headers), own_cookies=frozenset({b"gateway_session"}))
    assert [v for n, v in out if n == b"cookie"] == [b"a=1; b=2; c=3"]
    assert out.index((b"cookie", b"a=1; b=2; c=3")) < out.index((b"accept", b"*/*"))


@pytest.mark.parametrize(
    "value",
    [
        b"gateway_session =SECRET",
        b"gateway_session\t=SECRET",
        b" gateway_session = SECRET ",
        b"app=1;gateway_session= SECRET",
        b"app=1; \tgateway_session\t=\tSECRET;other=2",
        b'gateway_session="SECRET"',
    ],
)
def test_every_spelling_that_signs_in_is_kept_from_the_upstream(value: bytes) -> None:
    """The stripper reads a cookie's name as the session reader does: whatever signs the request in
    never reaches the app."""
    assert cookie_in([value], "gateway_session") == "SECRET"
    headers = [(b"host", b"app"), (b"cookie", value)]
    out = upstream_request_headers(headers, fwd=_fwd(headers), own_cookies=frozenset({b"gateway_session"}))
    assert all(b"SECRET" not in v for n, v in out if n == b"cookie"), out


def test_the_remembered_header_names_stay_bounded_whatever_clients_send() -> None:
    from gateway.pipeline import headers as module

    fwd = forwarding_for(
        peer_ip="192.0.2.1", scheme="http", host="app", headers=[], trusted=TrustedProxies([])
    )
    for i in range(3 * module._MAX_REMEMBERED_NAMES):
        out = upstream_request_headers([(b"host", b"app"), (b"X-Junk-%d" % i, b"v")], fwd=fwd)
        assert (b"x-junk-%d" % i, b"v") in out
        clean_response_headers([(b"X-Resp-%d" % i, b"v")], request_id="r")
    assert module._classify.cache_info().currsize <= module._MAX_REMEMBERED_NAMES
    assert module._classify_response.cache_info().currsize <= module._MAX_REMEMBERED_NAMES


@pytest.mark.parametrize(
    "value",
    [
        b"Bearer gwt_ldkg2ZAz9JNoeHusijFpQvuHz0lUHirYnKH-vSg5CRA",
        b"bearer gwt_ldkg2ZAz9JNoeHusijFpQvuHz0lUHirYnKH-vSg5CRA",
        b"BEARER   gwt_ldkg2ZAz9JNoeHusijFpQvuHz0lUHirYnKH-vSg5CRA",
        b"  Bearer gwt_x",
        # A re-attack run: a tab after the scheme (which apps split on as on a space), another scheme,
        # no scheme at all.
        b"Bearer\tgwt_ldkg2ZAz9JNoeHusijFpQvuHz0lUHirYnKH-vSg5CRA",
        b"Bearer \t gwt_x",
        b"Token gwt_x",
        b"gwt_only",
        b"gwt_ldkg2ZAz9JNoeHusijFpQvuHz0lUHirYnKH-vSg5CRA x",
        b"gwt_ldkg2ZAz9JNoeHusijFpQvuHz0lUHirYnKH-vSg5CRA eyJhbGciOiJSUzI1NiJ9.e30.c2ln",
        # An attack run: the token as a Basic password (``https://__token__:TOKEN@host``, as git,
        # pip and docker send one) or user name, in either base64 alphabet, padded or not.
        b"Basic X190b2tlbl9fOmd3dF9sZGtnMlpBejlKTm9lSHVzaWpGcFF2dUh6MGxVSGlyWW5LSC12U2c1Q1JB",
        b"basic Z3d0X2xka2cyWkF6OUpOb2VIdXNpakZwUXZ1SHowbFVIaXJZbktILXZTZzVDUkE6eC1vYXV0aC1iYXNpYw==",
        b"Basic fn5-Pj8-Omd3dF9sZGtnMlpBejlKTm9lSHVzaWpGcFF2dUh6MGxVSGlyWW5LSC12U2c1Q1JB",
        b"Basic Z3d0X2xka2cyWkF6OUpOb2VIdXNpakZwUXZ1SHowbFVIaXJZbktILXZTZzVDUkE=",
        # The re-attack run: a non-breaking space after the scheme (Python's str.split and JavaScript's
        # split(/\s+/) split there), and a space or a dot inside unpadded base64 (Node's decoder reads
        # past them).
        b"Basic\xa0X190b2tlbl9fOmd3dF9sZGtnMlpBejlKTm9lSHVzaWpGcFF2dUh6MGxVSGlyWW5LSC12U2c1Q1JB",
        b"Basic eDpnd3RfbG RrZzJaQXo5Sk5vZUh1c2lqRnBRdnVIejBsVUhpclluS0gtdlNnNUNSQQ",
        b"Basic eDpnd3RfbG.RrZzJaQXo5Sk5vZUh1c2lqRnBRdnVIejBsVUhpclluS0gtdlNnNUNSQQ",
        b"Basic\x85eDpnd3RfbGRrZzJaQXo5Sk5vZUh1c2lqRnBRdnVIejBsVUhpclluS0gtdlNnNUNSQQ==",
    ],
)
def test_the_gateways_own_token_never_reaches_an_app_that_did_not_need_it(value: bytes) -> None:
    """An attack run: a client sending its token with every request to a host handed it to the app of
    a public path and of a route browsed with a session, which replayed it on the token's route."""
    out = _out([(b"host", b"app"), (b"Authorization", value)])
    assert b"authorization" not in out


@pytest.mark.parametrize(
    "value",
    [
        b"Basic YWxpY2U6c2VjcmV0",
        b"basic   YWxpY2U6c2VjcmV0",
        b"Basic YWxpY2U6c2VjcmV0MQ==",
        b"Bearer eyJhbGciOiJSUzI1NiJ9.e30.c2ln",
        b"Token abc",
        b"opaque",
    ],
)
def test_the_apps_own_authorization_goes_through(value: bytes) -> None:
    out = _out([(b"host", b"app"), (b"Authorization", value)])
    assert out[b"authorization"] == [value]


def _jwt(claims: dict[str, object], *, pad: bool = False) -> bytes:
    import base64
    import json

    def part(doc: dict[str, object]) -> bytes:
        raw = base64.urlsafe_b64encode(json.dumps(doc).encode())
        return raw if pad else raw.rstrip(b"=")

    return part({"alg": "ES256", "typ": "at+jwt"}) + b"." + part(claims) + b".c2ln"


ISSUER, AUDIENCE = "https://idp.example.com", "https://gateway.example.com"


@pytest.mark.parametrize(
    "value",
    [
        b"Bearer " + _jwt({"iss": ISSUER, "aud": AUDIENCE, "sub": "kim"}),
        b"bearer\t" + _jwt({"iss": ISSUER, "aud": ["other", AUDIENCE]}),
        b"DPoP " + _jwt({"iss": ISSUER, "aud": AUDIENCE}, pad=True),
        _jwt({"iss": ISSUER, "aud": AUDIENCE}) + b" x",
        # A trailing "." an app drops to have the token back (an attack run), and a JWE-like five parts.
        b"Bearer " + _jwt({"iss": ISSUER, "aud": AUDIENCE}) + b".",
        b"Bearer " + _jwt({"iss": ISSUER, "aud": AUDIENCE}) + b"..",
        # The provider's token as a Basic password.
        b"Basic " + base64.b64encode(b"__token__:" + _jwt({"iss": ISSUER, "aud": AUDIENCE})),
    ],
)
def test_a_provider_token_for_the_gateway_never_reaches_an_app(value: bytes) -> None:
    """The last note's open item: a provider's access token for the gateway, sent to a route browsed
    with a session or to a public path, reached the app, which could replay it on the gateway's bearer
    routes as its holder."""
    headers = [(b"host", b"app"), (b"Authorization", value)]
    out = upstream_request_headers(
        headers, fwd=_fwd(headers), token_audiences=frozenset({(ISSUER, AUDIENCE)})
    )
    assert b"authorization" not in dict(out)


@pytest.mark.parametrize(
    "claims",
    [
        {"iss": ISSUER, "aud": "https://app.example.com"},  # the app's own audience at the same provider
        {"iss": "https://other-idp.example.com", "aud": AUDIENCE},
        {"iss": ISSUER},
        {"aud": AUDIENCE},
    ],
)
def test_a_provider_token_for_someone_else_goes_through(claims: dict[str, object]) -> None:
    value = b"Bearer " + _jwt(claims)
    headers = [(b"host", b"app"), (b"Authorization", value)]
    out = upstream_request_headers(
        headers, fwd=_fwd(headers), token_audiences=frozenset({(ISSUER, AUDIENCE)})
    )
    assert dict(out)[b"authorization"] == value


def test_a_trusted_proxys_rfc7239_forwarded_is_not_read() -> None:
    """The README says so: only X-Forwarded-For names the client. A proxy that sends `Forwarded` alone
    leaves every client at the proxy's address (an attack run found the README claiming otherwise)."""
    trusted = TrustedProxies(["127.0.0.1/32"])
    fwd = _fwd([(b"forwarded", b"for=198.51.100.7;proto=https")], peer="127.0.0.1", trusted=trusted)
    assert fwd.client_ip == "127.0.0.1"
    fwd = _fwd([(b"x-forwarded-for", b"198.51.100.7")], peer="127.0.0.1", trusted=trusted)
    assert fwd.client_ip == "198.51.100.7"


def test_expect_is_not_sent_upstream() -> None:
    """The client's Expect: 100-continue is answered in front of the gateway, which sends the body at
    once: the upstream is not asked to answer it again (an attack run)."""
    out = _out([(b"host", b"app"), (b"Expect", b"100-continue"), (b"X-Kept", b"1")])
    assert b"expect" not in out
    assert out[b"x-kept"] == [b"1"]


@pytest.mark.parametrize("name", [b"baggage", b"Baggage", b"BAGGAGE"])
def test_a_clients_baggage_never_reaches_the_app(name: bytes) -> None:
    """An attack run: with tracing off, `baggage: userId=admin,role=root` reached the app beside
    X-Gateway-User, where an OpenTelemetry propagator adopts it (the tracer adds a trusted proxy's back)."""
    out = _out(
        [
            (b"host", b"app"),
            (name, b"userId=admin,role=root"),
            (b"traceparent", b"00-" + b"a" * 32 + b"-" + b"b" * 16 + b"-01"),
        ]
    )
    assert not [value for values in out.values() for value in values if b"role=root" in value]
    assert b"traceparent" in out  # passed on as the README says when the gateway does not trace
