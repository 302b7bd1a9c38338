"""Consent at sign-in, and its JSON twin for scripts: ``/.gateway/consent`` and ``/.gateway/api/consents``.

After a sign-in, a person with a consent purpose not yet answered in its current version (a new
purpose, or a changed notice with a bumped version) is sent to ``GET /.gateway/consent?rd=…``
(``flows.next_location``). The page shows each such notice with "Allow" and "Don't allow"; the answers
are recorded (``gateway.privacy.consent``), the session's opt-out follows at once, and the browser goes
on to ``rd`` as after any sign-in step. "Don't allow" is always an answer: refusing never blocks the
sign-in.

The API answers the same questions for a script (``GET``), records an answer (a withdrawal is the same
call as giving) and adds or withdraws an objection to a legitimate-interest purpose. Both admit a
session whose only pending step is enrolling a second factor (a person without one still answers;
whoever could give a consent can withdraw it), but not one that still owes its second factor: a stolen
password alone changes nothing here.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Final, Literal
from urllib.parse import quote

import msgspec
from litestar import Request, get, post
from litestar.exceptions import NotAuthorizedException
from litestar.params import FromQuery, JSONBody
from litestar.response import Redirect, Template

from gateway.identity.accounts import UnknownAccount
from gateway.identity.sessions import Session
from gateway.privacy.consent import purpose_named
from gateway.privacy.purposes import is_current, notice_paragraphs, parse_objections, pending
from gateway.privacy.register import Channel
from gateway.services import IdentityServices
from gateway.settings.current import CurrentConfig
from gateway.settings.schema import Purpose
from gateway.web import flows
from gateway.web.deps import Config, Identity, Privacy
from gateway.web.flows import AnyRequest
from gateway.web.gate import Step, admits
from gateway.web.pages import Form, page

__all__ = ["HANDLERS"]

# Where a person who has not finished signing in may still answer (see the module docstring).
_ADMITS: Final = admits(Step.ENROLL)
# How a choice was made, as the consent record and the audit trail say it.
_PROMPT: Final = "sign-in prompt"
_API: Final = "api"
# The two answers the sign-in page offers (withdrawing is for an answer given before).
_ANSWERS: Final = ("granted", "refused")
_FIELD: Final = "answer-"
_CHOOSE: Final = "Choose “Allow” or “Don't allow” for each purpose to continue."


class PurposeNotice(msgspec.Struct):
    """A configured purpose and its notice."""

    purpose: str
    title: str
    notice: str
    version: int
    basis: str
    objectable: bool


class ConsentAnswer(msgspec.Struct):
    """The newest answer to one purpose's notice."""

    purpose: str
    version: int
    decision: str
    at: datetime
    method: str
    # Whether it answers the notice's current version (an older one is asked again).
    current: bool


class ConsentState(msgspec.Struct):
    """A person's choices and what they mean now."""

    # Every configured purpose, with what can be done about it (basis, objectable).
    purposes: list[PurposeNotice]
    # The newest answer per consent purpose.
    answers: list[ConsentAnswer]
    # Consent notices without an answer to their current version.
    pending: list[PurposeNotice]
    objections: list[str]
    # What is not processed for this person now (unanswered consents, refusals, objections).
    optout: list[str]


class ConsentChange(msgspec.Struct):
    """An answer to a consent purpose's current notice."""

    purpose: Annotated[str, msgspec.Meta(description="The purpose's name, as privacy.purposes names it.")]
    decision: Annotated[
        Literal["granted", "refused", "withdrawn"],
        msgspec.Meta(description="granted, refused, or withdrawn (of an answer given before)."),
    ]


class ObjectionChange(msgspec.Struct):
    """Object to a legitimate-interest purpose (``true``), or withdraw the objection (``false``)."""

    purpose: Annotated[str, msgspec.Meta(description="The purpose's name, as privacy.purposes names it.")]
    objects: Annotated[
        bool, msgspec.Meta(description="true: object to the purpose; false: withdraw the objection.")
    ] = msgspec.field(name="object")


