"""The retention rules, one per data class: what is due, what a legal hold keeps, and the purge.

Each rule *surveys* its class at a moment (what is due now and what a hold keeps, the oldest due
date, what falls due next) and *purges* what its survey found due. A purge's own statement checks
again that each item is still due, so a purge repeated, or run by two processes at once, removes
nothing twice. Holds are read when the survey starts; the eraser checks them once more for an
account, and a hold placed while a run is under way applies from the next run for the other classes.

============================  ==========================================  =============================
class                         due when                                    what goes
============================  ==========================================  =============================
``registration``              ``users.closed_at`` + the rule              the person, through the eraser
``removed_content``           ``removed_content.expires_at``              the sealed archive row
``audit_events``              the record's ``at`` + the rule              its personal fields (not the
                                                                          record: the chain verifies)
``incidents``                 a detection's ``at`` + the rule; an         the detection (fast state);
                              incident record's ``closed_at`` + the rule  the record with its timeline
                              (closed records only: an open one never)    (``incident_cases``,
                                                                          ``incident_entries``)
``privacy_requests``          ``completed_at`` + the rule (completed or   the register row
                              rejected requests only)
============================  ==========================================  =============================

Holds: a class hold on the data class keeps everything of the class; a person hold keeps what names
that person (by their subject keys for an account and removed content, by name, or by their erasure
pseudonym once erased, for audit records, incidents and register rows; an incident record is kept by a
hold on any of its affected users).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final, Protocol

from sqlalchemy import ColumnElement, delete, func, select

from gateway.audit.chain import ERASABLE_VERSION
from gateway.audit.chain_key import ChainKeys
from gateway.audit.erasable import dump_salts
from gateway.audit.erase import erase_expired, expiring
from gateway.audit.models import AuditEvent
from gateway.crypto.keyring import Keyring
from gateway.identity.accounts import UnknownAccount
from gateway.identity.models import User
from gateway.identity.names import canonical_username
from gateway.privacy.erasure import Eraser, Held
from gateway.privacy.holds import Holds
from gateway.privacy.incident_records import IncidentRecords
from gateway.privacy.models import PrivacyRequest, RemovedContent
from gateway.privacy.register import Channel, Kind, Register, Status
from gateway.privacy.subjects import subject_keys
from gateway.settings.schema import PrivacySettings
from gateway.store.db import Database, store_errors
from gateway.threat.incidents import MAX_INCIDENTS, IncidentStore

__all__ = [
    "ACTOR",
    "NEXT_SHOWN",
    "ActiveHolds",
    "AuditEventsRule",
    "IncidentsRule",
    "Item",
    "Purged",
    "RegistrationRule",
    "RemovedContentRule",
    "RequestsRule",
    "Rule",
    "Survey",
]

#: Who the retention engine acts as in the register and the audit trail.
ACTOR: Final = "system:retention"
#: How many of the items falling due next a survey lists.
NEXT_SHOWN: Final = 5


@dataclass(frozen=True, slots=True)
class Item:
    """One thing of a class and when it falls (or fell) due; ``label`` is for the operator only."""

    label: str
    due_at: datetime
    key: int | str = 0


@dataclass(slots=True)
class Survey:
    """A class at one moment.

    ``due``: due now and not held (what a purge removes). ``held``: hold reference → how many items
    due now it keeps. ``oldest_due``: the earliest due date among the due and held items. ``upcoming``:
    the next :data:`NEXT_SHOWN` items not due yet, soonest first, of ``later`` in all.
    """

    due: list[Item] = field(default_factory=list)
    held: dict[str, int] = field(default_factory=dict)
    oldest_due: datetime | None = None
    upcoming: list[Item] = field(default_factory=list)
    later: int = 0

    def note_due(self, item: Item, hold: str | None) -> None:
        """Count an item that is due: kept by ``hold``, or to purge."""
        if self.oldest_due is None or item.due_at < self.oldest_due:
            self.oldest_due = item.due_at
        if hold is None:
            self.due.append(item)
        else:
            self.held[hold] = self.held.get(hold, 0) + 1

    def note_later(self, item: Item) -> None:
        """Count an item not due yet (call in due order: the first few are listed)."""
        self.later += 1
        if len(self.upcoming) < NEXT_SHOWN:
            self.upcoming.append(item)


@dataclass(frozen=True, slots=True)
class Purged:
    """What a purge did: how many items went and what holds kept (found during the purge).

    ``parts``: for a class whose items are of several kinds (``incidents``), how many of each went.
    """

    done: int
    held: dict[str, int] = field(default_factory=dict)
    parts: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ActiveHolds:
    """The active holds at the start of a survey or run, by data class and by subject."""

    classes: dict[str, str]
    people: dict[str, str]

    @classmethod
    async def load(cls, holds: Holds) -> ActiveHolds:
        """Read the active holds; the oldest hold wins where two cover the same thing."""
        classes: dict[str, str] = {}
        people: dict[str, str] = {}
        for hold in reversed(await holds.find(active_only=True)):
            if hold.scope == "class":
                classes.setdefault(hold.data_class, hold.reference)
            elif hold.subject:
                people.setdefault(hold.subject, hold.reference)
        # An incident record names people as an admin typed them: "BOB", or bob's email address.
        for username, email in (await holds.emails_of(list(people))).items():
            people.setdefault(email, people[username])
        return cls(classes, people)

    def person(self, subject: str) -> str | None:
        """The hold on the person named ``subject`` (username, email or erasure tombstone, in any
        spelling that folds to one: a retention run deleted a held person's incident records listed
        under "BOB" or "bob@example.com", an attack run found)."""
        if not subject:
            return None
        found = self.people.get(subject)
        if found is None:
            try:
                found = self.people.get(canonical_username(subject))
            except ValueError:
                return None
        return found


class Rule(Protocol):
    """One data class's retention rule."""

    data_class: str

    async def survey(self, now: datetime, keep: timedelta, holds: ActiveHolds) -> Survey:
        """What is due at ``now`` when items are kept ``keep``."""
        ...

    async def purge(
        self, now: datetime, keep: timedelta, survey: Survey, holds: ActiveHolds, ref: str
    ) -> Purged:
        """Remove what ``survey`` found due; ``ref`` names the run in what it writes."""
        ...


