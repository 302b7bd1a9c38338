"""Shared steps of the sign-in pages and API: the current session, cookies, where to go next.

After any sign-in step on the auth host, the browser goes back to where it came from (``rd``). If that
is another host, cookies do not travel, so it goes through a one-time hand-off code that the target
host's ``/.gateway/handoff`` exchanges for its own session in the same family. A person with a consent
notice still to answer (a new purpose, or a new version of one) sees it first (``web/consent.py``),
then goes on the same way.
"""

from __future__ import annotations

import logging
import posixpath
import re
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, Final, Literal
from urllib.parse import SplitResult, quote, unquote, urlsplit

from litestar import Request
from litestar.response import Redirect, Response

from gateway.clock import Clock
from gateway.identity.accounts import account_exists, device_generation
from gateway.identity.cookies import CSRF_COOKIE, DEVICE_COOKIE, read_cookie
from gateway.identity.handoff import normalise_host
from gateway.identity.levels import AuthLevel, Factor, FactorUse, newest_second_factor
from gateway.identity.redirects import admin_origin, safe_local_redirect, safe_redirect
from gateway.identity.sessions import Session, SessionEnded, fits_host
from gateway.services import IdentityServices
from gateway.settings.current import CurrentConfig
from gateway.store.db import StoreUnavailable
from gateway.threat.attempts import TooManyAttempts

__all__ = [
    "OwedStep",
    "SignedIn",
    "after_sign_in",
    "carried_rd",
    "client_ip",
    "consent_pending",
    "current",
    "end_listed_session",
    "enrolls_first",
    "has_second_factor",
    "is_fresh",
    "login_redirect",
    "may_change_factors",
    "may_remove",
    "may_rename",
    "owed_step",
    "pending_step",
    "safe_local_rd",
    "safe_rd",
    "set_session_cookie",
    "sign_in_complete",
    "step_page",
]

AnyRequest = Request[Any, Any, Any]

logger = logging.getLogger("gateway.web")


class SignedIn:
    """The request's session, if any."""

    __slots__ = ("session", "session_id")

    def __init__(self, session_id: str | None, session: Session | None) -> None:
        self.session_id = session_id
        self.session = session


async def current(request: AnyRequest, config: CurrentConfig, identity: IdentityServices) -> SignedIn:
    """The session of this request (cookie → store). StateUnavailable propagates (503)."""
    session_id = read_cookie(list(request.scope["headers"]), config.cookie_name)
    if not session_id:
        return SignedIn(None, None)
    session = await identity.sessions.get(session_id)
    if session is not None and not fits_host(session, normalise_host(request.headers.get("host") or "")):
        # Another app host's hand-off session: signed out here (see fits_host).
        session = None
    return SignedIn(session_id if session else None, session)


def client_ip(request: AnyRequest) -> str:
    # The data plane replaced scope["client"] with the address decided from trusted proxies.
    return request.client.host if request.client else ""


def user_agent(request: AnyRequest) -> str:
    return request.headers.get("user-agent", "")[:256]


def secure_cookies(config: CurrentConfig) -> bool:
    return not config.settings.session.insecure_cookies


def set_session_cookie(response: Response[Any], config: CurrentConfig, session_id: str | None) -> None:
    """Set (or, with None, clear) the session cookie: HttpOnly, SameSite=Lax, Secure, host-only."""
    settings = config.settings.session
    # Clearing uses the same attributes as setting: a browser only replaces a __Host- cookie with one
    # that is Secure, host-only and Path=/ as well.
    response.set_cookie(
        key=config.cookie_name,
        value=session_id or "",
        path="/",
        httponly=True,
        secure=secure_cookies(config),
        samesite="lax",
        max_age=int(settings.lifetime) if session_id else 0,
    )


def is_fresh(session: Session, config: CurrentConfig, clock: Clock, *, only: Factor | None = None) -> bool:
    """A second factor (of kind ``only``, if given) used within mfa.reauth_max_age (needed for
    sensitive changes)."""
    at = newest_second_factor(session.factors, only=only)
    limit = config.settings.mfa.reauth_max_age
    return at is not None and clock.time() - at <= limit


