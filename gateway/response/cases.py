"""Incident records: opened by a detection rule or an admin, moved through the phases, noted, assigned.

Every change is an entry of the incident's own timeline and an audit record (``incident.opened``,
``incident.phase``, ``incident.note``, ``incident.updated``), so the chain proves who did what when.
Detections of the same rule about the same person or address while an incident of theirs is open
join it (one incident, not one per failed password) instead of opening another.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.audit.trail import AuditLog
from gateway.clock import Clock
from gateway.errors import BadRequest, GatewayError
from gateway.names import hidden_character
from gateway.reasons import is_one_line
from gateway.response.models import IncidentCase, IncidentEntry
from gateway.response.phases import TITLES, Phase, check_move, refuse_closed
from gateway.response.vocabulary import SEVERITIES
from gateway.store.db import Database, store_errors
from gateway.threat.incidents import Incident, new_incident_id, parse_incident_id, severity

__all__ = ["CaseNotFound", "CaseView", "Cases", "EntryView", "canonical_address", "detection_ids"]

# A detection joins an open incident of the same rule and person/address opened this recently.
JOIN_WINDOW: Final = timedelta(hours=24)
_MAX_TEXT: Final = 4000


class CaseNotFound(GatewayError):
    """No incident record has this id: 404."""

    status = 404
    reason = "incident-not-found"
    title = "No such incident"


@dataclass(frozen=True, slots=True)
class EntryView:
    """One timeline entry."""

    at: datetime
    kind: str
    actor: str
    text: str
    details: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {"at": self.at.isoformat(), "kind": self.kind, "actor": self.actor, "text": self.text, **(
            {"details": self.details} if self.details else {}
        )}  # fmt: skip


@dataclass(frozen=True, slots=True)
class CaseView:
    """An incident record as the CLI, the API and the report see it."""

    id: str
    title: str
    severity: str
    phase: Phase
    owner: str
    opened_at: datetime
    opened_by: str
    updated_at: datetime
    closed_at: datetime | None
    rule: str
    affected_users: tuple[str, ...]
    routes: tuple[str, ...]
    addresses: tuple[str, ...]
    summary: str
    root_cause: str
    lessons: str
    evidence: tuple[dict[str, Any], ...]

    @classmethod
    def of(cls, row: IncidentCase) -> CaseView:
        return cls(
            id=row.id, title=row.title, severity=row.severity, phase=Phase(row.phase), owner=row.owner,
            opened_at=row.opened_at, opened_by=row.opened_by, updated_at=row.updated_at,
            closed_at=row.closed_at, rule=row.rule,
            affected_users=tuple(json.loads(row.affected_users)), routes=tuple(json.loads(row.routes)),
            addresses=tuple(json.loads(row.addresses)), summary=row.summary, root_cause=row.root_cause,
            lessons=row.lessons, evidence=tuple(json.loads(row.evidence)),
        )  # fmt: skip

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "severity": self.severity,
            "phase": self.phase.value,
            "phase_title": TITLES[self.phase],
            "owner": self.owner,
            "opened_at": self.opened_at.isoformat(),
            "opened_by": self.opened_by,
            "updated_at": self.updated_at.isoformat(),
            "closed_at": self.closed_at.isoformat() if self.closed_at else None,
            "rule": self.rule,
            "affected_users": list(self.affected_users),
            "routes": list(self.routes),
            "addresses": list(self.addresses),
            "summary": self.summary,
            "root_cause": self.root_cause,
            "lessons": self.lessons,
            "evidence": list(self.evidence),
        }


def _clean(
    text: str, what: str, *, required: bool = False, limit: int = _MAX_TEXT, one_line: bool = False
) -> str:
    text = text.strip()
    if required and not text:
        raise BadRequest(f"{what} must not be empty.")
    if len(text) > limit:
        raise BadRequest(f"{what} is longer than {limit} characters.")
    if one_line and not is_one_line(text):
        # A title is one row of `gateway incident case list`: a line break in one printed a forged
        # row (a re-attack run).
        raise BadRequest(f"{what} must be one line of text, without control characters.")
    if any(ord(c) < 32 and c not in "\n\t" for c in text):
        raise BadRequest(f"{what} contains control characters.")
    # Line breaks and tabs are allowed in a note; nothing a reader cannot see (a right-to-left
    # override, a zero-width space: an attack run's owner "bob\u202e" read as another in the list).
    hidden = hidden_character(text.replace("\n", " ").replace("\t", " "))
    if hidden is not None:
        raise BadRequest(f"{what} contains a character a reader cannot see (U+{ord(hidden):04X}).")
    return text


def canonical_address(text: str) -> str | None:
    """``text`` as the access log and audit trail write an address (lower-case IPv6, IPv4-mapped as
    IPv4), or None when it is none. A zone ("fe80::1%eth0") is text after the address that str() gives
    back as typed (an attack run stored "::1%not-an-ip"), and the trail never writes one."""
    if "%" in text:
        return None
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    return str(mapped or address)


def readable_text(text: str, what: str, *, limit: int = _MAX_TEXT) -> str:
    """``text`` stripped, if a reader sees all of it (line breaks and tabs allowed, as in a note),
    else a 400 naming ``what``: for text the incident's people read, such as a notice's "what to do"."""
    return _clean(text, what, limit=limit)


def _names(given: Sequence[str], what: str) -> list[str]:
    """Each affected person or route as one line a reader sees whole, or a 400 naming the one refused:
    the names are listed on the record and in the confirm of an action on those accounts, where a
    right-to-left override reversed the names after it (an attack run stored ``x\u202ey``)."""
    return [_clean(name, f"{what} {name[:60]!r}", limit=256, one_line=True) for name in given]


def _addresses(given: Sequence[str]) -> list[str]:
    """Each affected address as :func:`canonical_address` writes it, or a 400 naming the one refused.

    The report finds the records about an incident by these (``AuditEvent.ip``): an address in
    another spelling (``2001:DB8::1``, ``::ffff:192.0.2.7``) or one that is not an address (an attack
    run recorded ``not-an-ip``) would find nothing and say so in silence.
    """
    out: list[str] = []
    for text in given:
        address = canonical_address(text)
        if address is None:
            raise BadRequest(
                f"{text[:60]!r} is not an IP address; give each affected address as 192.0.2.7 or 2001:db8::7."
            )
        out.append(address)
    return out


def detection_ids(entries: Iterable[EntryView]) -> list[str]:
    """The detections that raised or joined the incident (its ``detection`` entries), sorted."""
    # An entry without the id (one rewritten by an erasure before it kept ids) raised a 500 in lift.
    return sorted(
        {str(e.details["detection"]) for e in entries if e.kind == "detection" and "detection" in e.details}
    )


def _check_severity(severity_: str) -> None:
    if severity_ not in SEVERITIES:
        raise BadRequest(f"Unknown severity {severity_[:20]!r}; use one of {', '.join(SEVERITIES)}.")


async def _load(session: AsyncSession, case_id: str) -> IncidentCase:
    row = await session.get(IncidentCase, case_id)
    if row is None:
        raise CaseNotFound(f"There is no incident record {case_id!r}.")
    return row


def _merge(existing: str, more: Iterable[str]) -> str:
    items = list(json.loads(existing))
    for item in more:
        if item and item not in items:
            items.append(item)
    return json.dumps(items)


class Cases:
    """The incident records (see the module docstring)."""

    def __init__(self, db: Database, audit: AuditLog, clock: Clock) -> None:
        self._db = db
        self._audit = audit
        self.clock = clock
        # Told of every change (gateway.response.webhook): ticketing and paging tools.
        self.listeners: list[Callable[[Mapping[str, Any]], Awaitable[None]]] = []

    async def _tell(self, event: str, case_id: str, actor: str, text: str) -> None:
        if not self.listeners:
            return
        view = await self.get(case_id)
        doc = {
            "type": "incident",
            "event": event,
            "at": self.clock.now().isoformat(),
            "actor": actor,
            "text": text,
            "incident": {
                "id": view.id, "title": view.title, "severity": view.severity, "phase": view.phase.value,
                "owner": view.owner, "affected_users": len(view.affected_users), "rule": view.rule,
            },
        }  # fmt: skip
        for listener in self.listeners:
            await listener(doc)

    async def open(
        self,
        *,
        title: str,
        severity_: str,
        actor: str,
        users: Sequence[str] = (),
        routes: Sequence[str] = (),
        addresses: Sequence[str] = (),
        summary: str = "",
        rule: str = "",
        incident_id: str | None = None,
    ) -> CaseView:
        """Open an incident in detection and analysis.

        Raises:
            BadRequest: an empty title, an unknown severity, text too long.
        """
        _check_severity(severity_)
        users, routes = _names(users, "The affected person"), _names(routes, "The route")
        addresses = _addresses(addresses)
        now = self.clock.now()
        row = IncidentCase(
            id=incident_id or new_incident_id(), title=_clean(title, "The title", required=True, limit=200, one_line=True),
            severity=severity_, phase=Phase.DETECTION.value, owner="", opened_at=now, opened_by=actor,
            updated_at=now, closed_at=None, rule=rule, affected_users=_merge("[]", users),
            routes=_merge("[]", routes), addresses=_merge("[]", addresses),
            summary=_clean(summary, "The summary"), root_cause="", lessons="", evidence="[]",
        )  # fmt: skip
        async with self._db.session() as session:
            session.add(row)
            session.add(self._entry(row.id, "phase", actor, f"Opened: {row.title}", {"phase": row.phase}))
            with store_errors("cannot open the incident"):
                await session.commit()
        view = CaseView.of(row)
        await self._audit.record(
            "incident.opened",
            actor=actor,
            subject=view.id,
            details={"severity": view.severity, "rule": rule, "users": len(view.affected_users)},
        )
        await self._tell("opened", view.id, actor, view.title)
        return view

    async def from_detection(self, incident: Incident) -> tuple[CaseView, bool]:
        """Record what a rule detected: a new incident, or an entry of the open one it belongs to.

        Returns:
            The incident and whether it was opened now.
        """
        users = [incident.subject] if incident.subject else []
        addresses = [incident.ip] if incident.ip else []
        details = {
            "detection": incident.id,
            "rule": incident.rule,
            "actions": [f"{a.kind} {a.target}".strip() for a in incident.actions],
        }
        joined = await self._open_for(incident.rule, users, addresses)
        if joined is None:
            view = await self.open(
                title=f"{incident.rule.replace('_', ' ')}: {incident.subject or incident.ip or 'unknown'}",
                severity_=severity(incident), actor=f"rule:{incident.rule}", users=users,
                addresses=addresses, summary=incident.summary, rule=incident.rule, incident_id=incident.id,
            )  # fmt: skip
            await self._append(view.id, "detection", f"rule:{incident.rule}", incident.summary, details)
            return view, True
        await self._append(joined, "detection", f"rule:{incident.rule}", incident.summary, details)
        return await self.update(
            joined, actor=f"rule:{incident.rule}", users=users, addresses=addresses
        ), False

    async def _open_for(self, rule: str, users: list[str], addresses: list[str]) -> str | None:
        since = self.clock.now() - JOIN_WINDOW
        async with self._db.session() as session:
            with store_errors("cannot read incidents"):
                rows = (
                    await session.scalars(
                        select(IncidentCase).where(
                            IncidentCase.rule == rule,
                            IncidentCase.phase != Phase.CLOSED.value,
                            IncidentCase.opened_at >= since,
                        )
                    )
                ).all()
        for row in rows:
            if set(users) & set(json.loads(row.affected_users)) or set(addresses) & set(
                json.loads(row.addresses)
            ):
                return row.id
        return None

    async def get(self, case_id: str) -> CaseView:
        """The incident.

        Raises:
            BadIncidentId: not an incident id.
            CaseNotFound: no such incident.
        """
        return CaseView.of(await self._row(parse_incident_id(case_id)))

    async def _row(self, case_id: str) -> IncidentCase:
        async with self._db.session() as session:
            with store_errors("cannot read the incident"):
                return await _load(session, case_id)

    async def latest(self, limit: int = 50, *, open_only: bool = False) -> list[CaseView]:
        """The newest incidents first."""
        query = select(IncidentCase).order_by(IncidentCase.opened_at.desc()).limit(limit)
        if open_only:
            query = query.where(IncidentCase.phase != Phase.CLOSED.value)
        async with self._db.session() as session:
            with store_errors("cannot list incidents"):
                return [CaseView.of(r) for r in (await session.scalars(query)).all()]

    async def entries(self, case_id: str) -> list[EntryView]:
        """The incident's own timeline, oldest first."""
        async with self._db.session() as session:
            with store_errors("cannot read the incident's timeline"):
                rows = (
                    await session.scalars(
                        select(IncidentEntry)
                        .where(IncidentEntry.case_id == case_id)
                        .order_by(IncidentEntry.at, IncidentEntry.id)
                    )
                ).all()
        return [EntryView(r.at, r.kind, r.actor, r.text, json.loads(r.details)) for r in rows]

    async def move(self, case_id: str, target: Phase, *, actor: str, note: str = "") -> CaseView:
        """Move the incident to ``target`` (the caller checks what a phase needs first: evidence at
        containment, the recovery checks before closing).

        Raises:
            PhaseRefused: the workflow does not allow the move.
        """
        note = _clean(note, "The note")
        async with self._db.session(write=True) as session:
            with store_errors("cannot change the incident's phase"):
                row = await _load(session, parse_incident_id(case_id))
                before = Phase(row.phase)
                check_move(before, target)
                now = self.clock.now()
                row.phase = target.value
                row.updated_at = now
                row.closed_at = now if target is Phase.CLOSED else None
                text = f"{TITLES[before]} → {TITLES[target]}" + (f": {note}" if note else "")
                session.add(
                    self._entry(row.id, "phase", actor, text, {"from": before.value, "to": target.value})
                )
                await session.commit()
        await self._audit.record(
            "incident.phase", actor=actor, subject=row.id, details={"from": before.value, "to": target.value}
        )
        await self._tell("phase", row.id, actor, text)
        return CaseView.of(row)

    async def note(self, case_id: str, text: str, *, actor: str) -> None:
        """Add a note to the timeline."""
        text = _clean(text, "The note", required=True)
        refuse_closed(Phase((await self._row(parse_incident_id(case_id))).phase), "a note")
        await self._append(case_id, "note", actor, text, {})
        await self._audit.record("incident.note", actor=actor, subject=case_id, details={"length": len(text)})

    async def update(
        self,
        case_id: str,
        *,
        actor: str,
        owner: str | None = None,
        severity_: str | None = None,
        users: Sequence[str] = (),
        routes: Sequence[str] = (),
        addresses: Sequence[str] = (),
        root_cause: str | None = None,
        lessons: str | None = None,
    ) -> CaseView:
        """Change the owner, severity, root cause or lessons; add affected users, routes, addresses."""
        if severity_ is not None:
            _check_severity(severity_)
        users, routes = _names(users, "The affected person"), _names(routes, "The route")
        addresses = _addresses(addresses)
        changed: dict[str, object] = {}
        async with self._db.session(write=True) as session:
            with store_errors("cannot update the incident"):
                row = await _load(session, parse_incident_id(case_id))
                refuse_closed(Phase(row.phase), "a change")
                if owner is not None:
                    row.owner = changed["owner"] = _clean(owner, "The owner", limit=200)
                if severity_ is not None:
                    row.severity = changed["severity"] = severity_
                if root_cause is not None:
                    row.root_cause = _clean(root_cause, "The root cause")
                    changed["root_cause"] = True
                if lessons is not None:
                    row.lessons = _clean(lessons, "The lessons learned")
                    changed["lessons"] = True
                for name, more in (("affected_users", users), ("routes", routes), ("addresses", addresses)):
                    merged = _merge(getattr(row, name), more)
                    if merged != getattr(row, name):
                        setattr(row, name, merged)
                        changed[name] = len(json.loads(merged))
                if changed:
                    row.updated_at = self.clock.now()
                    text = ", ".join(sorted(changed))
                    session.add(self._entry(row.id, "update", actor, f"Updated: {text}", changed))
                await session.commit()
        if changed:
            await self._audit.record("incident.updated", actor=actor, subject=row.id, details=changed)
        return CaseView.of(row)

    async def record(self, case_id: str, kind: str, actor: str, text: str, details: dict[str, Any]) -> None:
        """An entry made by another part of incident response (an action, a seal, a message)."""
        await self._append(case_id, kind, actor, text, details)
        await self._tell(kind, case_id, actor, text)

    async def add_evidence(self, case_id: str, sealed: dict[str, Any]) -> None:
        """Append a sealed evidence bundle's description to the record."""
        async with self._db.session(write=True) as session:
            with store_errors("cannot record the evidence"):
                row = await _load(session, case_id)
                row.evidence = json.dumps([*json.loads(row.evidence), sealed])
                row.updated_at = self.clock.now()
                await session.commit()

    async def _append(self, case_id: str, kind: str, actor: str, text: str, details: dict[str, Any]) -> None:
        async with self._db.session() as session:
            session.add(self._entry(case_id, kind, actor, text, details))
            with store_errors("cannot write the incident's timeline"):
                await session.commit()

    def _entry(
        self, case_id: str, kind: str, actor: str, text: str, details: dict[str, Any]
    ) -> IncidentEntry:
        return IncidentEntry(
            case_id=case_id, at=self.clock.now(), kind=kind, actor=actor, text=text[:_MAX_TEXT],
            details=json.dumps(details, sort_keys=True, default=str),
        )  # fmt: skip
