"""What a person owns besides their account: the service accounts that name them as owner.

A service account's ``owner`` is free text (a person or a team, ``ops@example.com``), and its
description may name the owner too. Both are the person's data once they name them: the export lists
those service accounts, and an erasure replaces the mentions by the tombstone (an attack run found an
erased person's email address, and so the person, in a service account's owner and description, and
in the record of its creation, which :func:`gateway.audit.erase.erase_person` now erases too).

Matched as the incident records are (:class:`gateway.privacy.mentions.Mentions`, unambiguous): an
owner that is wholly the person's username or email address, and the email address anywhere; a bare
username inside a description may be a common word and stays. Never by the display name: the person
sets it themselves, so it proves nothing. An attack run renamed itself "Platform Team" in the portal,
exported that team's service account, and its erasure replaced the team's ownership and the details of
the admin's record of the account's creation. A service account whose owner is written as a person's
display name keeps it after their erasure; an admin corrects it (``gateway service-account``).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from gateway.clock import as_utc
from gateway.identity.names import fold
from gateway.machine.models import ServiceAccount
from gateway.privacy.mentions import Mentions
from gateway.store.db import Database, store_errors

__all__ = ["forget_ownership", "owned_by"]


async def owned_by(db: Database, username: str, email: str | None) -> list[dict[str, Any]]:
    """The service accounts whose owner is the person (their username or email address, wholly), for
    the export: name, description, owner, when created."""
    names = {fold(n) for n in (username, email) if n}
    with store_errors("cannot read the service accounts"):
        async with db.session() as session:
            rows = (await session.scalars(select(ServiceAccount).order_by(ServiceAccount.id))).all()
    return [_owned(row) for row in rows if fold(row.owner.strip()) in names]


def _owned(row: ServiceAccount) -> dict[str, Any]:
    return {
        "name": row.name,
        "description": row.description,
        "owner": row.owner,
        "created_at": as_utc(row.created_at).isoformat(),
    }


async def forget_ownership(db: Database, mentions: Mentions) -> int:
    """Replace the person's mentions in every service account's owner and description; return how many
    service accounts changed."""
    unambiguous = mentions.unambiguous()
    changed = 0
    with store_errors("cannot change the service accounts"):
        async with db.session(write=True) as session:
            for row in (await session.scalars(select(ServiceAccount))).all():
                owner, description = unambiguous.text(row.owner), unambiguous.text(row.description)
                if (owner, description) != (row.owner, row.description):
                    row.owner, row.description = owner, description
                    changed += 1
            await session.commit()
    return changed