async def may_add_passkey(session: Session, config: CurrentConfig, identity: IdentityServices) -> bool:
    """:func:`may_change_factors`, and for an account that has a passkey, one of its passkeys used
    within ``mfa.reauth_max_age``: a passkey route is only as strong as what adds a passkey (a
    re-attack run added one with a phished password and authenticator code, then passed a
    ``mfa: webauthn`` route with it)."""
    if not await may_change_factors(session, config, identity):
        return False
    if not await identity.webauthn.list(session.user_id):
        return True
    return is_fresh(session, config, identity.clock, only=Factor.WEBAUTHN)


def may_remove(session: Session, kind: str, config: CurrentConfig, clock: Clock) -> bool:
    """A fresh second factor; for a passkey, one of the account's passkeys used fresh, as adding one
    needs (:func:`may_add_passkey`): a re-attack run removed the owner's passkey with a phished
    password and authenticator code, then added its own, as the account had none left, and passed a
    ``mfa: webauthn`` route. A person who lost their only passkey asks an administrator
    (``gateway user reset-mfa``)."""
    return is_fresh(session, config, clock, only=Factor.WEBAUTHN if kind == "webauthn" else None)


def may_rename(session: Session, kind: str, config: CurrentConfig, clock: Clock) -> bool:
    """What removing the factor needs (:func:`may_remove`): a name tells the owner which factor to
    remove, so a passkey's is changed only by someone who could remove it. An attack run's phished
    password and authenticator code relabelled the owner's passkey "LOST remove me"."""
    return may_remove(session, kind, config, clock)


async def end_listed_session(identity: IdentityServices, s: Session, session_hash: str) -> int | None:
    """End one of the sessions "my sessions" lists for ``s``'s person; None if it is not one of them.

    A session of another browser ends with its whole sign-in, every host's session of it, as a sign-out
    there would: ending its auth-host row alone left the app-host sessions of that sign-in working (a
    re-attack run signed a stolen sign-in out from the portal, and its app cookie still got 200). A
    session of this browser's own sign-in (an app host's) ends alone: the hand-off gives it back.
    Returns how many sessions ended."""
    target = next(
        (o for o in await identity.sessions.list_user(s.user_id) if o.id_hash == session_hash), None
    )
    if target is None:
        return None
    if target.family != s.family:
        return await identity.sessions.revoke_family(target.family)
    return int(await identity.sessions.revoke_hash(session_hash))


async def has_second_factor(identity: IdentityServices, user_id: int) -> bool:
    """Whether the user has a confirmed authenticator app or a WebAuthn credential."""
    return await identity.totp.has_confirmed(user_id) or bool(await identity.webauthn.list(user_id))


async def enrolls_first(identity: IdentityServices, session: Session) -> bool:
    """Whether a factor this session enrolls now is the person's first (:func:`after_enrolling`): the
    account has none, and this session never passed one. A session that did (it signed in with a factor
    since removed) gets no use of the new one: an attack run removed the owner's factors with a phished
    password and code, then enrolled its own passkey "first" and passed a passkey route, and renewed a
    route's max_age that way as often as it liked."""
    return session.level < AuthLevel.TWO_FACTOR and not await has_second_factor(identity, session.user_id)


async def may_change_factors(session: Session, config: CurrentConfig, identity: IdentityServices) -> bool:
    """Sensitive changes need a fresh second factor; for a user enrolling their very first factor, a
    password entered (or an identity-provider sign-in made) within the re-authentication window must do."""
    if is_fresh(session, config, identity.clock):
        return True
    if await has_second_factor(identity, session.user_id):
        return False
    window = config.settings.mfa.reauth_max_age
    now = identity.clock.time()
    first = (Factor.PASSWORD, Factor.OIDC)
    return any(use.factor in first and now - use.at <= window for use in session.factors)


