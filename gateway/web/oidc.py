"""The OIDC endpoints under ``/.gateway/oidc/<provider>/``: start, callback, back-channel logout.

``start`` sends the browser to the provider (on the auth host: the browser binding cookie and the
callback must be on the same host); ``callback`` turns the provider's answer into a session, or into
a page that says plainly what went wrong, with a way to try again; ``backchannel-logout`` takes the
provider's signed logout token (server to server, so no CSRF token: the signature is the proof).

Failure pages never half-sign anyone in: the callback writes nothing before the provider's answer is
verified (see :mod:`gateway.identity.oidc.service`), and an existing session of the browser is kept
until a new one replaces it.
"""

from __future__ import annotations

from typing import Annotated, Any, Final
from urllib.parse import quote

from litestar import MediaType, Request, get, post
from litestar.enums import RequestEncodingType
from litestar.params import Body, FromPath, FromQuery, QueryParameter
from litestar.response import Redirect, Response, Template

from gateway.identity.cookies import OIDC_BINDING_COOKIE, read_cookie
from gateway.identity.levels import AuthLevel
from gateway.identity.oidc.flow import FLOW_TTL, FlowInvalid, is_binding, new_binding
from gateway.identity.oidc.links import AccountRefused
from gateway.identity.oidc.provider import ProviderRefused, ProviderUnavailable
from gateway.identity.oidc.service import provider_named
from gateway.identity.oidc.tokens import TokenRejected
from gateway.services import IdentityServices
from gateway.settings.current import CurrentConfig
from gateway.settings.schema import IdentityProvider
from gateway.threat.attempts import TooManyAttempts
from gateway.web import flows
from gateway.web.deps import Config, Identity
from gateway.web.flows import AnyRequest
from gateway.web.gate import PUBLIC
from gateway.web.invite import Invites

__all__ = ["HANDLERS", "callback_url"]

Form = Annotated[dict[str, str], Body(media_type=RequestEncodingType.URL_ENCODED)]

# Errors a provider may return to the callback (RFC 6749 §4.1.2.1, OIDC Core §3.1.2.6), in words.
_PROVIDER_ERRORS: Final = {
    "access_denied": "The sign-in was cancelled or refused at the identity provider.",
    "login_required": "The identity provider needs you to sign in again.",
    "interaction_required": "The identity provider needs you to confirm something first.",
    "consent_required": "The identity provider needs your consent first.",
    "account_selection_required": "The identity provider needs you to choose an account.",
    "temporarily_unavailable": "The identity provider is temporarily unavailable.",
    "server_error": "The identity provider had an internal error.",
}


def callback_url(public_url: str, idp: str) -> str:
    """The redirect URI to register at the provider."""
    return f"{public_url.rstrip('/')}/.gateway/oidc/{idp}/callback"


def _page(request: AnyRequest, status: int, **context: Any) -> Template:
    context.setdefault("request_id", request.headers.get("x-request-id", ""))
    context.setdefault("user", None)
    context.setdefault("detail", None)
    return Template(template_name="message.html", context=context, status_code=status)


def _provider(config: CurrentConfig, name: str) -> IdentityProvider | None:
    return provider_named(config.settings.identity_providers, name)


def _insecure(config: CurrentConfig) -> bool:
    return not flows.secure_cookies(config)


def start_link(name: str, rd: str, login_hint: str = "") -> str:
    # rd is carried as data (quoted); it has been checked on entry to start and is checked
    # again where it is followed (after the callback).
    params = [f"rd={quote(rd, safe='')}"] if rd else []
    if login_hint:
        params.append(f"login_hint={quote(login_hint, safe='')}")
    query = "&".join(params)
    return f"/.gateway/oidc/{quote(name, safe='')}/start" + (f"?{query}" if query else "")


def unknown_provider(request: AnyRequest) -> Template:
    return _page(
        request,
        404,
        title="Unknown sign-in option",
        message="This identity provider is not configured here.",
        link="/.gateway/login",
        link_text="Back to sign-in",
    )


# Fetch metadata of a navigation the person made here: from this origin (the sign-in page's button,
# the retry link) or by hand (typed, a bookmark). A client that sends none is taken as the latter.
_OWN_NAVIGATION: Final = frozenset({"same-origin", "none"})


