"""The invitation page: a new user opens the link an admin gave them and chooses their first password.

``GET /.gateway/invite/{token}`` shows "Choose your password" with the password rules;
``POST`` sets it through the account service (the password policy applies, as on the password page),
uses the token up, records ``user.invitation.accepted`` and sends the browser to the sign-in page. It
does not sign the user in: the second factor is enrolled at the first sign-in, as for every account.

Public (no session needed: the token is the credential). Every failure of the token (malformed,
unknown, used, superseded by a newer invitation, expired, or the account gone, disabled or given a
password meanwhile) gets the one answer, 410 "not valid any more", so the page is no oracle for which
it was. Tokens are 256 random bits, so guessing is not a threat worth a limiter; there is no
per-address limiter for unauthenticated forms to share (the sign-in form's regulator counts per
account, and a token names no account until it is valid). Failed acceptances are audited with the
client's address, so a flood is visible. The token is in no log line the gateway writes: the access
log and the error log redact the rest of an invitation path (``gateway.observe.redact``), and the audit
trail keeps only a prefix of its hash.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, TypeAlias
from urllib.parse import quote

from litestar import Request, get, post
from litestar.di import NamedDependency
from litestar.params import PathParameter
from litestar.response import Redirect, Template

from gateway.identity.invitations import INVITE_PATH, Invitation, Invitations, fingerprint
from gateway.identity.models import User
from gateway.services import IdentityServices
from gateway.threat.attempts import TooManyAttempts
from gateway.web import flows
from gateway.web.deps import Config, Identity
from gateway.web.gate import PUBLIC
from gateway.web.pages import Form, page

__all__ = ["HANDLERS", "Invites"]

#: ``invitations``: the invitation tokens (provided in :func:`gateway.web.app.dependencies`).
Invites: TypeAlias = NamedDependency[Invitations]
Token = Annotated[str, PathParameter(description="The invitation token from the link.", max_length=200)]

INVALID_TITLE: Final = "This invitation link is not valid any more"
INVALID_MESSAGE: Final = (
    "This invitation link is not valid any more; ask an administrator for a new one. "
    "Links work once and for a limited time, and a newer link replaces an older one."
)


def _invalid(request: Request[Any, Any, Any]) -> Template:
    return page(
        request,
        "message.html",
        status=410,
        title=INVALID_TITLE,
        message=INVALID_MESSAGE,
        link="/.gateway/login",
        link_text="Go to sign-in",
    )


async def _open(identity: IdentityServices, invitation: Invitation | None) -> User | None:
    """The account the invitation opens, while it may still be accepted."""
    if invitation is None:
        return None
    user = await identity.accounts.get(invitation.user_id)
    # Gone, disabled, or given a password some other way since: the link has nothing left to do.
    if user is None or not user.can_sign_in or user.password_hash is not None:
        return None
    # The account the link was made for: the same name, created before the link. SQLite gives a deleted
    # account's id to the next new one, so a link that outlived its account would open someone else's.
    if user.username != invitation.username or user.created_at.timestamp() > invitation.issued_at:
        return None
    return user


async def _still_open(identity: IdentityServices, user_id: int) -> bool:
    user = await identity.accounts.get(user_id)
    return user is not None and user.can_sign_in


async def _signed_in_as(
    request: Request[Any, Any, Any], config: Config, identity: IdentityServices, user: User
) -> str:
    """Who else this browser is signed in as, if anyone: a link opened there sets another account's
    password, and the person should see that before choosing one (the last note's UX item)."""
    signed = await flows.current(request, config, identity)
    if signed.session is None or signed.session.user_id == user.id:
        return ""
    return signed.session.username


def _form(
    request: Request[Any, Any, Any],
    config: Config,
    user: User,
    token: str,
    *,
    error: str | None = None,
    signed_in_as: str = "",
) -> Template:
    return page(
        request,
        "invite.html",
        status=400 if error else 200,
        signed_in_as=signed_in_as,
        username=user.username,
        display_name=user.display_name,
        # A valid token is URL-safe base64: the form posts back to the link itself.
        action=INVITE_PATH + token,
        error=error,
        min_length=config.settings.passwords.min_length,
    )


@get("/.gateway/invite/{token:str}", cache=False, opt=PUBLIC)
async def invite_page(
    request: Request[Any, Any, Any], config: Config, identity: Identity, invitations: Invites, token: Token
) -> Template:
    """Choose your password: the page an invitation link opens."""
    user = await _open(identity, await invitations.peek(token))
    if user is None:
        return _invalid(request)
    return _form(
        request, config, user, token, signed_in_as=await _signed_in_as(request, config, identity, user)
    )


@post("/.gateway/invite/{token:str}", status_code=303, opt=PUBLIC)
async def invite_submit(
    request: Request[Any, Any, Any],
    config: Config,
    identity: Identity,
    invitations: Invites,
    token: Token,
    data: Form,
) -> Template | Redirect:
    """Set the first password with an invitation token, then go to the sign-in page."""
    ip = flows.client_ip(request)
    user = await _open(identity, await invitations.peek(token))
    if user is None:
        return await _refused(request, identity, token, ip)
    new = data.get("new", "")
    if new != data.get("confirm", ""):
        return _form(request, config, user, token, error="The two passwords are not the same.")
    # Checked before the token is used, so a refused password leaves the link working.
    problem = await identity.hasher.check_new(
        new, personal=(user.username, user.email or "", user.display_name)
    )
    if problem is not None:
        return _form(request, config, user, token, error=problem)
    invitation = await invitations.take(token)
    if invitation is None or invitation.user_id != user.id:
        return await _refused(request, identity, token, ip)  # lost a race with another use
    await identity.accounts.set_password(user.id, new, actor=f"user:{user.username}", ip=ip)
    if not await _still_open(identity, user.id):
        # Disabled, restricted or closed while the link was being used (its withdrawal came after the
        # token was taken): the password it set goes again (a re-attack run set one on a disabled
        # account this way 3 times of 6).
        await identity.accounts.clear_password(user.id, actor="system:invitation")
        return await _refused(request, identity, token, ip)
    await identity.audit.record(
        "user.invitation.accepted",
        actor=f"user:{user.username}",
        subject=user.username,
        ip=ip,
        details={"invitation": invitation.fingerprint},
    )
    return Redirect(f"/.gateway/login?login_hint={quote(user.username, safe='')}", status_code=303)


async def _refused(
    request: Request[Any, Any, Any], identity: IdentityServices, token: str, ip: str
) -> Template:
    # A link that opens nothing is a guess as much as a wrong password: counted against the address
    # with the failed sign-ins, and past their limit answered with no audit record (an attack run
    # wrote 300 records in 3 s this way, each a chained write and a security event in every sink).
    if not await flows.counted_failure(identity, ip):
        err = TooManyAttempts("Too many attempts from your network. Try again in a minute.")
        return page(
            request,
            "message.html",
            status=err.status,
            title=err.title,
            message=err.public_detail,
            link="/.gateway/login",
            link_text="Go to sign-in",
        )
    # Which failure it was stays here: the answer is the same for all of them.
    await identity.audit.record(
        "user.invitation.accepted",
        actor="anonymous",
        subject="",
        ip=ip,
        outcome="failure",
        details={"invitation": fingerprint(token)},
    )
    return _invalid(request)


#: The invitation page's handlers, registered on the control app (``web/app.py``).
HANDLERS: Final = (invite_page, invite_submit)
