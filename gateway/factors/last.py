"""An account's only second factor stays until another is added, checked in the removing transaction.

Removing the last one left the account on trust on first use: whoever held the password next enrolled
a factor of their own as the "first" (a re-attack run). A check before the removal is not enough: two
removals at once (the authenticator app in one tab, the passkey in another) each saw the other factor
and both went through. So the removal locks the account's row first (PostgreSQL; SQLite's DELETE takes
its one write lock before anything is counted), deletes, counts what is left, and rolls back with
:class:`OnlyFactor` when nothing is: the second removal waits for the first and then sees it.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.errors import GatewayError
from gateway.identity.models import TotpCredential, User, WebAuthnCredential

__all__ = ["OnlyFactor", "hold_owner", "refuse_none_left"]


class OnlyFactor(GatewayError):
    """The factor is the account's only second factor; nothing was removed (409)."""

    status = 409
    reason = "only-factor"
    title = "Only second factor"


async def hold_owner(session: AsyncSession, user_id: int) -> None:
    """Lock the account's row until the transaction ends. Nothing on SQLite: a read first would start
    the transaction on a snapshot that the DELETE then cannot write from (SQLITE_BUSY), while a DELETE
    first waits for the one writer and then sees its commit."""
    if session.get_bind().dialect.name == "sqlite":
        return
    await session.execute(select(User.id).where(User.id == user_id).with_for_update())


async def refuse_none_left(session: AsyncSession, user_id: int) -> None:
    """After a factor was deleted in ``session``: raise :class:`OnlyFactor` when the account has no
    confirmed authenticator app and no passkey left (the caller's transaction is then rolled back).
    """
    apps = select(func.count()).where(TotpCredential.user_id == user_id, TotpCredential.confirmed.is_(True))
    keys = select(func.count()).where(WebAuthnCredential.user_id == user_id)
    if not (await session.scalar(apps) or await session.scalar(keys)):
        await session.rollback()
        raise OnlyFactor("This is the account's only second factor: add another first. Nothing was removed.")
