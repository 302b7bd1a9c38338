"""The JSON API under ``/.gateway/api/`` that the pages use (WebAuthn ceremonies) and scripts may call.

Documented as OpenAPI at ``/.gateway/api/schema``. Same rules as the pages: CSRF header on every
unsafe request (``x-csrftoken``, from the ``gateway_csrf`` cookie), one answer for every credential
failure, re-authentication for sensitive changes.
"""

from __future__ import annotations

import json
from functools import partial
from typing import Any, Final
from urllib.parse import quote

import msgspec
from litestar import Request, delete, get, post
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.params import FromPath, JSONBody
from litestar.response import Response

from gateway.identity.levels import AuthLevel, Factor, FactorUse
from gateway.identity.sessions import Session
from gateway.services import IdentityServices
from gateway.settings.current import CurrentConfig
from gateway.threat.lockdown import NewPasskeys
from gateway.web import flows
from gateway.web.deps import Config, Identity, Passkeys
from gateway.web.gate import PUBLIC, Step, admits

__all__ = ["HANDLERS"]


class CeremonyResult(msgspec.Struct):
    credential: dict[str, Any]
    rd: str = ""
    name: str = "Passkey"


class RegistrationStart(msgspec.Struct):
    discoverable: bool = True


class Me(msgspec.Struct):
    username: str
    level: str
    roles: list[str]
    second_factor_at: float | None


class SessionInfo(msgspec.Struct):
    id: str
    ip: str
    user_agent: str
    last_seen: float
    current: bool


def _json(data: Any, status: int = 200) -> Response[Any]:
    return Response(data, status_code=status, media_type="application/json")


async def _require(
    request: Request[Any, Any, Any], config: CurrentConfig, identity: IdentityServices
) -> tuple[str, Session]:
    """The request's session id and session; 401 without one."""
    signed = await flows.current(request, config, identity)
    if signed.session is None or signed.session_id is None:
        raise NotAuthorizedException("Sign in first.")
    return signed.session_id, signed.session


async def _redirect_json(
    request: Request[Any, Any, Any],
    config: CurrentConfig,
    identity: IdentityServices,
    session_id: str,
    session: Session,
    rd: str,
    *,
    proven: bool = False,
) -> Response[Any]:
    """The JSON answer of a passkey ceremony: where to go next, with the session's cookie; with
    ``proven`` (a passkey just passed a sign-in, not one just enrolled), a complete sign-in also names
    the browser a known device, as a password or code does (:func:`flows.after_sign_in`): a passkey
    person's browser had none, so a stranger's wrong passwords locked it out with everyone else."""
    response = _json({"redirect": await flows.next_location(request, config, identity, session, rd)})
    flows.set_session_cookie(response, config, session_id)
    if proven and await flows.pending_step(identity, session, rd) is None:
        await flows.remember_device(request, response, config, identity, session)
    return response


@get("/.gateway/api/me", cache=False)
async def me(request: Request[Any, Any, Any], config: Config, identity: Identity) -> Me:
    """The signed-in user and the strength of this session."""
    _, s = await _require(request, config, identity)
    return Me(
        username=s.username,
        level=s.level.name.lower(),
        roles=list(s.roles),
        second_factor_at=s.second_factor_at,
    )


@get("/.gateway/api/sessions", cache=False)
async def my_sessions(
    request: Request[Any, Any, Any], config: Config, identity: Identity
) -> list[SessionInfo]:
    """This user's active sessions."""
    _, s = await _require(request, config, identity)
    return [
        SessionInfo(
            id=o.id_hash,
            ip=o.ip,
            user_agent=o.user_agent,
            last_seen=o.last_seen,
            current=o.id_hash == s.id_hash,
        )
        for o in await identity.sessions.list_user(s.user_id)
    ]


_FRESH_FIRST = "Confirm it's you first: use your second factor again, then sign the session out."


@delete("/.gateway/api/sessions/{session_hash:str}", status_code=204)
async def end_session(
    request: Request[Any, Any, Any], config: Config, identity: Identity, session_hash: FromPath[str]
) -> None:
    """Sign out one of this user's other sessions (needs a fresh second factor, as "sign out all
    other sessions" does: a stolen, older cookie looped over the list and signed the owner out)."""
    _, s = await _require(request, config, identity)
    if not flows.is_fresh(s, config, identity.clock):
        raise PermissionDeniedException(_FRESH_FIRST)
    ended = await flows.end_listed_session(identity, s, session_hash)
    if ended is None:
        raise PermissionDeniedException("Not one of your sessions.")
    if ended:
        await identity.audit.record(
            "session.revoked", actor=f"user:{s.username}", subject=s.username, ip=flows.client_ip(request)
        )


