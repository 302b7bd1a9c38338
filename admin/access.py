"""Who may use the admin API: a signed-in admin with a fresh second factor, from the admin origin.

Every ``/api/`` request passes these checks, in this order:

1. **CSRF** (mutating methods only): the body must be ``application/json`` (an HTML form cannot send it
   and a cross-origin ``fetch`` that does needs a CORS preflight, which this app never grants); an
   ``Origin`` header, when present, must be the admin listener's own origin; and ``Sec-Fetch-Site:
   cross-site`` is refused. SameSite=Lax cookies are no defence here on their own: *site* ignores the
   port, so an application published on the gateway's host name is same-site with the admin port.
2. **Authentication and authority**: the gateway's session cookie (cookies are not bound to a port, so
   the admin listener on the public host name receives it) names a live session; the session holds
   the admin role, directly or through the policy's ``g`` hierarchy from any of its principals; and a
   second factor was used within ``admin.reauth_max_age``.
3. **Lockdown** (mutating methods only, checked by the guard in :mod:`admin.app`): while a lockdown is
   on, a change also needs a WebAuthn factor (passkey or security key) used in the session within
   ``lockdown.max_factor_age`` (:func:`require_lockdown_passkey`). A lockdown is switched on against
   phished sign-ins; a password and an authenticator code are what phishing takes, and an admin session
   holding only those must not switch it off. Reading stays open; ``gateway lockdown off`` on the host
   is the fallback.

Errors::

    Forbidden (403, gateway.errors)
    ├── CrossOriginRefused      the request comes from another origin (CSRF)
    ├── AdminRoleRequired       signed in, but not an admin
    ├── StepUpRequired          an admin whose second factor is too old; ``location`` is the MFA page
    └── LockdownPasskeyRequired a change during a lockdown without a recent passkey; ``location`` is
                                the MFA page asking for one
    AuthenticationRequired (401)    no live session; ``location`` is the sign-in page
    UnsupportedMediaType (415)      a mutating request whose body is not JSON
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import quote

from gateway.authz.index import PolicyIndex
from gateway.authz.principals import principals_of
from gateway.errors import AuthenticationRequired, Forbidden, GatewayError
from gateway.identity.cookies import read_cookie
from gateway.identity.handoff import normalise_host
from gateway.identity.redirects import admin_origin
from gateway.identity.sessions import Session, SessionStore, fits_host
from gateway.pipeline.origins import CrossOriginRefused
from gateway.threat.lockdown import recent_passkey

__all__ = [
    "MUTATING_METHODS",
    "Admin",
    "AdminRoleRequired",
    "CrossOriginRefused",
    "LockdownPasskeyRequired",
    "StepUpRequired",
    "UnsupportedMediaType",
    "admin_origin",
    "authenticate",
    "check_csrf",
    "holds_role",
    "require_lockdown_passkey",
    "require_recent_factor",
]

MUTATING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class AdminRoleRequired(Forbidden):
    """Signed in, but not an admin; ``username`` says who (for the audit trail)."""

    reason = "admin-role-required"
    title = "Admin role required"

    def __init__(self, detail: str, *, username: str) -> None:
        super().__init__(detail)
        self.username = username


class StepUpRequired(Forbidden):
    reason = "step-up-required"
    title = "Confirm it's you"


class LockdownPasskeyRequired(Forbidden):
    """A change while a lockdown is on, from an admin session without a recent passkey (see
    :func:`require_lockdown_passkey`)."""

    reason = "lockdown-passkey-required"
    title = "Confirm it's you with your passkey"


class UnsupportedMediaType(GatewayError):
    status = 415
    reason = "unsupported-media-type"
    title = "Unsupported media type"


@dataclass(frozen=True, slots=True)
class Admin:
    """The admin making a request: their session and everything it speaks for."""

    session: Session
    principals: frozenset[str]

    @property
    def actor(self) -> str:
        """How the audit trail and the policy history name this admin."""
        return f"user:{self.session.username}"


def check_csrf(
    *,
    method: str,
    content_type: str | None,
    origin: str | None,
    sec_fetch_site: str | None,
    allowed_origins: Iterable[str],
) -> None:
    """Refuse a mutating request that a page of another origin could have sent.

    Raises:
        UnsupportedMediaType: the body is not declared as ``application/json``.
        CrossOriginRefused: ``Origin`` is another origin (``null`` included), or the browser says
            the request is ``cross-site`` or ``same-site``.
    """
    if method.upper() not in MUTATING_METHODS:
        return
    if origin is not None and origin.strip().lower().rstrip("/") not in set(allowed_origins):
        raise CrossOriginRefused(f"Requests from {origin.strip()!r} may not change anything here.")
    # Only the console's own origin is allowed, so a browser's "same-site" (the apps' hosts, the
    # gateway's own port) is another origin as much as "cross-site" is, Origin header or not.
    if sec_fetch_site is not None and sec_fetch_site.strip().lower() in ("cross-site", "same-site"):
        raise CrossOriginRefused("Requests from other origins may not change anything here.")
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type != "application/json":
        raise UnsupportedMediaType("Send the request body as JSON, with 'Content-Type: application/json'.")


def holds_role(principals: Iterable[str], role: str, index: PolicyIndex) -> bool:
    """Whether any principal is ``role`` or reaches it through the policy's ``g`` lines."""
    return index.holds_role(principals, role)


