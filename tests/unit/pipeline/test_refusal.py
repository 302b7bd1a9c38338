"""Decisions and reasons are enums inside the gateway and the same strings on the wire as before.

Operators' SIEM rules and dashboards match the access log's ``gateway.decision`` and
``gateway.reason``, the metrics' ``decision`` label, and the reason id on error pages, JSON bodies and
``X-Gateway-Reason``: the values are a contract. These tables pin every value, and the way each
refusal is classified (who refused).
"""

from __future__ import annotations

import json

import pytest

from gateway.authz.decision import Reason
from gateway.errors import (
    AuthenticationRequired,
    BadHeaders,
    BadPath,
    BodyTimeout,
    BodyTooLarge,
    ErrorReason,
    Forbidden,
    GatewayError,
    HeadersTooLarge,
    NoRoute,
    ServiceUnavailable,
    UpstreamError,
    UpstreamTimeout,
)
from gateway.observe.access import AccessEntry
from gateway.observe.record import AccessDecision, RequestKind, RequestRecord
from gateway.pipeline.authorize import AccessDenied
from gateway.pipeline.forward_auth import UnknownTarget, UntrustedProxy
from gateway.pipeline.receive import BadFraming, BrokenBody
from gateway.pipeline.refusal import decision_for, note_refusal
from gateway.threat.blocks import IpBlocked
from gateway.web.error_pages import error_response

# (error, its reason id on the wire, who refused)
REFUSALS: list[tuple[GatewayError, str, str]] = [
    (BadPath(), "bad-path", "invalid"),
    (BadHeaders(), "bad-headers", "invalid"),
    (BadFraming(), "bad-framing", "invalid"),
    (BrokenBody(), "bad-body", "invalid"),
    (BodyTimeout(), "body-timeout", "invalid"),
    (HeadersTooLarge(), "headers-too-large", "invalid"),
    (BodyTooLarge(), "body-too-large", "invalid"),
    (NoRoute(), "no-route", "invalid"),
    (AuthenticationRequired(), "authentication-required", "unauthenticated"),
    (Forbidden(reason=ErrorReason.MFA_REQUIRED), "mfa-required", "deny"),
    (Forbidden(reason=ErrorReason.PASSWORD_CHANGE_REQUIRED), "password-change-required", "deny"),
    (AccessDenied(), "policy-deny", "deny"),
    (AccessDenied(reason=Reason.NO_MATCHING_RULE), "no-matching-rule", "deny"),
    (AccessDenied(reason=Reason.NO_POLICY), "no-policy", "deny"),
    (IpBlocked(), "ip-blocked", "deny"),
    (UntrustedProxy(), "untrusted-proxy", "deny"),
    (UnknownTarget(), "no-route", "deny"),
    (UpstreamError(), "upstream-error", "error"),
    (UpstreamTimeout(), "upstream-timeout", "error"),
    (ServiceUnavailable(), "unavailable", "error"),
    (GatewayError(), "internal-error", "error"),
]


@pytest.mark.parametrize(("err", "reason", "decision"), REFUSALS, ids=[r for _, r, _ in REFUSALS])
def test_every_refusal_keeps_its_reason_id_and_is_classified(
    err: GatewayError, reason: str, decision: str
) -> None:
    rec = RequestRecord(at=0.0, kind=RequestKind.HTTP)
    note_refusal(rec, err)
    assert (rec.reason, rec.decision) == (reason, decision)
    assert decision_for(err) is AccessDecision(decision)


def test_the_decision_and_kind_values_are_the_documented_ones() -> None:
    assert {d.value for d in AccessDecision} == {
        "allow",
        "public",
        "deny",
        "unauthenticated",
        "invalid",
        "error",
        "",
    }
    assert {k.value for k in RequestKind} == {"http", "websocket", "forward-auth", "control"}
    # An undecided record is falsy like the empty string it replaced (the metrics label it "-").
    assert not AccessDecision.UNDECIDED


def test_the_access_log_writes_the_plain_strings() -> None:
    rec = RequestRecord(at=0.0, kind=RequestKind.FORWARD_AUTH, method="GET", path="/x", status=403)
    note_refusal(rec, AccessDenied(reason=Reason.NO_MATCHING_RULE))
    document = json.loads(AccessEntry(rec).json())
    assert document["gateway"]["kind"] == "forward-auth"
    assert (document["gateway"]["decision"], document["gateway"]["reason"]) == ("deny", "no-matching-rule")
    assert document["event"]["type"] == ["access", "denied"]
    # The lazily built dict view (what dict-based sinks read) holds plain strings too.
    assert type(AccessEntry(rec).document()["gateway"]["decision"]) is str


@pytest.mark.parametrize("html_page", [False, True])
def test_error_answers_carry_the_plain_reason_id(html_page: bool) -> None:
    status, _, body = error_response(BadPath("bad"), request_id="r1", html_page=html_page)
    assert status == 400
    if html_page:
        assert b"reason: bad-path" in body
        assert b"ErrorReason" not in body
    else:
        assert json.loads(body)["error"] == "bad-path"