async def still_allowed(
    identity: IdentityServices,
    session_id: str,
    user_id: int,
    *,
    password_hash: str | None = None,
    roles: str | None = None,
) -> bool:
    """Re-read the account once its new session exists; end the session if it may no longer sign in.

    A sign-in checks the account first, then spends its time hashing the password (or verifying a
    passkey, or at the provider). Disabling, restricting or closing an account sets the flag, then
    ends the account's sessions: one that did not exist yet survived it (an attack run restricted an
    account 10 ms into a sign-in, and the sign-in finished with a live session). Read after the
    session is stored, the flag is either seen here or set before a sweep that finds the session.
    With ``password_hash`` (the hash the password was verified against), a password changed meanwhile
    ends it too: a sign-in with the old password must not outlive the change that ended the others.
    With ``roles`` (the account's local roles the session was given), a role change meanwhile ends it:
    its sweep ran before the session existed, and the session carried the old roles (a re-attack run
    kept an admin role removed during its sign-ins, 8 times of 8).
    """
    user = await identity.accounts.get(user_id)
    if (
        user is not None
        and user.can_sign_in
        and (password_hash is None or user.password_hash == password_hash)
        and (roles is None or user.roles == roles)
    ):
        return True
    await identity.sessions.revoke(session_id)
    return False


async def record_sign_in_step(
    identity: IdentityServices,
    kind: str,
    session_id: str,
    user_id: int,
    username: str,
    *,
    ip: str,
    created_at: datetime | None = None,
    outcome: str = "success",
) -> bool:
    """Record a sign-in step (``signin.passkey``, ``mfa.<factor>``, its ``outcome``) only if the account
    still exists when the record is written; otherwise end the session and return ``False``.

    Stops a sign-in racing an erasure from leaving a record naming the person in the clear: the
    erasure deletes the account, then tombstones the person's audit records once, and a step that
    passed ``still_allowed`` just before the deletion wrote its success after the tombstoning (see
    :func:`gateway.identity.accounts.account_exists`, checked under the audit chain's lock). The
    caller answers as for a disabled account.
    """
    written = await identity.audit.record_if(
        account_exists(user_id, username, created_at=created_at),
        kind,
        actor=f"user:{username}",
        subject=username,
        ip=ip,
        outcome=outcome,
    )
    if not written:
        await identity.sessions.revoke(session_id)
    return written


async def after_enrolling(
    identity: IdentityServices,
    session_id: str,
    *,
    first: bool,
    factor: Factor,
    undo: Callable[[], Awaitable[object]],
) -> tuple[str, Session]:
    """The session after a new authenticator app or passkey was stored: always a new id; a use of
    the new factor only when it is the person's first.

    A registration proves possession of an authenticator the person registering chose, so for
    someone who already has a second factor it proves nothing the fresh factor that allowed it had
    not: counted as a use, a passkey registered with a (phished) password and code would pass a
    route that asks for a passkey, and any new factor would renew a route's ``max_age``. The first
    factor completes the sign-in of a person who had none, and has nothing stronger to stand in for.

    If the session ended while the factor was stored (an admin's reset of the factors, a disable, a
    password withdrawn), ``undo`` removes the factor and SessionEnded is raised: a factor must not
    outlive the session that made it. With the reset's order (factors, sessions, factors again) no
    factor a phished session registers survives a reset (a re-attack run kept two passkeys).
    """
    try:
        if first:
            done = await identity.sessions.elevate(
                session_id, level=AuthLevel.TWO_FACTOR, factor=FactorUse(factor, identity.clock.time())
            )
        else:
            done = await identity.sessions.rotate(session_id)
    except SessionEnded:
        await undo()
        raise
    # The account's other sessions that proved no second factor owe one now (a password-only session
    # opened before the first factor went on opening `mfa: none` apps: a re-attack run).
    await identity.sessions.owe_second_factor(done[1].user_id)
    return done


async def codes_for_live_session(identity: IdentityServices, session: Session) -> list[str]:
    """New recovery codes for the session's account, kept only if the session is still there once they
    are stored (see :func:`after_enrolling`: a reset of the factors ends the session, and its codes go).

    Raises:
        SessionEnded: the session ended meanwhile; the codes were discarded.
    """
    codes = await identity.recovery.generate(session.user_id)
    if await identity.sessions.current_hash(session.id_hash) is None:
        await identity.recovery.discard(session.user_id)
        raise SessionEnded("This session has ended.")
    return codes


