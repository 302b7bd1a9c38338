"""The server-rendered pages under ``/.gateway/``: sign-in, second factor, enrollment, hand-off, sign-out.

Every page works without JavaScript except the WebAuthn ceremonies; every form is CSRF-protected (the
Litestar CSRF middleware, double-submit cookie). Failures of a credential all get the same answer;
the detail is in the audit trail only.
"""

from __future__ import annotations

import hmac
import secrets
from typing import Annotated, Any, Final
from urllib.parse import quote

from litestar import Request, get, post
from litestar.enums import RequestEncodingType
from litestar.params import Body, FromQuery
from litestar.response import Redirect, Template

from gateway.errors import GatewayError
from gateway.identity.accounts import SignInFailed
from gateway.identity.cookies import HANDOFF_COOKIE
from gateway.identity.handoff import MAX_HANDOFF_TTL, NotConfirmed, nonce_hash, normalise_host
from gateway.identity.levels import AuthLevel, Factor, FactorUse
from gateway.identity.oidc.service import provider_for_email, provider_named
from gateway.identity.regulation import AccountLocked
from gateway.services import IdentityServices
from gateway.settings.current import CurrentConfig
from gateway.threat.attempts import TooManyAttempts
from gateway.web import flows
from gateway.web.deps import Config, Identity
from gateway.web.flows import AnyRequest
from gateway.web.gate import PUBLIC, Step, admits

__all__ = ["HANDLERS", "Form", "page"]

Form = Annotated[dict[str, str], Body(media_type=RequestEncodingType.URL_ENCODED)]
_SAME_ANSWER = "The username or password is not correct."
_MFA_FAILED = "That code did not work. Try again, or use another factor."


def page(request: AnyRequest, name: str, status: int = 200, **context: Any) -> Template:
    context.setdefault("request_id", request.headers.get("x-request-id", ""))
    context.setdefault("user", None)
    return Template(template_name=name, context=context, status_code=status)


def _providers(config: CurrentConfig) -> list[dict[str, str]]:
    return [{"name": idp.name, "label": idp.label} for idp in config.settings.identity_providers]


def _to_provider(name: str, rd: str, login_hint: str = "") -> Redirect:
    query = f"rd={quote(rd, safe='')}"
    if login_hint:
        query += f"&login_hint={quote(login_hint, safe='')}"
    return Redirect(f"/.gateway/oidc/{name}/start?{query}")


@get("/.gateway/login", cache=False, opt=PUBLIC)
async def login_page(
    request: Request[Any, Any, Any],
    config: Config,
    identity: Identity,
    rd: FromQuery[str] = "",
    login_hint: FromQuery[str] = "",
    idp: FromQuery[str] = "",
) -> Template | Redirect:
    # Checked on entry: the form, the provider links and the passkey button carry it on.
    rd = flows.carried_rd(rd, config)
    signed = await flows.current(request, config, identity)
    if signed.session is not None and signed.session_id:
        # A sign-in still owing a step goes on with it, not to the application and its known-device
        # cookie (flows.after_sign_in).
        pending = await flows.pending_step(identity, signed.session, rd)
        if pending is not None:
            return Redirect(pending)
        return await flows.after_sign_in(
            request, config, identity, signed.session_id, signed.session, rd, proven=False
        )
    configured = config.settings.identity_providers
    # A login hint in a provider's email domain, or a provider named outright, skips this page.
    chosen = provider_named(configured, idp) if idp else provider_for_email(configured, login_hint)
    if chosen is not None:
        return _to_provider(chosen.name, rd, login_hint)
    return page(
        request,
        "login.html",
        rd=rd,
        username=login_hint,
        error=None,
        passwordless=config.settings.mfa.webauthn.passwordless,
        providers=_providers(config),
    )


def _login_refused(
    request: Request[Any, Any, Any], config: CurrentConfig, rd: str, username: str, status: int, message: str
) -> Template:
    return page(
        request,
        "login.html",
        status=status,
        rd=rd,
        username=username,
        error=message,
        passwordless=config.settings.mfa.webauthn.passwordless,
        providers=_providers(config),
    )