@get("/.gateway/oidc/{idp:str}/start", cache=False, opt=PUBLIC)
async def start(
    request: Request[Any, Any, Any],
    config: Config,
    identity: Identity,
    idp: FromPath[str],
    rd: FromQuery[str] = "",
    login_hint: FromQuery[str] = "",
) -> Redirect | Template:
    settings = _provider(config, idp)
    if settings is None:
        return unknown_provider(request)
    # Checked on entry, so the sign-in in flight never stores a return URL it could not follow.
    rd = flows.carried_rd(rd, config)
    public_url = config.public_url
    if not flows.on_auth_host(request, config):
        # The binding cookie must be set on the host the provider returns to (cookies ignore ports).
        # The link is rebuilt from the checked values, never from the raw query.
        return Redirect(public_url + start_link(settings.name, rd, login_hint))
    if request.headers.get("sec-fetch-site", "none") not in _OWN_NAVIGATION:
        # Sent here by another site (a link, a script's navigation) while signed in: the sign-in it
        # starts would end this browser's session and sign it in as whoever is signed in at the
        # provider, without the person asking (login CSRF: an attack run swapped a two-factor session
        # for the provider's one-factor one that way). Such a browser goes on with its own session.
        signed = await flows.current(request, config, identity)
        if signed.session is not None:
            return flows.login_redirect(rd)
    # Each start keeps a flow in the fast state for ten minutes, and its error callback writes a record:
    # counted per address with the passkey challenges (an attack run started 120 flows in 3 s, each
    # answered with an error callback and recorded).
    try:
        await identity.attempts.reserve("challenge", flows.client_ip(request))
    except TooManyAttempts as err:
        return _page(
            request,
            err.status,
            title=err.title,
            message=err.public_detail,
            link="/.gateway/login",
            link_text="Back",
        )
    cookie_name = OIDC_BINDING_COOKIE.name(insecure=_insecure(config))
    binding = read_cookie(list(request.scope["headers"]), cookie_name)
    if binding is None or not is_binding(binding):
        binding = new_binding()
    try:
        location = await identity.oidc.authorization_url(
            settings,
            binding=binding,
            rd=rd,
            redirect_uri=callback_url(public_url, idp),
            login_hint=login_hint or None,
        )
    except ProviderUnavailable:
        return _unavailable(request, settings, rd)
    response = Redirect(location)
    response.set_cookie(
        key=cookie_name,
        value=binding,
        path="/",
        httponly=True,
        secure=not _insecure(config),
        # Lax: the provider's redirect back is a top-level GET navigation, which carries it.
        samesite="lax",
        max_age=int(FLOW_TTL),
    )
    return response


def _unavailable(request: AnyRequest, idp: IdentityProvider, rd: str) -> Template:
    return _page(
        request,
        503,
        title=f"{idp.label} is not answering",
        message=(
            f"The sign-in could not be completed because {idp.label} did not answer in time. Nothing was"
            " changed, and applications you are already signed in to keep working. Try again in a moment."
        ),
        link=start_link(idp.name, rd),
        link_text="Try again",
    )


