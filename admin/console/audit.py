"""Audit: the trail filtered by actor, subject, event, outcome and time; verify it; export evidence.

``GET /audit`` and ``GET /api/audit/events`` answer the same filter with the same records (newest
first, each with its chain position), paged by chain position. ``POST /api/audit/verify`` walks the
whole chain and holds it against this node's signed checkpoints, as ``gateway audit verify`` does;
``POST /api/audit/export`` answers the evidence bundle ``gateway audit export -o NAME.zip`` writes, as a
download. Both are recorded in the trail they read (``admin.audit.verify``, ``admin.audit.export``).

The keyring is read from its file for each verification and export rather than taken from this
process: a key added by a rotation since the admin listener started still verifies the records
keyed under it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, Final
from urllib.parse import urlencode

import msgspec
from litestar import Request, get, post
from litestar.params import JSONBody, QueryParameter
from litestar.response import Response, Template

from admin.actions import admin_of, audit
from admin.console.render import PAGE_OPT, page
from admin.deps import AdminServices
from gateway.audit.bundle import MANIFEST, assemble_bundle
from gateway.audit.chain import ChainRecord
from gateway.audit.checkpoint import latest_checkpoint, load_checkpoints, local_checkpoint_file, verify_trail
from gateway.audit.query import AuditFilter, find_records, parse_time
from gateway.crypto.keyring import Keyring, KeyringError, keyring_path
from gateway.errors import BadRequest, GatewayError
from gateway.reasons import OPTIONAL_REASON_PATTERN, REASON_PATTERN
from gateway.settings.schema import Settings
from gateway.web.deps import Identity

__all__ = ["HANDLERS", "AuditEvents", "VerifyResult", "audit_events", "verify_chain"]

logger = logging.getLogger("gateway.admin")

#: The most records one page holds; older ones are a click (or ``before=``) away.
PAGE_LIMIT: Final = 200
_DEFAULT_LIMIT: Final = 50

Text = Annotated[str | None, QueryParameter(max_length=200)]
Time = Annotated[
    str | None,
    QueryParameter(
        max_length=64, description="ISO 8601; UTC when no offset is given (2026-12-01 or 2026-12-01T08:00)."
    ),
]
Reason = Annotated[
    str,
    msgspec.Meta(
        min_length=1, pattern=REASON_PATTERN, max_length=2000, description="Why: kept in the audit trail."
    ),
]
TimeField = Annotated[
    str, msgspec.Meta(min_length=1, max_length=64, description="ISO 8601; UTC when no offset is given.")
]


# -- shapes ---------------------------------------------------------------------------------------


class RecordView(msgspec.Struct, kw_only=True):
    """One audit record and its place in the hash chain."""

    seq: int
    id: int
    at: datetime
    kind: str
    actor: str
    subject: str
    ip: str
    outcome: str
    # The JSON object the record's hash covers, as stored.
    details: str
    prev_hash: str
    record_hash: str
    # 1: SHA-256 (before the chain was keyed); 2: HMAC under the chain key of keyring key ``key_id``.
    version: int
    key_id: str


class FilterView(msgspec.Struct, kw_only=True):
    actor: str | None = None
    subject: str | None = None
    kind: str | None = None
    outcome: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    before: int | None = None


class AuditEvents(msgspec.Struct, kw_only=True):
    """A page of records, newest first; ``next_before`` is the ``before`` of the next (older) page."""

    records: list[RecordView]
    filter: FilterView
    limit: int
    next_before: int | None


class VerifyRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    reason: Annotated[str, msgspec.Meta(max_length=2000, pattern=OPTIONAL_REASON_PATTERN)] = ""


class CheckpointView(msgspec.Struct, kw_only=True):
    head_seq: int
    count: int
    at: str


class ProblemView(msgspec.Struct, kw_only=True):
    """Where the chain breaks: the record (if one is to blame), what is wrong, what to do."""

    record_id: int | None
    seq: int | None
    what: str
    action: str


class VerifyResult(msgspec.Struct, kw_only=True):
    """What walking the whole chain against this node's checkpoints found."""

    ok: bool
    message: str
    records: int
    first_seq: int | None
    last_seq: int | None
    head_hash: str
    # Records from before the chain was keyed (only checkpoints protect them).
    legacy: int
    keyed_from: int | None
    key_ids: list[str]
    checkpoints: int
    latest_checkpoint: CheckpointView | None
    problem: ProblemView | None


class ExportRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The period to export: ``since`` inclusive, ``until`` exclusive."""

    since: TimeField
    until: TimeField
    reason: Reason


# -- reading --------------------------------------------------------------------------------------


def _field_time(text: str | None) -> str:
    """A time as the page's datetime-local fields show it (UTC, to the second); what does not parse
    stays as given (the page says what is wrong with it)."""
    if text is None or not text.strip():
        return ""
    try:
        return parse_time(text).strftime("%Y-%m-%dT%H:%M:%S")
    except ValueError:
        return text


def _time(text: str | None, name: str) -> datetime | None:
    if text is None or not text.strip():
        return None
    try:
        return parse_time(text)
    except ValueError as exc:
        raise BadRequest(f"{name}: {exc}") from None


def _filter(
    actor: str | None,
    subject: str | None,
    kind: str | None,
    outcome: str | None,
    since: str | None,
    until: str | None,
    before: int | None,
) -> AuditFilter:
    def given(value: str | None) -> str | None:
        return value.strip() or None if value is not None else None

    return AuditFilter(
        actor=given(actor), subject=given(subject), kind=given(kind), outcome=given(outcome),
        since=_time(since, "since"), until=_time(until, "until"), before_seq=before,
    )  # fmt: skip


def record_view(record: ChainRecord) -> RecordView:
    return RecordView(
        seq=record.seq, id=record.id, at=_utc(record.at), kind=record.kind, actor=record.actor,
        subject=record.subject, ip=record.ip, outcome=record.outcome, details=record.details,
        prev_hash=record.prev_hash, record_hash=record.record_hash, version=record.version,
        key_id=record.key_id,
    )  # fmt: skip


def _utc(at: datetime) -> datetime:
    # SQLite hands back naive times, which are UTC; astimezone() would take them for local time.
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


async def audit_events(services: AdminServices, where: AuditFilter, limit: int) -> AuditEvents:
    """The records the Audit page and ``GET /api/audit/events`` show."""
    records = await find_records(services.db, where, limit=limit)
    return AuditEvents(
        records=[record_view(r) for r in records],
        filter=FilterView(
            actor=where.actor,
            subject=where.subject,
            kind=where.kind,
            outcome=where.outcome,
            since=where.since,
            until=where.until,
            before=where.before_seq,
        ),
        limit=limit,
        next_before=records[-1].seq if len(records) == limit else None,
    )


Limit = Annotated[int, QueryParameter(ge=1, le=PAGE_LIMIT, description=f"At most {PAGE_LIMIT}.")]
Before = Annotated[
    int | None, QueryParameter(ge=1, le=2**62, description="Records below this chain position.")
]


@get("/api/audit/events", cache=False, tags=["audit"])
async def events_json(
    services: AdminServices,
    actor: Text = None,
    subject: Text = None,
    kind: Annotated[
        str | None, QueryParameter(max_length=200, description="Exact, or a prefix ending in *.")
    ] = None,
    outcome: Text = None,
    since: Time = None,
    until: Time = None,
    before: Before = None,
    limit: Limit = _DEFAULT_LIMIT,
) -> AuditEvents:
    """Audit records, newest first, each with its chain position (``seq``) and hashes.

    Every given filter must match: ``actor`` (``user:alice``), ``subject``, ``kind`` (``admin.*`` for a
    prefix), ``outcome`` (``success``, ``failure``), ``since`` (inclusive) and ``until`` (exclusive).
    ``next_before`` is the ``before`` of the next, older page.
    """
    where = _filter(actor, subject, kind, outcome, since, until, before)
    return await audit_events(services, where, limit)


@get("/audit", cache=False, opt=PAGE_OPT, include_in_schema=False)
async def audit_page(
    request: Request[Any, Any, Any],
    services: AdminServices,
    actor: Text = None,
    subject: Text = None,
    kind: Text = None,
    outcome: Text = None,
    since: Time = None,
    until: Time = None,
    before: Before = None,
    limit: Limit = _DEFAULT_LIMIT,
) -> Template:
    form = {
        "actor": actor or "", "subject": subject or "", "kind": kind or "", "outcome": outcome or "",
        "since": _field_time(since), "until": _field_time(until),
    }  # fmt: skip
    problem = ""
    view: AuditEvents | None = None
    try:
        where = _filter(actor, subject, kind, outcome, since, until, before)
    except BadRequest as err:
        problem = err.public_detail
    else:
        view = await audit_events(services, where, limit)
    older = None
    if view is not None and view.next_before is not None:
        query = {k: v for k, v in form.items() if v}
        older = "/audit?" + urlencode({**query, "before": view.next_before, "limit": limit})
    filtered = any(form.values())
    return page(
        request, "audit.html", title="Audit", section="audit", view=view, form=form, problem=problem,
        older=older, newest="/audit?" + urlencode({k: v for k, v in form.items() if v}) if before else None,
        filtered=filtered, limit=limit,
    )  # fmt: skip


# -- verifying and exporting ----------------------------------------------------------------------


async def _keyring(settings: Settings, fallback: Keyring) -> Keyring:
    """The keyring as its file holds it now (with keys added since start-up); this process's on error."""
    try:
        return await asyncio.to_thread(Keyring.load, keyring_path(settings))
    except KeyringError:
        logger.warning("admin: the keyring file cannot be read; verifying with the one loaded at start-up")
        return fallback


