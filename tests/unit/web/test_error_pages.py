"""The data plane's error answers: plain text for server failures, truthful hints, hardening headers."""

from __future__ import annotations

import json

import pytest

from gateway.errors import (
    AuthenticationRequired,
    BadPath,
    Forbidden,
    GatewayError,
    NoRoute,
    ServiceUnavailable,
    UpstreamError,
    UpstreamTimeout,
)
from gateway.pipeline.authorize import AccessDenied
from gateway.store.db import StoreUnavailable
from gateway.store.fast.base import StateUnavailable
from gateway.store.migrate import SchemaOutdated
from gateway.threat.blocks import IpBlocked
from gateway.web.error_pages import ERROR_PAGE_CSP, error_response

# What backends really say when they are down: none of it may reach a client.
BACKEND_TEXT = "ConnectionRefusedError: [Errno 111] Connect call failed ('10.0.0.7', 5432)"

SERVER_FAILURES = [
    GatewayError(BACKEND_TEXT),
    UpstreamError(f"Could not connect to the application ({BACKEND_TEXT})."),
    UpstreamTimeout(BACKEND_TEXT),
    ServiceUnavailable(f"all upstream targets of route finance are down: {BACKEND_TEXT}"),
    StoreUnavailable(f"sign-in: {BACKEND_TEXT}"),
    StateUnavailable(f"fast state get failed ({BACKEND_TEXT})"),
    SchemaOutdated(f"run `gateway migrate`: {BACKEND_TEXT}"),
]


def render(err: GatewayError, *, html: bool) -> tuple[int, dict[bytes, bytes], str]:
    status, headers, body = error_response(err, request_id="0123abcd", html_page=html)
    return status, dict(headers), body.decode()


@pytest.mark.parametrize("err", SERVER_FAILURES, ids=lambda e: type(e).__name__)
@pytest.mark.parametrize("html", [True, False], ids=["html", "json"])
def test_server_failures_never_show_their_detail(err: GatewayError, html: bool) -> None:
    status, _, body = render(err, html=html)
    assert status == err.status >= 500
    for fragment in ("Errno", "Refused", "10.0.0.7", "5432", "gateway migrate", "finance"):
        assert fragment not in body
    assert err.public_message in body
    assert "0123abcd" in body
    # The detail itself is kept for the log.
    assert BACKEND_TEXT in str(err)


def test_storage_outages_say_sign_in_is_unavailable() -> None:
    for err in (StoreUnavailable("x"), StateUnavailable("x")):
        _, _, body = render(err, html=False)
        assert json.loads(body)["message"] == "Sign-in is unavailable right now; try again in a minute."


@pytest.mark.parametrize(
    "err",
    [
        BadPath("Path parameters (';') are not allowed on this route."),
        NoRoute("No application is configured for this address."),
        AuthenticationRequired("Sign in to continue."),
    ],
)
def test_client_errors_keep_their_written_message(err: GatewayError) -> None:
    _, _, body = render(err, html=False)
    assert json.loads(body)["message"] == err.detail


def test_a_blocked_address_is_not_told_it_is_signed_in() -> None:
    _, _, page = render(IpBlocked("Access from your address is blocked."), html=True)
    assert "reason: ip-blocked" in page
    assert "signed in" not in page.lower()
    assert "network address are blocked" in page


def test_only_a_policy_denial_says_the_visitor_is_signed_in() -> None:
    # The authorize stage runs after the session is known: there, and only there, it is true.
    _, _, denied = render(
        AccessDenied("No policy rule allows this request.", reason="no-matching-rule"), html=True
    )
    assert "You are signed in" in denied
    _, _, other = render(Forbidden("Refused."), html=True)
    assert "signed in" not in other.lower()


@pytest.mark.parametrize("err", [NoRoute(), IpBlocked(), UpstreamError(), ServiceUnavailable()])
@pytest.mark.parametrize("html", [True, False], ids=["html", "json"])
def test_every_error_answer_is_hardened(err: GatewayError, html: bool) -> None:
    _, headers, body = render(err, html=html)
    assert headers[b"content-security-policy"] == ERROR_PAGE_CSP
    assert headers[b"x-frame-options"] == b"DENY"
    assert headers[b"cache-control"] == b"no-store"
    assert headers[b"referrer-policy"] == b"same-origin"
    assert headers[b"x-content-type-options"] == b"nosniff"
    assert headers[b"content-length"] == str(len(body.encode())).encode()
    if html:
        # The policy allows no inline style: the page's look comes from a file on its own origin.
        assert "<style" not in body
        assert "style=" not in body
        assert 'href="/.gateway/static/error.css"' in body


def test_markup_in_a_detail_is_escaped() -> None:
    _, _, page = render(BadPath("<script>alert(1)</script>"), html=True)
    assert "<script>" not in page
    assert "&lt;script&gt;" in page
