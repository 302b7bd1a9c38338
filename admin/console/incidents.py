"""Incidents and blocks: what threat detection found and did, lifting it, and blocking addresses by hand
(``/incidents``, ``/incidents/{id}`` and their twins under ``/api/incidents`` and ``/api/blocks``).

Every change is the :class:`~gateway.threat.responder.Responder`'s own operation, the one
``gateway incident …`` runs, here as the signed-in admin, so the console and the CLI store the same
incidents and blocks and record the same domain events (``incident.block_ip``, ``incident.unblock_ip``,
``incident.lifted``). Beside each, an ``admin.<action>`` event carries the admin's reason and outcome,
also when the action is refused (``admin.block.add``, ``admin.block.remove``, ``admin.incident.lift``).

A block or an unblock is written to the fast state and broadcast: every gateway worker and replica
refuses (or admits again) the address within one broadcast, and within its periodic refresh (a few
seconds) if the broadcast is lost.

What may be blocked here:

* what ``gateway incident block-ip`` may block (:mod:`gateway.threat.manual`: at most an IPv4 /16 or an
  IPv6 /32, at most 90 days);
* **never the admin's own address**, as this listener sees it or as the admin's session signed in
  from: the sign-in and step-up pages this console sends an admin to are on the data plane, so such a
  block would shut the admin out of the console too. An operator who means it runs the CLI on the
  server.

Lifting an incident (undoing its blocks and account locks) and unblocking an address are destructive:
they need a reason and a second factor used within ``admin.destructive_reauth_max_age``. A block needs
a reason; it takes effect at once and is undone with one click.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, Final, TypeVar

import msgspec
from litestar import Request, get, post
from litestar.params import JSONBody, PathParameter, QueryParameter
from litestar.response import Template

from admin.access import Admin
from admin.actions import audited, client_ip, confirm_destructive
from admin.console.render import PAGE_OPT, page
from admin.console.users import other_admins_addresses
from admin.deps import AdminServices, Policy
from gateway.audit.models import AuditEvent
from gateway.errors import GatewayError
from gateway.reasons import REASON_PATTERN
from gateway.services import Services
from gateway.threat.blocks import BlockEntry
from gateway.threat.evidence import incident_events
from gateway.threat.incidents import Action, Incident, parse_incident_id, severity
from gateway.threat.manual import (
    BlockRefused,
    block_note,
    block_seconds,
    covers,
    manual_network,
    parse_network,
)
from gateway.threat.responder import Responder
from gateway.web.deps import Config

__all__ = ["HANDLERS", "BlockList", "IncidentDetail", "IncidentList", "incident_detail", "incident_list"]

#: How many of the audit events behind an incident the detail shows (the Audit section has the rest).
EVENTS_LIMIT: Final = 50
_T = TypeVar("_T")
# Rules whose signals are requests (the access log), not audit events: the detail says where to look.
_REQUEST_RULES: Final = {
    "reconnaissance": "The denied requests that raised it are in the access log (decision deny), "
    "not the audit trail; the evidence below counts them.",
    "session_hijack": "The request that raised it is in the access log (the session from a new address "
    "and browser); the evidence below names both.",
    "token_guessing": "The refused requests that raised it are in the access log (auth bearer, reason "
    "invalid-token); the evidence below counts them.",
}


class NotBlocked(GatewayError):
    """The address to unblock is not blocked (exactly as given): 404, nothing changed."""

    status = 404
    reason = "not-blocked"
    title = "Not blocked"


class AlreadyLifted(GatewayError):
    """The incident was lifted before: 409, nothing changed (a second lift would undo a newer block)."""

    status = 409
    reason = "incident-already-lifted"
    title = "Already lifted"


IncidentId = Annotated[
    str,
    PathParameter(description="An incident id as listed by GET /api/incidents (inc-<8 hex>).", max_length=64),
]
Reason = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        pattern=REASON_PATTERN,
        max_length=2000,
        description="Why: kept with the block and in the audit trail.",
    ),
]
Address = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=64,
        description="An IP address (203.0.113.7) or CIDR network (203.0.113.0/24; at most /16, IPv6 /32).",
    ),
]


# -- request bodies ---------------------------------------------------------------------------------


class BlockRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Refuse ``address`` on every gateway worker and replica for ``expires_in``."""

    address: Address
    expires_in: Annotated[
        str,
        msgspec.Meta(
            min_length=1, max_length=32, description="How long: 30m, 1h, 7d, … (more than 0, at most 90d)."
        ),
    ] = "1h"
    reason: Reason


class UnblockRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Lift the block of exactly ``address`` (as listed by GET /api/blocks)."""

    address: Address
    reason: Reason


class LiftRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    reason: Reason


# -- answers ----------------------------------------------------------------------------------------


class BlockView(msgspec.Struct, kw_only=True):
    address: str
    expires_at: datetime
    # Seconds left when this answer was made.
    remaining: float
    reason: str
    # Who made it: "system:threat" for a rule, the admin ("user:alice") or operator for a block by hand.
    actor: str
    # The incident that made it (lifting that incident also lifts the block).
    incident: str


class BlockList(msgspec.Struct, kw_only=True):
    blocks: list[BlockView]


class IncidentRow(msgspec.Struct, kw_only=True):
    id: str
    rule: str
    severity: str
    status: str
    opened_at: datetime
    subject: str
    ip: str
    summary: str
    # The kinds of what was done (block_ip, lock_account, ...); empty for an alert only.
    responses: list[str]
    # Whether lifting would undo something (a block or an account lock still in force).
    undoable: bool
    opened_by: str
    lifted_by: str
    lifted_at: datetime | None


class IncidentList(msgspec.Struct, kw_only=True):
    # Open incidents first, then lifted ones; each newest first.
    incidents: list[IncidentRow]
    open: int
    blocks: list[BlockView]


class ActionView(msgspec.Struct, kw_only=True):
    kind: str
    target: str
    ok: bool
    note: str
    until: datetime | None
    lifted: bool


class EventView(msgspec.Struct, kw_only=True):
    seq: int
    at: datetime
    kind: str
    actor: str
    subject: str
    ip: str
    outcome: str
    details: dict[str, Any]


class IncidentDetail(IncidentRow, kw_only=True):
    session: str
    evidence: dict[str, str | int | float]
    actions: list[ActionView]
    # The audit events that raised it (its rule's signals in its window), newest first.
    raised: list[EventView]
    # The audit events that name it: its detection, a manual block, its lift, admin actions.
    related: list[EventView]
    # Where the signals are when they are not audit events ("" otherwise).
    note: str


class BlockResult(msgspec.Struct, kw_only=True):
    address: str
    expires_at: datetime
    incident: str
    message: str


class UnblockResult(msgspec.Struct, kw_only=True):
    address: str
    message: str


class LiftResult(msgspec.Struct, kw_only=True):
    id: str
    status: str
    # What was undone: "block_ip 203.0.113.7/32", "lock_account alice".
    undone: list[str]
    message: str


# -- reading ----------------------------------------------------------------------------------------


def _utc(at: float) -> datetime:
    return datetime.fromtimestamp(at, UTC)


def responder(services: Services) -> Responder:
    """The responder ``gateway incident`` uses, on this process's stores, acting for the admin."""
    identity = services.identity
    return Responder(
        state=services.fast,
        audit=identity.audit,
        accounts=identity.accounts,
        sessions=identity.sessions,
        clock=identity.clock,
    )


def _block(entry: BlockEntry, now: float) -> BlockView:
    return BlockView(
        address=entry.cidr,
        expires_at=_utc(entry.until),
        remaining=round(max(entry.until - now, 0.0), 1),
        reason=entry.reason,
        actor=entry.actor,
        incident=entry.incident,
    )


def _row(incident: Incident) -> IncidentRow:
    return IncidentRow(
        id=incident.id,
        rule=incident.rule,
        severity=severity(incident),
        status=incident.status,
        opened_at=_utc(incident.at),
        subject=incident.subject,
        ip=incident.ip,
        summary=incident.summary,
        responses=[a.kind for a in incident.actions],
        undoable=any(a.liftable for a in incident.actions),
        opened_by=incident.actor or "system:threat",
        lifted_by=incident.lifted_by,
        lifted_at=_utc(incident.lifted_at) if incident.lifted_at is not None else None,
    )


async def block_list(services: Services) -> BlockList:
    """The blocks in force, soonest-ending first; the page and ``GET /api/blocks`` answer with it."""
    now = services.identity.clock.time()
    return BlockList(blocks=[_block(e, now) for e in await responder(services).blocks.entries()])


async def incident_list(services: Services, *, limit: int = 100) -> IncidentList:
    """What the list shows; the page and ``GET /api/incidents`` both answer with it."""
    found = await responder(services).incidents.latest(limit)
    rows = [_row(i) for i in found]
    rows.sort(key=lambda r: r.status != "open")  # stable: each group stays newest first
    blocks = await block_list(services)
    return IncidentList(incidents=rows, open=sum(r.status == "open" for r in rows), blocks=blocks.blocks)


