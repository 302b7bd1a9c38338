"""The identify stage: which session is this request's, and may it open an application at all?

Runs only for non-public paths. The session comes from the cookie, through the session store's
in-process cache (Redis or in-process state behind it). A browser without a session is redirected to
the sign-in page on the auth host (``public_url``) with the original URL as ``rd``; an API client gets
a 401 JSON answer. A store outage is a 503 that keeps the cookie: never access, never a silent
sign-out (invariant 2). Whether the session is strong enough for the route is the next stage's
question (:mod:`gateway.pipeline.mfa`).
"""

from __future__ import annotations

from urllib.parse import quote

from gateway.errors import AuthenticationRequired, ErrorReason, Forbidden
from gateway.identity.cookies import cookie_in
from gateway.identity.sessions import Session, SessionStore
from gateway.observe.tracing import Stage
from gateway.pipeline.context import RequestContext

__all__ = ["identify"]


async def identify(
    *,
    cookie_name: str,
    sessions: SessionStore,
    public_url: str,
    request: RequestContext,
) -> Session:
    """Return the request's session, or raise what the client should be told.

    The cookie is read from ``request.cookies`` (the receive stage's pick of the headers);
    ``request.original_url()`` is where sign-in sends the browser back to; only refusals build it.

    Raises:
        AuthenticationRequired: no (valid) session; ``location`` is the sign-in page.
        Forbidden: the account must change its one-time password first (reason
            ``password-change-required``; ``location`` is the password page).
        StateUnavailable: the session store cannot be reached (503).
    """
    if request.trace is not None:
        request.trace.enter(Stage.IDENTIFY)
    session_id = cookie_in(request.cookies, cookie_name)
    session = await sessions.get(session_id) if session_id else None
    if session is None or session_id is None or (session.host != request.host and "://" not in session.host):
        # No session, or another app host's hand-off session (gateway.identity.sessions.fits_host).
        raise AuthenticationRequired(
            "Sign-in is required for this page.",
            location=f"{public_url}/.gateway/login?rd={quote(request.original_url(), safe='')}",
        )
    if session.password_change:
        # A one-time password (an admin's, the quick start's) is known to someone else: until its
        # owner replaces it, the session opens no application, not even one that asks for no MFA.
        raise Forbidden(
            "Choose a new password first.",
            reason=ErrorReason.PASSWORD_CHANGE_REQUIRED,
            location=f"{public_url}/.gateway/account/password?rd={quote(request.original_url(), safe='')}",
        )
    if session.owes_second_factor:
        # A password alone of an account with a second factor: the sign-in is not finished, and the
        # session opens no application until it is (the hand-off carries it nowhere; a copied cookie
        # reached an app that asks for no second factor).
        raise Forbidden(
            "Finish signing in first: confirm it's you with your second factor.",
            reason=ErrorReason.MFA_REQUIRED,
            location=f"{public_url}/.gateway/mfa?rd={quote(request.original_url(), safe='')}",
        )
    # Sliding idle timeout; the store writes at most once a minute per session, not per request.
    await sessions.touch(session_id, session)
    return session
