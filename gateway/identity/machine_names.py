"""Names people and service accounts share: one namespace for what the applications are told.

A request with an API token reaches the application as ``X-Gateway-User: <service account>`` and an
assertion whose ``sub`` is that name, exactly as a person's request does with the person's username.
So a service account and a person of the same name would be one identity to every application that
reads the header or ``sub`` (an attack run made a service account ``alice`` with role ``boss`` and got
the person alice's identity at the app). Neither may take a name the other holds: the person's side
asks here; the machine side (``gateway.machine.accounts``) asks the users table itself.

The table is named here, not imported: service accounts are a layer above identity.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import column, select, table
from sqlalchemy.ext.asyncio import AsyncSession

__all__ = ["service_account_names"]

_SERVICE_ACCOUNTS = table("service_accounts", column("name"))


async def service_account_names(session: AsyncSession, names: Iterable[str]) -> set[str]:
    """Which of ``names`` (canonical) a service account holds."""
    wanted = sorted(set(names))
    if not wanted:
        return set()
    found = await session.scalars(
        select(_SERVICE_ACCOUNTS.c.name).where(_SERVICE_ACCOUNTS.c.name.in_(wanted))
    )
    return set(found)