def _event(e: AuditEvent) -> EventView:
    try:
        details = json.loads(e.details)
    except ValueError:
        details = {"raw": e.details}
    return EventView(
        seq=e.seq, at=e.at, kind=e.kind, actor=e.actor, subject=e.subject, ip=e.ip, outcome=e.outcome,
        details=details if isinstance(details, dict) else {"value": details},
    )  # fmt: skip


def _action(action: Action) -> ActionView:
    until = action.until
    return ActionView(
        kind=action.kind, target=action.target, ok=action.ok, note=action.note, lifted=action.lifted,
        until=_utc(until) if until is not None else None,
    )  # fmt: skip


async def incident_detail(services: Services, incident_id: str) -> IncidentDetail:
    """What the incident page shows; the page and ``GET /api/incidents/{id}`` both answer with it.

    Raises:
        BadIncidentId: not an incident id's shape (400).
        IncidentNotFound: no such incident, or it expired (404).
    """
    incident = await responder(services).incidents.require(parse_incident_id(incident_id))
    events = await incident_events(services.db, incident, limit=EVENTS_LIMIT)
    row = _row(incident)
    return IncidentDetail(
        **msgspec.structs.asdict(row),
        session=incident.session,
        evidence=dict(incident.evidence),
        actions=[_action(a) for a in incident.actions],
        raised=[_event(e) for e in events.raised],
        related=[_event(e) for e in events.related],
        note=_REQUEST_RULES.get(incident.rule, ""),
    )


# -- changing ---------------------------------------------------------------------------------------


async def _act(
    request: Request[Any, Any, Any],
    services: Services,
    action: str,
    *,
    subject: str,
    details: Mapping[str, object],
    work: Callable[[Admin], Awaitable[_T]],
) -> _T:
    """Run ``work`` as this request's admin and record ``admin.<action>``, also when it is refused."""
    kind = f"admin.{action}"
    return await audited(request, services.identity, kind, subject=subject, details=details, work=work)


def _not_own(network: str, request: Request[Any, Any, Any], admin: Admin) -> None:
    net = manual_network(network)
    for label, address in (
        ("you are using now", client_ip(request)),
        ("you signed in from", admin.session.ip),
    ):
        if address and covers(net, address):
            raise BlockRefused(
                f"{net} contains the address {label} ({address}): the sign-in and step-up pages this "
                "console relies on would refuse you too. Block a narrower range, or run "
                "`gateway incident block-ip` on the server if you really mean it."
            )


async def _not_another_admins(
    network: str, services: Services, live_policy: Policy, config: Config, admin: Admin
) -> None:
    net = manual_network(network)
    others = await other_admins_addresses(services, live_policy, config, except_user=admin.session.user_id)
    for name, addresses in others.items():
        for address in sorted(addresses):
            if covers(net, address):
                raise BlockRefused(
                    f"{net} contains the address another admin, {name}, is signed in from ({address}): this "
                    "gateway needs two admins for a policy change (admin.approvals: 2), and the block would "
                    "leave you the only one. Block a narrower range, or run `gateway incident block-ip` on "
                    "the server."
                )


@post("/api/blocks", status_code=200, tags=["incidents"])
async def block(
    request: Request[Any, Any, Any],
    services: AdminServices,
    live_policy: Policy,
    config: Config,
    data: JSONBody[BlockRequest],
) -> BlockResult:
    """Block an address or network on every gateway worker and replica until ``expires_in`` has passed.

    Recorded as a ``manual`` incident (lifting it unblocks). 400 ``block-refused`` for an unreadable,
    too broad (wider than IPv4 /16 or IPv6 /32) or too long (over 90 days) block, for one that
    contains the admin's own address, and under ``admin.approvals: 2`` for one that contains the
    address another admin is signed in from. An existing block of the same network is extended, never
    shortened.
    """

    async def work(admin: Admin) -> BlockResult:
        seconds = block_seconds(data.expires_in)
        _not_own(data.address, request, admin)
        await _not_another_admins(data.address, services, live_policy, config, admin)
        incident = await responder(services).block_ip(
            data.address, seconds=seconds, actor=admin.actor, reason=data.reason
        )
        [action] = incident.actions
        until = action.until if action.until is not None else services.identity.clock.time() + seconds
        return BlockResult(
            address=action.target,
            expires_at=_utc(until),
            incident=incident.id,
            message=f"{action.target} is blocked until {_utc(until):%Y-%m-%d %H:%M} UTC ({incident.id})."
            + (f" ({note})." if (note := block_note(data.address)) else ""),
        )

    details = {"reason": data.reason, "address": data.address, "expires_in": data.expires_in}
    return await _act(request, services, "block.add", subject=data.address, details=details, work=work)


