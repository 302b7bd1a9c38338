"""Claiming a period's work: the first process to insert the period's row does it, every other skips.

Every worker of every replica tries each period of a scheduled job (a backup, a retention run). The
period's row, under a unique column, is the claim: looked up first (a unique violation should be the
race's answer, not every worker's), then inserted; of two inserts at once the database keeps one and
the other gets IntegrityError. One function, so both jobs claim the same way on SQLite and PostgreSQL.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import InstrumentedAttribute

from gateway.store.db import Database, store_errors
from gateway.store.models import Base

__all__ = ["insert_once"]


async def insert_once(db: Database, row: Base, unique: InstrumentedAttribute[str], *, what: str) -> bool:
    """Insert ``row`` unless a row already has its value of the ``unique`` column; whether this call did.

    Args:
        db: The store.
        row: The new row (its ``unique`` attribute set).
        unique: The unique column that names the period, e.g. ``BackupRun.period``.
        what: For the error of an unreachable store ("cannot claim <what>").

    Raises:
        StoreUnavailable: The database cannot be reached.
    """
    value = getattr(row, unique.key)
    async with db.session(write=True) as session:
        with store_errors(f"cannot claim {what}"):
            if (await session.scalars(select(unique).where(unique == value))).first() is not None:
                return False
            session.add(row)
            try:
                await session.commit()
            except IntegrityError:
                return False
    return True