def _local_checkpoints(settings: Settings) -> list[dict[str, Any]]:
    path = local_checkpoint_file(settings.data_dir)
    if not path.exists():
        return []
    try:
        return load_checkpoints(path)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CheckpointsUnreadable(
            f"The node's checkpoint file {path} cannot be read ({exc}); check it on the server "
            "(`gateway audit verify`) before trusting the trail."
        ) from None


class CheckpointsUnreadable(GatewayError):
    """The node's checkpoint file exists but cannot be read or parsed (500)."""

    reason = "audit-checkpoints-unreadable"
    title = "Audit checkpoints unreadable"


async def verify_chain(services: AdminServices) -> VerifyResult:
    """Walk the whole chain with the keyring and hold it against this node's signed checkpoints."""
    settings = services.live.current.settings
    checkpoints = await asyncio.to_thread(_local_checkpoints, settings)
    keyring = await _keyring(settings, services.identity.keyring)
    verdict = await verify_trail(services.db, checkpoints, keyring=keyring)
    report = verdict.report
    latest = latest_checkpoint(checkpoints)
    problem = verdict.problem
    if problem is not None:
        message = f"The audit trail FAILED verification: {problem}"
    elif latest is None:
        message = (
            f"Verified: {report.records} record(s) intact. No signed checkpoint yet, so a truncated tail "
            "cannot be detected; a worker signs one every audit.checkpoint_interval."
        )
    else:
        message = (
            f"Verified: {report.records} record(s) intact, reaching all {len(checkpoints)} signed "
            f"checkpoint(s); the latest covers seq {latest['head_seq']} ({latest['at']})."
        )
    return VerifyResult(
        ok=verdict.ok, message=message, records=report.records,
        first_seq=report.first.seq if report.first is not None else None,
        last_seq=report.last.seq if report.last is not None else None,
        head_hash=report.head_hash, legacy=report.legacy, keyed_from=report.keyed_from,
        key_ids=sorted(report.key_ids), checkpoints=len(checkpoints),
        latest_checkpoint=(
            CheckpointView(head_seq=int(latest["head_seq"]), count=int(latest["count"]), at=str(latest["at"]))
            if latest is not None else None
        ),
        problem=(
            ProblemView(record_id=problem.record_id, seq=problem.seq, what=problem.what, action=problem.action)
            if problem is not None else None
        ),
    )  # fmt: skip


