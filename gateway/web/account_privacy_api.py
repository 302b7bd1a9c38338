"""The privacy page's JSON twin for scripts: ``/.gateway/api/account/…``.

The same rights as ``/.gateway/account/privacy`` (``web/account_privacy.py``), through the same
:class:`gateway.privacy.service.Privacy` calls with channel ``portal``: the export, rectification,
restriction, closure, erasure, and the person's requests in the register. The same rules too: a
signed-in session (401 without one), CSRF header on every unsafe request, and for everything but the
list a second factor used within ``mfa.reauth_max_age`` (403 ``mfa-required`` otherwise: use the
second factor, then call again).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Final

import msgspec
from litestar import Request, get, post
from litestar.exceptions import NotAuthorizedException
from litestar.params import JSONBody
from litestar.response import Response

from gateway.errors import BadRequest
from gateway.privacy.register import Channel, RequestView
from gateway.services import IdentityServices
from gateway.settings.current import CurrentConfig
from gateway.web import flows
from gateway.web.deps import Config, Identity, Privacy
from gateway.web.flows import AnyRequest
from gateway.web.rights import Requester, refuse_cross_site, requester, signed_in

__all__ = ["HANDLERS", "ConfirmationMismatch"]


class ConfirmationMismatch(BadRequest):
    """An erasure whose ``confirm`` is not the account's username (400): nothing was done."""

    reason = "confirmation-mismatch"
    title = "Confirm with your username"


class PrivacyRequest(msgspec.Struct):
    """One request in the register, as its requester sees it."""

    ref: str
    kind: str
    law: str
    channel: str
    status: Annotated[str, msgspec.Meta(description="received, verified, on_hold, completed or rejected.")]
    received_at: datetime
    verified_at: datetime | None
    verified_by: str
    due_at: datetime
    completed_at: datetime | None
    outcome: str
    # Always empty here: a legal hold's reference is for admins only (an order may be confidential, and
    # its case number would tip off the person it concerns); status on_hold says that one applies.
    hold_ref: str
    overdue: bool
    details: dict[str, Any]


class Rectification(msgspec.Struct):
    """The fields to correct; a field left out stays as it is."""

    email: Annotated[
        str | None, msgspec.Meta(description="The new email address; an empty string removes it.")
    ] = None
    display_name: str | None = None


class ErasureConfirmation(msgspec.Struct):
    """The account's username, typed again: an erasure cannot be undone."""

    confirm: str


def _out(view: RequestView, now: datetime) -> PrivacyRequest:
    return PrivacyRequest(
        ref=view.ref,
        kind=view.kind,
        law=view.law,
        channel=view.channel,
        status=view.status,
        received_at=view.received_at,
        verified_at=view.verified_at,
        verified_by=view.verified_by,
        due_at=view.due_at,
        completed_at=view.completed_at,
        outcome=view.outcome,
        hold_ref="",
        overdue=view.overdue(now),
        details=view.details,
    )


async def _verified(request: AnyRequest, config: CurrentConfig, identity: IdentityServices) -> Requester:
    """The verified requester; 401 without a session, 403 ``mfa-required`` without a recent factor."""
    found = await signed_in(request, config, identity)
    if found is None:
        raise NotAuthorizedException("Sign in first.")
    return requester(*found, config, identity)


def _signed_out(config: CurrentConfig, body: PrivacyRequest) -> Response[PrivacyRequest]:
    """The answer of a right that ended every session of the person: the cookie goes too."""
    response = Response(body, status_code=200)
    flows.set_session_cookie(response, config, None)
    return response


# The API's reference (/.gateway/api/schema) shows these: operations are documented by what their
# decorators say.
_FRESH: Final = (
    " Needs a second factor used within mfa.reauth_max_age: 403 mfa-required otherwise (use the second "
    "factor, then call again); 401 without a session."
)
_EXPORT_DOC: Final = (
    "Everything the gateway holds about you as one JSON document (gateway/privacy/export.schema.json), "
    "recorded as an access request." + _FRESH
)
_RECTIFY_DOC: Final = (
    'Correct your display name, or remove your email address (email: ""); a field left out stays as '
    "it is. Answers the completed request; 403 email-change-needs-admin for a new email address (an "
    "administrator sets it, after checking it is yours: identity providers and apps know you by it), "
    "400 invalid-account for a value that is not acceptable (nothing changes), 409 "
    "field-owned-by-identity-provider for an account that signs in through an identity provider (correct "
    "it there)." + _FRESH
)
_RESTRICT_DOC: Final = (
    "Restrict processing: your data is kept unchanged and used for nothing optional; every session ends, "
    "this one included, and the account cannot sign in until an administrator lifts it. Answers the "
    "completed request." + _FRESH
)
_CLOSE_DOC: Final = (
    "Close your account: every session ends and the account cannot sign in; its data is deleted "
    "privacy.retention.registration later. Answers the completed request." + _FRESH
)
_ERASE_DOC: Final = (
    "Erase your account now. confirm must be your username (400 confirmation-mismatch otherwise, nothing "
    "done). Answers the request: completed, or on_hold when a legal hold suspends it (the account "
    "is then restricted until the hold is released). Either way every session ends." + _FRESH
)
_REQUESTS_DOC: Final = "Your requests in the privacy register, newest first, with their dates and outcomes."