async def authenticate(
    *,
    headers: Sequence[tuple[bytes, bytes]],
    cookie_name: str,
    sessions: SessionStore,
    index: PolicyIndex,
    role: str,
    reauth_max_age: float,
    public_url: str,
    now: float,
    back: str = "",
) -> Admin:
    """The admin behind this request, or the error that says what is missing.

    Args:
        headers: The request's ASGI headers (the session cookie is read from them).
        cookie_name: The gateway's session cookie name.
        sessions: The session store (shared with the gateway, so sign-out ends admin access too).
        index: The live policy, for the role hierarchy.
        role: ``admin.role``.
        reauth_max_age: Seconds a second factor stays fresh enough for admin work.
        public_url: Where the sign-in and MFA pages are.
        now: Unix time.
        back: The console address to come back to after the sign-in or step-up (``rd``).

    Raises:
        AuthenticationRequired: no live session.
        AdminRoleRequired: the session does not hold ``role``.
        StepUpRequired: no second factor within ``reauth_max_age``.
        StateUnavailable: the session store cannot be reached (503, never access).
    """
    session_id = read_cookie(list(headers), cookie_name)
    session = await sessions.get(session_id) if session_id else None
    host = next((v.decode("latin-1") for k, v in headers if k == b"host"), "")
    if session is None or session_id is None or not fits_host(session, normalise_host(host)):
        # An app host's hand-off session never reaches the console (see fits_host).
        raise AuthenticationRequired(
            "Sign in to the gateway first, then come back.",
            location=_with_rd(f"{public_url}/.gateway/login", back),
        )
    principals = principals_of(session)
    # The role is checked before freshness: a non-admin is told so, not sent through a step-up that
    # could not help.
    if not holds_role(principals, role, index):
        raise AdminRoleRequired(
            f"Only holders of the {role!r} role may use the admin API.", username=session.username
        )
    at = session.second_factor_at
    # A session that still owes a password change never has admin power, whatever it holds.
    if at is None or now - at > reauth_max_age or session.password_change:
        raise StepUpRequired(
            "Admin actions need a second factor used within the last "
            f"{_minutes(reauth_max_age)}: confirm it's you, then retry.",
            location=_with_rd(f"{public_url}/.gateway/mfa?need=any", back),
        )
    await sessions.touch(session_id, session)
    return Admin(session=session, principals=principals)


def _with_rd(page: str, back: str) -> str:
    """``page`` with ``rd=back`` (the gateway's pages check it: only its hosts and the console's origin)."""
    if not back:
        return page
    return f"{page}{'&' if '?' in page else '?'}rd={quote(back, safe='')}"


def require_recent_factor(
    admin: Admin, *, now: float, max_age: float, public_url: str, back: str = ""
) -> None:
    """Ask for the second factor again before a destructive action (``admin.destructive_reauth_max_age``).

    An admin session is fresh enough for reading and ordinary changes for ``admin.reauth_max_age``;
    resetting someone's factors, ending their sessions, replacing or restoring the policy or lifting a
    block also needs a factor used within ``max_age``, so a borrowed, unlocked laptop cannot do them.

    Raises:
        StepUpRequired: the last second factor is older than ``max_age``; ``location`` is the MFA page.
    """
    at = admin.session.second_factor_at
    if at is None or now - at > max_age:
        raise StepUpRequired(
            "This action needs a second factor used within the last "
            f"{_minutes(max_age)}: confirm it's you, then retry.",
            location=_with_rd(f"{public_url}/.gateway/mfa?need=any", back),
        )


def require_lockdown_passkey(
    admin: Admin, *, now: float, max_age: float, public_url: str, back: str = ""
) -> None:
    """Ask for a passkey before a change while a lockdown is on: one used in this session within
    ``lockdown.max_factor_age`` (``max_age``), as the data plane's break-glass check asks
    (:func:`gateway.threat.lockdown.is_break_glass`), without its group: here the admin role is the
    authority.

    An attack run switched a lockdown off with an admin session signed in with a password and an
    authenticator code, what a phishing page takes: the very threat the lockdown was on against.

    Raises:
        LockdownPasskeyRequired: no WebAuthn factor used within ``max_age``; ``location`` is the MFA
            page asking for a passkey.
    """
    if recent_passkey(admin.session, max_age=max_age, now=now):
        return
    raise LockdownPasskeyRequired(
        f"A lockdown is on: admin changes need a passkey used within the last {_age(max_age)}. Confirm "
        "with your passkey, then retry, or use the host's `gateway lockdown` command.",
        location=_with_rd(f"{public_url}/.gateway/mfa?need=webauthn", back),
    )


def _age(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        hours = int(seconds // 3600)
        return f"{hours} hour{'s' if hours != 1 else ''}"
    return _minutes(seconds)


def _minutes(seconds: float) -> str:
    if seconds >= 60 and seconds % 60 == 0:
        minutes = int(seconds // 60)
        return f"{minutes} minute{'s' if minutes != 1 else ''}"
    return f"{seconds:g} seconds"
