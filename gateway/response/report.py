"""The post-incident report, generated from the record: JSON for tools, Markdown for people.

Sections: the incident (severity, owner, phase, dates), detection (the rule and what it saw), the
timeline (the incident's own entries merged with the audit records about its people, addresses and
itself, in the window from the evidence look-back to closing), the actions with who and when, the
affected people, the evidence hashes, the recovery checks, and the root cause and lessons learned the
team wrote (marked *to be written* while empty).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from sqlalchemy import case as case_when
from sqlalchemy import func, or_, select

from gateway.audit.models import AuditEvent
from gateway.response.cases import CaseView, EntryView
from gateway.response.evidence import LOOKBACK
from gateway.response.phases import TITLES
from gateway.response.recovery import RecoveryCheck
from gateway.store.db import Database, store_errors

__all__ = ["AuditTimeline", "audit_timeline", "report_json", "report_markdown"]

# Enough for any incident's window; a report is not a log export (that is the evidence bundle).
MAX_AUDIT_LINES = 500
# What an investigator reads first when the window holds more than fits: sign-ins and second factors,
# detections, containment, sessions. An attack run filled the window with 500 refused invitation
# links from the attacker's address, and the report showed those and none of the sign-ins.
_FIRST_KINDS: Final = (
    "signin.", "mfa.", "threat.", "incident.", "lockdown.", "session.", "token.", "admin.",
    "user.locked", "user.disabled", "user.password",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class AuditTimeline:
    """The audit records a report shows (in chain order), and how many the window holds in all."""

    records: list[dict[str, Any]]
    total: int


async def audit_timeline(db: Database, case: CaseView, until: datetime) -> AuditTimeline:
    """The audit records about the incident, its affected people and addresses, in its window: all of
    them up to :data:`MAX_AUDIT_LINES`; past that, the security-relevant kinds first (``_FIRST_KINDS``),
    then the rest, and the total says how many there were."""
    about = [AuditEvent.subject == case.id]
    if case.affected_users:
        about.append(AuditEvent.subject.in_(case.affected_users))
    if case.addresses:
        about.append(AuditEvent.ip.in_(case.addresses))
    window = (AuditEvent.at >= case.opened_at - LOOKBACK, AuditEvent.at <= until, or_(*about))
    first = or_(*(AuditEvent.kind.startswith(kind, autoescape=True) for kind in _FIRST_KINDS))
    query = (
        select(AuditEvent)
        .where(*window)
        .order_by(case_when((first, 0), else_=1), AuditEvent.seq)
        .limit(MAX_AUDIT_LINES)
    )
    async with db.session() as session:
        with store_errors("cannot read the audit trail"):
            rows = sorted((await session.scalars(query)).all(), key=lambda r: r.seq)
            total = len(rows)
            if total == MAX_AUDIT_LINES:
                total = (
                    await session.scalar(select(func.count()).select_from(AuditEvent).where(*window))
                ) or 0
    records = [
        {"at": r.at.isoformat(), "seq": r.seq, "kind": r.kind, "actor": r.actor, "subject": r.subject,
         "ip": r.ip, "outcome": r.outcome}
        for r in rows
    ]  # fmt: skip
    return AuditTimeline(records, total)


def report_json(
    case: CaseView,
    entries: list[EntryView],
    audit: AuditTimeline,
    checks: list[RecoveryCheck],
    *,
    generated_at: datetime,
) -> dict[str, Any]:
    """The report as a document (what the Markdown is made from)."""
    return {
        "report": "post-incident",
        "generated_at": generated_at.isoformat(),
        "incident": case.as_dict(),
        "detection": [e.as_dict() for e in entries if e.kind == "detection"],
        "actions": [e.as_dict() for e in entries if e.kind in ("action", "evidence", "notification")],
        "timeline": [e.as_dict() for e in entries],
        "audit_records": audit.records,
        # More records in the window than shown: the evidence bundle holds them all.
        "audit_records_total": audit.total,
        "recovery_checks": [c.as_dict() for c in checks],
        "root_cause": case.root_cause,
        "lessons": case.lessons,
    }


def _cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def report_markdown(doc: dict[str, Any]) -> str:
    """The report for people (GitHub-flavoured Markdown)."""
    inc = doc["incident"]
    lines = [
        f"# Post-incident report: {inc['title']} ({inc['id']})",
        "",
        f"Generated {doc['generated_at']}.",
        "",
        "| | |",
        "|---|---|",
        f"| Severity | {inc['severity']} |",
        f"| Phase | {TITLES.get(inc['phase'], inc['phase'])} |",
        f"| Owner | {_cell(inc['owner'] or 'unassigned')} |",
        f"| Opened | {inc['opened_at']} by {_cell(inc['opened_by'])} |",
        f"| Closed | {inc['closed_at'] or 'not yet'} |",
        f"| Affected people | {_cell(', '.join(inc['affected_users']) or 'none named')} |",
        f"| Addresses | {_cell(', '.join(inc['addresses']) or 'none')} |",
        f"| Routes | {_cell(', '.join(inc['routes']) or 'none')} |",
        "",
        "## Detection",
        "",
    ]
    if doc["detection"]:
        lines += [f"- {d['at']} **{_cell(d['actor'])}**: {_cell(d['text'])}" for d in doc["detection"]]
    else:
        lines.append(f"Opened by {_cell(inc['opened_by'])}: {_cell(inc['summary'] or inc['title'])}")
    lines += ["", "## Timeline", "", "| when | who | what |", "|---|---|---|"]
    lines += [f"| {e['at']} | {_cell(e['actor'])} | {_cell(e['text'])} |" for e in doc["timeline"]]
    lines += ["", "## Actions", ""]
    lines += [f"- {a['at']} {_cell(a['actor'])}: {_cell(a['text'])}" for a in doc["actions"]] or [
        "None recorded."
    ]
    lines += ["", "## Evidence", ""]
    lines += [
        f"- `{e['sha256']}` {e['records']} audit record(s) from {e['since']} to {e['until']}, sealed {e['sealed_at']}"
        + (f" (the range did not verify: {e['problem']})" if e.get("problem") else "")
        for e in inc["evidence"]
    ] or ["None sealed."]
    lines += [
        "",
        "## Audit records",
        "",
        _shown(len(doc["audit_records"]), doc.get("audit_records_total", len(doc["audit_records"]))),
        "",
    ]
    lines += ["| seq | when | kind | actor | subject | outcome |", "|---|---|---|---|---|---|"]
    lines += [
        f"| {r['seq']} | {r['at']} | {r['kind']} | {_cell(r['actor'])} | {_cell(r['subject'])} | {r['outcome']} |"
        for r in doc["audit_records"]
    ]
    lines += ["", "## Recovery checks", ""]
    lines += [
        f"- [{'x' if c['passed'] else ' '}] {c['name']}: {_cell(c['detail'])}" for c in doc["recovery_checks"]
    ] or ["Not run."]
    lines += ["", "## Root cause", "", doc["root_cause"] or "*To be written.*", ""]
    lines += ["## Lessons learned and improvements", "", doc["lessons"] or "*To be written.*", ""]
    return "\n".join(lines)


def _shown(shown: int, total: int) -> str:
    if shown >= total:
        return f"{shown} record(s) about the incident, its people and addresses:"
    return (
        f"{shown} of {total} record(s) about the incident, its people and addresses (sign-ins, second "
        f"factors, detections and containment first; all {total} are in the evidence bundle):"
    )


def dumps(doc: dict[str, Any]) -> str:
    """The JSON report, stable and readable."""
    return json.dumps(doc, indent=2, sort_keys=True)