@post("/api/blocks/unblock", status_code=200, tags=["incidents"])
async def unblock(
    request: Request[Any, Any, Any], services: AdminServices, config: Config, data: JSONBody[UnblockRequest]
) -> UnblockResult:
    """Lift the block of exactly this address or network (destructive: a recent second factor).

    404 ``not-blocked`` if it is not blocked; a network inside a blocked range is not unblocked alone.
    """

    async def work(admin: Admin) -> UnblockResult:
        confirm_destructive(admin, config, services.identity.clock)
        network = str(parse_network(data.address))
        if await responder(services).unblock_ip(network, actor=admin.actor) == 0:
            raise NotBlocked(f"{network} is not blocked (the list of blocks names each exactly).")
        return UnblockResult(address=network, message=f"{network} is no longer blocked.")

    details = {"reason": data.reason, "address": data.address}
    return await _act(request, services, "block.remove", subject=data.address, details=details, work=work)


@post("/api/incidents/{incident_id:str}/lift", status_code=200, tags=["incidents"])
async def lift(
    request: Request[Any, Any, Any],
    services: AdminServices,
    config: Config,
    incident_id: IncidentId,
    data: JSONBody[LiftRequest],
) -> LiftResult:
    """Undo what an incident did that can be undone (unblock, re-enable the account); mark it lifted.

    Destructive: a recent second factor. Ended sessions and forced step-ups cannot be undone (the user
    signs in again). An incident with nothing to undo (an alert) is marked lifted: acknowledged.
    """

    async def work(admin: Admin) -> LiftResult:
        confirm_destructive(admin, config, services.identity.clock)
        found = await responder(services).incidents.require(parse_incident_id(incident_id))
        if found.status == "lifted":
            raise AlreadyLifted(f"{found.id} was lifted by {found.lifted_by} already; nothing was changed.")
        lifted = await responder(services).lift(found.id, actor=admin.actor)
        if lifted is None:  # pragma: no cover - expired between the two reads
            raise AlreadyLifted(f"{found.id} expired meanwhile; nothing was changed.")
        undone = [f"{a.kind} {a.target}" for a in lifted.actions if a.lifted]
        message = f"{lifted.id} lifted" + (
            f": {', '.join(undone)} undone." if undone else " (nothing to undo)."
        )
        return LiftResult(id=lifted.id, status=lifted.status, undone=undone, message=message)

    details = {"reason": data.reason, "incident": incident_id[:64]}
    return await _act(
        request, services, "incident.lift", subject=incident_id[:64], details=details, work=work
    )


@get("/api/blocks", cache=False, tags=["incidents"])
async def blocks_json(services: AdminServices) -> BlockList:
    """The addresses and networks blocked now (by a rule or by hand), soonest-ending first."""
    return await block_list(services)


@get("/api/incidents", cache=False, tags=["incidents"])
async def incidents_json(
    services: AdminServices, limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100
) -> IncidentList:
    """The newest incidents (``?limit=``, default 100; open ones first) and the blocks in force."""
    return await incident_list(services, limit=limit)


@get("/api/incidents/{incident_id:str}", cache=False, tags=["incidents"])
async def incident_json(services: AdminServices, incident_id: IncidentId) -> IncidentDetail:
    """One incident: evidence, actions, the audit events that raised it and those that name it."""
    return await incident_detail(services, incident_id)


# -- pages ------------------------------------------------------------------------------------------


@get("/incidents", cache=False, opt=PAGE_OPT, include_in_schema=False)
async def incidents_page(request: Request[Any, Any, Any], services: AdminServices) -> Template:
    return page(
        request, "incidents.html", title="Incidents and blocks", section="incidents",
        view=await incident_list(services), client_ip=client_ip(request),
    )  # fmt: skip


@get("/incidents/{incident_id:str}", cache=False, opt=PAGE_OPT, include_in_schema=False)
async def incident_page(
    request: Request[Any, Any, Any], services: AdminServices, incident_id: IncidentId
) -> Template:
    view = await incident_detail(services, incident_id)
    return page(request, "incident.html", title=f"Incident {view.id}", section="incidents", view=view)


HANDLERS = (blocks_json, block, unblock, incidents_json, incident_json, lift, incidents_page, incident_page)
