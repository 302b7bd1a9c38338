"""When this deployment first started: the ``instance`` row, written once by whichever process gets there first."""

from __future__ import annotations

import contextlib
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from gateway.store.db import Database, store_errors
from gateway.store.models import Instance

__all__ = ["born"]


async def born(db: Database, now: datetime) -> datetime:
    """The deployment's first start, recording ``now`` as such if no process has yet.

    Raises:
        StoreUnavailable: The database failed.
    """
    with store_errors("cannot read the instance row"):
        async with db.session() as session:
            created = await session.scalar(select(Instance.created_at).where(Instance.id == 1))
        if created is not None:
            return created
        async with db.session() as session:
            session.add(Instance(id=1, created_at=now, schema_note="first start"))
            # Another process may write it first (the row's single-row check): theirs stands.
            with contextlib.suppress(IntegrityError):
                await session.commit()
        async with db.session() as session:
            created = await session.scalar(select(Instance.created_at).where(Instance.id == 1))
    return created or now