@get(
    "/.gateway/api/account/export",
    cache=False,
    summary="Download your personal data",
    description=_EXPORT_DOC,
)
async def export(
    request: Request[Any, Any, Any], config: Config, identity: Identity, privacy: Privacy
) -> dict[str, Any]:
    """The export (see ``_EXPORT_DOC``)."""
    refuse_cross_site(request)
    who = await _verified(request, config, identity)
    _, document = await privacy.export(
        who.user,
        settings=config.settings.privacy,
        channel=Channel.PORTAL,
        actor=who.actor,
        verified_by=who.verified_by,
    )
    return document


@post(
    "/.gateway/api/account/rectify",
    status_code=200,
    summary="Correct your email or display name",
    description=_RECTIFY_DOC,
)
async def rectify(
    request: Request[Any, Any, Any],
    config: Config,
    identity: Identity,
    privacy: Privacy,
    data: JSONBody[Rectification],
) -> PrivacyRequest:
    """Rectification (see ``_RECTIFY_DOC``)."""
    who = await _verified(request, config, identity)
    if data.email is None and data.display_name is None:
        raise BadRequest("Give email and/or display_name to correct.")
    view = await privacy.rectify(
        who.user,
        settings=config.settings.privacy,
        channel=Channel.PORTAL,
        actor=who.actor,
        verified_by=who.verified_by,
        email=data.email,
        display_name=data.display_name,
    )
    return _out(view, identity.clock.now())


@post(
    "/.gateway/api/account/restrict",
    status_code=200,
    summary="Restrict processing of your data",
    description=_RESTRICT_DOC,
)
async def restrict(
    request: Request[Any, Any, Any], config: Config, identity: Identity, privacy: Privacy
) -> Response[PrivacyRequest]:
    """Restriction (see ``_RESTRICT_DOC``)."""
    who = await _verified(request, config, identity)
    view = await privacy.restrict(
        who.user,
        True,
        settings=config.settings.privacy,
        channel=Channel.PORTAL,
        actor=who.actor,
        verified_by=who.verified_by,
    )
    return _signed_out(config, _out(view, identity.clock.now()))


@post(
    "/.gateway/api/account/close",
    status_code=200,
    summary="Close your account",
    description=_CLOSE_DOC,
)
async def close(
    request: Request[Any, Any, Any], config: Config, identity: Identity, privacy: Privacy
) -> Response[PrivacyRequest]:
    """Closure (see ``_CLOSE_DOC``)."""
    who = await _verified(request, config, identity)
    view = await privacy.close(
        who.user,
        settings=config.settings.privacy,
        channel=Channel.PORTAL,
        actor=who.actor,
        verified_by=who.verified_by,
    )
    return _signed_out(config, _out(view, identity.clock.now()))


@post(
    "/.gateway/api/account/erase",
    status_code=200,
    summary="Erase your account",
    description=_ERASE_DOC,
)
async def erase(
    request: Request[Any, Any, Any],
    config: Config,
    identity: Identity,
    privacy: Privacy,
    data: JSONBody[ErasureConfirmation],
) -> Response[PrivacyRequest]:
    """Erasure (see ``_ERASE_DOC``)."""
    who = await _verified(request, config, identity)
    if data.confirm.strip() != who.user.username:
        raise ConfirmationMismatch("confirm must be your username: nothing was erased.")
    view = await privacy.erase(
        who.user,
        settings=config.settings.privacy,
        channel=Channel.PORTAL,
        actor=who.actor,
        verified_by=who.verified_by,
    )
    return _signed_out(config, _out(view, identity.clock.now()))


@get(
    "/.gateway/api/account/requests",
    cache=False,
    summary="Your privacy requests",
    description=_REQUESTS_DOC,
)
async def my_requests(
    request: Request[Any, Any, Any], config: Config, identity: Identity, privacy: Privacy
) -> list[PrivacyRequest]:
    """The register rows of the signed-in person (see ``_REQUESTS_DOC``)."""
    found = await signed_in(request, config, identity)
    if found is None:
        raise NotAuthorizedException("Sign in first.")
    now = identity.clock.now()
    # Their own rows only (register.mine): not an earlier account's that had the same id.
    return [_out(view, now) for view in await privacy.register.find(owner=found[1], limit=200)]


#: The privacy API's handlers, registered on the control app (``web/app.py``).
HANDLERS: Final = (export, rectify, restrict, close, erase, my_requests)