# Paths a return URL never leads to (:func:`safe_rd`).
_NOT_DESTINATIONS: Final = ("/.gateway/account/privacy/export", "/.gateway/api/")
# The same on the admin console's origin: its pages are places to return to, its API is not.
_CONSOLE_API: Final = ("/api/",)


def safe_rd(rd: str | None, config: CurrentConfig, fallback: str = "/.gateway/account") -> str:
    """The return URL if it is safe to follow, else ``fallback`` (the account portal).

    The one validator (:func:`gateway.identity.redirects.safe_redirect`) for every ``Location`` and
    link built from a user's ``rd``: it reads the URL as a browser would, so ``/<TAB>/evil.test``
    (which a browser reads as ``//evil.test``) never leaves the gateway's hosts.
    """
    admin_listen = config.settings.admin.listen
    console = admin_origin(config.public_url, admin_listen) if admin_listen else None
    target = safe_redirect(
        rd,
        public_url=config.public_url,
        route_hosts=[route.host for route in config.settings.routes],
        allow_http=config.settings.session.insecure_cookies or config.public_url.startswith("http://"),
        fallback=fallback,
        # Back to the admin console after a sign-in or step-up it asked for (a first-day run landed on
        # the portal instead).
        extra_origins=[console] if console else (),
    )
    # Not a place to land but something a GET does: the export downloads the person's data and records
    # an access request (an attack run's sign-in link with rd=…/privacy/export did both for the
    # victim), and the API answers scripts, the admin listener's too (a re-attack run's link landed
    # an admin on an incident report's download). The person goes where they would without an rd.
    parts = urlsplit(target)
    if _is_not_a_destination(parts.path, _CONSOLE_API if _on(parts, console) else _NOT_DESTINATIONS):
        return fallback
    return target


def _on(parts: SplitResult, origin: str | None) -> bool:
    """Whether the URL ``parts`` is on ``origin``, compared as hosts are (case, a trailing dot)."""
    if origin is None or not parts.netloc:
        return False
    there = urlsplit(origin)

    def place(p: SplitResult) -> tuple[str, str, int | None]:
        scheme = p.scheme.lower()
        return scheme, (p.hostname or "").rstrip("."), p.port or {"http": 80, "https": 443}.get(scheme)

    try:
        return place(parts) == place(there)
    except ValueError:  # a port that is no number: safe_redirect never lets one through
        return True


def _is_not_a_destination(path: str, places: tuple[str, ...]) -> bool:
    """Whether ``path``, read as the control app routes it, is one of ``places``.

    Compared after decoding escapes, merging slashes and resolving dot segments, in lower case: an
    attack run's ``/.gateway/%61ccount/privacy/export``, ``/%2Egateway/…`` and ``/.gateway//account/…``
    passed a comparison of the spelling and still reached the export. A path that only looks like one
    after this reading goes to the fallback too, which is always safe.
    """
    for _ in range(3):  # doubly encoded spellings as well
        decoded = unquote(path)
        if decoded == path:
            break
        path = decoded
    read = posixpath.normpath(re.sub(r"/+", "/", "/" + path)).lower()
    return any(read == prefix.rstrip("/") or read.startswith(prefix) for prefix in places)


def carried_rd(rd: str | None, config: CurrentConfig) -> str:
    """``rd`` to carry on to the next step (form field, query), or ``""`` if it could not be followed.

    Checked where it enters, not only where it is followed: a page never renders an unsafe return
    URL into a form, a link or a script's data, so no later step can use it unchecked.
    """
    return safe_rd(rd, config, fallback="")


async def counted_failure(identity: IdentityServices, ip: str) -> bool:
    """Count a failed attempt (a guess, a refused sign-in) against the address with its wrong passwords;
    False past its limit, where the caller records nothing more (each record is a chained write and a
    security event: attack runs flooded the trail through public endpoints)."""
    try:
        await identity.attempts.reserve("password", ip)
    except TooManyAttempts:
        return False
    return True


