"""The JSON API under ``/.gateway/api/`` that the pages use (WebAuthn ceremonies) and scripts may call.

Documented as OpenAPI at ``/.gateway/api/schema``. Same rules as the pages: CSRF header on every
unsafe request (``x-csrftoken``, from the ``gateway_csrf`` cookie), one answer for every credential
failure, re-authentication for sensitive changes.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import msgspec
from litestar import Request, delete, get, post
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.response import Response

from gateway.identity.levels import AuthLevel, Factor, FactorUse
from gateway.web import flows
from gateway.web.gate import PUBLIC, Step, admits

if TYPE_CHECKING:
    from gateway.identity.services import IdentityServices
    from gateway.runtime import Runtime

__all__ = ["api_handlers"]


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


def api_handlers(runtime: Runtime) -> list[Any]:
    """The API route handlers, bound to one worker's runtime."""

    def svc() -> IdentityServices:
        return flows.services(runtime)

    async def require(request: Request[Any, Any, Any]) -> flows.SignedIn:
        signed = await flows.current(request, runtime)
        if signed.session is None or signed.session_id is None:
            raise NotAuthorizedException("Sign in first.")
        return signed

    async def redirect_json(
        request: Request[Any, Any, Any], session_id: str, session: Any, rd: str
    ) -> Response[Any]:
        response = _json({"redirect": await flows.next_location(request, runtime, session, rd)})
        flows.set_session_cookie(response, runtime, session_id)
        return response

    @get("/.gateway/api/me", cache=False)
    async def me(request: Request[Any, Any, Any]) -> Me:
        """The signed-in user and the strength of this session."""
        s = (await require(request)).session
        assert s is not None
        return Me(
            username=s.username,
            level=s.level.name.lower(),
            roles=list(s.roles),
            second_factor_at=s.second_factor_at,
        )

    @get("/.gateway/api/sessions", cache=False)
    async def my_sessions(request: Request[Any, Any, Any]) -> list[SessionInfo]:
        """This user's active sessions."""
        s = (await require(request)).session
        assert s is not None
        return [
            SessionInfo(
                id=o.id_hash,
                ip=o.ip,
                user_agent=o.user_agent,
                last_seen=o.last_seen,
                current=o.id_hash == s.id_hash,
            )
            for o in await svc().sessions.list_user(s.user_id)
        ]

    @delete("/.gateway/api/sessions/{session_hash:str}", status_code=204)
    async def end_session(request: Request[Any, Any, Any], session_hash: str) -> None:
        """Sign out one of this user's other sessions."""
        s = (await require(request)).session
        assert s is not None
        if session_hash not in {o.id_hash for o in await svc().sessions.list_user(s.user_id)}:
            raise PermissionDeniedException("Not one of your sessions.")
        if await svc().sessions.revoke_hash(session_hash):
            await svc().audit.record(
                "session.revoked", actor=f"user:{s.username}", subject=s.username, ip=flows.client_ip(request)
            )

    @post("/.gateway/api/webauthn/register/options", status_code=200, opt=admits(Step.ENROLL))
    async def register_options(request: Request[Any, Any, Any], data: RegistrationStart) -> Response[Any]:
        """Options for navigator.credentials.create (needs a fresh second factor, or a fresh password
        when this is the first factor)."""
        signed = await require(request)
        s = signed.session
        assert s is not None
        if not await flows.may_change_factors(s, runtime):
            raise PermissionDeniedException("Confirm it's you first: use your second factor again.")
        user = await svc().accounts.get(s.user_id)
        options = await svc().webauthn.registration_options(
            user_id=s.user_id,
            username=s.username,
            display_name=(user.display_name if user else "") or s.username,
            discoverable=data.discoverable,
        )
        return _json(json.loads(options))

    @post("/.gateway/api/webauthn/register/verify", status_code=200, opt=admits(Step.ENROLL))
    async def register_verify(request: Request[Any, Any, Any], data: CeremonyResult) -> Response[Any]:
        """Store the new passkey; the session becomes two-factor (new id)."""
        signed = await require(request)
        s = signed.session
        assert s is not None
        assert signed.session_id is not None
        if not await flows.may_change_factors(s, runtime):
            raise PermissionDeniedException("Confirm it's you first: use your second factor again.")
        first = not await flows.has_second_factor(runtime, s.user_id)
        await svc().webauthn.register(
            user_id=s.user_id, name=data.name[:60] or "Passkey", credential_json=json.dumps(data.credential)
        )
        new_id, new_session = await svc().sessions.elevate(
            signed.session_id,
            level=AuthLevel.TWO_FACTOR,
            factor=FactorUse(Factor.WEBAUTHN, svc().clock.time()),
        )
        if first:
            # The first factor: recovery codes are shown next. The page generates them only with
            # this grant, bound to the session the new passkey just elevated and spent on use.
            await svc().first_codes.issue(new_session.id_hash)
            response = _json({"redirect": "/.gateway/account/first-codes"})
            flows.set_session_cookie(response, runtime, new_id)
            return response
        return await redirect_json(request, new_id, new_session, data.rd or "/.gateway/account")

    @post("/.gateway/api/mfa/webauthn/options", status_code=200, opt=admits(Step.SECOND_FACTOR))
    async def mfa_options(request: Request[Any, Any, Any]) -> Response[Any]:
        """Options for navigator.credentials.get, limited to this user's credentials."""
        s = (await require(request)).session
        assert s is not None
        return _json(json.loads(await svc().webauthn.authentication_options(user_id=s.user_id)))

    @post("/.gateway/api/mfa/webauthn/verify", status_code=200, opt=admits(Step.SECOND_FACTOR))
    async def mfa_verify(request: Request[Any, Any, Any], data: CeremonyResult) -> Response[Any]:
        """Verify the assertion; the session becomes two-factor (new id)."""
        signed = await require(request)
        s = signed.session
        assert s is not None
        assert signed.session_id is not None
        await svc().regulator.check(s.username)
        try:
            await svc().webauthn.authenticate(credential_json=json.dumps(data.credential), user_id=s.user_id)
        except Exception:
            await svc().regulator.record_failure(s.username, ip=flows.client_ip(request), factor="webauthn")
            raise
        await svc().regulator.record_success(s.username)
        new_id, new_session = await svc().sessions.elevate(
            signed.session_id,
            level=AuthLevel.TWO_FACTOR,
            factor=FactorUse(Factor.WEBAUTHN, svc().clock.time()),
        )
        await svc().audit.record(
            "mfa.webauthn", actor=f"user:{s.username}", subject=s.username, ip=flows.client_ip(request)
        )
        return await redirect_json(request, new_id, new_session, data.rd)

    @post("/.gateway/api/login/passkey/options", status_code=200, opt=PUBLIC)
    async def passkey_options() -> Response[Any]:
        """Options for a passwordless sign-in with a discoverable credential (passkey)."""
        if not runtime.snapshot.settings.mfa.webauthn.passwordless:
            raise PermissionDeniedException("Passwordless sign-in is disabled.")
        return _json(json.loads(await svc().webauthn.authentication_options(user_id=None)))

    @post("/.gateway/api/login/passkey/verify", status_code=200, opt=PUBLIC)
    async def passkey_verify(request: Request[Any, Any, Any], data: CeremonyResult) -> Response[Any]:
        """A user-verifying passkey alone signs in with two factors."""
        if not runtime.snapshot.settings.mfa.webauthn.passwordless:
            raise PermissionDeniedException("Passwordless sign-in is disabled.")
        assertion = await svc().webauthn.authenticate(
            credential_json=json.dumps(data.credential), user_id=None
        )
        user = await svc().accounts.get(assertion.user_id)
        if user is None or user.disabled:
            raise NotAuthorizedException("That passkey cannot sign in.")
        signed = await flows.current(request, runtime)
        if signed.session_id:
            await svc().sessions.revoke(signed.session_id)
        now = svc().clock.time()
        session_id, session = await svc().sessions.create(
            user_id=user.id,
            username=user.username,
            level=AuthLevel.TWO_FACTOR,
            factors=(FactorUse(Factor.WEBAUTHN, now),),
            roles=tuple(user.roles.split()),
            email=user.email,
            ip=flows.client_ip(request),
            user_agent=flows.user_agent(request),
            host=runtime.snapshot.public_url,
        )
        await svc().audit.record(
            "signin.passkey",
            actor=f"user:{user.username}",
            subject=user.username,
            ip=flows.client_ip(request),
        )
        return await redirect_json(request, session_id, session, data.rd)

    return [
        me,
        my_sessions,
        end_session,
        register_options,
        register_verify,
        mfa_options,
        mfa_verify,
        passkey_options,
        passkey_verify,
    ]