def _notice(purpose: Purpose) -> PurposeNotice:
    return PurposeNotice(
        purpose=purpose.name,
        title=purpose.title,
        notice=purpose.notice,
        version=purpose.version,
        basis=purpose.basis,
        objectable=purpose.objectable,
    )


async def _signed_in(
    request: AnyRequest, config: CurrentConfig, identity: IdentityServices
) -> Session | None:
    return (await flows.current(request, config, identity)).session


def _form(
    request: AnyRequest,
    session: Session,
    waiting: tuple[Purpose, ...],
    rd: str,
    *,
    chosen: dict[str, str] | None = None,
    error: str | None = None,
) -> Template:
    notices = [
        {
            "name": p.name,
            "title": p.title,
            "paragraphs": notice_paragraphs(p.notice),
            "version": p.version,
            "answer": (chosen or {}).get(p.name, ""),
        }
        for p in waiting
    ]
    return page(
        request,
        "consent.html",
        status=400 if error else 200,
        rd=rd,
        notices=notices,
        error=error,
        user=session.username,
    )


@get("/.gateway/consent", cache=False, opt=_ADMITS)
async def consent_page(
    request: Request[Any, Any, Any], config: Config, identity: Identity, rd: FromQuery[str] = ""
) -> Template | Redirect:
    # Checked on entry: the form carries it on.
    rd = flows.carried_rd(rd, config)
    session = await _signed_in(request, config, identity)
    if session is None:
        return flows.login_redirect(
            f"/.gateway/consent?rd={quote(rd, safe='')}" if rd else "/.gateway/consent"
        )
    current = await identity.consents.current(session.user_id)
    waiting = pending(config.settings.privacy.purposes, current)
    if not waiting:
        return Redirect(await flows.next_location(request, config, identity, session, rd))
    return _form(request, session, waiting, rd)


@post("/.gateway/consent", status_code=303, opt=_ADMITS)
async def consent_submit(
    request: Request[Any, Any, Any], config: Config, identity: Identity, data: Form
) -> Template | Redirect:
    rd = flows.carried_rd(data.get("rd", ""), config)
    session = await _signed_in(request, config, identity)
    if session is None:
        return flows.login_redirect(rd)
    current = await identity.consents.current(session.user_id)
    # Only what is still open: a notice answered meanwhile (another tab) is not answered twice, and
    # one added by a reload since the page was shown is shown next.
    waiting = pending(config.settings.privacy.purposes, current)
    chosen = {p.name: data.get(_FIELD + p.name, "") for p in waiting}
    if any(chosen[p.name] not in _ANSWERS for p in waiting):
        return _form(request, session, waiting, rd, chosen=chosen, error=_CHOOSE)
    for purpose in waiting:
        await identity.consents.record(
            session.user_id,
            purpose,
            chosen[purpose.name],
            _PROMPT,
            actor=f"user:{session.username}",
            ip=flows.client_ip(request),
        )
    return Redirect(await flows.next_location(request, config, identity, session, rd), status_code=303)


async def _state(config: CurrentConfig, identity: IdentityServices, user_id: int) -> ConsentState:
    user = await identity.accounts.get(user_id)
    if user is None:
        raise UnknownAccount("This account no longer exists.")
    purposes = config.settings.privacy.purposes
    current = await identity.consents.current(user_id)
    by_name = {p.name: p for p in purposes}
    answers = [
        ConsentAnswer(
            purpose=view.purpose,
            version=view.version,
            decision=view.decision,
            at=view.at,
            method=view.method,
            current=view.purpose in by_name and is_current(by_name[view.purpose], view),
        )
        for view in current.values()
    ]
    return ConsentState(
        purposes=[_notice(p) for p in purposes],
        answers=answers,
        pending=[_notice(p) for p in pending(purposes, current)],
        objections=sorted(parse_objections(user.objections)),
        optout=list(await identity.consents.optout_of(user)),
    )


async def _require(request: AnyRequest, config: CurrentConfig, identity: IdentityServices) -> Session:
    session = await _signed_in(request, config, identity)
    if session is None:
        raise NotAuthorizedException("Sign in first.")
    return session


