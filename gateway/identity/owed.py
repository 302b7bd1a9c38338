"""Session revocations owed: an account change committed while the state store did not answer.

Disabling, deleting, restricting an account or removing one of its roles is written to the database
first (no new sign-in from then on), then its sessions are ended in the state store. If the store does
not answer at that moment (Redis down, paused, cut off), the sessions would outlive the change once the
store is back: nothing else remembers they are owed an end, and a retry of a delete finds no account (an
attack run kept a deleted account's session working on two replicas). So the account's id is written
to ``owed_revocations`` in the database, and every gateway worker ends the sessions of every id there
once a second, deleting the row when it has (:func:`run_owed`). Until then no session of those
accounts is served: each worker keeps the ids it read in :attr:`SessionStore.owed`, which the session
look-up refuses. (A store that does not answer at all serves no session anyway, 503; but an embedded
state file whose write lock is held still answers reads: an attack run had a disabled account's
session served for seconds after the CLI said none was.)
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final, Protocol

from sqlalchemy import delete, select

from gateway.clock import Clock
from gateway.identity.models import OwedRevocation
from gateway.identity.sessions import SessionStore
from gateway.store.db import Database, store_errors
from gateway.store.fast import StateUnavailable

__all__ = ["OWED_INTERVAL", "Refusing", "end_owed", "owe", "run_owed"]

logger = logging.getLogger("gateway.identity")

# How often each worker ends what is owed (one indexed read of a table that is almost always empty).
OWED_INTERVAL: Final = 1.0


class Refusing(Protocol):
    """Where a process keeps the accounts whose sessions it refuses (:attr:`SessionStore.owed`)."""

    owed: frozenset[int]


async def owe(db: Database, user_id: int, clock: Clock, sessions: Refusing | None = None) -> None:
    """Record that ``user_id``'s sessions must still be ended (and refuse them at once in this process,
    through ``sessions``; the other workers do within :data:`OWED_INTERVAL`)."""
    if sessions is not None:
        sessions.owed = sessions.owed | {user_id}
    async with db.session(write=True) as session:
        with store_errors("cannot record the sessions still to end"):
            if await session.get(OwedRevocation, user_id) is None:
                session.add(OwedRevocation(user_id=user_id, since=clock.now()))
            await session.commit()


async def end_owed(db: Database, sessions: SessionStore) -> int:
    """End the sessions of every account they are owed to; return how many accounts were done.

    Raises:
        StateUnavailable: The store still does not answer (the rows stay for the next round).
        StoreUnavailable: The database does not answer.
    """
    async with db.session() as session:
        with store_errors("cannot read the sessions still to end"):
            owed = list((await session.scalars(select(OwedRevocation.user_id))).all())
    # Refused from now on, whether or not the store can end them this round.
    sessions.owed = frozenset(owed)
    done = 0
    for user_id in owed:
        ended = await sessions.revoke_user(user_id)
        async with db.session(write=True) as session:
            with store_errors("cannot clear an ended revocation"):
                await session.execute(delete(OwedRevocation).where(OwedRevocation.user_id == user_id))
                await session.commit()
        sessions.owed = sessions.owed - {user_id}
        logger.warning(
            "owed revocation: %d session(s) of account %d ended now that the store answers", ended, user_id
        )
        done += 1
    return done


async def run_owed(db: Database, sessions: SessionStore, *, every: float = OWED_INTERVAL) -> None:
    """:func:`end_owed` every ``every`` seconds until cancelled."""
    while True:
        await asyncio.sleep(every)
        try:
            await end_owed(db, sessions)
        except StateUnavailable:
            continue  # still down: the rows wait
        except Exception:
            logger.exception("owed revocations: a round failed; the next one tries again")
