"""What the privacy engine needs from incident response's records, on the floor above this one.

The incident records (``incident_cases`` and their timeline, ``incident_entries``) belong to
``gateway.response``, which builds on this package; so this package says what it needs as a protocol
and the composition root passes the implementation in
(:class:`gateway.response.personal_data.CasePersonalData`):

* the **closed** cases, for the ``incidents`` retention rule (an open case is never due);
* their deletion with their timeline, each case checked again to be closed long enough;
* a person's username and email replaced by their erasure tombstone everywhere in both tables.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

__all__ = ["CasesDeleted", "ClosedCase", "IncidentRecords"]


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

    async def pseudonymise(self, names: Sequence[str], tombstone: str) -> int:
        """Replace every mention of ``names`` (a person's username and email) by ``tombstone`` in every
        case and entry (:class:`gateway.privacy.mentions.Mentions`); how many rows changed.

        Raises:
            StoreUnavailable: the database cannot answer; nothing was changed.
        """
        ...