# The API's reference (/.gateway/api/schema) shows these: the app documents operations by what their
# decorators say, not by docstrings.
_STATE_DOC: Final = (
    "Your answers to the consent notices, the notices still to answer (a new purpose, or a new "
    "version of one), your objections, and what is not processed for you because of them (optout)."
)
_CONSENT_DOC: Final = (
    "Answer a consent purpose's current notice: granted, refused or withdrawn (a withdrawal is this "
    "same call, as easy as giving). It applies to your sessions from the next request on. Answers: "
    "200 with your choices; 400 for a decision that is none of the three; 422 unknown-purpose for a "
    "name that is not configured; 409 not-consent-based for a purpose that does not rest on consent."
)
_OBJECTION_DOC: Final = (
    "Object to a legitimate-interest purpose (object: true) or withdraw the objection (false). It "
    "applies to your sessions from the next request on. Answers: 200 with your choices; 422 "
    "unknown-purpose for a name that is not configured; 409 not-objectable for a purpose that cannot "
    "be objected to (consent purposes are withdrawn instead)."
)


@get(
    "/.gateway/api/consents",
    cache=False,
    opt=_ADMITS,
    summary="Your consents and objections",
    description=_STATE_DOC,
)
async def my_consents(request: Request[Any, Any, Any], config: Config, identity: Identity) -> ConsentState:
    """The person's choices (see ``_STATE_DOC``)."""
    session = await _require(request, config, identity)
    return await _state(config, identity, session.user_id)


@post(
    "/.gateway/api/consents",
    status_code=200,
    opt=_ADMITS,
    summary="Give, refuse or withdraw a consent",
    description=_CONSENT_DOC,
)
async def answer_consent(
    request: Request[Any, Any, Any],
    config: Config,
    identity: Identity,
    privacy: Privacy,
    data: JSONBody[ConsentChange],
) -> ConsentState:
    """Record an answer (see ``_CONSENT_DOC``)."""
    session = await _require(request, config, identity)
    if data.decision == "withdrawn":
        # A right exercised: the service records it and registers it, as for an admin or the CLI.
        await privacy.withdraw_consent(
            await privacy.user(session.user_id), data.purpose, **_as_person(request, config, session)
        )
        return await _state(config, identity, session.user_id)
    purpose = purpose_named(config.settings.privacy.purposes, data.purpose)
    await identity.consents.record(
        session.user_id,
        purpose,
        data.decision,
        _API,
        actor=f"user:{session.username}",
        ip=flows.client_ip(request),
    )
    return await _state(config, identity, session.user_id)


def _as_person(request: AnyRequest, config: CurrentConfig, session: Session) -> dict[str, Any]:
    """How the portal exercises a right in the person's own name (the privacy service's arguments)."""
    return {
        "settings": config.settings.privacy,
        "channel": Channel.PORTAL,
        "actor": f"user:{session.username}",
        "verified_by": "signed-in session",
        "method": _API,
        "ip": flows.client_ip(request),
    }


@post(
    "/.gateway/api/objections",
    status_code=200,
    opt=_ADMITS,
    summary="Object to a purpose, or withdraw the objection",
    description=_OBJECTION_DOC,
)
async def change_objection(
    request: Request[Any, Any, Any],
    config: Config,
    identity: Identity,
    privacy: Privacy,
    data: JSONBody[ObjectionChange],
) -> ConsentState:
    """Add or withdraw an objection (see ``_OBJECTION_DOC``)."""
    session = await _require(request, config, identity)
    if data.objects:
        # A right exercised: the service records it and registers it, as for an admin or the CLI.
        await privacy.object(
            await privacy.user(session.user_id), data.purpose, **_as_person(request, config, session)
        )
        return await _state(config, identity, session.user_id)
    purpose = purpose_named(config.settings.privacy.purposes, data.purpose)
    await identity.consents.withdraw_objection(
        session.user_id, purpose, method=_API, actor=f"user:{session.username}", ip=flows.client_ip(request)
    )
    return await _state(config, identity, session.user_id)


#: The consent page and its API, registered on the control app (``web/app.py``).
HANDLERS: Final = (consent_page, consent_submit, my_consents, answer_consent, change_objection)
