"""Making the account ledger's changes again on a restored database, before the gateway serves.

A gateway started on a database restored from a backup finds, in its node's ledger file
(:mod:`gateway.identity.ledger`), the deletions, erasures and disables made since that backup, which
the restored table lacks. Each is made again the way it was made the first time: an erasure through
the :class:`~gateway.privacy.erasure.Eraser` (the account, its factors and sessions, the audit trail's
fields, the register and incident records; an active legal hold restricts the account instead), a
deletion through the account service, a disable likewise. An enable is never made again: a restore
must not open an account the backup has closed.

Every worker runs it at start, before it serves, and again every ``SYNC_INTERVAL`` (a restore of the
PostgreSQL database under running gateways): the first to find an account makes the change; the
others find it done.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from gateway.audit.trail import AuditLog
from gateway.identity.accounts import AccountService, UnknownAccount
from gateway.identity.ledger import SYNC_INTERVAL, AccountLedger, Entry
from gateway.privacy.erasure import Eraser, Held

__all__ = ["ACTOR", "Replayed", "replay", "run_ledger"]

logger = logging.getLogger("gateway.privacy")

# Who the audit trail names for a change made again.
ACTOR = "system:account-ledger"


@dataclass(slots=True)
class Replayed:
    """What a replay made again (counts; no names)."""

    erased: int = 0
    deleted: int = 0
    disabled: int = 0
    # Erasures a legal hold suspends again (the account is restricted).
    held: int = 0
    # Entries whose account the database does not have (made after the backup, or gone already).
    absent: int = 0
    refs: list[str] = field(default_factory=list)

    @property
    def changed(self) -> int:
        """How many accounts were changed."""
        return self.erased + self.deleted + self.disabled + self.held


async def replay(
    ledger: AccountLedger, accounts: AccountService, eraser: Eraser, audit: AuditLog
) -> Replayed:
    """Sync the ledger and make again each change the database lacks; audit and log what was made.

    Raises:
        StoreUnavailable: The database failed; the next run finds the same entries.
    """
    done = Replayed()
    for entry in await ledger.sync():
        await _make_again(entry, ledger, accounts, eraser, done)
        await ledger.settle(entry)
    if done.changed:
        logger.warning(
            "account ledger: made %d change(s) again that the database lacked (restored from a backup?): "
            "%d erased, %d deleted, %d disabled, %d restricted under a legal hold",
            done.changed,
            done.erased,
            done.deleted,
            done.disabled,
            done.held,
        )
        await audit.record(
            "account.ledger_replayed",
            actor=ACTOR,
            details={
                "erased": done.erased,
                "deleted": done.deleted,
                "disabled": done.disabled,
                "held": done.held,
                "requests": done.refs,
            },
        )
    return done


async def _make_again(
    entry: Entry, ledger: AccountLedger, accounts: AccountService, eraser: Eraser, done: Replayed
) -> None:
    if entry.state == "enabled":
        return
    user = await accounts.get(entry.user_id)
    if user is None or not ledger.names(user, entry):
        done.absent += 1
        return
    try:
        if entry.state == "erased":
            outcome = await eraser.erase(
                user.id,
                actor=ACTOR,
                ref=entry.ref or "account-ledger",
                keep_for=None,
                reason=f"erased on {entry.at.date().isoformat()}; made again on a database restored from a backup",
            )
            if isinstance(outcome, Held):
                done.held += 1
            else:
                done.erased += 1
                if entry.ref:
                    done.refs.append(entry.ref)
        elif entry.state == "deleted":
            await accounts.delete(user.id, actor=ACTOR)
            done.deleted += 1
        elif not user.disabled:
            await accounts.disable(user.id, actor=ACTOR)
            done.disabled += 1
    except UnknownAccount:
        # Another worker made it first.
        done.absent += 1


async def run_ledger(
    ledger: AccountLedger,
    accounts: AccountService,
    eraser: Eraser,
    audit: AuditLog,
    *,
    every: float = SYNC_INTERVAL,
) -> None:
    """:func:`replay` every ``every`` seconds until cancelled (the start-up run is the caller's)."""
    while True:
        await asyncio.sleep(every)
        try:
            await replay(ledger, accounts, eraser, audit)
        except Exception:
            # A store outage must not end the loop: the next round finds the same entries.
            logger.exception("account ledger: the sync failed; it runs again in one interval")
