"""Shared steps of the sign-in pages and API: the current session, cookies, where to go next.

After any sign-in step on the auth host, the browser goes back to where it came from (``rd``). If that
is another host, cookies do not travel, so it goes through a one-time hand-off code that the target
host's ``/.gateway/handoff`` exchanges for its own session in the same family.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from litestar import Request
from litestar.response import Redirect, Response

from gateway.identity.cookies import read_cookie
from gateway.identity.handoff import normalise_host
from gateway.identity.levels import Factor
from gateway.identity.redirects import safe_local_redirect, safe_redirect
from gateway.identity.sessions import Session

if TYPE_CHECKING:
    from gateway.identity.services import IdentityServices
    from gateway.runtime import Runtime

__all__ = [
    "SignedIn",
    "after_sign_in",
    "carried_rd",
    "client_ip",
    "current",
    "has_second_factor",
    "is_fresh",
    "login_redirect",
    "may_change_factors",
    "safe_local_rd",
    "safe_rd",
    "services",
    "set_session_cookie",
]

AnyRequest = Request[Any, Any, Any]


class SignedIn:
    """The request's session, if any."""

    __slots__ = ("session", "session_id")

    def __init__(self, session_id: str | None, session: Session | None) -> None:
        self.session_id = session_id
        self.session = session


def services(runtime: Runtime) -> IdentityServices:
    if runtime.identity is None:  # pragma: no cover - start() builds it before any request
        raise RuntimeError("identity services are not started")
    return runtime.identity


async def current(request: AnyRequest, runtime: Runtime) -> SignedIn:
    """The session of this request (cookie → store). StateUnavailable propagates (503)."""
    name = runtime.snapshot.cookie_name
    session_id = read_cookie(list(request.scope["headers"]), name)
    if not session_id:
        return SignedIn(None, None)
    session = await services(runtime).sessions.get(session_id)
    return SignedIn(session_id if session else None, session)


def client_ip(request: AnyRequest) -> str:
    # The data plane replaced scope["client"] with the address decided from trusted proxies.
    return request.client.host if request.client else ""


def user_agent(request: AnyRequest) -> str:
    return request.headers.get("user-agent", "")[:256]


def secure_cookies(runtime: Runtime) -> bool:
    return not runtime.snapshot.settings.session.insecure_cookies


def set_session_cookie(response: Response[Any], runtime: Runtime, session_id: str | None) -> None:
    """Set (or, with None, clear) the session cookie: HttpOnly, SameSite=Lax, Secure, host-only."""
    settings = runtime.snapshot.settings.session
    # Clearing uses the same attributes as setting: a browser only replaces a __Host- cookie with one
    # that is Secure, host-only and Path=/ as well.
    response.set_cookie(
        key=runtime.snapshot.cookie_name,
        value=session_id or "",
        path="/",
        httponly=True,
        secure=secure_cookies(runtime),
        samesite="lax",
        max_age=int(settings.lifetime) if session_id else 0,
    )


def is_fresh(session: Session, runtime: Runtime) -> bool:
    """A second factor used within mfa.reauth_max_age (needed for sensitive changes)."""
    at = session.second_factor_at
    limit = runtime.snapshot.settings.mfa.reauth_max_age
    return at is not None and services(runtime).clock.time() - at <= limit


async def has_second_factor(runtime: Runtime, user_id: int) -> bool:
    """Whether the user has a confirmed authenticator app or a WebAuthn credential."""
    svc = services(runtime)
    return await svc.totp.has_confirmed(user_id) or bool(await svc.webauthn.list(user_id))


async def may_change_factors(session: Session, runtime: Runtime) -> bool:
    """Sensitive changes need a fresh second factor; for a user enrolling their very first factor, a
    password entered (or an identity-provider sign-in made) within the re-authentication window must do."""
    if is_fresh(session, runtime):
        return True
    svc = services(runtime)
    if await has_second_factor(runtime, session.user_id):
        return False
    window = runtime.snapshot.settings.mfa.reauth_max_age
    now = svc.clock.time()
    first = (Factor.PASSWORD, Factor.OIDC)
    return any(use.factor in first and now - use.at <= window for use in session.factors)


def _route_hosts(runtime: Runtime) -> list[str]:
    return [route.host for route in runtime.snapshot.settings.routes]


def safe_rd(rd: str | None, runtime: Runtime, fallback: str = "/.gateway/account") -> str:
    """The return URL if it is safe to follow, else ``fallback`` (the account portal).

    The one validator (:func:`gateway.identity.redirects.safe_redirect`) for every ``Location`` and
    link built from a user's ``rd``: it reads the URL as a browser would, so ``/<TAB>/evil.test``
    (which a browser reads as ``//evil.test``) never leaves the gateway's hosts.
    """
    snap = runtime.snapshot
    return safe_redirect(
        rd,
        public_url=snap.public_url,
        route_hosts=_route_hosts(runtime),
        allow_http=snap.settings.session.insecure_cookies or snap.public_url.startswith("http://"),
        fallback=fallback,
    )


def carried_rd(rd: str | None, runtime: Runtime) -> str:
    """``rd`` to carry on to the next step (form field, query), or ``""`` if it could not be followed.

    Checked where it enters, not only where it is followed: a page never renders an unsafe return
    URL into a form, a link or a script's data, so no later step can use it unchecked.
    """
    return safe_rd(rd, runtime, fallback="")


def safe_local_rd(rd: str | None, fallback: str = "/") -> str:
    """``rd`` if it is a path on the current host (the same validator), else ``fallback``."""
    return safe_local_redirect(rd, fallback=fallback)


def login_redirect(rd: str | None) -> Redirect:
    return Redirect(f"/.gateway/login?rd={quote(rd or '', safe='')}" if rd else "/.gateway/login")


async def next_location(request: AnyRequest, runtime: Runtime, session: Session, rd: str | None) -> str:
    """Where to go after a sign-in step: ``rd`` if safe, through a hand-off code on another host."""
    if session.password_change:
        # A one-time password must be replaced before this sign-in goes anywhere, and no other host
        # is handed a session that has not done so.
        return f"/.gateway/account/password?rd={quote(rd or '', safe='')}"
    target = safe_rd(rd, runtime)
    parts = urlsplit(target)
    # Compared the way the hand-off page compares (no port, no trailing dot, [v6] kept), so a code is
    # issued for exactly the host that will redeem it.
    here = normalise_host(request.headers.get("host") or "")
    there = normalise_host(parts.netloc.rpartition("@")[2]) if parts.netloc else ""
    if not there or there == here:
        return target
    code = await services(runtime).handoff.issue(
        family=session.family, user_id=session.user_id, target_host=there, session=session
    )
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return f"{parts.scheme}://{parts.netloc}/.gateway/handoff?code={quote(code)}&rd={quote(path, safe='')}"


async def after_sign_in(
    request: AnyRequest, runtime: Runtime, session_id: str, session: Session, rd: str | None
) -> Redirect:
    """Redirect to :func:`next_location`, carrying this session's cookie on the auth host."""
    response = Redirect(await next_location(request, runtime, session, rd))
    set_session_cookie(response, runtime, session_id)
    return response
