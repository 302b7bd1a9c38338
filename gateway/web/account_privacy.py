"""The portal's privacy page: ``/.gateway/account/privacy``, where a signed-in person exercises their rights.

Sections: download everything (the export as a JSON attachment), correct the email and display name,
the consent and objection choices (changed through the consent API, ``web/consent.py``, the one place
they are recorded), restrict processing, close the account, erase it, and the person's requests in the
register. Every right goes through :class:`gateway.privacy.service.Privacy` with channel ``portal``,
the actor ``user:<name>`` and the session as the identity check; all but the list need a second
factor used within ``mfa.reauth_max_age`` (``web/rights.py``), else the browser is sent to the MFA page
and comes back here.

Restriction, closure and erasure end every session of the person, this one included: the browser is
sent to a plain "done" page that names the request's reference (and says when a legal hold suspends
an erasure), with the session cookie cleared.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final
from urllib.parse import quote

from litestar import Request, get, post
from litestar.enums import MediaType
from litestar.params import FromQuery
from litestar.response import Redirect, Response, Template

from gateway.errors import GatewayError
from gateway.identity.models import User
from gateway.identity.sessions import Session
from gateway.privacy.purposes import ConsentView, is_current, parse_objections
from gateway.privacy.register import Channel, Kind, RequestView, Status, UnknownRequest, is_ref
from gateway.privacy.service import Privacy as PrivacyService
from gateway.services import IdentityServices
from gateway.settings.current import CurrentConfig
from gateway.settings.schema import Purpose
from gateway.web import flows
from gateway.web.deps import Config, Identity, Privacy
from gateway.web.flows import AnyRequest
from gateway.web.gate import PUBLIC
from gateway.web.pages import Form, page
from gateway.web.rights import (
    PAGE,
    RecentFactorRequired,
    Requester,
    refuse_cross_site,
    requester,
    signed_in,
    step_up_location,
)

__all__ = ["HANDLERS", "export_filename"]

_DONE: Final = f"{PAGE}/done"

_KINDS: Final[dict[str, str]] = {
    Kind.ACCESS: "Access (download)",
    Kind.PORTABILITY: "Portability (download)",
    Kind.RECTIFICATION: "Correction",
    Kind.ERASURE: "Erasure",
    Kind.RESTRICTION: "Restriction",
    Kind.OBJECTION: "Objection",
    Kind.CONSENT_WITHDRAWAL: "Consent withdrawal",
    Kind.CLOSURE: "Account closure",
}
_STATUSES: Final[dict[str, str]] = {
    Status.RECEIVED: "Received",
    Status.VERIFIED: "In progress",
    Status.ON_HOLD: "On hold",
    Status.COMPLETED: "Completed",
    Status.REJECTED: "Refused",
}
_ANSWERED: Final = {
    "granted": "you allowed it",
    "refused": "you did not allow it",
    "withdrawn": "you withdrew it",
}
# The consent API (web/consent.py): the one place choices are recorded; the page's script calls it.
_CONSENTS: Final = "/.gateway/api/consents"
_OBJECTIONS: Final = "/.gateway/api/objections"
_BASES: Final = {
    "consent": "Your consent",
    "contract": "Needed to provide the service",
    "legal_obligation": "Required by law",
    "legitimate_interest": "Legitimate interest",
}


def export_filename(at: datetime) -> str:
    """``personal-data-<date>.json``: the name the download is saved under."""
    return f"personal-data-{at.date().isoformat()}.json"


def _days(seconds: float) -> str:
    return f"{seconds / 86400:g}"


def _date(at: datetime | None) -> str:
    return at.strftime("%Y-%m-%d") if at is not None else ""


def _request_row(view: RequestView, now: datetime) -> dict[str, Any]:
    return {
        "ref": view.ref,
        # StrEnum members hash as their values: the stored strings look them up directly.
        "kind": _KINDS.get(view.kind, view.kind),
        "status": _STATUSES.get(view.status, view.status),
        "status_class": "ok" if view.status == Status.COMPLETED else ("warn" if view.overdue(now) else ""),
        "received": _date(view.received_at),
        "due": _date(view.due_at),
        "completed": _date(view.completed_at),
        "outcome": view.outcome,
    }


def _action(
    label: str, api: str, body: Mapping[str, object], done: str, style: str = "secondary"
) -> dict[str, str]:
    return {"label": label, "api": api, "body": json.dumps(body), "done": done, "style": style}


def _choice(purpose: Purpose, answer: ConsentView | None, objections: frozenset[str]) -> dict[str, Any]:
    """One purpose as the page shows it: processed or not for this person, why, and what they can do."""
    actions: list[dict[str, str]] = []
    if purpose.basis == "consent":
        current = is_current(purpose, answer)
        processed = answer is not None and current and answer.decision == "granted"
        if answer is None:
            hint = "not answered yet"
        elif not current:
            hint = "the notice changed: answer again"
        else:
            hint = _ANSWERED[answer.decision]
        change = {"purpose": purpose.name, "decision": "withdrawn" if processed else "granted"}
        actions.append(
            _action("Withdraw consent", _CONSENTS, change, "Consent withdrawn.")
            if processed
            else _action("Allow", _CONSENTS, change, "Consent given.")
        )
    elif purpose.basis == "legitimate_interest" and purpose.objectable:
        objected = purpose.name in objections
        processed = not objected
        hint = "you objected" if objected else "you may object"
        body = {"purpose": purpose.name, "object": not objected}
        actions.append(
            _action("Withdraw objection", _OBJECTIONS, body, "Objection withdrawn.")
            if objected
            else _action("Object", _OBJECTIONS, body, "Objection recorded.")
        )
    else:
        processed, hint = True, "needed to serve you"
    return {
        "name": purpose.name,
        "title": purpose.title,
        "notice": purpose.notice,
        "basis": _BASES.get(purpose.basis, purpose.basis),
        "state": "Processed" if processed else "Not processed",
        "hint": hint,
        "processed": processed,
        "actions": actions,
    }


async def _choices(
    identity: IdentityServices, user: User, purposes: tuple[Purpose, ...]
) -> list[dict[str, Any]]:
    """Each configured purpose with this person's choice (see :func:`_choice`)."""
    answers = await identity.consents.current(user.id)
    objections = parse_objections(user.objections)
    return [_choice(purpose, answers.get(purpose.name), objections) for purpose in purposes]