@post("/api/audit/verify", status_code=200, tags=["audit"])
async def verify(
    request: Request[Any, Any, Any],
    services: AdminServices,
    identity: Identity,
    data: JSONBody[VerifyRequest],
) -> VerifyResult:
    """Verify the whole audit chain, as ``gateway audit verify`` does.

    Every record's hash (the keyed records' HMAC) and link is checked, then that the chain still
    reaches each signed checkpoint of this node. ``ok`` is false and ``problem`` names the first
    broken record (its chain position), what is wrong and what to do. Recorded as
    ``admin.audit.verify``.
    """
    admin = admin_of(request)
    try:
        result = await verify_chain(services)
    except GatewayError as err:
        await _record(
            identity, request, "verify", admin.actor, "failure", {"reason": data.reason, "error": err.reason}
        )
        raise
    details: dict[str, object] = {"reason": data.reason, "records": result.records, "ok": result.ok}
    if result.problem is not None:
        details["problem_seq"] = result.problem.seq
    await _record(identity, request, "verify", admin.actor, "success" if result.ok else "failure", details)
    return result


@post("/api/audit/export", status_code=200, tags=["audit"], media_type="application/zip")
async def export(
    request: Request[Any, Any, Any],
    services: AdminServices,
    identity: Identity,
    data: JSONBody[ExportRequest],
) -> Response[bytes]:
    """The evidence bundle for ``since <= time < until``, as the zip file ``gateway audit export`` writes.

    It holds the records, the hash-chain proof from the record before the period, the signed
    checkpoints and a manifest of SHA-256 sums, and verifies offline (``gateway audit verify-bundle``).
    ``X-Audit-Records`` says how many records it holds, ``X-Manifest-SHA256`` the hash of its manifest
    (note it where you hand the bundle over), ``X-Audit-Until`` where its window ends: the period ends
    at the export time at the latest, and a later ``until`` is clamped to it (``X-Audit-Until-Clamped:
    true``; a ``since`` not before now is a 400). Recorded as ``admin.audit.export``.
    """
    admin = admin_of(request)
    base = {"reason": data.reason, "since": data.since, "until": data.until}
    now = identity.clock.now()
    try:
        since, until = _time(data.since, "since"), _time(data.until, "until")
        if since is None or until is None or since >= until:
            raise BadRequest("'since' must be before 'until'; nothing was exported.")
        if since >= now:
            raise BadRequest(
                "'since' must be before now: the period ends at the export time at the latest; nothing was "
                "exported."
            )
    except BadRequest:
        # Recorded as every refused export is (a time that did not parse left no record).
        await _record(identity, request, "export", admin.actor, "failure", {**base, "error": "bad-request"})
        raise
    settings = services.live.current.settings
    try:
        checkpoints = await asyncio.to_thread(_local_checkpoints, settings)
        keyring = await _keyring(settings, services.identity.keyring)
        bundle = await assemble_bundle(
            services.db, since=since, until=until, checkpoints=checkpoints, now=now, keyring=keyring,
        )  # fmt: skip
    except GatewayError as err:
        await _record(identity, request, "export", admin.actor, "failure", {**base, "error": err.reason})
        raise
    manifest = hashlib.sha256(bundle.files[MANIFEST]).hexdigest()
    details = {**base, "records": bundle.records, "manifest_sha256": manifest, "problem": bundle.problem}
    exported_until = bundle.until.astimezone(UTC).isoformat()
    if bundle.clamped:
        details["until_clamped_to"] = exported_until
    await _record(identity, request, "export", admin.actor, "success", details)
    name = f"audit-evidence-{_stamp(since)}-{_stamp(bundle.until)}.zip"
    headers = {
        "content-disposition": f'attachment; filename="{name}"',
        "x-audit-records": str(bundle.records),
        "x-manifest-sha256": manifest,
        "x-audit-until": exported_until,
    }
    if bundle.clamped:
        # The period asked for ran past now: the bundle's window ends at the export time.
        headers["x-audit-until-clamped"] = "true"
    if bundle.problem is not None:
        # The bundle is still evidence; the header says it does not verify, and why.
        text = " ".join(bundle.problem.split())
        headers["x-audit-problem"] = text.encode("ascii", "replace").decode("ascii")[:500]
    return Response(bundle.zip_bytes(), media_type="application/zip", headers=headers)


def _stamp(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


async def _record(
    identity: Identity,
    request: Request[Any, Any, Any],
    action: str,
    actor: str,
    outcome: str,
    details: Mapping[str, object],
) -> None:
    await audit(identity, request, f"admin.audit.{action}", actor=actor, outcome=outcome, subject="audit",
                details=details)  # fmt: skip


HANDLERS = (events_json, audit_page, verify, export)