_ADD_PASSKEY_FIRST = (
    "Confirm it's you first: use your second factor again (one of your passkeys, when you have one)."
)
_LOCKDOWN_PASSKEY = (
    "A lockdown is on: while it lasts, a passkey is added only from a session that signed in with a "
    "passkey you already have (a new one could open the lockdown to whoever holds your password). Add it "
    "once the lockdown is lifted, or ask an administrator."
)


def _may_add_passkey_now(s: Session, config: CurrentConfig, passkeys: NewPasskeys, now: float) -> None:
    """Refuse (403) a new passkey that a lockdown holds back (:func:`gateway.threat.lockdown.passkey_held_back`)."""
    if passkeys.held_back(s, config.settings.lockdown, now):
        raise PermissionDeniedException(_LOCKDOWN_PASSKEY)


@post("/.gateway/api/webauthn/register/options", status_code=200, opt=admits(Step.ENROLL))
async def register_options(
    request: Request[Any, Any, Any],
    config: Config,
    identity: Identity,
    data: JSONBody[RegistrationStart],
    passkeys: Passkeys,
) -> Response[Any]:
    """Options for navigator.credentials.create (needs a fresh second factor, or a fresh password
    when this is the first factor; during a lockdown, see :func:`_may_add_passkey_now`)."""
    _, s = await _require(request, config, identity)
    if not await flows.may_add_passkey(s, config, identity):
        raise PermissionDeniedException(_ADD_PASSKEY_FIRST)
    _may_add_passkey_now(s, config, passkeys, identity.clock.time())
    user = await identity.accounts.get(s.user_id)
    options = await identity.webauthn.registration_options(
        user_id=s.user_id,
        username=s.username,
        display_name=(user.display_name if user else "") or s.username,
        discoverable=data.discoverable,
        bound_to=flows.ceremony_holder(request, config, s),
    )
    return _json(json.loads(options))


@post("/.gateway/api/webauthn/register/verify", status_code=200, opt=admits(Step.ENROLL))
async def register_verify(
    request: Request[Any, Any, Any],
    config: Config,
    identity: Identity,
    data: JSONBody[CeremonyResult],
    passkeys: Passkeys,
) -> Response[Any]:
    """Store the new passkey; a new session id (two-factor if it is the first factor, see
    flows.after_enrolling)."""
    session_id, s = await _require(request, config, identity)
    if not await flows.may_add_passkey(s, config, identity):
        raise PermissionDeniedException(_ADD_PASSKEY_FIRST)
    # Again here: a lockdown switched on between the options and the ceremony's end.
    _may_add_passkey_now(s, config, passkeys, identity.clock.time())
    first = await flows.enrolls_first(identity, s)
    stored = await identity.webauthn.register(
        user_id=s.user_id,
        name=data.name[:60] or "Passkey",
        credential_json=json.dumps(data.credential),
        bound_to=flows.ceremony_holder(request, config, s),
        ip=flows.client_ip(request),
    )
    new_id, new_session = await flows.after_enrolling(
        identity,
        session_id,
        first=first,
        factor=Factor.WEBAUTHN,
        undo=partial(identity.webauthn.remove, s.user_id, stored.id),
    )
    if first:
        # The first factor: recovery codes are shown next. The page generates them only with
        # this grant, bound to the session the new passkey just elevated and spent on use.
        await identity.first_codes.issue(new_session.id_hash)
        response = _json({"redirect": "/.gateway/account/first-codes"})
        flows.set_session_cookie(response, config, new_id)
        return response
    return await _redirect_json(
        request, config, identity, new_id, new_session, data.rd or "/.gateway/account"
    )


@post("/.gateway/api/mfa/webauthn/options", status_code=200, opt=admits(Step.SECOND_FACTOR))
async def mfa_options(request: Request[Any, Any, Any], config: Config, identity: Identity) -> Response[Any]:
    """Options for navigator.credentials.get, limited to this user's credentials."""
    _, s = await _require(request, config, identity)
    holder = flows.ceremony_holder(request, config, s)
    return _json(
        json.loads(await identity.webauthn.authentication_options(user_id=s.user_id, bound_to=holder))
    )