def _days(keep: timedelta) -> str:
    return f"{keep.total_seconds() / 86400:g}"


# -- registration ------------------------------------------------------------------------------------------


def _still_due(username: str, closed_by: datetime) -> Callable[[User], bool]:
    """The check that an account is still the closed registration a run listed (see ``purge``)."""

    def still(user: User) -> bool:
        return user.username == username and user.closed_at is not None and user.closed_at <= closed_by

    return still


class RegistrationRule:
    """Closed accounts, erased (without a removed-content archive) once closed longer than the rule."""

    data_class = "registration"

    def __init__(
        self,
        db: Database,
        *,
        holds: Holds,
        register: Register,
        eraser: Eraser,
        settings: Callable[[], PrivacySettings],
    ) -> None:
        """Args are the stores and services an erasure by rule touches; ``settings`` is read per run."""
        self._db = db
        self._holds = holds
        self._register = register
        self._eraser = eraser
        self._settings = settings

    async def survey(self, now: datetime, keep: timedelta, holds: ActiveHolds) -> Survey:
        query = (
            select(User.id, User.username, User.closed_at)
            .where(User.closed_at.is_not(None))
            .order_by(User.closed_at, User.id)
        )
        async with self._db.session() as session:
            with store_errors("cannot read closed accounts"):
                rows = (await session.execute(query)).all()
        survey = Survey()
        for user_id, username, closed_at in rows:
            if closed_at is None:  # not selected; the column is nullable
                continue
            item = Item(username, closed_at + keep, user_id)
            if item.due_at > now:
                survey.note_later(item)
                continue
            # By subject keys under every keyring key, so a hold placed before a key rotation counts.
            hold = await self._holds.covering(username=username, data_class=self.data_class)
            survey.note_due(item, hold.reference if hold is not None else None)
        return survey

    async def purge(
        self, now: datetime, keep: timedelta, survey: Survey, holds: ActiveHolds, ref: str
    ) -> Purged:
        done, held = 0, dict[str, int]()
        settings = self._settings()
        for item in survey.due:
            user_id = int(item.key)
            closed = item.due_at - keep
            days = (now - closed).days
            # No archive: the data was kept its time already. The eraser checks the holds again, and
            # that the account is still the one listed, closed long enough (an attack run deleted it
            # mid-run and made a new account, which SQLite gave its id: the run erased the newcomer).
            try:
                request = await self._register.open(
                    Kind.ERASURE,
                    settings=settings,
                    user_id=user_id,
                    subject=item.label,
                    channel=Channel.SYSTEM,
                    verified_by=f"retention rule: registration closed {closed:%Y-%m-%d}, kept {_days(keep)} days",
                    details={"retention_run": ref},
                )
            except UnknownAccount:
                continue  # deleted since it was listed: nothing to erase, nothing to register
            try:
                result = await self._eraser.erase(
                    user_id,
                    actor=ACTOR,
                    ref=request.ref,
                    keep_for=None,
                    reason=f"registration closed {days} days ago",
                    expect=_still_due(item.label, now - keep),
                )
            except UnknownAccount:
                await self._register.reject(
                    request.ref,
                    outcome="Not erased: since the run listed it, the account was reopened, deleted or "
                    "replaced by another.",
                )
                continue
            if isinstance(result, Held):
                # A hold placed since the survey: resumed by a later run once it is released.
                held[result.hold_ref] = held.get(result.hold_ref, 0) + 1
                await self._register.hold(
                    request.ref,
                    hold_ref=result.hold_ref,
                    outcome="A legal hold suspends the deletion of this closed registration.",
                )
                continue
            await self._register.complete(
                request.ref,
                outcome=(
                    f"Erased: the registration was closed {days} days ago and kept {_days(keep)} days. "
                    f"{result.audit_records} audit records no longer name the person."
                ),
                details={"retention_run": ref, **result.summary()},
            )
            done += 1
        return Purged(done, held)