@post("/.gateway/login", status_code=200, opt=PUBLIC)
async def login_submit(
    request: Request[Any, Any, Any], config: Config, identity: Identity, data: Form
) -> Template | Redirect:
    rd = data.get("rd", "")
    username = data.get("username", "")
    routed = provider_for_email(config.settings.identity_providers, username)
    if routed is not None:
        # This domain signs in at its identity provider; the password typed here is not looked at.
        return _to_provider(routed.name, rd, username)
    ip = flows.client_ip(request)
    try:
        # Before any hashing: an address past its failures in this window costs nothing more. Counted
        # now, taken back unless the password fails.
        async with identity.attempts.counting("password", ip, failures=(SignInFailed,)):
            result = await identity.accounts.authenticate(
                username, data.get("password", ""), ip=ip, device=flows.device_cookie(request, config)
            )
    except GatewayError as err:
        if err.status >= 500:
            raise  # an outage: the error handler logs the detail and shows a plain page
        message = _SAME_ANSWER if err.status == 401 else err.public_detail
        return _login_refused(request, config, rd, username, err.status, message)
    signed = await flows.current(request, config, identity)
    if signed.session_id:
        # Session fixation: whatever session this browser had is ended, a new id is issued.
        await identity.sessions.revoke(signed.session_id)
    user = result.user
    owes = await flows.has_second_factor(identity, user.id)
    session_id, session = await identity.sessions.create(
        user_id=user.id,
        username=user.username,
        level=AuthLevel.ONE_FACTOR,
        factors=(FactorUse(Factor.PASSWORD, identity.clock.time()),),
        roles=tuple(user.roles.split()),
        email=user.email,
        ip=flows.client_ip(request),
        user_agent=flows.user_agent(request),
        host=config.public_url,
        password_change=result.must_change_password,
        optout=await identity.consents.optout_of(user),
        owes_second_factor=owes,
    )
    if not await flows.still_allowed(
        identity, session_id, user.id, password_hash=user.password_hash, roles=user.roles
    ):
        # Disabled, restricted or closed while the password was being checked: the same answer as
        # for a disabled account.
        return _login_refused(request, config, rd, username, 401, _SAME_ANSWER)
    owed = await flows.owed_step(identity, session)  # once: the step's page and completeness both
    pending = flows.step_page(owed, rd)
    if pending is None:
        if owed is None:
            # Nothing more to prove: the sign-in is complete (flows.sign_in_complete), so its failures
            # are forgiven. Not for an account that owes the enrollment of its first factor: whoever
            # has its password would wipe the count of the guesses at the codes the owner is about to
            # enroll.
            await identity.regulator.record_success(result.regulation_key)
        return await flows.after_sign_in(request, config, identity, session_id, session, rd)
    response = Redirect(pending)
    flows.set_session_cookie(response, config, session_id)
    return response


@get("/.gateway/mfa", cache=False, opt=admits(Step.SECOND_FACTOR, Step.ENROLL))
async def mfa_page(
    request: Request[Any, Any, Any],
    config: Config,
    identity: Identity,
    rd: FromQuery[str] = "",
    need: FromQuery[str] = "any",
) -> Template | Redirect:
    # Checked on entry like the sign-in page's: the form and its script carry it on.
    rd = flows.carried_rd(rd, config)
    signed = await flows.current(request, config, identity)
    if signed.session is None:
        return flows.login_redirect(rd)
    user_id = signed.session.user_id
    has_totp = await identity.totp.has_confirmed(user_id)
    has_webauthn = bool(await identity.webauthn.list(user_id))
    enroll = f"/.gateway/account/enroll?rd={quote(rd, safe='')}"
    if not has_totp and not has_webauthn:
        return Redirect(enroll)
    return page(
        request,
        "mfa.html",
        rd=rd,
        need=need,
        has_totp=has_totp,
        has_webauthn=has_webauthn,
        # A passkey route asked of an account without one: the way to add one (the enrolment page asks
        # for a fresh second factor first), not a page with nothing to press.
        add_passkey=enroll if need == "webauthn" and not has_webauthn else "",
        error=None,
        user=signed.session.username,
    )


@post("/.gateway/mfa/totp", status_code=200, opt=admits(Step.SECOND_FACTOR, Step.ENROLL))
async def mfa_totp(
    request: Request[Any, Any, Any], config: Config, identity: Identity, data: Form
) -> Template | Redirect:
    return await _second_factor(request, data, Factor.TOTP, config, identity)


@post("/.gateway/mfa/recovery", status_code=200, opt=admits(Step.SECOND_FACTOR, Step.ENROLL))
async def mfa_recovery(
    request: Request[Any, Any, Any], config: Config, identity: Identity, data: Form
) -> Template | Redirect:
    return await _second_factor(request, data, Factor.RECOVERY, config, identity)


