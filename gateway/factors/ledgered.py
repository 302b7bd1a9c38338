"""Second factors in the account ledger: a factor removed or a recovery code spent stays so after a restore.

A person takes a lost phone's authenticator app or a stolen security key off their account, or spends a
recovery code someone may have seen; a database restored from a backup made before that has the factor
or the unused code again. The factor services note each such change in the ledger
(:mod:`gateway.identity.ledger`, state ``factor-removed``) in the transaction that makes it, and a gateway
on a restored database makes it again (:mod:`gateway.privacy.ledger_replay`) with :func:`make_again`.

A factor is named by its owner, its row id and its creation time (a recovery code: its batch and its
position): a restore may hand the same row id to a factor enrolled later, which must not be touched.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.identity.ledger import AccountLedger, Entry
from gateway.identity.models import RecoveryCode, TotpCredential, WebAuthnCredential
from gateway.store.db import Database, store_errors

__all__ = ["FactorKind", "code_id", "drop_codes_before", "factor_id", "make_again", "ref"]

FactorKind = Literal["totp", "webauthn", "code"]


def factor_id(kind: FactorKind, user_id: int, row_id: int, created_at: datetime) -> str:
    """The ledger's public id of an authenticator app or a WebAuthn credential."""
    return f"{kind}:{user_id}:{row_id}:{created_at.isoformat()}"


def code_id(user_id: int, row_id: int, batch: str, position: int) -> str:
    """The ledger's public id of one recovery code."""
    return f"code:{user_id}:{row_id}:{batch}:{position}"


def ref(kind: FactorKind, row_id: int) -> str:
    """Where a replay looks for the factor: its kind and row id."""
    return f"{kind}:{row_id}"


async def make_again(db: Database, ledger: AccountLedger, entry: Entry) -> bool:
    """Remove the factor (or spend the code) ``entry`` names, if the database still has it.

    Returns:
        Whether a factor was removed or a code spent (False: gone already, or the row of that id is
        another factor now).

    Raises:
        StoreUnavailable: The database failed.
    """
    kind, _, row = entry.ref.partition(":")
    if not row.isdigit():
        return False
    row_id = int(row)
    async with db.session(write=True) as session:
        with store_errors("cannot remove a factor again"):
            if kind == "code":
                done = await _spend_code(session, ledger, entry, row_id)
            elif kind == "totp":
                done = await _remove(session, ledger, entry, "totp", row_id)
            elif kind == "webauthn":
                done = await _remove(session, ledger, entry, "webauthn", row_id)
            else:
                return False
            await session.commit()
    return done


async def _remove(
    session: AsyncSession, ledger: AccountLedger, entry: Entry, kind: Literal["totp", "webauthn"], row_id: int
) -> bool:
    model = TotpCredential if kind == "totp" else WebAuthnCredential
    created = await session.scalar(
        select(model.created_at).where(model.id == row_id, model.user_id == entry.user_id)
    )
    if created is None or not ledger.names_thing(factor_id(kind, entry.user_id, row_id, created), entry):
        return False
    await session.execute(delete(model).where(model.id == row_id))
    return True


async def _spend_code(session: AsyncSession, ledger: AccountLedger, entry: Entry, row_id: int) -> bool:
    found = (
        await session.execute(
            select(RecoveryCode.batch, RecoveryCode.position).where(
                RecoveryCode.id == row_id,
                RecoveryCode.user_id == entry.user_id,
                RecoveryCode.used_at.is_(None),
            )
        )
    ).first()
    if found is None or not ledger.names_thing(code_id(entry.user_id, row_id, *found), entry):
        return False
    await session.execute(update(RecoveryCode).where(RecoveryCode.id == row_id).values(used_at=entry.at))
    return True


async def drop_codes_before(db: Database, user_id: int, before: datetime) -> int:
    """Delete the account's recovery codes created before ``before`` (a replacement made again).

    Returns:
        How many codes were deleted.

    Raises:
        StoreUnavailable: The database failed.
    """
    async with db.session(write=True) as session:
        with store_errors("cannot replace recovery codes again"):
            gone = (
                await session.scalars(
                    delete(RecoveryCode)
                    .where(RecoveryCode.user_id == user_id, RecoveryCode.created_at < before)
                    .returning(RecoveryCode.id)
                )
            ).all()
            await session.commit()
    return len(gone)