# -- removed content ---------------------------------------------------------------------------------------


class RemovedContentRule:
    """Sealed archives of erased people (and of values corrected under a hold), deleted at
    ``expires_at`` unless a hold covers them.

    The archive's own expiry decides (set when the erasure sealed it from ``retention.removed_content``),
    so shortening the rule later does not shorten what was promised to an investigation.
    """

    data_class = "removed_content"

    def __init__(self, db: Database, *, holds: Holds, keyring: Keyring) -> None:
        """Args:
        db: The database holding ``removed_content``.
        holds: Finds person holds by the archive's subject key.
        keyring: Makes the subject keys of held usernames under every key it holds.
        """
        self._db = db
        self._holds = holds
        self._keyring = keyring

    async def survey(self, now: datetime, keep: timedelta, holds: ActiveHolds) -> Survey:
        query = select(
            RemovedContent.id,
            RemovedContent.ref,
            RemovedContent.pseudonym,
            RemovedContent.subject_key,
            RemovedContent.expires_at,
        ).order_by(RemovedContent.expires_at, RemovedContent.id)
        async with self._db.session() as session:
            with store_errors("cannot read removed content"):
                rows = (await session.execute(query)).all()
        # A hold stores its subject key under the key active when it was placed, an archive under the
        # one active at the erasure: a hold that still names the person is matched under every key,
        # so a keyring rotation in between does not let the archive go.
        by_name = {
            key: reference
            for name, reference in holds.people.items()
            if not name.startswith("[erased:")
            for key in subject_keys(self._keyring, name)
        }
        survey = Survey()
        for row_id, ref, pseudonym, key, expires_at in rows:
            # No pseudonym: the values a correction under a hold replaced, of a person still there.
            item = Item(f"{ref} ([erased:{pseudonym}])" if pseudonym else ref, expires_at, row_id)
            if expires_at > now:
                survey.note_later(item)
                continue
            # A class hold on registration keeps it too: what an erasure or a correction took from a
            # registration (a re-attack run: a correction sealed under such a hold went at its expiry
            # while the hold still stood).
            hold = await self._holds.covering(keys=[key], data_class=(self.data_class, "registration"))
            survey.note_due(item, hold.reference if hold is not None else by_name.get(key))
        return survey

    async def purge(
        self, now: datetime, keep: timedelta, survey: Survey, holds: ActiveHolds, ref: str
    ) -> Purged:
        if not survey.due:
            return Purged(0)
        ids = [int(item.key) for item in survey.due]
        async with self._db.session(write=True) as session:
            with store_errors("cannot delete removed content"):
                gone = (
                    await session.scalars(
                        delete(RemovedContent)
                        .where(RemovedContent.id.in_(ids), RemovedContent.expires_at <= now)
                        .returning(RemovedContent.id)
                    )
                ).all()
                await session.commit()
        return Purged(len(gone))