def safe_local_rd(rd: str | None, fallback: str = "/") -> str:
    """``rd`` if it is a path on the current host (the same validator), else ``fallback``."""
    return safe_local_redirect(rd, fallback=fallback)


def on_auth_host(request: AnyRequest, config: CurrentConfig) -> bool:
    """Whether the request came to the host of ``public_url`` (compared as the hand-off compares
    hosts: no port, no trailing dot)."""
    here = normalise_host(request.headers.get("host") or "")
    return here == normalise_host(urlsplit(config.public_url).netloc)


def login_redirect(rd: str | None) -> Redirect:
    return Redirect(f"/.gateway/login?rd={quote(rd or '', safe='')}" if rd else "/.gateway/login")


async def next_location(
    request: AnyRequest, config: CurrentConfig, identity: IdentityServices, session: Session, rd: str | None
) -> str:
    """Where to go after a sign-in step: ``rd`` if safe, through a hand-off code on another host."""
    if (pending := await pending_step(identity, session, rd)) is not None:
        # A step still owed (a second factor, a one-time password to replace) comes before this
        # sign-in goes anywhere, and no other host is handed a session that owes one.
        return pending
    if await consent_pending(identity, session):
        return f"/.gateway/consent?rd={quote(rd, safe='')}" if rd else "/.gateway/consent"
    target = safe_rd(rd, config)
    parts = urlsplit(target)
    # Compared the way the hand-off page compares (no port, no trailing dot, [v6] kept), so a code is
    # issued for exactly the host that will redeem it.
    here = normalise_host(request.headers.get("host") or "")
    there = normalise_host(parts.netloc.rpartition("@")[2]) if parts.netloc else ""
    if not there or there == here:
        return target
    code = await identity.handoff.issue(
        family=session.family,
        user_id=session.user_id,
        target_host=there,
        session=session,
        origin=f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}",
    )
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return f"{parts.scheme}://{parts.netloc}/.gateway/handoff?code={quote(code)}&rd={quote(path, safe='')}"


async def consent_pending(identity: IdentityServices, session: Session) -> bool:
    """Whether the person has a consent notice to answer before going on.

    A database outage does not hold the sign-in up: the session already leaves every unanswered
    consent purpose out (its opt-out), so the question waits for the next sign-in.
    """
    try:
        return bool(await identity.consents.pending(session.user_id))
    except StoreUnavailable:
        logger.warning("could not read the consents of user %d; not asking now", session.user_id)
        return False


OwedStep = Literal["second-factor", "password-change", "enroll"]


async def owed_step(identity: IdentityServices, session: Session) -> OwedStep | None:
    """The first step this sign-in still owes, or None when it is complete; the one rule for the
    pages' guard (``gate.pending_step``) and the sign-in's next page (:func:`pending_step`).

    The account's second factor comes first, before a forced password change (a one-time password
    alone replaced the owner's password and signed them out everywhere: an attack run); enrolling a
    first factor comes after the change.
    """
    if session.level < AuthLevel.TWO_FACTOR:
        if await has_second_factor(identity, session.user_id):
            return "second-factor"
        if not session.password_change:
            return "enroll"
    return "password-change" if session.password_change else None


async def sign_in_complete(identity: IdentityServices, session: Session) -> bool:
    """Whether this sign-in has proved everything the account asks of it (:func:`owed_step`): only
    then are its failures forgiven and its browser named a known device (:func:`remember_device`).
    An account without a second factor owes its enrollment, so its password alone completes nothing,
    although no page of the sign-in asks for it (:func:`pending_step`)."""
    return await owed_step(identity, session) is None


_STEP_PAGES: Final[dict[OwedStep, str]] = {
    "second-factor": "/.gateway/mfa",
    "password-change": "/.gateway/account/password",
}


async def pending_step(identity: IdentityServices, session: Session, rd: str | None) -> str | None:
    """Where a sign-in that has not yet proved all it must goes next (:func:`owed_step`): the
    second-factor page or the password page; None once it is complete or has only a first factor to
    enroll (the pages' guard sends it there)."""
    return step_page(await owed_step(identity, session), rd)


