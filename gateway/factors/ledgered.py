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

__all__ = ["FactorKind", "drop_codes_before", "make_again", "note_removed"]

# The largest row id a database holds (a signed 64-bit integer).
_MAX_ROW_ID = 2**63 - 1

FactorKind = Literal["totp", "webauthn", "code"]


def _public_id(kind: FactorKind, user_id: int, row_id: int, mark: str) -> str:
    # ``mark`` tells this row from a later one given the same id: an app's or a credential's creation
    # time, a code's batch and position.
    return f"{kind}:{user_id}:{row_id}:{mark}"


def _code_mark(batch: str, position: int) -> str:
    return f"{batch}:{position}"


async def note_removed(
    ledger: AccountLedger | None,
    session: AsyncSession,
    kind: FactorKind,
    *,
    user_id: int,
    row_id: int,
    created_at: datetime | None = None,
    batch: str = "",
    position: int = 0,
) -> list[Entry]:
    """Note in the caller's transaction that a factor was removed (``created_at``: an app's or a
    credential's) or a code spent (``batch`` and ``position``); the entries to :meth:`AccountLedger.append`
    after the commit (none without a ledger)."""
    if ledger is None:
        return []
    mark = created_at.isoformat() if created_at is not None else _code_mark(batch, position)
    public_id = _public_id(kind, user_id, row_id, mark)
    return [await ledger.note_factor(session, user_id, public_id, ref=f"{kind}:{row_id}")]


async def make_again(db: Database, ledger: AccountLedger, entry: Entry) -> bool:
    """Remove the factor (or spend the code) ``entry`` names, if the database still has it.

    Returns:
        Whether a factor was removed or a code spent (False: gone already, or the row of that id is
        another factor now).

    Raises:
        StoreUnavailable: The database failed.
    """
    kind, _, row = entry.ref.partition(":")
    # ASCII digits within a row id's range: a line forged with a leaked key naming 10**20 stopped every
    # gateway's start (the database refused the number), "²" passes str.isdigit() but not int(), and
    # int() refuses more than 4,300 digits (the length is checked first).
    if not (row.isascii() and row.isdigit()) or len(row) > len(str(_MAX_ROW_ID)) or int(row) > _MAX_ROW_ID:
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
    if created is None or not ledger.names_thing(
        _public_id(kind, entry.user_id, row_id, created.isoformat()), entry
    ):
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
    if found is None or not ledger.names_thing(
        _public_id("code", entry.user_id, row_id, _code_mark(*found)), entry
    ):
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
