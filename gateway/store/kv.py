"""One value of the ``kv_settings`` table: read it, and write it (created or replaced).

Small switches kept beside the fast state so a node cut off from Redis, or a Redis that lost them,
still has them (the lockdown switch, the address block list): each keeps its own key and encoding.
"""

from __future__ import annotations

from datetime import datetime

from gateway.store.db import Database, store_errors
from gateway.store.models import KvSetting

__all__ = ["read_kv", "read_kv_or_none", "write_kv"]


async def read_kv(db: Database, key: str, *, what: str) -> str | None:
    """The value under ``key``, or None when there is none.

    Raises:
        StoreUnavailable: The database cannot be read (``what`` names it in the message).
    """
    async with db.session() as session:
        with store_errors(f"cannot read {what}"):
            row = await session.get(KvSetting, key)
    return None if row is None else row.value


async def read_kv_or_none(db: Database | None, key: str, *, what: str) -> str | None:
    """:func:`read_kv`, and None also without a database or when it cannot be read: for a copy kept
    beside the fast state, whose reader keeps what it knew when neither answers."""
    if db is None:
        return None
    try:
        return await read_kv(db, key, what=what)
    except Exception:  # noqa: BLE001 - the database down too
        return None


async def write_kv(db: Database, key: str, value: str, *, at: datetime, what: str) -> None:
    """Store ``value`` under ``key`` (created, or replacing what is there).

    Raises:
        StoreUnavailable: The database cannot be written (``what`` names it in the message).
    """
    async with db.session(write=True) as session:
        with store_errors(f"cannot store {what}"):
            row = await session.get(KvSetting, key)
            if row is None:
                session.add(KvSetting(key=key, value=value, updated_at=at))
            else:
                row.value, row.updated_at = value, at
            await session.commit()