# -- audit events --------------------------------------------------------------------------------------


class AuditEventsRule:
    """The personal fields of audit records older than the rule (``gateway.audit.erase.erase_expired``)."""

    data_class = "audit_events"

    def __init__(self, db: Database, *, keys: ChainKeys) -> None:
        """Args:
        db: The database holding the chain.
        keys: The chain keys (the erasure record is keyed).
        """
        self._db = db
        self._keys = keys

    async def survey(self, now: datetime, keep: timedelta, holds: ActiveHolds) -> Survey:
        before = now - keep
        found = await expiring(self._db, before=before, spare=frozenset(holds.people))
        survey = Survey()
        class_hold = holds.classes.get(self.data_class)
        for seq, at in found.due:
            survey.note_due(Item(f"record seq {seq}", at + keep, seq), class_hold)
        for name, count in found.spared.items():
            survey.held[holds.people[name]] = survey.held.get(holds.people[name], 0) + count
        # What falls due next: the oldest records still holding personal fields.
        base = (
            AuditEvent.chain_version == ERASABLE_VERSION,
            AuditEvent.at >= before,
            AuditEvent.salts != dump_salts({}),
        )
        async with self._db.session() as session:
            with store_errors("cannot read the audit trail"):
                later = int((await session.execute(select(func.count()).where(*base))).scalar_one())
                rows = (
                    await session.execute(
                        select(AuditEvent.seq, AuditEvent.kind, AuditEvent.at)
                        .where(*base)
                        .order_by(AuditEvent.at, AuditEvent.seq)
                        .limit(NEXT_SHOWN)
                    )
                ).all()
        survey.upcoming = [Item(f"record seq {seq} ({kind})", at + keep, seq) for seq, kind, at in rows]
        survey.later = later
        return survey

    async def purge(
        self, now: datetime, keep: timedelta, survey: Survey, holds: ActiveHolds, ref: str
    ) -> Purged:
        if not survey.due:
            return Purged(0)
        # Selected again under the chain lock (the survey only decided that there is work), sparing
        # the same people; what the holds spared is already in the survey.
        result, _ = await erase_expired(
            self._db,
            self._keys,
            at=now,
            before=now - keep,
            actor=ACTOR,
            request_ref=ref,
            spare=frozenset(holds.people),
        )
        return Purged(len(result.erased) if result is not None else 0)


# -- incidents ------------------------------------------------------------------------------------------

#: How a survey's item key tells an incident record (``case:inc-…``) from a detection (``inc-…``).
_CASE: Final = "case:"