async def _page(
    request: AnyRequest,
    config: CurrentConfig,
    identity: IdentityServices,
    privacy: PrivacyService,
    session: Session,
    user: User,
    *,
    notice: str = "",
    error: str | None = None,
    status: int = 200,
    form: dict[str, str] | None = None,
) -> Template:
    settings = config.settings.privacy
    owned = await privacy.provider_owned(user)
    now = identity.clock.now()
    requests = await privacy.register.find(owner=user, limit=50)
    fresh = flows.is_fresh(session, config, identity.clock)
    return page(
        request,
        "account_privacy.html",
        status=status,
        user=session.username,
        account=user,
        notice=notice,
        error=error,
        fresh=fresh,
        step_up=step_up_location(PAGE),
        reauth_minutes=max(1, round(float(config.settings.mfa.reauth_max_age) / 60)),
        provider_owned=owned.detail if owned is not None else None,
        email=(form or {}).get("email", user.email or ""),
        display_name=(form or {}).get("display_name", user.display_name),
        choices=await _choices(identity, user, settings.purposes),
        requests=[_request_row(view, now) for view in requests],
        registration_days=_days(float(settings.retention.registration)),
        removed_days=_days(float(settings.retention.removed_content)),
        due_days=_days(float(settings.due.of(settings.default_law))),
    )


def _back(notice: str) -> Redirect:
    return Redirect(f"{PAGE}?notice={quote(notice)}", status_code=303)


def _done(config: CurrentConfig, view: RequestView) -> Redirect:
    """The "done" page for a request that ended this session; the cookie goes with the session."""
    response = Redirect(f"{_DONE}?ref={quote(view.ref)}", status_code=303)
    flows.set_session_cookie(response, config, None)
    return response


