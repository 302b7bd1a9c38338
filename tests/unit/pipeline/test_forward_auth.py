"""Reading the original request out of a forward-auth sub-request."""

from __future__ import annotations

import pytest

from gateway.errors import BadHeaders
from gateway.pipeline.forward_auth import (
    ClientIdentityHeaders,
    ClientReroutingHeaders,
    UntrustedProxy,
    forwarded_request,
    refuse_client_headers,
)
from gateway.pipeline.headers import DEFAULT_IDENTITY_NAMES

GOOD = [
    (b"x-forwarded-method", b"POST"),
    (b"x-forwarded-proto", b"https"),
    (b"x-forwarded-host", b"wiki.example.com"),
    (b"x-forwarded-uri", b"/a/b?c=d&e"),
]


def test_a_trusted_proxy_describes_the_original_request() -> None:
    req = forwarded_request(GOOD, peer_trusted=True)
    assert (req.method, req.proto, req.host, req.raw_path, req.query) == (
        "POST",
        "https",
        b"wiki.example.com",
        b"/a/b",
        b"c=d&e",
    )


def test_an_untrusted_sender_is_refused_whatever_it_claims() -> None:
    with pytest.raises(UntrustedProxy) as caught:
        forwarded_request(GOOD, peer_trusted=False)
    assert caught.value.status == 403


@pytest.mark.parametrize("host", [None, b""])
def test_without_the_original_host_it_is_a_bad_request_never_the_sub_requests_host(
    host: bytes | None,
) -> None:
    """The sub-request's own Host names the gateway as the proxy reached it: an attack run sent an
    HTTP/1.0 request with no Host through the README's nginx example (which then sent no
    X-Forwarded-Host), and it was decided against the route of the proxy_pass host."""
    headers = [h for h in GOOD if h[0] != b"x-forwarded-host"] + [(b"host", b"127.0.0.1:8080")]
    if host is not None:
        headers.append((b"x-forwarded-host", host))
    with pytest.raises(BadHeaders, match="X-Forwarded-Host") as caught:
        forwarded_request(headers, peer_trusted=True)
    assert caught.value.status == 400


def test_every_spelling_counts_so_a_second_one_is_a_conflict() -> None:
    with pytest.raises(BadHeaders):
        forwarded_request([*GOOD, (b"X_Forwarded_Uri", b"/admin")], peer_trusted=True)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        (b"x-forwarded-method", b"get"),
        (b"x-forwarded-method", b""),
        (b"x-forwarded-method", b"GET /x"),
        (b"x-forwarded-proto", b"ftp"),
        (b"x-forwarded-uri", b""),
        (b"x-forwarded-uri", b"docs"),
        (b"x-forwarded-uri", b"//evil.example/x"),
        (b"x-forwarded-uri", b"https://evil.example/x"),
        (b"x-forwarded-uri", b"/a#frag"),
        (b"x-forwarded-uri", b"/a b"),
        (b"x-forwarded-uri", b"/a\x00b"),
    ],
)
def test_malformed_values_are_bad_requests(name: bytes, value: bytes) -> None:
    headers = [(n, value if n == name else v) for n, v in GOOD]
    with pytest.raises(BadHeaders) as caught:
        forwarded_request(headers, peer_trusted=True)
    assert caught.value.status == 400


@pytest.mark.parametrize(
    "name",
    [
        b"X-Original-URL",
        b"x-original-uri",
        b"X-Rewrite-URL",
        b"X-HTTP-Method-Override",
        b"x_http_method",
        b"X-Method-Override",
        b"X-Script-Name",
        b"X-Forwarded-Path",
        b"X-Envoy-Original-Path",
        # An attack run: these reached the app through nginx, which a proxied request loses.
        b"X-Middleware-Subrequest",
        b"X-Original-Method",
        b"X-Original-Host",
        b"X-HTTP-Host-Override",
        # A re-attack run: Next.js's and Vercel's internal routing headers passed.
        b"X-Invoke-Path",
        b"x-matched-path",
        b"X-Now-Route-Matches",
        b"X-Middleware-Rewrite",
        b"X-Pathname",
        b"X-Original-Path",
        # An attack run: gunicorn's default forwarder headers cut an allowed prefix off the path.
        b"SCRIPT_NAME",
        b"Script-Name",
        b"PATH_INFO",
        b"request_uri",
        # httpoxy and Rack::Sendfile's mapping: the app behind the proxy would read them.
        b"Proxy",
        b"X-Sendfile-Type",
        b"X-Accel-Mapping",
        # Pyramid's traverser puts X-Vhm-Root in front of the path, always (a re-attack run).
        b"X-Vhm-Root",
        b"X-Vhm-Host",
    ],
)
def test_a_path_or_method_override_from_the_client_is_refused(name: bytes) -> None:
    """An attack run: a GET allowed on /x reached the app through nginx and Caddy with
    X-HTTP-Method-Override: DELETE and X-Original-URL: /admin/users/1, which a proxied request loses."""
    with pytest.raises(ClientReroutingHeaders) as caught:
        refuse_client_headers([*GOOD, (name, b"/admin")], frozenset(DEFAULT_IDENTITY_NAMES))
    assert caught.value.status == 403
    assert caught.value.reason == "client-rerouting-headers"


def test_another_proxys_identity_is_refused_and_a_client_certificate_is_not() -> None:
    """A cloud proxy's identity header in the question is the client's (refused, as X-WEBAUTH-USER
    is); a client certificate's may be the asking proxy's own (Envoy's XFCC), so it passes."""
    names = frozenset(DEFAULT_IDENTITY_NAMES)
    refused = (b"X-Goog-Authenticated-User-Email", b"X-Consumer-Groups", b"X-MS-TOKEN-AAD-ID-TOKEN")
    more = (b"SM_USER", b"iv-user", b"OAM_REMOTE_USER", b"X-Token-User-Email", b"X-Auth-User", b"X-User")
    for name in (
        *refused,
        b"X-Pomerium-Claim-Email",
        b"X-Authentik-Username",
        b"Tailscale-User-Login",
        *more,
    ):
        with pytest.raises(ClientIdentityHeaders):
            refuse_client_headers([*GOOD, (name, b"a@b")], names)
    refuse_client_headers([*GOOD, (b"X-Forwarded-Client-Cert", b"Hash=ab;Subject=CN=x")], names)


def test_the_proxys_own_forwarded_headers_and_a_clients_ordinary_ones_pass() -> None:
    ordinary = [(b"cookie", b"s=1"), (b"x-forwarded-for", b"192.0.2.1"), (b"x-forwarded-prefix", b"/p")]
    refuse_client_headers([*GOOD, *ordinary], frozenset(DEFAULT_IDENTITY_NAMES))
    with pytest.raises(ClientIdentityHeaders):
        refuse_client_headers([*GOOD, (b"X_Gateway_User", b"bob")], frozenset(DEFAULT_IDENTITY_NAMES))