class IncidentsRule:
    """Incidents: the threat domain's detections (fast state), deleted once older than the rule, and
    incident records (``incident_cases`` with their timeline), deleted once closed longer than the rule.

    An open incident record is never due, however old: it is still being worked on. A record is kept by
    a class hold on ``incidents`` or a person hold on any of its affected users (by name, or by the
    pseudonym an erasure wrote there). Deleting a record breaks nothing the audit chain verifies (see
    :mod:`gateway.response.personal_data`), so it is deleted rather than pseudonymised.
    """

    data_class = "incidents"

    def __init__(self, incidents: IncidentStore, records: IncidentRecords) -> None:
        """Args:
        incidents: The detections of the fast state every replica shares.
        records: The incident records of the database (incident response's cases).
        """
        self._incidents = incidents
        self._records = records

    async def survey(self, now: datetime, keep: timedelta, holds: ActiveHolds) -> Survey:
        class_hold = holds.classes.get(self.data_class)
        items: list[tuple[Item, str | None]] = []
        for incident in await self._incidents.latest(MAX_INCIDENTS):
            item = Item(
                f"{incident.id} ({incident.rule})",
                datetime.fromtimestamp(incident.at, UTC) + keep,
                incident.id,
            )
            items.append((item, class_hold or holds.person(incident.subject)))
        for case in await self._records.closed_cases():
            item = Item(
                f"incident record {case.id} (closed {case.closed_at:%Y-%m-%d})",
                case.closed_at + keep,
                _CASE + case.id,
            )
            person = next((h for h in map(holds.person, case.affected_users) if h is not None), None)
            items.append((item, class_hold or person))
        survey = Survey()
        for item, hold in sorted(items, key=lambda pair: (pair[0].due_at, str(pair[0].key))):
            if item.due_at > now:
                survey.note_later(item)
            else:
                survey.note_due(item, hold)
        return survey

    async def purge(
        self, now: datetime, keep: timedelta, survey: Survey, holds: ActiveHolds, ref: str
    ) -> Purged:
        keys = [str(item.key) for item in survey.due]
        detections = await self._incidents.remove([k for k in keys if not k.startswith(_CASE)])
        deleted = await self._records.delete_closed(
            [k.removeprefix(_CASE) for k in keys if k.startswith(_CASE)], closed_before=now - keep
        )
        parts = {"detections": detections, "records": deleted.cases, "record_entries": deleted.entries}
        return Purged(detections + deleted.cases, parts=parts)


# -- the request register ------------------------------------------------------------------------------


class RequestsRule:
    """Completed and rejected register rows, deleted once completed longer than the rule ago."""

    data_class = "privacy_requests"

    def __init__(self, db: Database) -> None:
        """Args:
        db: The database holding the register.
        """
        self._db = db

    async def survey(self, now: datetime, keep: timedelta, holds: ActiveHolds) -> Survey:
        query = (
            select(PrivacyRequest.id, PrivacyRequest.ref, PrivacyRequest.subject, PrivacyRequest.completed_at)
            .where(_closed(), PrivacyRequest.completed_at.is_not(None))
            .order_by(PrivacyRequest.completed_at, PrivacyRequest.id)
        )
        async with self._db.session() as session:
            with store_errors("cannot read the privacy register"):
                rows = (await session.execute(query)).all()
        survey = Survey()
        for row_id, ref, subject, completed_at in rows:
            if completed_at is None:  # not selected; the column is nullable
                continue
            item = Item(ref, completed_at + keep, row_id)
            if item.due_at > now:
                survey.note_later(item)
                continue
            survey.note_due(item, holds.classes.get(self.data_class) or holds.person(subject))
        return survey

    async def purge(
        self, now: datetime, keep: timedelta, survey: Survey, holds: ActiveHolds, ref: str
    ) -> Purged:
        if not survey.due:
            return Purged(0)
        ids = [int(item.key) for item in survey.due]
        async with self._db.session(write=True) as session:
            with store_errors("cannot delete privacy requests"):
                gone = (
                    await session.scalars(
                        delete(PrivacyRequest)
                        .where(
                            PrivacyRequest.id.in_(ids),
                            _closed(),
                            PrivacyRequest.completed_at <= now - keep,
                        )
                        .returning(PrivacyRequest.id)
                    )
                ).all()
                await session.commit()
        return Purged(len(gone))


def _closed() -> ColumnElement[bool]:
    return PrivacyRequest.status.in_([str(Status.COMPLETED), str(Status.REJECTED)])