async def _verified(
    request: AnyRequest, config: CurrentConfig, identity: IdentityServices, back: str = PAGE
) -> Requester | Redirect:
    """The verified requester, or where the browser must go first (sign-in, or the second factor)."""
    found = await signed_in(request, config, identity)
    if found is None:
        return flows.login_redirect(back)
    try:
        return requester(*found, config, identity)
    except RecentFactorRequired:
        return Redirect(step_up_location(back), status_code=303)


@get(PAGE, cache=False)
async def privacy_page(
    request: Request[Any, Any, Any],
    config: Config,
    identity: Identity,
    privacy: Privacy,
    notice: FromQuery[str] = "",
) -> Template | Redirect:
    """The page: every right, the person's choices and their requests."""
    found = await signed_in(request, config, identity)
    if found is None:
        return flows.login_redirect(PAGE)
    session, user = found
    return await _page(request, config, identity, privacy, session, user, notice=notice[:200])


@get(f"{PAGE}/export", cache=False)
async def export_download(
    request: Request[Any, Any, Any], config: Config, identity: Identity, privacy: Privacy
) -> Response[bytes] | Redirect:
    """Everything the gateway holds about the person, as a JSON attachment (an access request)."""
    refuse_cross_site(request)
    who = await _verified(request, config, identity)
    if isinstance(who, Redirect):
        return who
    _, document = await privacy.export(
        who.user,
        settings=config.settings.privacy,
        channel=Channel.PORTAL,
        actor=who.actor,
        verified_by=who.verified_by,
    )
    return Response(
        json.dumps(document, indent=2, sort_keys=True).encode("utf-8"),
        media_type=MediaType.JSON,
        headers={
            "Content-Disposition": f'attachment; filename="{export_filename(identity.clock.now())}"',
        },
    )


@post(f"{PAGE}/rectify", status_code=303)
async def rectify(
    request: Request[Any, Any, Any], config: Config, identity: Identity, privacy: Privacy, data: Form
) -> Template | Redirect:
    """Correct the display name, or remove the email address (a new one is set by an administrator,
    see :class:`gateway.privacy.service.EmailNeedsAdmin`); only what differs is sent."""
    who = await _verified(request, config, identity)
    if isinstance(who, Redirect):
        return who
    user = who.user
    name = data.get("display_name", "").strip()
    new_email = "" if data.get("remove_email") and user.email else None
    new_name = name if name != user.display_name else None
    if new_email is None and new_name is None:
        return _back("Nothing to correct: your details were already so.")
    try:
        await privacy.rectify(
            user,
            settings=config.settings.privacy,
            channel=Channel.PORTAL,
            actor=who.actor,
            verified_by=who.verified_by,
            email=new_email,
            display_name=new_name,
        )
    except GatewayError as err:
        if err.status >= 500:
            raise  # an outage: the error handler logs the detail and shows a plain page
        return await _page(
            request,
            config,
            identity,
            privacy,
            who.session,
            user,
            error=err.public_detail,
            status=err.status,
            form={"email": user.email or "", "display_name": name},
        )
    return _back("Your details were corrected; the applications you use see them at once.")


def _confirmed(data: dict[str, str]) -> bool:
    return data.get("confirm", "") == "yes"


@post(f"{PAGE}/restrict", status_code=303)
async def restrict(
    request: Request[Any, Any, Any], config: Config, identity: Identity, privacy: Privacy, data: Form
) -> Template | Redirect:
    """Restrict processing: every session ends and the account cannot sign in until an admin lifts it."""
    who = await _verified(request, config, identity)
    if isinstance(who, Redirect):
        return who
    if not _confirmed(data):
        return await _page(
            request,
            config,
            identity,
            privacy,
            who.session,
            who.user,
            error="Tick the box to confirm that you want processing restricted.",
            status=400,
        )
    view = await privacy.restrict(
        who.user,
        True,
        settings=config.settings.privacy,
        channel=Channel.PORTAL,
        actor=who.actor,
        verified_by=who.verified_by,
    )
    return _done(config, view)