@get("/.gateway/oidc/{idp:str}/callback", cache=False, opt=PUBLIC)
async def callback(
    request: Request[Any, Any, Any],
    config: Config,
    identity: Identity,
    invitations: Invites,
    idp: FromPath[str],
    code: FromQuery[str] = "",
    # "state" is a name Litestar reserves for the app state.
    oauth_state: Annotated[str, QueryParameter(name="state")] = "",
    iss: FromQuery[str] = "",
    error: FromQuery[str] = "",
    error_description: FromQuery[str] = "",
) -> Redirect | Template:
    settings = _provider(config, idp)
    if settings is None:
        return unknown_provider(request)
    binding = read_cookie(
        list(request.scope["headers"]), OIDC_BINDING_COOKIE.name(insecure=_insecure(config))
    )
    ip = flows.client_ip(request)
    if iss and iss != settings.issuer:
        # RFC 9207: the answer names another issuer than the one this callback belongs to (mix-up).
        return _page(
            request,
            400,
            title="This sign-in link is not valid",
            message="The answer came from another identity provider than the one this sign-in used.",
            detail="oidc-issuer-mismatch",
            link="/.gateway/login",
            link_text="Sign in again",
        )
    if error:
        return await _provider_error(
            request, identity, settings, oauth_state, binding, error, error_description, ip
        )
    rd = ""
    try:
        record = await identity.oidc.flows.finish(state=oauth_state, binding=binding, provider=idp)
        rd = record.rd
        completed = await identity.oidc.complete(
            settings,
            record=record,
            code=code,
            redirect_uri=callback_url(config.public_url, idp),
            ip=ip,
        )
    except FlowInvalid as err:
        return _page(
            request,
            400,
            title="This sign-in link is not valid",
            message=f"{err.detail} Start the sign-in again from this browser.",
            link="/.gateway/login",
            link_text="Sign in again",
        )
    except ProviderUnavailable:
        return _unavailable(request, settings, rd)
    except (ProviderRefused, TokenRejected) as err:
        return _page(
            request,
            401,
            title="The sign-in could not be completed",
            message=(
                f"{settings.label}'s answer could not be accepted, so you were not signed in. "
                "Please try again; if it keeps happening, tell your administrator the request id below."
            ),
            detail=err.reason,
            link=start_link(idp, rd),
            link_text="Try again",
        )
    except AccountRefused as err:
        return _page(
            request,
            403,
            title="You cannot sign in here with this account",
            message=err.detail,
            link="/.gateway/login",
            link_text="Back to sign-in",
        )
    who = completed.identity
    has_factor = await flows.has_second_factor(identity, who.user.id)
    if completed.level < AuthLevel.TWO_FACTOR and not has_factor and await invitations.pending(who.user.id):
        # An administrator's reset (`reset-mfa --invite`, a new account's invitation) chose the link
        # as the way back in: a provider sign-in would enrol the first factor before the person does,
        # and the provider's password is as phishable as the one withdrawn (an attack run signed in
        # through the provider after a lost-device reset and enrolled its own authenticator app).
        await identity.audit.record(
            "signin.oidc",
            actor=f"user:{who.user.username}",
            subject=who.user.username,
            ip=ip,
            outcome="failure",
            details={"provider": idp, "error": "invitation-pending"},
        )
        return _page(
            request,
            403,
            title="Open your invitation link first",
            message=(
                "Your administrator reset how this account signs in and sent you an invitation link. "
                "Open that link to set up your sign-in; after that you can sign in here again."
            ),
            link="/.gateway/login",
            link_text="Back to sign-in",
        )
    signed = await flows.current(request, config, identity)
    if signed.session_id:
        # Session fixation: whatever session this browser had is ended, a new id is issued.
        await identity.sessions.revoke(signed.session_id)
    owes = completed.level < AuthLevel.TWO_FACTOR and has_factor
    session_id, session = await identity.sessions.create(
        user_id=who.user.id,
        username=who.user.username,
        level=completed.level,
        factors=completed.factors,
        roles=who.roles,
        email=who.email,
        groups=who.groups,
        ip=ip,
        user_agent=flows.user_agent(request),
        host=config.public_url,
        # The one-time password an administrator gave is replaced before anything else, whichever
        # way the person signed in: left valid, whoever else read it could set the password later.
        password_change=who.user.must_change_password,
        optout=await identity.consents.optout_of(who.user),
        owes_second_factor=owes,
        # What gave it its groups and roles: a reload that removes the provider or changes its
        # mapping ends it (SessionStore.use_providers).
        provider_mark=who.mark,
    )
    if not await flows.still_allowed(identity, session_id, who.user.id, roles=who.user.roles):
        return _page(
            request,
            403,
            title="You cannot sign in here with this account",
            message="This account is disabled. Contact your administrator.",
            link="/.gateway/login",
            link_text="Back to sign-in",
        )
    await identity.oidc.remember(completed, family=session.family)
    pending = await flows.pending_step(identity, session, rd)
    if pending is not None:
        response = Redirect(pending)
        flows.set_session_cookie(response, config, session_id)
        return response
    # A provider's answer proves nothing of this account's own credentials (a silent single sign-on
    # round trip minted a device cookie each time, an attack run): no new known device here.
    return await flows.after_sign_in(request, config, identity, session_id, session, rd, proven=False)


