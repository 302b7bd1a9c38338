"""Incident records through the five phases: the console's Response pages (``/incident-cases``,
``/incident-cases/{id}``) and their JSON API (``/api/incident-cases``).

The twin of ``gateway incident case …``: every operation is :class:`gateway.response.workflow.Workflow`'s,
the one the CLI runs, here with the signed-in admin as the actor. So the rules are the same whichever
way a change arrives: entering containment seals the evidence (the answer says what was sealed);
closing runs the recovery checks and is refused with 409 ``recovery-checks-failed`` and the whole
checklist while one fails; every change is an entry of the incident's timeline and an ``incident.*``
audit record. Beside each change, an ``admin.incident_case.<action>`` event carries the admin and the
outcome, also when the change is refused (``open``, ``update``, ``note``, ``phase``, ``seal``,
``action``, ``restore_policy``, ``lift``, ``notify``).

Destructive calls need a second factor used within ``admin.destructive_reauth_max_age`` and, except
sending the notification, a reason (kept in the ``admin.incident_case.*`` record): an account action on
every affected person, restoring a policy version (refused like ``/api/policy/restore`` when
``admin.approvals`` is 2), lifting the blocks and locks of the incident's detections (as
``/api/incidents/{id}/lift``), and sending the notification (a preview needs none). An admin cannot
disable their own account or reset their own second factors here (the console would shut them out):
another admin or the CLI can.

The pages render :func:`case_list` and :func:`case_detail`, the functions ``GET /api/incident-cases``
and ``GET /api/incident-cases/{id}`` answer with; their forms are sent by ``console.js`` to the calls
below. The recovery checklist (a walk of the whole audit chain) runs when asked, not on every view.

Key rotation is not repeated here: ``/api/keys/rotate`` (and the CLI's ``rotate-keys``) does it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import Annotated, Any, Final, Literal, TypeVar

import msgspec
from litestar import MediaType, Request, get, post
from litestar.params import JSONBody, PathParameter, QueryParameter
from litestar.response import Response, Template

from admin.access import Admin
from admin.actions import OwnAccountRefused, audited, confirm_destructive, keeps_admin
from admin.console.render import PAGE_OPT, page
from admin.console.users import refuse_admin_takeover, refuse_shutting_out
from admin.deps import AdminServices, Policy
from gateway.authz.proposals import ApprovalRequired
from gateway.crypto.keyring import Keyring, KeyringError, keyring_path
from gateway.errors import BadRequest, GatewayError
from gateway.reasons import REASON_PATTERN
from gateway.response.actions import parse_account_action
from gateway.response.cases import Cases, CaseView, EntryView
from gateway.response.notification import NoticeChanged
from gateway.response.phases import TITLES, Phase
from gateway.response.recovery import RecoveryCheck
from gateway.response.report import dumps, report_markdown
from gateway.response.vocabulary import SEVERITIES, AccountAction
from gateway.response.workflow import Workflow
from gateway.services import Services
from gateway.settings.current import CurrentConfig
from gateway.settings.schema import DEFAULT_TEMPLATES
from gateway.web.deps import Config

__all__ = ["HANDLERS", "CaseDetail", "CaseList", "CaseRecord", "case_detail", "case_list"]

logger = logging.getLogger("gateway.admin")
_T = TypeVar("_T")
_TAGS: Final = ["incident cases"]
# The account actions an admin may not apply to their own account from the console, and what each does
# to them: another admin, or the CLI on the server, can.
# What another admin's account is not put through by one admin under admin.approvals: 2: it leaves
# the acting one alone to approve or reject (a re-attack run signed the other approver out first,
# after which nothing knew them as an admin).
_SIGNS_OUT: Final[dict[str, str]] = {
    AccountAction.DISABLE: "disable the account",
    AccountAction.REVOKE_SESSIONS: "end the sessions",
    AccountAction.FORCE_PASSWORD_CHANGE: "force a password change (it ends the sessions)",
}

_SHUTS_YOU_OUT: Final[dict[str, str]] = {
    AccountAction.DISABLE: "disabling your account",
    AccountAction.RESET_MFA: "removing your second factors",
    # Failed sign-ins from the incident's address can add the admin to it (a re-attack run's
    # revoke-sessions then signed the acting admin out).
    AccountAction.REVOKE_SESSIONS: "ending your sessions",
    # It ends every session too, and holds the next sign-in for a new password.
    AccountAction.FORCE_PASSWORD_CHANGE: "forcing a password change (it ends your sessions)",
}


CaseId = Annotated[
    str,
    PathParameter(
        description="An incident id as listed by GET /api/incident-cases (inc-<8 hex>).", max_length=64
    ),
]
# One line, no control characters: names of people, routes and addresses, an owner.
_Name = Annotated[str, msgspec.Meta(min_length=1, max_length=256, pattern=r"^[^\x00-\x1f\x7f]+\Z")]
_Names = Annotated[list[_Name], msgspec.Meta(max_length=1000)]
_Text = Annotated[str, msgspec.Meta(max_length=4000)]
Reason = Annotated[
    str,
    msgspec.Meta(
        min_length=1, pattern=REASON_PATTERN, max_length=2000, description="Why: kept in the audit trail."
    ),
]
Severity = Annotated[
    str, msgspec.Meta(min_length=1, max_length=20, description=f"One of {', '.join(SEVERITIES)}.")
]


# -- request bodies ---------------------------------------------------------------------------------


class OpenCase(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Open an incident by hand, in detection and analysis."""

    title: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    severity: Severity = "medium"
    users: _Names = msgspec.field(default_factory=list)
    routes: _Names = msgspec.field(default_factory=list)
    addresses: _Names = msgspec.field(default_factory=list)
    summary: _Text = ""


