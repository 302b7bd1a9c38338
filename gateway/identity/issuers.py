"""Who issued an account's credentials, and the accounts one person may hold through them.

An admin who set an account's password, sent its invitation link or set the email address an identity
provider's sign-in finds it by may hold that account; so may whoever holds an account that did so. Under
``admin.approvals: 2`` all of them count as one approver (``AccountService.lineage``). Every issuer is
kept (``credential_issuers``): what one admin issued may still work after another admin issued
something else, and no later change can be told apart from the issuer's own.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.identity.models import CredentialIssuer
from gateway.store.db import Database, store_errors

__all__ = ["bridge", "lineage", "note_issuer"]


async def note_issuer(session: AsyncSession, user_id: int, issuer_id: int) -> None:
    """Record in ``session``'s transaction that ``issuer_id`` issued credentials of ``user_id``; a pair
    already recorded, also by a concurrent transaction, stays one row."""
    values = {"user_id": user_id, "issuer_id": issuer_id}
    dialect = (await session.connection()).dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    await session.execute(insert(CredentialIssuer).values(**values).on_conflict_do_nothing())


async def lineage(db: Database, user_id: int) -> frozenset[int]:
    """``user_id``, every account that issued its credentials, every account that issued theirs, and so
    on; a generation at a time, in one read transaction. Not cut short: a lineage cut at some length
    would let a long enough chain of accounts approve for its first (approvals are rare; each
    generation is one query)."""
    seen = {user_id}
    generation = {user_id}
    async with db.session() as session:
        with store_errors("cannot read who issued the account's credentials"):
            while generation:
                issuers = await session.scalars(
                    select(CredentialIssuer.issuer_id).where(CredentialIssuer.user_id.in_(generation))
                )
                generation = set(issuers) - seen
                seen |= generation
    return frozenset(seen)


async def bridge(session: AsyncSession, user_id: int) -> None:
    """Before ``user_id`` is deleted (its rows go with it), in ``session``'s transaction: link every
    account it issued credentials of to every account that issued its own, so a lineage does not break
    where it passed through it (a re-attack run: an admin made a helper, the helper made a third
    account, the helper erased itself, and the third account approved the admin's proposal)."""
    issued = set(
        await session.scalars(select(CredentialIssuer.user_id).where(CredentialIssuer.issuer_id == user_id))
    )
    issuers = set(
        await session.scalars(select(CredentialIssuer.issuer_id).where(CredentialIssuer.user_id == user_id))
    )
    for account in issued:
        for issuer in issuers - {account}:
            await note_issuer(session, account, issuer)
