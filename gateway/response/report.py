"""The post-incident report, generated from the record: JSON for tools, Markdown for people.

Sections: the incident (severity, owner, phase, dates), detection (the rule and what it saw), the
timeline (the incident's own entries merged with the audit records about its people, addresses and
itself, in the window from the evidence look-back to closing), the actions with who and when, the
affected people, the evidence hashes, the recovery checks, and the root cause and lessons learned the
team wrote (marked *to be written* while empty).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sqlalchemy import or_, select

from gateway.audit.models import AuditEvent
from gateway.response.cases import CaseView, EntryView
from gateway.response.evidence import LOOKBACK
from gateway.response.phases import TITLES
from gateway.response.recovery import RecoveryCheck
from gateway.store.db import Database, store_errors

__all__ = ["audit_timeline", "report_json", "report_markdown"]

# Enough for any incident's window; a report is not a log export (that is the evidence bundle).
MAX_AUDIT_LINES = 500


async def audit_timeline(db: Database, case: CaseView, until: datetime) -> list[dict[str, Any]]:
    """The audit records about the incident, its affected people and addresses, in its window."""
    about = [AuditEvent.subject == case.id]
    if case.affected_users:
        about.append(AuditEvent.subject.in_(case.affected_users))
    if case.addresses:
        about.append(AuditEvent.ip.in_(case.addresses))
    query = (
        select(AuditEvent)
        .where(AuditEvent.at >= case.opened_at - LOOKBACK, AuditEvent.at <= until, or_(*about))
        .order_by(AuditEvent.seq)
        .limit(MAX_AUDIT_LINES)
    )
    async with db.session() as session:
        with store_errors("cannot read the audit trail"):
            rows = (await session.scalars(query)).all()
    return [
        {"at": r.at.isoformat(), "seq": r.seq, "kind": r.kind, "actor": r.actor, "subject": r.subject,
         "ip": r.ip, "outcome": r.outcome}
        for r in rows
    ]  # fmt: skip


def report_json(
    case: CaseView,
    entries: list[EntryView],
    audit: list[dict[str, Any]],
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
        "audit_records": audit,
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
        f"{len(doc['audit_records'])} record(s) about the incident, its people and addresses:",
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


def dumps(doc: dict[str, Any]) -> str:
    """The JSON report, stable and readable."""
    return json.dumps(doc, indent=2, sort_keys=True)