def step_page(owed: OwedStep | None, rd: str | None) -> str | None:
    """The page of the step ``owed`` (:func:`pending_step`), for a caller that needs ``owed`` too."""
    page = None if owed is None else _STEP_PAGES.get(owed)
    return None if page is None else f"{page}?rd={quote(rd or '', safe='')}"


async def after_sign_in(
    request: AnyRequest,
    config: CurrentConfig,
    identity: IdentityServices,
    session_id: str,
    session: Session,
    rd: str | None,
    *,
    proven: bool = True,
) -> Redirect:
    """Redirect to :func:`next_location`, carrying this session's cookie on the auth host, and, once
    the sign-in is complete (:func:`sign_in_complete`), name the browser a known device of the account
    (:mod:`gateway.identity.devices`).

    Never before: a known device's failures are counted apart from the account's, so a cookie given
    to a password-only session bought every new one a fresh allowance of second-factor guesses (an
    attack run asked the sign-in page for one after each password, and checked 1,026 wrong TOTP codes
    in 30 s with the account never locked). Nor for an account that has no second factor yet: the
    cookies outlived its enrollment (an attack run collected four with the password of an account
    without factors, then guessed the owner's new authenticator codes four allowances at a time).
    And a new device only where this request has just proven a credential (``proven``): the sign-in
    page visited by a finished session keeps the browser's own cookie, never mints one (an attack run
    minted 20 from one session cookie with 20 visits, each a fresh allowance of password and
    second-factor guesses for later)."""
    response = Redirect(await next_location(request, config, identity, session, rd))
    set_session_cookie(response, config, session_id)
    await remember_device(request, response, config, identity, session, mint=proven)
    return response


# A known device stays known for a year without a sign-in (each completed sign-in sets it again).
_DEVICE_MAX_AGE: Final = 365 * 86400


def device_cookie(request: AnyRequest, config: CurrentConfig) -> str | None:
    """The browser's known-device cookie, if it sent one."""
    return request.cookies.get(DEVICE_COOKIE.name(insecure=not secure_cookies(config)))


def ceremony_holder(request: AnyRequest, config: CurrentConfig, session: Session | None = None) -> str:
    """Whom a WebAuthn challenge is bound to (``bound_to``): this browser, by its CSRF cookie (every
    POST here carries it, and no other site can read or set it), and, when signed in, this sign-in,
    by its session family. An assertion relayed into another browser, or into another sign-in with
    the same password, finds no challenge. Empty without the cookie, which the ceremony refuses."""
    browser = request.cookies.get(CSRF_COOKIE.name(insecure=not secure_cookies(config)), "")
    if not browser or session is None:
        return browser
    return f"{browser} {session.family}"


async def regulation_key(
    request: AnyRequest, config: CurrentConfig, identity: IdentityServices, session: Session
) -> str:
    """What a sign-in step of the session's account from this browser is counted under (the account,
    or the account and this known device)."""
    user = await identity.accounts.get(session.user_id)
    if user is None:
        return session.username
    return identity.accounts.regulation_key(user, device_cookie(request, config))


async def remember_device(
    request: AnyRequest,
    response: Response[Any],
    config: CurrentConfig,
    identity: IdentityServices,
    session: Session,
    *,
    mint: bool = True,
) -> None:
    """Give the browser a known-device cookie for the session's account: the one it has if that is
    valid (its year starts again), else a new one (not with ``mint`` off: then nothing). Nothing
    while the sign-in still owes a step (:func:`sign_in_complete`), whoever calls."""
    devices = identity.accounts.devices
    if devices is None or not await sign_in_complete(identity, session):
        return
    user = await identity.accounts.get(session.user_id)
    if user is None:
        return
    held = device_cookie(request, config)
    if held is None or identity.accounts.regulation_key(user, held) == user.username:
        if not mint:
            return
        held = devices.token(user.username, device_generation(user))
    response.set_cookie(
        key=DEVICE_COOKIE.name(insecure=not secure_cookies(config)),
        value=held,
        path="/",
        httponly=True,
        secure=secure_cookies(config),
        samesite="lax",
        max_age=_DEVICE_MAX_AGE,
    )
