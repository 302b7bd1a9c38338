"""Names people and service accounts share: one namespace for what the applications are told.

A request with an API token reaches the application as ``X-Gateway-User: <service account>`` and an
assertion whose ``sub`` is that name, exactly as a person's request does with the person's username.
So a service account and a person of the same name would be one identity to every application that
reads the header or ``sub`` (an attack run made a service account ``alice`` with role ``boss`` and got
the person alice's identity at the app). Neither may take a name the other holds: the person's side
asks here; the machine side (``gateway.machine.accounts``) asks the users table itself.

The table is named here, not imported: service accounts are a layer above identity.

Checking the other table and inserting into one's own must happen under one lock, or a person and a
service account created at the same moment both find the name free (an attack run got ``race3`` as
both, one try in six): every creation takes :func:`hold_names` in its writing transaction, then checks
both tables, then inserts.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import column, select, table
from sqlalchemy.ext.asyncio import AsyncSession

__all__ = ["hold_names", "policy_names", "service_account_names"]

# Arbitrary, fixed key for pg_advisory_xact_lock; distinct from the chain, signing and migration locks.
_PG_NAMES_LOCK = 7_204_118_993_051

_SERVICE_ACCOUNTS = table("service_accounts", column("name"))
# The live policy's lines (gateway.authz, a layer above): who a line names is v0 (p and g lines).
_POLICY_RULES = table("policy_rules", column("v0"))


async def service_account_names(session: AsyncSession, names: Iterable[str]) -> set[str]:
    """Which of ``names`` (canonical) a service account holds."""
    wanted = sorted(set(names))
    if not wanted:
        return set()
    found = await session.scalars(
        select(_SERVICE_ACCOUNTS.c.name).where(_SERVICE_ACCOUNTS.c.name.in_(wanted))
    )
    return set(found)


async def policy_names(session: AsyncSession, names: Iterable[str]) -> set[str]:
    """Which of ``names`` (canonical usernames) the live policy names as ``user:<name>``: the rules
    written for a person who has no account yet. A name a new person chose (an identity provider's
    ``preferred_username``) would inherit them (an attack run got ``g, user:bob, finance-admin``
    by signing in as "Bob")."""
    wanted = {f"user:{name}": name for name in names}
    if not wanted:
        return set()
    found = await session.scalars(
        select(_POLICY_RULES.c.v0).where(_POLICY_RULES.c.v0.in_(sorted(wanted))).distinct()
    )
    return {wanted[principal] for principal in found}


async def hold_names(session: AsyncSession) -> None:
    """Take the lock under which names are checked in both tables and taken, until this transaction
    ends: PostgreSQL's transaction-scoped advisory lock; on SQLite the session must be a writing one
    (``BEGIN IMMEDIATE`` already holds the database's write lock). Creations are rare: one lock for all
    names costs nothing that matters, where one per name would miss an OIDC sign-in's candidates."""
    connection = await session.connection()
    if connection.dialect.name == "postgresql":
        await connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_NAMES_LOCK})")