class UpdateCase(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Set what is given; people, routes and addresses are added to those named already."""

    owner: Annotated[str, msgspec.Meta(max_length=200)] | None = None
    severity: Severity | None = None
    users: _Names = msgspec.field(default_factory=list)
    routes: _Names = msgspec.field(default_factory=list)
    addresses: _Names = msgspec.field(default_factory=list)
    root_cause: _Text | None = None
    lessons: _Text | None = None


class NoteRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    text: Annotated[str, msgspec.Meta(min_length=1, max_length=4000)]


class PhaseRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Move to ``phase``: detection, containment, eradication, recovery, post_incident (or
    post-incident), closed."""

    phase: Annotated[str, msgspec.Meta(min_length=1, max_length=40)]
    note: _Text = ""


class ActionRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Apply ``action`` to every affected account: revoke-sessions, force-password-change, reset-mfa,
    disable. ``accounts``: the affected accounts the admin saw and confirmed (required for all but
    revoke-sessions); when the incident names others by now, nothing is done (409)."""

    action: Annotated[str, msgspec.Meta(min_length=1, max_length=40)]
    reason: Reason
    # No bound below what an incident may name: detections add names without one, and a bound here
    # let a flood of names from one address block every confirmed action (a re-attack run).
    accounts: list[Annotated[str, msgspec.Meta(max_length=320)]] | None = None


class AffectedChanged(GatewayError):
    """The incident names other accounts than the ones the admin confirmed (409; nothing done)."""

    status = 409
    reason = "affected-changed"
    title = "The affected accounts changed"


class RestorePolicyRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    version: Annotated[int, msgspec.Meta(ge=1, le=2147483647)]
    reason: Annotated[str, msgspec.Meta(min_length=1, pattern=REASON_PATTERN, max_length=2000)]


class LiftRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    reason: Reason


class NotifyRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Preview (the default) or send the incident's email to every affected person."""

    template: Annotated[str, msgspec.Meta(min_length=1, max_length=100)] = "incident"
    what_to_do: Annotated[str, msgspec.Meta(max_length=2000)] | None = None
    preview: bool = True
    # A send: the digest of the preview that was read (required); the messages go only if they still
    # say that (409 notice-changed). The console always sends it ("" before any preview: refused).
    previewed: Annotated[str, msgspec.Meta(pattern="^([0-9a-f]{64})?$")] | None = None


# -- answers ----------------------------------------------------------------------------------------


class Evidence(msgspec.Struct, kw_only=True):
    sha256: str
    file: str
    since: str
    until: str
    records: int
    sealed_at: str
    # The exported range did not verify (sealed anyway, as evidence); None when it did.
    problem: str | None = None
    # The policy version in force when sealed: what the recovery checks expect live at closing
    # (unless one is restored for the incident). None for a bundle sealed before it was recorded.
    policy_version: int | None = None


class CaseRecord(msgspec.Struct, kw_only=True):
    id: str
    title: str
    severity: str
    phase: str
    phase_title: str
    owner: str
    opened_at: datetime
    # "rule:brute_force", "user:alice", "cli:root"
    opened_by: str
    updated_at: datetime
    closed_at: datetime | None
    rule: str
    affected_users: list[str]
    routes: list[str]
    addresses: list[str]
    summary: str
    root_cause: str
    lessons: str
    evidence: list[Evidence]


class Entry(msgspec.Struct, kw_only=True):
    at: datetime
    # phase | note | action | detection | evidence | notification | update
    kind: str
    actor: str
    text: str
    details: dict[str, Any]


class CaseDetail(CaseRecord, kw_only=True):
    timeline: list[Entry]


class CaseList(msgspec.Struct, kw_only=True):
    cases: list[CaseRecord]


class Check(msgspec.Struct, kw_only=True):
    name: str
    passed: bool
    detail: str


class Checks(msgspec.Struct, kw_only=True):
    passed: bool
    checks: list[Check]


class PhaseResult(msgspec.Struct, kw_only=True):
    case: CaseRecord
    # What entering containment sealed; None for other phases.
    sealed: Evidence | None
    # The checks that let it close; empty for other phases.
    checks: list[Check]
    message: str


class ActionResult(msgspec.Struct, kw_only=True):
    action: str
    # username → what was done
    done: dict[str, str]
    # Affected people with no account (erased or renamed).
    missing: list[str]
    message: str


class RestoreResult(msgspec.Struct, kw_only=True):
    restored_from: int
    version: int
    message: str


class LiftResult(msgspec.Struct, kw_only=True):
    # The detections whose blocks and locks were lifted.
    detections: list[str]
    message: str


class MessagePreview(msgspec.Struct, kw_only=True):
    sender: str
    to: str
    subject: str
    body: str


class DeliveryView(msgspec.Struct, kw_only=True):
    username: str
    address: str
    sent: bool
    # The mail server's reply, or why it was not sent.
    detail: str


class NotifyResult(msgspec.Struct, kw_only=True):
    previewed: bool
    digest: str
    previews: list[MessagePreview]
    deliveries: list[DeliveryView]
    without_address: list[str]
    missing: list[str]
    message: str


# -- conversions ------------------------------------------------------------------------------------


def _record(case: CaseView) -> CaseRecord:
    return CaseRecord(
        id=case.id, title=case.title, severity=case.severity, phase=case.phase.value,
        phase_title=TITLES[case.phase], owner=case.owner, opened_at=case.opened_at, opened_by=case.opened_by,
        updated_at=case.updated_at, closed_at=case.closed_at, rule=case.rule,
        affected_users=list(case.affected_users), routes=list(case.routes), addresses=list(case.addresses),
        summary=case.summary, root_cause=case.root_cause, lessons=case.lessons,
        evidence=[_evidence(e) for e in case.evidence],
    )  # fmt: skip


def _evidence(sealed: Mapping[str, Any]) -> Evidence:
    return msgspec.convert(dict(sealed), Evidence)


def _entry(entry: EntryView) -> Entry:
    return Entry(at=entry.at, kind=entry.kind, actor=entry.actor, text=entry.text, details=entry.details)


def _checks(checks: list[RecoveryCheck]) -> list[Check]:
    return [Check(name=c.name, passed=c.passed, detail=c.detail) for c in checks]


async def _detail(cases: Cases, case_id: str) -> CaseDetail:
    case = await cases.get(case_id)
    timeline = [_entry(e) for e in await cases.entries(case.id)]
    return CaseDetail(**msgspec.structs.asdict(_record(case)), timeline=timeline)


async def _keyring(config: CurrentConfig, fallback: Keyring) -> Keyring:
    """The keyring as its file holds it now (keys rotated since start-up included); this process's
    own when the file cannot be read (the chain check then names any record it cannot verify)."""
    try:
        return await asyncio.to_thread(Keyring.load, keyring_path(config.settings))
    except KeyringError:
        logger.warning("admin: the keyring file cannot be read; using the one loaded at start-up")
        return fallback


def _cases(services: Services) -> Cases:
    """The records alone, for reading: no keyring file read, no webhook (reads announce nothing)."""
    return Cases(services.db, services.identity.audit, services.identity.clock)


async def _workflow(services: Services, config: CurrentConfig) -> Workflow:
    """The CLI's workflow on this process's stores and the configuration in force."""
    identity = services.identity
    return Workflow(
        cases=_cases(services), settings=config.settings, db=services.db,
        fast=services.fast, audit=identity.audit, accounts=identity.accounts, sessions=identity.sessions,
        policy=services.policy.store, keyring=await _keyring(config, identity.keyring),
        events=services.case_events,
    )  # fmt: skip


async def _act(
    request: Request[Any, Any, Any],
    services: Services,
    action: str,
    *,
    subject: str,
    details: Mapping[str, object],
    work: Callable[[Admin], Awaitable[_T]],
) -> _T:
    """Run ``work`` as this request's admin and record ``admin.incident_case.<action>``, also when refused."""
    kind = f"admin.incident_case.{action}"
    return await audited(request, services.identity, kind, subject=subject[:64], details=details, work=work)


# -- reading ----------------------------------------------------------------------------------------


async def case_list(services: Services, *, open_only: bool, limit: int) -> CaseList:
    """What the list shows; the page and ``GET /api/incident-cases`` both answer with it."""
    return CaseList(cases=[_record(c) for c in await _cases(services).latest(limit, open_only=open_only)])


async def case_detail(services: Services, case_id: str) -> CaseDetail:
    """What the record's page shows; the page and ``GET /api/incident-cases/{id}`` both answer with it.

    Raises:
        BadIncidentId: not an incident id's shape (400).
        CaseNotFound: no such record (404).
    """
    return await _detail(_cases(services), case_id)


@get("/api/incident-cases", cache=False, tags=_TAGS)
async def list_cases(
    services: AdminServices,
    open_only: Annotated[bool, QueryParameter(name="open", description="Only those not closed.")] = False,
    limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 50,
) -> CaseList:
    """Incident records, newest first (``?open=true`` only those not closed; ``?limit=``, default 50)."""
    return await case_list(services, open_only=open_only, limit=limit)


@get("/api/incident-cases/{case_id:str}", cache=False, tags=_TAGS)
async def show_case(services: AdminServices, case_id: CaseId) -> CaseDetail:
    """One incident record and its timeline, oldest entry first."""
    return await case_detail(services, case_id)


@get("/api/incident-cases/{case_id:str}/checks", cache=False, tags=_TAGS)
async def recovery_checks(services: AdminServices, config: Config, case_id: CaseId) -> Checks:
    """The recovery checklist (audit chain, readiness, policy version, evidence hashes, containment
    lifted, lockdown), every check run; closing needs all of them to pass."""
    flow = await _workflow(services, config)
    checks = await flow.checks(await flow.cases.get(case_id))
    return Checks(passed=all(c.passed for c in checks), checks=_checks(checks))


@get("/api/incident-cases/{case_id:str}/report", cache=False, tags=_TAGS, media_type=MediaType.JSON)
async def report(
    services: AdminServices,
    config: Config,
    case_id: CaseId,
    fmt: Annotated[
        Literal["json", "md"], QueryParameter(name="format", description="json (default) or md (Markdown).")
    ] = "json",
) -> Response[str]:
    """The post-incident report as a download: JSON for tools, Markdown (``text/markdown``) for people."""
    flow = await _workflow(services, config)
    doc = await flow.report(case_id)
    name = f"post-incident-{doc['incident']['id']}.{fmt}"
    headers = {"content-disposition": f'attachment; filename="{name}"'}
    if fmt == "md":
        return Response(report_markdown(doc), media_type="text/markdown; charset=utf-8", headers=headers)
    return Response(dumps(doc), media_type=MediaType.JSON, headers=headers)


# -- changing ---------------------------------------------------------------------------------------


@post("/api/incident-cases", status_code=201, tags=_TAGS)
async def open_case(
    request: Request[Any, Any, Any], services: AdminServices, config: Config, data: JSONBody[OpenCase]
) -> CaseRecord:
    """Open an incident by hand (detection and analysis). 201 with the record."""

    async def work(admin: Admin) -> CaseRecord:
        flow = await _workflow(services, config)
        case = await flow.cases.open(
            title=data.title, severity_=data.severity, actor=admin.actor, users=data.users,
            routes=data.routes, addresses=data.addresses, summary=data.summary,
        )  # fmt: skip
        details["incident"] = case.id
        return _record(case)

    details: dict[str, object] = {"severity": data.severity, "users": len(data.users)}
    return await _act(request, services, "open", subject="incident", details=details, work=work)


@post("/api/incident-cases/{case_id:str}/update", status_code=200, tags=_TAGS)
async def update_case(
    request: Request[Any, Any, Any],
    services: AdminServices,
    config: Config,
    case_id: CaseId,
    data: JSONBody[UpdateCase],
) -> CaseRecord:
    """Set the owner, severity, root cause or lessons learned; add affected people, routes, addresses."""

    async def work(admin: Admin) -> CaseRecord:
        flow = await _workflow(services, config)
        case = await flow.cases.update(
            case_id, actor=admin.actor, owner=data.owner, severity_=data.severity, users=data.users,
            routes=data.routes, addresses=data.addresses, root_cause=data.root_cause, lessons=data.lessons,
        )  # fmt: skip
        return _record(case)

    changed = sorted(k for k, v in msgspec.structs.asdict(data).items() if v not in (None, []))
    return await _act(request, services, "update", subject=case_id, details={"fields": changed}, work=work)


@post("/api/incident-cases/{case_id:str}/notes", status_code=201, tags=_TAGS)
async def add_note(
    request: Request[Any, Any, Any],
    services: AdminServices,
    config: Config,
    case_id: CaseId,
    data: JSONBody[NoteRequest],
) -> CaseDetail:
    """Add a note to the timeline; 201 with the record and its timeline."""

    async def work(admin: Admin) -> CaseDetail:
        flow = await _workflow(services, config)
        await flow.cases.note(case_id, data.text, actor=admin.actor)
        return await _detail(flow.cases, case_id)

    details = {"length": len(data.text)}
    return await _act(request, services, "note", subject=case_id, details=details, work=work)


@post("/api/incident-cases/{case_id:str}/phase", status_code=200, tags=_TAGS)
async def move_phase(
    request: Request[Any, Any, Any],
    services: AdminServices,
    config: Config,
    case_id: CaseId,
    data: JSONBody[PhaseRequest],
) -> PhaseResult:
    """Move the incident to another phase. Entering containment seals the evidence (``sealed``);
    closing runs the recovery checks first: 409 ``recovery-checks-failed`` with ``checks`` while one
    fails. 400 ``bad-phase`` for no such phase, 409 ``phase-refused`` for a move the workflow does not
    allow (closed already, back more than one phase, closing from anywhere but post-incident)."""

    async def work(admin: Admin) -> PhaseResult:
        flow = await _workflow(services, config)
        moved = await flow.move(case_id, data.phase, actor=admin.actor, note=data.note)
        details["to"] = moved.case.phase.value
        sealed = _evidence(moved.sealed) if moved.sealed is not None else None
        message = f"{moved.case.id} is in {TITLES[moved.case.phase].lower()} now" + (
            f"; evidence sealed: {sealed.records} audit record(s), sha256 {sealed.sha256}." if sealed else "."
        )
        return PhaseResult(
            case=_record(moved.case), sealed=sealed, checks=_checks(moved.checks), message=message
        )

    details: dict[str, object] = {"phase": data.phase[:40]}
    return await _act(request, services, "phase", subject=case_id, details=details, work=work)


@post("/api/incident-cases/{case_id:str}/seal", status_code=200, tags=_TAGS)
async def seal(
    request: Request[Any, Any, Any], services: AdminServices, config: Config, case_id: CaseId
) -> Evidence:
    """Seal the evidence again, for the window up to now (containment sealed the first bundle)."""

    async def work(admin: Admin) -> Evidence:
        flow = await _workflow(services, config)
        sealed = await flow.seal(await flow.cases.get(case_id), actor=admin.actor)
        details["sha256"] = sealed["sha256"]
        return _evidence(sealed)

    details: dict[str, object] = {}
    return await _act(request, services, "seal", subject=case_id, details=details, work=work)


def _confirmed(data: ActionRequest, affected: Sequence[str]) -> None:
    """Refuse unless the admin confirmed the accounts the incident names now. Detections from one
    address join one incident, so failed sign-ins from it can add someone (a re-attack run had a
    disable reach an account added after the admin read the incident)."""
    action = parse_account_action(data.action)  # an unknown action is named as such first
    if data.accounts is None:
        if action == AccountAction.REVOKE_SESSIONS:
            return
        raise BadRequest(
            f"{data.action[:40]} needs the affected accounts you confirmed (accounts: [...]): read the "
            "incident and send the list it names."
        )
    if sorted(set(data.accounts)) != sorted(set(affected)):
        raise AffectedChanged(
            f"The incident names {', '.join(affected) or 'nobody'} now, not the accounts you confirmed: "
            "read it again and confirm. Nothing was done."
        )


@post("/api/incident-cases/{case_id:str}/actions", status_code=200, tags=_TAGS)
async def account_action(
    request: Request[Any, Any, Any],
    services: AdminServices,
    live_policy: Policy,
    config: Config,
    case_id: CaseId,
    data: JSONBody[ActionRequest],
) -> ActionResult:
    """Apply an action to every affected account: ``revoke-sessions``, ``force-password-change``,
    ``reset-mfa`` or ``disable`` (destructive: a reason and a recent second factor). 400 for another
    action or an incident that names nobody; 409 ``own-account`` to disable an incident that names the
    admin; under ``admin.approvals: 2``, 403 ``second-admin-required`` to reset the second factors of
    an incident that names an admin, as on the user page."""

    async def work(admin: Admin) -> ActionResult:
        confirm_destructive(admin, config, services.identity.clock)
        flow = await _workflow(services, config)
        # One reading of the incident, checked and then acted on: re-read, a change made in between
        # (another admin's update naming an admin) would be acted on unchecked. Names are compared
        # as accounts, never as spellings ("ADM4" names adm4).
        case = await flow.cases.get(case_id)
        _confirmed(data, case.affected_users)
        for username in case.affected_users:
            user = await services.identity.accounts.find(username)
            if user is None:
                continue
            if data.action == AccountAction.RESET_MFA:
                await refuse_admin_takeover(services, live_policy, config, user, "reset the second factors")
            if data.action in _SIGNS_OUT and user.id != admin.session.user_id:
                await refuse_shutting_out(
                    services, live_policy, config, user, _SIGNS_OUT[data.action],
                    "gateway incident case act ID ACTION, or gateway user disable",
                )  # fmt: skip
            if data.action in _SHUTS_YOU_OUT and user.id == admin.session.user_id:
                raise OwnAccountRefused(
                    f"{case.id} names you ({admin.session.username}): {_SHUTS_YOU_OUT[data.action]} would "
                    "shut you out of this console. Another admin, or `gateway incident case act` on the "
                    "server, can."
                )
        result = await flow.act(case_id, data.action, actor=admin.actor, checked=case)
        details["accounts"] = len(result.done)
        message = f"{result.action}: {len(result.done)} account(s)" + (
            f"; not found: {', '.join(result.missing)}" if result.missing else ""
        )
        return ActionResult(action=result.action, done=result.done, missing=result.missing, message=message)

    details: dict[str, object] = {"action": data.action[:40], "reason": data.reason}
    return await _act(request, services, "action", subject=case_id, details=details, work=work)


@post("/api/incident-cases/{case_id:str}/restore-policy", status_code=200, tags=_TAGS)
async def restore_policy(
    request: Request[Any, Any, Any],
    services: AdminServices,
    config: Config,
    case_id: CaseId,
    data: JSONBody[RestorePolicyRequest],
) -> RestoreResult:
    """Restore an earlier policy version for the incident (destructive: a recent second factor; 403
    when ``admin.approvals`` is 2: propose it instead). 404 for no such version."""

    async def work(admin: Admin) -> RestoreResult:
        if config.settings.admin.approvals > 1:
            raise ApprovalRequired(
                "This gateway needs two admins for a policy change (admin.approvals: 2): propose the "
                "restore with POST /api/policy/proposals, and another admin approves it."
            )
        confirm_destructive(admin, config, services.identity.clock)
        flow = await _workflow(services, config)
        version = await flow.restore_policy(
            case_id,
            data.version,
            reason=data.reason,
            actor=admin.actor,
            keep=keeps_admin(admin, config.settings.admin.role),
        )
        # This process decides who is an admin: it must see the restored policy now.
        await services.policy.load()
        details["version"] = version
        return RestoreResult(
            restored_from=data.version,
            version=version,
            message=f"Policy version {data.version} restored as version {version}; every replica loads "
            "it within seconds.",
        )

    details: dict[str, object] = {"restored_from": data.version, "reason": data.reason}
    return await _act(request, services, "restore_policy", subject=case_id, details=details, work=work)


@post("/api/incident-cases/{case_id:str}/lift", status_code=200, tags=_TAGS)
async def lift(
    request: Request[Any, Any, Any],
    services: AdminServices,
    config: Config,
    case_id: CaseId,
    data: JSONBody[LiftRequest],
) -> LiftResult:
    """Lift every block and account lock the incident's detections placed (destructive, as
    ``/api/incidents/{id}/lift``: a reason and a recent second factor). The recovery checks need this
    before closing."""

    async def work(admin: Admin) -> LiftResult:
        confirm_destructive(admin, config, services.identity.clock)
        flow = await _workflow(services, config)
        lifted = await flow.lift(case_id, actor=admin.actor)
        details["detections"] = lifted
        message = f"Lifted what {len(lifted)} detection(s) did." if lifted else "Nothing to lift."
        return LiftResult(detections=lifted, message=message)

    details: dict[str, object] = {"reason": data.reason}
    return await _act(request, services, "lift", subject=case_id, details=details, work=work)


@post("/api/incident-cases/{case_id:str}/notify", status_code=200, tags=_TAGS)
async def notify(
    request: Request[Any, Any, Any],
    services: AdminServices,
    config: Config,
    case_id: CaseId,
    data: JSONBody[NotifyRequest],
) -> NotifyResult:
    """Email every affected person (``notify.templates``, ``$what_to_do``). ``preview`` (the default)
    returns the rendered messages and sends nothing; sending is destructive (a recent second factor)
    and needs ``notify.smtp`` (409 ``notify-not-configured``). Each message is audited
    (``notify.sent`` / ``notify.failed``) and the round is an entry of the timeline."""

    async def work(admin: Admin) -> NotifyResult:
        if not data.preview:
            confirm_destructive(admin, config, services.identity.clock)
            if not data.previewed:
                # Also when left out: a send unbound to what someone read was the API's and CLI's way
                # round the preview (a re-attack run).
                raise NoticeChanged(
                    "Preview the messages first, and send with the preview's digest (previewed): what is "
                    "sent is what the preview shows."
                )
        flow = await _workflow(services, config)
        result = await flow.notify(
            case_id, actor=admin.actor, template=data.template, what_to_do=data.what_to_do,
            preview=data.preview, previewed=data.previewed,
        )  # fmt: skip
        deliveries = [
            DeliveryView(username=d.message.username, address=d.message.address, sent=d.ok, detail=d.detail)
            for d in result.deliveries
        ]
        sent = sum(d.sent for d in deliveries)
        details["sent"] = sent
        message = (
            f"{len(result.previews)} message(s) previewed; nothing was sent."
            if data.preview
            else f"{sent} of {len(deliveries)} message(s) sent."
        )
        return NotifyResult(
            previewed=data.preview,
            digest=result.digest,
            previews=[
                MessagePreview(sender=p.sender, to=p.to, subject=p.subject, body=p.body)
                for p in result.previews
            ],
            deliveries=deliveries,
            without_address=result.without_address,
            missing=result.missing,
            message=message,
        )

    details: dict[str, object] = {"template": data.template, "preview": data.preview}
    return await _act(request, services, "notify", subject=case_id, details=details, work=work)


# -- pages ------------------------------------------------------------------------------------------

#: The phases a record can be moved to, in order, with their titles (the page's phase form).
_PHASES: Final = tuple((phase.value, TITLES[phase]) for phase in Phase)


@get("/incident-cases", cache=False, opt=PAGE_OPT, include_in_schema=False)
async def cases_page(
    request: Request[Any, Any, Any],
    services: AdminServices,
    open_only: Annotated[bool, QueryParameter(name="open")] = False,
) -> Template:
    view = await case_list(services, open_only=open_only, limit=200)
    return page(
        request, "incident_cases.html", title="Incident records", section="response", view=view,
        open_only=open_only, severities=SEVERITIES,
    )  # fmt: skip


@get("/incident-cases/{case_id:str}", cache=False, opt=PAGE_OPT, include_in_schema=False)
async def case_page(
    request: Request[Any, Any, Any], services: AdminServices, config: Config, case_id: CaseId
) -> Template:
    view = await case_detail(services, case_id)
    templates = sorted({*DEFAULT_TEMPLATES, *config.settings.notify.templates})
    return page(
        request, "incident_case.html", title=f"Incident {view.id}", section="response", view=view,
        phases=_PHASES, severities=SEVERITIES, actions=[a.value for a in AccountAction], templates=templates,
        mail=config.settings.notify.smtp is not None, approvals=config.settings.admin.approvals,
    )  # fmt: skip


HANDLERS: Final = (
    cases_page,
    case_page,
    list_cases,
    show_case,
    recovery_checks,
    report,
    open_case,
    update_case,
    add_note,
    move_phase,
    seal,
    account_action,
    restore_policy,
    lift,
    notify,
)
