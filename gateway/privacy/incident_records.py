"""What the privacy engine needs from incident response's records, on the floor above this one.

The incident records (``incident_cases`` and their timeline, ``incident_entries``) belong to
``gateway.response``, which builds on this package; so this package says what it needs as a protocol
and the composition root passes the implementation in
(:class:`gateway.response.personal_data.CasePersonalData`):

* the **closed** cases, for the ``incidents`` retention rule (an open case is never due);
* their deletion with their timeline, each case checked again to be closed long enough;
* a person's username and email replaced by their erasure tombstone in both tables (:class:`Erasing`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from gateway.clock import as_utc
from gateway.identity.names import fold
from gateway.privacy.mentions import Mentions

__all__ = ["CasesDeleted", "ClosedCase", "Erasing", "IncidentRecords"]


@dataclass(frozen=True, slots=True)
class ClosedCase:
    """A closed incident record: its id, when it closed, and whom it names as affected."""

    id: str
    closed_at: datetime
    affected_users: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class CasesDeleted:
    """What a deletion removed: incident records, and their timeline entries with them."""

    cases: int
    entries: int


@dataclass(frozen=True, slots=True)
class Erasing:
    """Whose mentions an erasure replaces in the incident records, and which records it leaves.

    ``since``: when the account was made. A record written before is not about this account: an attack
    run erased an account made under another person's former email address, and that person's
    incident records, written before, were rewritten as the erased one's. ``held``: the usernames under
    an active legal hold; a record about one of them is kept as it is (the hold wins, GDPR Art.
    17(3)(e)), whoever else it names.
    """

    username: str
    email: str | None
    since: datetime
    held: frozenset[str] = frozenset()

    def mentions(self, tombstone: str) -> Mentions:
        """The person's mentions, their email address told as one."""
        emails = [self.email] if self.email else []
        return Mentions([self.username, *emails], tombstone, emails=emails)

    def wrote(self, at: datetime) -> bool:
        """Whether a record written ``at`` may be about this account (not before it was made)."""
        return as_utc(at) >= as_utc(self.since)

    def keeps(self, people: Iterable[str]) -> bool:
        """Whether a record about ``people`` stays as it is: one of them is under a legal hold."""
        return any(fold(p) in self.held for p in people if p)


class IncidentRecords(Protocol):
    """The incident records as the retention rule and the eraser see them."""

    async def closed_cases(self) -> list[ClosedCase]:
        """Every closed case, the longest closed first.

        Raises:
            StoreUnavailable: the database cannot answer.
        """
        ...

    async def delete_closed(self, ids: Sequence[str], *, closed_before: datetime) -> CasesDeleted:
        """Delete those of ``ids`` that are closed and closed at or before ``closed_before``, with their
        timeline entries (a case reopened or closed later meanwhile, or deleted already, is skipped:
        repeated or concurrent calls remove nothing twice).

        Raises:
            StoreUnavailable: the database cannot answer; nothing was deleted.
        """
        ...

    async def pseudonymise(self, person: Erasing, tombstone: str) -> int:
        """Replace every mention of ``person`` by ``tombstone`` in the cases and entries written since
        their account was made, but those about a person under a legal hold
        (:class:`gateway.privacy.mentions.Mentions`); how many rows changed.

        Raises:
            StoreUnavailable: the database cannot answer; nothing was changed.
        """
        ...
