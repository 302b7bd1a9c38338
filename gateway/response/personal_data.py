"""The incident records under the privacy rules: retention of closed cases, and a person's erasure.

The privacy engine (``gateway.privacy``, a floor below) states what it needs in
:class:`gateway.privacy.incident_records.IncidentRecords`; this is that, over ``incident_cases`` and
``incident_entries``.

**Retention deletes, it does not pseudonymise.** Nothing the audit chain verifies reads these tables:
``gateway audit verify`` reads ``audit_events`` only, and every change to a case was also written there
(``incident.opened``, ``incident.phase``, ``incident.note``, ``incident.action``,
``incident.evidence_sealed`` with the bundle's SHA-256), under the case id. So a case closed longer than
``privacy.retention.incidents`` goes with its timeline and the chain still verifies; what stays is the
trail's own record of it (whose personal fields the ``audit_events`` rule handles). The sealed bundle
files in ``<data_dir>/incidents/<id>/`` are not touched (``docs/privacy.md``, "Known gaps").

**Erasure rewrites mentions.** The person's username and email become their erasure tombstone in every
text of a case about them (they are affected, own or opened it, or their address is in it) and its
entries (title, owner, who opened it, affected users, summary, root cause, lessons; an entry's actor,
text and JSON details), whatever the case's phase. In any other case only their email address in its
text, and a field that is wholly their name (an entry's actor, the owner), are: a username can be a
common word (an attack run erased accounts named ``detection`` and ``phishing``, and other people's
case titles and every entry's ``{"detection": id}`` were rewritten, which broke lifting a case's
blocks). A JSON detail's structural members (phase, rule, detection id, ...) are never rewritten. The ``evidence`` column (bundle
file, hash, window, counts) holds no name and is left as sealed; so are the bundles themselves, whose
hashes the chain holds. Routes, addresses, rules and ids are not names and stay.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Final

import msgspec
from sqlalchemy import delete, select

from gateway.privacy.incident_records import CasesDeleted, ClosedCase, Erasing
from gateway.privacy.mentions import Mentions
from gateway.response.models import IncidentCase, IncidentEntry
from gateway.response.phases import Phase
from gateway.store.db import Database, store_errors
from gateway.threat.incidents import MAX_INCIDENTS, IncidentStore

__all__ = ["CasePersonalData"]

# The columns of a case that may name a person (affected_users is a JSON list, apart).
_CASE_TEXT: Final = ("title", "summary", "root_cause", "lessons", "owner", "opened_by")
# The members of an entry's JSON details keyed by person (a notification's failures by username).
_PEOPLE_KEYED: Final = frozenset({"failed"})
# The members of an entry's JSON details that are ids, phases, rule and action names or counts, never a
# person's name, whatever word a username happens to be.
_STRUCTURAL: Final = frozenset(
    {"phase", "from", "to", "detection", "detections", "rule", "action", "template", "severity", "target",
     "version", "accounts", "missing", "routes", "addresses", "root_cause", "lessons"}
)  # fmt: skip


def _details(stored: str, found: Mentions) -> str:
    """An entry's JSON details with the mentions ``found`` replaced, as written: unchanged when none
    is found."""
    try:
        parsed: Any = json.loads(stored)
    except ValueError:
        return found.text(stored)
    replaced = found.document(parsed, structural=_STRUCTURAL, people_keyed=_PEOPLE_KEYED)
    # Written as Cases._entry writes it.
    return stored if replaced == parsed else json.dumps(replaced, sort_keys=True, default=str)


def _users(stored: str) -> list[str]:
    """``affected_users`` as a list of names (none when it is not one)."""
    try:
        users: Any = json.loads(stored)
    except ValueError:
        return []
    return [str(u) for u in users] if isinstance(users, list) else []


def _affected(stored: str, mentions: Mentions) -> str:
    """``affected_users`` (a JSON list of usernames) with the person's name replaced."""
    try:
        users: Any = json.loads(stored)
    except ValueError:
        return mentions.text(stored)
    if not isinstance(users, list):
        return mentions.text(stored)
    replaced = mentions.names(str(u) for u in users)
    return stored if replaced == users else json.dumps(replaced)


