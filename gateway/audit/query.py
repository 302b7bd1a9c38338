"""Finding audit records: by actor, subject, kind, outcome and time, newest first, a page at a time.

One query for every reader of the trail (``gateway audit list`` and the admin console's Audit page),
so both answer the same filter with the same records. Pages are cut by chain position (``seq``), not
by offset: a record appended while an admin pages back does not shift the next page.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

from sqlalchemy import Select, select

from gateway.audit.chain import ChainRecord
from gateway.audit.models import AuditEvent
from gateway.store.db import Database, store_errors

__all__ = ["AuditFilter", "find_records", "parse_time"]

_Query = TypeVar("_Query", bound=Select[Any])
# ``kind`` ending in this matches every kind it starts with (``admin.*``).
_PREFIX_MARK: Final = "*"


def parse_time(text: str) -> datetime:
    """An ISO 8601 time, UTC when no offset is given (a date alone means its midnight).

    Raises:
        ValueError: Not an ISO 8601 time; the message gives an example.
    """
    try:
        parsed = datetime.fromisoformat(text.strip())
        # In UTC now: the store compares UTC times, and an offset can carry a time at either end of
        # the calendar out of it (0001-01-01T00:00+23:59 made the query fail with a 500).
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        raise ValueError(
            f"{text!r} is not an ISO 8601 time (e.g. 2026-12-01 or 2026-12-01T08:00:00Z)"
        ) from None


@dataclass(frozen=True, slots=True)
class AuditFilter:
    """Which records: every given field must match (``None`` matches anything).

    ``kind`` is exact, or a prefix when it ends with ``*`` (``admin.*``); ``since`` is inclusive and
    ``until`` exclusive, as for ``gateway audit export``; ``before_seq`` starts the page below that
    chain position (the cursor of the previous page).
    """

    actor: str | None = None
    subject: str | None = None
    kind: str | None = None
    outcome: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    before_seq: int | None = None

    def apply(self, query: _Query) -> _Query:
        """``query`` narrowed to this filter."""
        if self.actor is not None:
            query = query.where(AuditEvent.actor == self.actor)
        if self.subject is not None:
            query = query.where(AuditEvent.subject == self.subject)
        if self.kind is not None:
            if self.kind.endswith(_PREFIX_MARK):
                prefix = self.kind.removesuffix(_PREFIX_MARK)
                # startswith with autoescape: a % or _ in the prefix is matched literally.
                query = query.where(AuditEvent.kind.startswith(prefix, autoescape=True))
            else:
                query = query.where(AuditEvent.kind == self.kind)
        if self.outcome is not None:
            query = query.where(AuditEvent.outcome == self.outcome)
        if self.since is not None:
            query = query.where(AuditEvent.at >= self.since)
        if self.until is not None:
            query = query.where(AuditEvent.at < self.until)
        if self.before_seq is not None:
            query = query.where(AuditEvent.seq < self.before_seq)
        return query


async def find_records(db: Database, where: AuditFilter, *, limit: int) -> list[ChainRecord]:
    """The newest ``limit`` records matching ``where``, highest chain position first.

    Callers bound ``limit`` for their audience (the console's pages, the CLI's ``--limit``).

    Raises:
        ValueError: ``limit`` is less than 1.
        StoreUnavailable: The database cannot be read.
    """
    if limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit}")
    query = where.apply(select(AuditEvent)).order_by(AuditEvent.seq.desc()).limit(limit)
    with store_errors("audit trail"):
        async with db.session() as session:
            return [ChainRecord.of(row) for row in (await session.scalars(query)).all()]