@post("/.gateway/api/mfa/webauthn/verify", status_code=200, opt=admits(Step.SECOND_FACTOR))
async def mfa_verify(
    request: Request[Any, Any, Any], config: Config, identity: Identity, data: JSONBody[CeremonyResult]
) -> Response[Any]:
    """Verify the assertion; the session becomes two-factor (new id)."""
    session_id, s = await _require(request, config, identity)
    key = await flows.regulation_key(request, config, identity, s)
    async with identity.regulator.attempt(key) as attempt:
        try:
            await identity.webauthn.authenticate(
                credential_json=json.dumps(data.credential),
                user_id=s.user_id,
                bound_to=flows.ceremony_holder(request, config, s),
            )
        except Exception:
            ip = flows.client_ip(request)
            await attempt.fail(ip=ip, factor="webauthn")
            # In the trail as a failed code is: detection (MFA failures, brute force) reads it there.
            await flows.record_sign_in_step(
                identity, "mfa.webauthn", session_id, s.user_id, s.username, ip=ip, outcome="failure"
            )
            raise
    await identity.regulator.record_success(key)
    if not await flows.record_sign_in_step(
        identity, "mfa.webauthn", session_id, s.user_id, s.username, ip=flows.client_ip(request)
    ):
        raise NotAuthorizedException("That passkey cannot sign in.")
    new_id, new_session = await identity.sessions.elevate(
        session_id,
        level=AuthLevel.TWO_FACTOR,
        factor=FactorUse(Factor.WEBAUTHN, identity.clock.time()),
    )
    return await _redirect_json(request, config, identity, new_id, new_session, data.rd, proven=True)


@post("/.gateway/api/login/passkey/options", status_code=200, opt=PUBLIC)
async def passkey_options(
    request: Request[Any, Any, Any], config: Config, identity: Identity
) -> Response[Any]:
    """Options for a passwordless sign-in with a discoverable credential (passkey)."""
    if not config.settings.mfa.webauthn.passwordless:
        raise PermissionDeniedException("Passwordless sign-in is disabled.")
    # Each challenge is a row in the fast state for five minutes: an attack run made 533 a second.
    await identity.attempts.reserve("challenge", flows.client_ip(request))
    holder = flows.ceremony_holder(request, config)
    return _json(json.loads(await identity.webauthn.authentication_options(user_id=None, bound_to=holder)))


@post("/.gateway/api/login/passkey/verify", status_code=200, opt=PUBLIC)
async def passkey_verify(
    request: Request[Any, Any, Any], config: Config, identity: Identity, data: JSONBody[CeremonyResult]
) -> Response[Any]:
    """A user-verifying passkey alone signs in with two factors."""
    if not config.settings.mfa.webauthn.passwordless:
        raise PermissionDeniedException("Passwordless sign-in is disabled.")
    assertion = await identity.webauthn.authenticate(
        credential_json=json.dumps(data.credential),
        user_id=None,
        bound_to=flows.ceremony_holder(request, config),
    )
    user = await identity.accounts.get(assertion.user_id)
    if user is None or not user.can_sign_in:
        raise NotAuthorizedException("That passkey cannot sign in.")
    signed = await flows.current(request, config, identity)
    if signed.session_id:
        await identity.sessions.revoke(signed.session_id)
    now = identity.clock.time()
    session_id, session = await identity.sessions.create(
        user_id=user.id,
        username=user.username,
        level=AuthLevel.TWO_FACTOR,
        factors=(FactorUse(Factor.WEBAUTHN, now),),
        roles=tuple(user.roles.split()),
        email=user.email,
        ip=flows.client_ip(request),
        user_agent=flows.user_agent(request),
        host=config.public_url,
        # As after a password: the administrator's one-time password is replaced first (left valid,
        # whoever else read it could set the password later and sign the owner out).
        password_change=user.must_change_password,
        optout=await identity.consents.optout_of(user),
    )
    if not await flows.still_allowed(identity, session_id, user.id, roles=user.roles):
        raise NotAuthorizedException("That passkey cannot sign in.")
    if not await flows.record_sign_in_step(
        identity,
        "signin.passkey",
        session_id,
        user.id,
        user.username,
        ip=flows.client_ip(request),
        created_at=user.created_at,
    ):
        raise NotAuthorizedException("That passkey cannot sign in.")
    if session.password_change:
        response = _json({"redirect": f"/.gateway/account/password?rd={quote(data.rd or '', safe='')}"})
        flows.set_session_cookie(response, config, session_id)
        return response
    return await _redirect_json(request, config, identity, session_id, session, data.rd, proven=True)


#: The API handlers, registered on the control app (``web/app.py``).
HANDLERS: Final = (
    me,
    my_sessions,
    end_session,
    register_options,
    register_verify,
    mfa_options,
    mfa_verify,
    passkey_options,
    passkey_verify,
)