async def _provider_error(
    request: AnyRequest,
    identity: IdentityServices,
    idp: IdentityProvider,
    state: str,
    binding: str | None,
    error: str,
    description: str,
    ip: str,
) -> Template:
    ours = False
    rd = ""
    try:
        record = await identity.oidc.flows.finish(state=state, binding=binding, provider=idp.name)
    except FlowInvalid:
        pass
    else:
        ours, rd = True, record.rd
    code = error if error.replace("_", "").isalnum() and len(error) <= 64 else "invalid_error"
    if ours and await flows.counted_failure(identity, ip):
        # Only a sign-in this browser started is a failed sign-in: anyone can craft a callback URL
        # (an <img> on any page makes its visitors' browsers send one), and each wrote a chained
        # record and a security event, and counted a failed sign-in against the visitor's address
        # (an attack run: 200 in 1.7 s). The access log still has every request.
        await identity.audit.record(
            "signin.oidc",
            actor=f"oidc:{idp.name}",
            ip=ip,
            outcome="failure",
            details={"provider": idp.name, "error": code, "flow_valid": ours},
        )
    message = _PROVIDER_ERRORS.get(code, f"{idp.label} did not sign you in.")
    # The provider's own words only for a sign-in this browser started: anyone can craft a
    # callback URL, and this page must not display their text as if it came from us.
    detail = f"{code}: {description[:300]}" if ours and description else code
    return _page(
        request,
        403 if code == "access_denied" else 401,
        title="You were not signed in",
        message=message,
        detail=detail,
        link=start_link(idp.name, rd),
        link_text="Try again",
    )


@post(
    "/.gateway/oidc/{idp:str}/backchannel-logout",
    status_code=200,
    exclude_from_csrf=True,
    media_type=MediaType.JSON,
    opt=PUBLIC,
)
async def backchannel_logout(
    request: Request[Any, Any, Any], config: Config, identity: Identity, idp: FromPath[str], data: Form
) -> Response[Any]:
    """OpenID Connect Back-Channel Logout 1.0: the provider ends sessions of a subject or its sid."""
    headers = {"Cache-Control": "no-store"}
    settings = _provider(config, idp)
    if settings is None:
        return Response(
            {"error": "invalid_request", "error_description": "unknown provider"}, status_code=404
        )
    token = data.get("logout_token", "")
    ip = flows.client_ip(request)
    # A rejected logout token is a failed attempt of its address, as a wrong password is: each writes a
    # chained record and a security event, and an attack run wrote 80 a second with junk tokens.
    # Counted first, taken back for a token that was good, and past the limit nothing is recorded.
    try:
        async with identity.attempts.counting("password", ip, failures=(TokenRejected,)):
            await identity.oidc.backchannel_logout(settings, token, ip=ip)
    except TooManyAttempts as err:
        return Response(
            {"error": "invalid_request", "error_description": err.public_detail},
            status_code=err.status,
            headers=headers,
        )
    except TokenRejected as err:
        return Response(
            {"error": "invalid_request", "error_description": err.detail},
            status_code=400,
            headers=headers,
        )
    except ProviderUnavailable:
        return Response(
            {
                "error": "temporarily_unavailable",
                "error_description": "the provider's keys are unavailable",
            },
            status_code=503,
            headers=headers,
        )
    return Response(b"", status_code=200, headers=headers, media_type=MediaType.TEXT)


@get("/.gateway/oidc/{idp:str}/logged-out", cache=False, opt=PUBLIC)
async def logged_out(request: Request[Any, Any, Any], config: Config, idp: FromPath[str]) -> Template:
    """Where the provider sends the browser after RP-initiated logout (register it as post-logout URI)."""
    settings = _provider(config, idp)
    label = settings.label if settings is not None else "the identity provider"
    return _page(
        request,
        200,
        title="You are signed out",
        message=f"You are signed out of the gateway and of {label}.",
        link="/.gateway/login",
        link_text="Sign in again",
    )


#: The OIDC handlers, registered on the control app (``web/app.py``).
HANDLERS: Final = (start, callback, backchannel_logout, logged_out)