async def _second_factor(
    request: AnyRequest,
    data: dict[str, str],
    factor: Factor,
    config: CurrentConfig,
    identity: IdentityServices,
) -> Template | Redirect:
    rd = flows.carried_rd(data.get("rd", ""), config)
    signed = await flows.current(request, config, identity)
    if signed.session is None or signed.session_id is None:
        return flows.login_redirect(rd)
    session = signed.session
    code = data.get("code", "")
    regulator = identity.regulator
    ip = flows.client_ip(request)
    # Counted with the password under the same key: the account, or the account and this known device.
    key = await flows.regulation_key(request, config, identity, session)
    try:
        # A wrong code counts against the address too, as a wrong password does: the account's own
        # counter alone let one address holding many people's passwords guess every account's codes
        # at the account's pace (a re-attack run's reading).
        async with identity.attempts.counting("password", ip) as counted, regulator.attempt(key) as attempt:
            if factor is Factor.TOTP:
                ok = await identity.totp.verify(session.user_id, code)
            else:
                ok = await identity.recovery.use(session.user_id, code)
            if not ok:
                counted.fail()
                await attempt.fail(ip=ip, factor=factor.value)
    except (AccountLocked, TooManyAttempts) as err:
        return await _mfa_error(
            request, identity, session.user_id, session.username, rd, err.public_detail, err.status
        )
    if not await flows.record_sign_in_step(
        identity,
        f"mfa.{factor.value}",
        signed.session_id,
        session.user_id,
        session.username,
        ip=ip,
        outcome="success" if ok else "failure",
    ):
        return flows.login_redirect(rd)  # the account was erased meanwhile
    if not ok:
        return await _mfa_error(request, identity, session.user_id, session.username, rd, _MFA_FAILED, 401)
    await regulator.record_success(key)
    new_id, new_session = await identity.sessions.elevate(
        signed.session_id, level=AuthLevel.TWO_FACTOR, factor=FactorUse(factor, identity.clock.time())
    )
    return await flows.after_sign_in(request, config, identity, new_id, new_session, rd)


async def _mfa_error(
    request: AnyRequest,
    identity: IdentityServices,
    user_id: int,
    username: str,
    rd: str,
    message: str,
    status: int,
) -> Template:
    return page(
        request,
        "mfa.html",
        status=status,
        rd=rd,
        need="any",
        has_totp=await identity.totp.has_confirmed(user_id),
        has_webauthn=bool(await identity.webauthn.list(user_id)),
        error=message,
        user=username,
    )


@get("/.gateway/handoff", cache=False, opt=PUBLIC)
async def handoff(
    request: Request[Any, Any, Any],
    config: Config,
    identity: Identity,
    code: FromQuery[str] = "",
    rd: FromQuery[str] = "/",
) -> Redirect | Template:
    host = normalise_host(request.headers.get("host") or "")
    grant = await identity.handoff.redeem(code, host=host)
    # Only a path on this same host, read as a browser reads it: both the "Try again" link and
    # the Location come from the one validator ("/<TAB>/evil.test" is "//evil.test" to a browser).
    target = flows.safe_local_rd(rd)
    if grant is None:
        return _handoff_refused(request, target, *_EXPIRED)
    # The session that issued the code must still be signed in: a new password, a removed factor or
    # new recovery codes end every other session and renew the one that made the change, and a code a
    # thief took with a copied cookie before that must die with it (an attack run redeemed one after
    # the owner's password change and got a new session on every host). And the new session copies
    # the issuer as it is now, not as it was when the code was made: a step-up forced on it since
    # (threat.reconnaissance) dropped its second factor, and codes minted before brought a two-factor
    # session back (an attack run, 5 codes of 5).
    source = await identity.sessions.current_hash(grant.session.id_hash)
    # A session that still owes a password change is never copied to another host (defence in
    # depth: next_location does not issue such codes).
    if source is None or source.password_change:
        return _handoff_refused(request, target, *_EXPIRED)
    nonce_cookie = HANDOFF_COOKIE.name(insecure=not flows.secure_cookies(config))
    if not grant.binding:
        # The first code: tie the hand-off to this browser before it becomes a session (see
        # gateway.identity.handoff: login CSRF), through the auth host and back.
        nonce = secrets.token_urlsafe(32)
        bound = await identity.handoff.bind(grant, binding=nonce_hash(nonce))
        confirm = Redirect(
            f"{config.public_url}/.gateway/handoff/confirm?code={quote(bound)}&rd={quote(target, safe='')}"
        )
        confirm.set_cookie(
            key=nonce_cookie,
            value=nonce,
            path="/",
            httponly=True,
            secure=flows.secure_cookies(config),
            samesite="lax",
            max_age=int(MAX_HANDOFF_TTL),
        )
        return confirm
    nonce = request.cookies.get(nonce_cookie, "")
    if not grant.confirmed or not nonce or not hmac.compare_digest(nonce_hash(nonce), grant.binding):
        return _handoff_refused(request, target, *_ELSEWHERE)
    signed = await flows.current(request, config, identity)
    if signed.session_id:
        await identity.sessions.revoke(signed.session_id)
    # Read again at the last moment: a step-up or a role change between the checks above and here.
    source = await identity.sessions.current_hash(grant.session.id_hash)
    if source is None or source.password_change:
        return _handoff_refused(request, target, *_EXPIRED)
    session_id, _ = await identity.sessions.create(
        user_id=source.user_id,
        username=source.username,
        level=source.level,
        factors=source.factors,
        roles=source.roles,
        email=source.email,
        groups=source.groups,
        ip=flows.client_ip(request),
        user_agent=flows.user_agent(request),
        host=host,
        family=source.family,
        # The sign-in's choices travel with it (kept current in place by Consents.apply_optout).
        optout=source.optout,
        owes_second_factor=source.owes_second_factor,
    )
    if not await flows.still_allowed(identity, session_id, source.user_id):
        return _handoff_refused(request, target, *_EXPIRED)
    response = Redirect(target)
    flows.set_session_cookie(response, config, session_id)
    response.delete_cookie(nonce_cookie, path="/")
    return response


