"""The identify and MFA stages: who is this, and is their session strong enough for this route?

Runs only for non-public paths. The session comes from the cookie, through the session store's
in-process cache (Redis or in-process state behind it). A browser without a good enough session is
redirected to the sign-in or MFA page on the auth host (``public_url``) with the original URL as
``rd``; an API client gets a 401/403 JSON answer. A store outage is a 503 that keeps the cookie: never
access, never a silent sign-out (invariant 2).
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import quote

from gateway.errors import AuthenticationRequired, Forbidden
from gateway.identity.cookies import read_cookie
from gateway.identity.levels import check_requirement
from gateway.identity.sessions import Session, SessionStore
from gateway.settings.schema import MfaPolicy

__all__ = ["identify"]

_MFA_REASONS = {"second-factor", "enroll", "webauthn", "step-up"}


async def identify(
    *,
    headers: list[tuple[bytes, bytes]],
    cookie_name: str,
    sessions: SessionStore,
    policy: MfaPolicy,
    public_url: str,
    original_url: Callable[[], str],
    now: float,
) -> Session:
    """Return the session that may use this route, or raise what the client should be told.

    ``original_url`` builds the URL to come back to after signing in; only refusals need it.

    Raises:
        AuthenticationRequired: no (valid) session; ``location`` is the sign-in page.
        Forbidden: signed in, but the session lacks the factor or freshness the route needs;
            ``location`` is the MFA page (reason ``mfa-required``); or the account must change its
            one-time password first (reason ``password-change-required``).
        StateUnavailable: the session store cannot be reached (503).
    """
    session_id = read_cookie(headers, cookie_name)
    session = await sessions.get(session_id) if session_id else None
    if session is None or session_id is None:
        raise AuthenticationRequired(
            "Sign-in is required for this page.",
            location=f"{public_url}/.gateway/login?rd={quote(original_url(), safe='')}",
        )
    if session.password_change:
        # A one-time password (an admin's, the quick start's) is known to someone else: until its
        # owner replaces it, the session opens no application, not even one that asks for no MFA.
        raise Forbidden(
            "Choose a new password first.",
            reason="password-change-required",
            location=f"{public_url}/.gateway/account/password?rd={quote(original_url(), safe='')}",
        )
    verdict = check_requirement(
        level=session.level, factors=session.factors, policy=policy, has_second_factor=True, now=now
    )
    # Sliding idle timeout; the store writes at most once a minute per session, not per request.
    await sessions.touch(session_id, session)
    if not verdict.ok:
        # Built and quoted only here: percent-encoding the return URL was a measurable share of every
        # allowed request (py-spy, signed-in hot path), and only refusals need it.
        rd = quote(original_url(), safe="")
        if verdict.reason in _MFA_REASONS:
            need = "webauthn" if verdict.reason == "webauthn" else "any"
            raise Forbidden(
                "This page needs a second factor.",
                reason="mfa-required",
                location=f"{public_url}/.gateway/mfa?need={need}&rd={rd}",
            )
        raise AuthenticationRequired(
            "Sign-in is required for this page.", location=f"{public_url}/.gateway/login?rd={rd}"
        )
    return session