class CasePersonalData:
    """Closed incident records for the retention rule, and a person's mentions for the eraser."""

    def __init__(self, db: Database, *, detections: IncidentStore | None = None) -> None:
        """Args:
        db: The database holding ``incident_cases`` and ``incident_entries``.
        detections: The threat detector's incidents in the fast state (kept 30 days): an erasure
            pseudonymises them too, or the console's Incidents list kept naming the person.
        """
        self._db = db
        self._detections = detections

    async def closed_cases(self) -> list[ClosedCase]:
        query = (
            select(IncidentCase.id, IncidentCase.closed_at, IncidentCase.affected_users)
            .where(IncidentCase.phase == Phase.CLOSED.value, IncidentCase.closed_at.is_not(None))
            .order_by(IncidentCase.closed_at, IncidentCase.id)
        )
        async with self._db.session() as session:
            with store_errors("cannot read incident records"):
                rows = (await session.execute(query)).all()
        found = []
        for case_id, closed_at, users in rows:
            if closed_at is None:  # not selected; the column is nullable
                continue
            try:
                affected = tuple(str(u) for u in json.loads(users))
            except (ValueError, TypeError):
                affected = ()
            found.append(ClosedCase(case_id, closed_at, affected))
        return found

    async def delete_closed(self, ids: Sequence[str], *, closed_before: datetime) -> CasesDeleted:
        if not ids:
            return CasesDeleted(0, 0)
        async with self._db.session(write=True) as session:
            with store_errors("cannot delete incident records"):
                # Checked again here, in the deleting transaction: only what is still due goes.
                due = list(
                    (
                        await session.scalars(
                            select(IncidentCase.id).where(
                                IncidentCase.id.in_(list(ids)),
                                IncidentCase.phase == Phase.CLOSED.value,
                                IncidentCase.closed_at <= closed_before,
                            )
                        )
                    ).all()
                )
                if not due:
                    return CasesDeleted(0, 0)
                # The foreign key cascades too; deleted by name so the count is known and no
                # database setting decides whether the timeline stays behind.
                entries = (
                    await session.scalars(
                        delete(IncidentEntry)
                        .where(IncidentEntry.case_id.in_(due))
                        .returning(IncidentEntry.id)
                    )
                ).all()
                cases = (
                    await session.scalars(
                        delete(IncidentCase).where(IncidentCase.id.in_(due)).returning(IncidentCase.id)
                    )
                ).all()
                await session.commit()
        return CasesDeleted(len(cases), len(entries))

    async def pseudonymise(self, person: Erasing, tombstone: str) -> int:
        mentions = person.mentions(tombstone)
        unambiguous = mentions.unambiguous()
        changed = 0
        async with self._db.session(write=True) as session:
            with store_errors("cannot pseudonymise incident records"):
                # Every row is read: JSON escapes non-ASCII names ("\u00e9"), and SQLite's lower()
                # folds ASCII only, so a LIKE filter in SQL would miss some mentions.
                about: set[str] = set()
                kept: set[str] = set()
                for case in (await session.scalars(select(IncidentCase).with_for_update())).all():
                    affected = _users(case.affected_users)
                    if person.keeps(affected):
                        kept.add(case.id)
                        continue
                    if mentions.about([*affected, *(getattr(case, c) for c in _CASE_TEXT)]):
                        about.add(case.id)
                    if not person.wrote(case.opened_at):
                        continue
                    found = mentions if case.id in about else unambiguous
                    before = [getattr(case, column) for column in _CASE_TEXT] + [case.affected_users]
                    for column in _CASE_TEXT:
                        setattr(case, column, found.text(getattr(case, column)))
                    case.affected_users = _affected(case.affected_users, mentions)
                    after = [getattr(case, column) for column in _CASE_TEXT] + [case.affected_users]
                    changed += int(after != before)
                for entry in (await session.scalars(select(IncidentEntry).with_for_update())).all():
                    if entry.case_id in kept or not person.wrote(entry.at):
                        continue
                    found = mentions if entry.case_id in about else unambiguous
                    before = [entry.actor, entry.text, entry.details]
                    entry.actor = found.text(entry.actor)
                    entry.text = found.text(entry.text)
                    entry.details = _details(entry.details, found)
                    changed += int([entry.actor, entry.text, entry.details] != before)
                await session.commit()
        if self._detections is not None:
            changed += await _pseudonymise_detections(self._detections, person, mentions)
        return changed


async def _pseudonymise_detections(detections: IncidentStore, person: Erasing, mentions: Mentions) -> int:
    """Replace the person's mentions in the stored detections (subject, summary, evidence, actions);
    addresses stay, as in the incident records (see docs/privacy.md). Free text only of a detection
    about the person (its subject or an action's target), as for the cases; none from before the
    account was made, nor one about a person under a legal hold."""
    changed = 0
    unambiguous = mentions.unambiguous()
    for incident in await detections.latest(MAX_INCIDENTS):
        if not person.wrote(datetime.fromtimestamp(incident.at, UTC)) or person.keeps([incident.subject]):
            continue
        about = mentions.about([incident.subject, incident.summary, *(a.target for a in incident.actions)])
        found = mentions if about else unambiguous
        after = msgspec.structs.replace(
            incident,
            subject=found.text(incident.subject),
            summary=found.text(incident.summary),
            actor=found.text(incident.actor),
            lifted_by=found.text(incident.lifted_by),
            evidence={k: found.text(v) if isinstance(v, str) else v for k, v in incident.evidence.items()},
            actions=tuple(
                msgspec.structs.replace(a, target=found.text(a.target), note=found.text(a.note))
                for a in incident.actions
            ),
        )
        if after != incident:
            await detections.save(after)
            changed += 1
    return changed