@get("/.gateway/handoff/confirm", cache=False, opt=PUBLIC)
async def handoff_confirm(
    request: Request[Any, Any, Any],
    config: Config,
    identity: Identity,
    code: FromQuery[str] = "",
    rd: FromQuery[str] = "/",
) -> Redirect | Template:
    """The auth host's half of a hand-off: the browser bringing the bound code must be the one whose
    session issued it (same sign-in family); then back to the app host with the code it redeems."""
    target = flows.safe_local_rd(rd)
    signed = await flows.current(request, config, identity)
    if not flows.on_auth_host(request, config) or signed.session is None:
        return _handoff_refused(request, target, *_ELSEWHERE)
    confirmed = await identity.handoff.confirm(code, family=signed.session.family)
    if confirmed is NotConfirmed.GONE:
        return _handoff_refused(request, target, *_EXPIRED)
    if confirmed is NotConfirmed.ELSEWHERE:
        return _handoff_refused(request, target, *_ELSEWHERE)
    back, origin = confirmed
    return Redirect(f"{origin}/.gateway/handoff?code={quote(back)}&rd={quote(target, safe='')}")


# Also the answer to a step opened twice (a reload, the back button): used and expired look alike.
_EXPIRED: Final = (
    "This sign-in link has expired or was already used",
    "Sign-in links work once and only for a minute. Open the application again to continue.",
)
# Also the answer to a link someone else made: it never signs this browser in as them.
_ELSEWHERE: Final = (
    "This sign-in link is not for this browser",
    "Sign-in links work only in the browser that signed in, once and for a minute. Open the application "
    "again to continue.",
)


def _handoff_refused(request: AnyRequest, target: str, title: str, message: str) -> Template:
    return page(
        request, "message.html", status=400, title=title, message=message, link=target, link_text="Try again"
    )


@get("/.gateway/logout", cache=False, opt=PUBLIC)
async def logout_page(
    request: Request[Any, Any, Any], config: Config, identity: Identity, rd: FromQuery[str] = ""
) -> Template:
    signed = await flows.current(request, config, identity)
    if signed.session is None:
        # Nothing to confirm (a first-day run was asked "Sign out?" while signed out).
        return page(
            request,
            "message.html",
            title="You are signed out",
            message="No one is signed in to the gateway in this browser.",
            link="/.gateway/login",
            link_text="Sign in",
        )
    return page(
        request,
        "message.html",
        title="Sign out?",
        message="You will be signed out of every application behind this gateway in this browser.",
        confirm_logout=True,
        rd=flows.carried_rd(rd, config),
        user=signed.session.username,
    )


@post("/.gateway/logout", status_code=303, opt=PUBLIC)
async def logout(request: Request[Any, Any, Any], config: Config, identity: Identity, data: Form) -> Redirect:
    signed = await flows.current(request, config, identity)
    location = "/.gateway/login"
    if signed.session is not None:
        await identity.sessions.revoke_family(signed.session.family)
        await identity.audit.record(
            "signout",
            actor=f"user:{signed.session.username}",
            subject=signed.session.username,
            ip=flows.client_ip(request),
        )
        location = await _provider_logout(signed.session.family, config, identity) or location
    response = Redirect(location, status_code=303)
    flows.set_session_cookie(response, config, None)
    return response


async def _provider_logout(family: str, config: CurrentConfig, identity: IdentityServices) -> str | None:
    """RP-initiated logout: the provider's end-session URL when this sign-in came through one."""
    oidc = identity.oidc
    sign_in = await oidc.index.forget(family)
    if sign_in is None:
        return None
    idp = provider_named(config.settings.identity_providers, sign_in.provider)
    if idp is None:
        return None
    public_url = config.public_url.rstrip("/")
    return await oidc.end_session_url(
        idp, sign_in, post_logout_redirect_uri=f"{public_url}/.gateway/oidc/{idp.name}/logged-out"
    )


#: The page handlers, registered on the control app (``web/app.py``).
HANDLERS: Final = (
    login_page,
    login_submit,
    mfa_page,
    mfa_totp,
    mfa_recovery,
    handoff,
    handoff_confirm,
    logout_page,
    logout,
)
