"""The MFA stage: is the session strong enough for this route (second factor, passkey, freshness)?

The route's requirement (``mfa: none | required | webauthn``, optional ``max_age``) against the
factors the session has used (:func:`gateway.identity.levels.check_requirement`). A browser whose
session falls short is sent to the MFA page on the auth host with the original URL as ``rd``; an API
client gets 403 ``mfa-required``. A session that cannot reach the level at all is sent to sign in
again (401).
"""

from __future__ import annotations

from typing import Final
from urllib.parse import quote

from gateway.errors import AuthenticationRequired, ErrorReason, Forbidden
from gateway.identity.levels import check_requirement
from gateway.identity.sessions import Session
from gateway.observe.tracing import Stage
from gateway.pipeline.context import RequestContext
from gateway.settings.schema import MfaPolicy

__all__ = ["require_mfa"]

# What check_requirement reports when a second factor would fix it (vs. signing in again).
_MFA_REASONS: Final = frozenset({"second-factor", "enroll", "webauthn", "step-up"})


def require_mfa(
    *, session: Session, policy: MfaPolicy, now: float, public_url: str, request: RequestContext
) -> None:
    """Return if the session satisfies the route's MFA policy; raise what the client should be told.

    Raises:
        Forbidden: the session lacks the factor or freshness the route needs (reason
            ``mfa-required``; ``location`` is the MFA page, asking for a passkey when the route
            needs one).
        AuthenticationRequired: the session cannot satisfy it; ``location`` is the sign-in page.
    """
    # The authorize span starts here: the MFA requirement is the first half of the decision.
    if request.trace is not None:
        request.trace.enter(Stage.AUTHORIZE)
    verdict = check_requirement(
        level=session.level, factors=session.factors, policy=policy, has_second_factor=True, now=now
    )
    if verdict.ok:
        return
    # Built and quoted only here: percent-encoding the return URL was a measurable share of every
    # allowed request (py-spy, signed-in hot path), and only refusals need it.
    rd = quote(request.original_url(), safe="")
    if verdict.reason in _MFA_REASONS:
        need = "webauthn" if verdict.reason == "webauthn" else "any"
        raise Forbidden(
            "This page needs a second factor.",
            reason=ErrorReason.MFA_REQUIRED,
            location=f"{public_url}/.gateway/mfa?need={need}&rd={rd}",
        )
    raise AuthenticationRequired(
        "Sign-in is required for this page.", location=f"{public_url}/.gateway/login?rd={rd}"
    )
