"""Legal holds: a court or government order (or counsel) that suspends deletion.

A hold covers a person (found by their subject key, also after erasure) or a whole data class
(``registration``, ``removed_content``, ``audit_events``, ``incidents``, ``privacy_requests``). While
an active hold covers something, neither an erasure nor the retention run deletes it; the erasure
request stays ``on_hold`` and names the hold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from datetime import datetime
from typing import Final

from sqlalchemy import ColumnElement, and_, or_, select

from gateway.audit.trail import AuditLog
from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.crypto.keyring import Keyring
from gateway.errors import BadRequest, GatewayError
from gateway.identity.models import User
from gateway.names import hidden_character
from gateway.privacy.models import LegalHold
from gateway.privacy.subjects import subject_key, subject_keys
from gateway.store.db import Database, store_errors

__all__ = [
    "DATA_CLASSES",
    "CarriedHolds",
    "HoldExists",
    "HoldRecord",
    "HoldView",
    "Holds",
    "UnknownHold",
    "hold_reference",
    "stored_holds",
]

#: The data classes a class hold (and the retention engine) knows.
DATA_CLASSES: Final = ("registration", "removed_content", "audit_events", "incidents", "privacy_requests")


# Besides letters and digits of any script: what case numbers are written with. Not "/", "\\", "%",
# "?" or ";": the release URL names the hold in one path segment, which the admin listener refuses
# to read in any other spelling than the canonical one.
_REFERENCE_PUNCTUATION: Final = frozenset(" ._:#()+-,")


def hold_reference(reference: str) -> str:
    """A hold's reference as stored and looked up: without surrounding blanks, checked.

    Every reference accepted can be released through the console's URL as well as the CLI, and reads
    as what it is. An attack run placed holds named ``..``, ``.``, ``LH\\9`` and ``LH-1`` with a
    zero-width space that the console could never release (a person's erasure held until someone ran
    the CLI on the host), and a right-to-left override and terminal control characters that made
    look-alikes of real references in the register and the audit trail.

    Raises:
        BadRequest: Empty, over 200 characters, only dots, or a character other than a letter, a
            digit or one of `` ._:#()+-,``.
    """
    reference = reference.strip()
    if not reference or len(reference) > 200:
        raise BadRequest("A legal hold needs a reference of at most 200 characters.")
    odd = next((c for c in reference if not c.isalnum() and c not in _REFERENCE_PUNCTUATION), None)
    if odd is None:
        odd = hidden_character(reference)
    if odd is not None:
        raise BadRequest(
            f"A legal hold's reference may hold letters, digits, spaces and . _ : # ( ) + - , only; "
            f"it has {odd!r} (U+{ord(odd):04X}). Write a '/' of a case number as '-'."
        )
    if set(reference) == {"."}:
        raise BadRequest("A legal hold's reference cannot be only dots.")
    return reference


class UnknownHold(GatewayError):
    """No active hold has that reference (404)."""

    status = 404
    reason = "unknown-legal-hold"
    title = "No such legal hold"


class HoldExists(GatewayError):
    """A hold with that reference exists already (409): references name one order each."""

    status = 409
    reason = "legal-hold-exists"
    title = "A legal hold with that reference exists"


@dataclass(frozen=True, slots=True)
class HoldView:
    """One hold as the API and CLI show it (never the subject key)."""

    reference: str
    scope: str
    subject: str
    data_class: str
    reason: str
    placed_by: str
    placed_at: datetime
    released_by: str
    released_at: datetime | None

    @classmethod
    def of(cls, row: LegalHold) -> HoldView:
        """The view of a stored row."""
        return cls(
            row.reference,
            row.scope,
            row.subject,
            row.data_class,
            row.reason,
            row.placed_by,
            row.placed_at,
            row.released_by,
            row.released_at,
        )

    @property
    def active(self) -> bool:
        """Not released."""
        return self.released_at is None

    def to_json(self) -> dict[str, object]:
        """JSON-ready."""
        return {
            "reference": self.reference,
            "scope": self.scope,
            "subject": self.subject,
            "data_class": self.data_class,
            "reason": self.reason,
            "placed_by": self.placed_by,
            "placed_at": self.placed_at.isoformat(),
            "released_by": self.released_by,
            "released_at": self.released_at.isoformat() if self.released_at else None,
            "active": self.active,
        }


@dataclass(frozen=True, slots=True)
class HoldRecord:
    """One hold as stored, its subject key included: what a restore carries from the node it replaces
    into the restored database (:meth:`Holds.carry`)."""

    reference: str
    scope: str
    subject_key: str
    subject: str
    data_class: str
    reason: str
    placed_by: str
    placed_at: datetime
    released_by: str
    released_at: datetime | None

    @property
    def active(self) -> bool:
        """Not released."""
        return self.released_at is None


# A LegalHold row's columns but its id, as HoldRecord carries them.
_RECORDED: Final = tuple(f.name for f in fields(HoldRecord))


@dataclass(frozen=True, slots=True)
class CarriedHolds:
    """What :meth:`Holds.carry` changed: the references of the holds placed again, and released."""

    placed: list[str]
    released: list[str]


async def stored_holds(db: Database) -> list[HoldRecord]:
    """Every hold in ``db``, oldest first.

    Raises:
        StoreUnavailable: The holds cannot be read.
    """
    async with db.session() as session:
        with store_errors("cannot read legal holds"):
            rows = (await session.scalars(select(LegalHold).order_by(LegalHold.id))).all()
    return [HoldRecord(**{name: getattr(r, name) for name in _RECORDED}) for r in rows]


class Holds:
    """Places, releases and finds legal holds."""

    def __init__(
        self, db: Database, keyring: Keyring, audit: AuditLog, *, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        """Args:
        db: The database holding ``legal_holds``.
        keyring: Makes the subject keys.
        audit: Where placing and releasing are recorded (``privacy.hold.placed|released``), whichever
            channel (CLI, console) did it.
        clock: Time source.
        """
        self._db = db
        self._keyring = keyring
        self._audit = audit
        self._clock = clock

    async def place(
        self,
        reference: str,
        *,
        reason: str,
        by: str,
        username: str | None = None,
        data_class: str | None = None,
    ) -> HoldView:
        """Place a hold on a person (``username``, canonical) or a data class; exactly one of them.

        Raises:
            BadRequest: Neither or both given, an unknown class, or an empty reference/reason.
            HoldExists: The reference is taken.
        """
        reference, reason = hold_reference(reference), reason.strip()
        if not reason:
            raise BadRequest("A legal hold needs a reason.")
        if (username is None) == (data_class is None):
            raise BadRequest("A legal hold covers either a person (username) or a data class, not both.")
        if data_class is not None and data_class not in DATA_CLASSES:
            raise BadRequest(
                f"Unknown data class {data_class[:40]!r}; expected one of {', '.join(DATA_CLASSES)}."
            )
        row = LegalHold(
            reference=reference,
            scope="person" if username is not None else "class",
            subject_key=subject_key(self._keyring, username) if username is not None else "",
            subject=username or "",
            data_class=data_class or "",
            reason=reason,
            placed_by=by,
            placed_at=self._clock.now(),
            released_by="",
            released_at=None,
        )
        async with self._db.session(write=True) as session:
            with store_errors("cannot read legal holds"):
                taken = (
                    await session.scalars(select(LegalHold.id).where(LegalHold.reference == reference))
                ).first()
            if taken is not None:
                raise HoldExists(f"A legal hold with reference {reference!r} exists already.")
            session.add(row)
            with store_errors("cannot place the legal hold"):
                await session.commit()
        await self._audit.record(
            "privacy.hold.placed",
            actor=by,
            subject=row.subject,
            details={"reference": row.reference, "data_class": row.data_class, "reason": row.reason},
        )
        return HoldView.of(row)

    async def release(self, reference: str, *, by: str) -> HoldView:
        """Release an active hold; what it held is deleted by the next retention run if due.

        Raises:
            UnknownHold: No active hold has that reference.
        """
        # Looked up as placed (without surrounding blanks), but not checked: a hold placed before the
        # reference rule must still be released.
        reference = reference.strip()
        async with self._db.session(write=True) as session:
            with store_errors("cannot release the legal hold"):
                row = (
                    await session.scalars(
                        select(LegalHold).where(
                            LegalHold.reference == reference, LegalHold.released_at.is_(None)
                        )
                    )
                ).first()
                if row is None:
                    raise UnknownHold(f"No active legal hold has reference {reference[:200]!r}.")
                row.released_at = self._clock.now()
                row.released_by = by
                await session.commit()
        await self._audit.record(
            "privacy.hold.released",
            actor=by,
            subject=row.subject,
            details={"reference": row.reference, "data_class": row.data_class},
        )
        return HoldView.of(row)

    async def carry(self, node: Sequence[HoldRecord], *, by: str, why: str) -> CarriedHolds:
        """Make this (restored) database's holds follow ``node``'s, the holds of the database it
        replaces: a hold active there that this one lacks is placed again as it was (reference, scope,
        subject and subject key, class, reason, who placed it and when); one released there and active
        here is released as it was there. A release is final, so a hold this database has released
        stays released, and one only this database has stays as it is. Each change is recorded
        (``privacy.hold.placed|released`` by ``by``, ``why`` in its details).

        An attack run restored a backup from before two holds were placed: the restored database had
        neither, and the next retention run anonymised what one of them held.
        """
        async with self._db.session(write=True) as session:
            with store_errors("cannot carry the legal holds across the restore"):
                here = {row.reference: row for row in (await session.scalars(select(LegalHold))).all()}
                placed: list[HoldRecord] = []
                released: list[LegalHold] = []
                for hold in node:
                    row = here.get(hold.reference)
                    if row is None and hold.active:
                        session.add(LegalHold(**asdict(hold)))
                        placed.append(hold)
                    elif row is not None and row.released_at is None and not hold.active:
                        row.released_at, row.released_by = hold.released_at, hold.released_by
                        released.append(row)
                await session.commit()
        for hold in placed:
            await self._audit.record(
                "privacy.hold.placed",
                actor=by,
                subject=hold.subject,
                details={
                    "reference": hold.reference,
                    "data_class": hold.data_class,
                    "reason": hold.reason,
                    "placed_by": hold.placed_by,
                    "placed_at": hold.placed_at.isoformat(),
                    "carried": why,
                },
            )
        for row in released:
            await self._audit.record(
                "privacy.hold.released",
                actor=by,
                subject=row.subject,
                details={
                    "reference": row.reference,
                    "data_class": row.data_class,
                    "released_by": row.released_by,
                    "carried": why,
                },
            )
        return CarriedHolds([h.reference for h in placed], [r.reference for r in released])

    async def find(self, *, active_only: bool = False) -> list[HoldView]:
        """Every hold, newest first."""
        query = select(LegalHold).order_by(LegalHold.id.desc())
        if active_only:
            query = query.where(LegalHold.released_at.is_(None))
        async with self._db.session() as session:
            with store_errors("cannot read legal holds"):
                rows = (await session.scalars(query)).all()
        return [HoldView.of(r) for r in rows]

    async def covering(
        self,
        *,
        username: str | None = None,
        keys: list[str] | None = None,
        data_class: str | Sequence[str] | None = None,
        placed_by: datetime | None = None,
    ) -> HoldView | None:
        """The first active hold on this person (by name or subject keys) or on ``data_class`` (one
        class, or any of several); with ``placed_by``, only one placed by then."""
        wanted = list(keys or [])
        if username is not None:
            wanted += subject_keys(self._keyring, username)
        clauses: list[ColumnElement[bool]] = []
        if wanted:
            clauses.append(LegalHold.subject_key.in_(wanted))
        if data_class is not None:
            classes = [data_class] if isinstance(data_class, str) else list(data_class)
            clauses.append(and_(LegalHold.scope == "class", LegalHold.data_class.in_(classes)))
        if not clauses:
            return None
        query = select(LegalHold).where(LegalHold.released_at.is_(None), or_(*clauses)).order_by(LegalHold.id)
        if placed_by is not None:
            query = query.where(LegalHold.placed_at <= placed_by)
        async with self._db.session() as session:
            with store_errors("cannot read legal holds"):
                row = (await session.scalars(query)).first()
        return HoldView.of(row) if row is not None else None

    async def emails_of(self, usernames: list[str]) -> dict[str, str]:
        """The email address of each of these accounts that has one (username -> email)."""
        if not usernames:
            return {}
        async with self._db.session() as session:
            with store_errors("cannot read accounts"):
                rows = (
                    await session.execute(
                        select(User.username, User.email).where(
                            User.username.in_(usernames), User.email.is_not(None)
                        )
                    )
                ).all()
        return {username: email for username, email in rows if email}

    async def pseudonymise(self, username: str, pseudonym: str) -> None:
        """Replace the erased person's name in the holds' ``subject`` (their subject key stays)."""
        async with self._db.session(write=True) as session:
            with store_errors("cannot update legal holds"):
                for row in (
                    await session.scalars(select(LegalHold).where(LegalHold.subject == username))
                ).all():
                    row.subject = pseudonym
                await session.commit()