@post(f"{PAGE}/close", status_code=303)
async def close(
    request: Request[Any, Any, Any], config: Config, identity: Identity, privacy: Privacy, data: Form
) -> Template | Redirect:
    """Close the account: no sign-in from now; the data goes after ``privacy.retention.registration``."""
    who = await _verified(request, config, identity)
    if isinstance(who, Redirect):
        return who
    if not _confirmed(data):
        return await _page(
            request,
            config,
            identity,
            privacy,
            who.session,
            who.user,
            error="Tick the box to confirm that you want your account closed.",
            status=400,
        )
    view = await privacy.close(
        who.user,
        settings=config.settings.privacy,
        channel=Channel.PORTAL,
        actor=who.actor,
        verified_by=who.verified_by,
    )
    return _done(config, view)


@post(f"{PAGE}/erase", status_code=303)
async def erase(
    request: Request[Any, Any, Any], config: Config, identity: Identity, privacy: Privacy, data: Form
) -> Template | Redirect:
    """Erase the account now (or, under a legal hold, restrict it until the hold is released)."""
    who = await _verified(request, config, identity)
    if isinstance(who, Redirect):
        return who
    if data.get("confirm", "").strip() != who.user.username:
        return await _page(
            request,
            config,
            identity,
            privacy,
            who.session,
            who.user,
            error=f"Type your username, {who.user.username}, to confirm the erasure.",
            status=400,
        )
    view = await privacy.erase(
        who.user,
        settings=config.settings.privacy,
        channel=Channel.PORTAL,
        actor=who.actor,
        verified_by=who.verified_by,
    )
    return _done(config, view)


def _done_text(view: RequestView, config: CurrentConfig) -> tuple[str, str] | None:
    """The done page's title and message for a request that ended the session, else None."""
    retention = config.settings.privacy.retention
    ref = f"Your request's reference is {view.ref}; quote it if you contact us about it."
    if view.kind == Kind.ERASURE and view.status == Status.ON_HOLD:
        return (
            "Your erasure is on hold",
            "A legal hold suspends the erasure of your account. Meanwhile processing is restricted: you "
            "are signed out, cannot sign in, and your data is kept unchanged. The account is erased when "
            f"the hold is released. {ref}",
        )
    if view.kind == Kind.ERASURE and view.status == Status.COMPLETED:
        return (
            "Your account was erased",
            "Your account, its second factors and sessions are deleted, and the audit trail no longer "
            "names you (except as who made a change you made as an administrator). For a legal reason a sealed (encrypted) copy of what was removed is kept for "
            f"{_days(float(retention.removed_content))} days for investigation, then deleted. {ref}",
        )
    if view.kind == Kind.RESTRICTION and view.status == Status.COMPLETED:
        return (
            "Processing is restricted",
            "You are signed out and cannot sign in until an administrator lifts the restriction. Your "
            f"data is kept unchanged and used for nothing optional. {ref}",
        )
    if view.kind == Kind.CLOSURE and view.status == Status.COMPLETED:
        return (
            "Your account is closed",
            "You are signed out and cannot sign in. Your data is deleted "
            f"{_days(float(retention.registration))} days from now; until then an administrator can "
            f"reopen the account if you change your mind. {ref}",
        )
    return None


@get(_DONE, cache=False, opt=PUBLIC)
async def done(
    request: Request[Any, Any, Any], config: Config, privacy: Privacy, ref: FromQuery[str] = ""
) -> Template:
    """After a request that ended the session: what happened, and the reference (the session is gone).

    Public, as the person is signed out by then. It shows only the kind and status of the request
    (never whose it is): the reference is unguessable and known to the person who made it.
    """
    text = None
    if is_ref(ref):
        try:
            text = _done_text(await privacy.register.get(ref), config)
        except UnknownRequest:
            text = None
    if text is None:
        return page(
            request,
            "message.html",
            status=404,
            title="No such request",
            message="This link does not name a request that ended a session.",
        )
    title, message = text
    return page(
        request,
        "message.html",
        title=title,
        message=message,
        link="/.gateway/privacy",
        link_text="Privacy notice",
    )


#: The privacy page's handlers, registered on the control app (``web/app.py``).
HANDLERS: Final = (privacy_page, export_download, rectify, restrict, close, erase, done)
