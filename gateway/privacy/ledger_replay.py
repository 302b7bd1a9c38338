"""Making the account ledger's changes again on a restored database, before the gateway serves.

A gateway started on a database restored from a backup finds, in its node's ledger file
(:mod:`gateway.identity.ledger`), the changes made since that backup, which the restored table lacks.
Each is made again the way it was made the first time:

- an erasure through the :class:`~gateway.privacy.erasure.Eraser` (the account, its factors and
  sessions, the audit trail's fields, the register and incident records; an active legal hold
  restricts the account instead), a deletion and a disable through the account service;
- a password set or cleared since: the password the backup holds is cleared (the new one is in no
  ledger: the person gets one through an invitation or an administrator), and the sessions end;
- a reset of second factors: every factor enrolled before it is removed again;
- one factor removed or one recovery code spent: that factor is removed, that code spent, again
  (:mod:`gateway.factors.ledgered`); recovery codes replaced: every code of the older batches is void;
- roles set: every role the change took away is taken away again (a replay never grants a role);
- an API token revoked: revoked again;
- a rotation of leaked signing keys: the leaked keys are deleted again (a new key signs at once when
  none is left), and every worker is told to reload its keys;
- a consent withdrawn or refused: withdrawn again where the restored answer is a consent; an objection
  made: made again (GDPR Art. 7(3) and 21(3): what the person stopped stays stopped).

An enable is never made again: a restore must not open an account the backup has closed. Nor is a
consent given or an objection lifted: a restore must not process what the person had stopped.

Every worker runs it at start, before it serves, and again every ``SYNC_INTERVAL`` (a restore of the
PostgreSQL database under running gateways): the first to find a change makes it; the others find it
done. An entry is settled in the table only once its change is made (or there is nothing to make).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from gateway.audit.trail import AuditLog
from gateway.crypto.signing import SigningKeys, announce_compromise
from gateway.factors import ledgered
from gateway.identity.accounts import AccountService, UnknownAccount
from gateway.identity.ledger import KIND, OPENING, PER_PURPOSE, SYNC_INTERVAL, AccountLedger, Entry
from gateway.identity.models import User
from gateway.machine.accounts import ServiceAccounts, UnknownToken
from gateway.privacy.consent import ConsentRefused, Consents
from gateway.privacy.erasure import Eraser, Held
from gateway.store.db import Database
from gateway.store.fast import FastState

__all__ = ["ACTOR", "Replayed", "Replayers", "replay", "run_ledger"]

logger = logging.getLogger("gateway.privacy")

# Who the audit trail names for a change made again.
ACTOR = "system:account-ledger"


@dataclass(frozen=True, slots=True)
class Replayers:
    """What makes each kind of change again (the keys' and tokens' are a gateway worker's; without
    them, their entries wait in the file for a worker that has them)."""

    ledger: AccountLedger
    accounts: AccountService
    eraser: Eraser
    audit: AuditLog
    # Where the factors are (a removal or a spent code is made again on the rows themselves).
    db: Database
    tokens: ServiceAccounts | None = None
    signing: SigningKeys | None = None
    fast: FastState | None = None
    consents: Consents | None = None


@dataclass(slots=True)
class Replayed:
    """What a replay made again (counts; no names)."""

    erased: int = 0
    deleted: int = 0
    disabled: int = 0
    restricted: int = 0
    closed: int = 0
    # Erasures a legal hold suspends again (the account is restricted).
    held: int = 0
    passwords: int = 0
    # Addresses replaced or removed since the backup, removed again.
    emails: int = 0
    factors: int = 0
    # Single factors removed and recovery codes spent again; accounts whose older codes were voided.
    removed: int = 0
    codes: int = 0
    roles: int = 0
    tokens: int = 0
    keys: int = 0
    # Consents withdrawn and objections made again.
    withdrawals: int = 0
    objections: int = 0
    # Entries whose account the database does not have (made after the backup, or gone already).
    absent: int = 0
    refs: list[str] = field(default_factory=list)

    @property
    def changed(self) -> int:
        """How many changes were made again."""
        return (
            self.erased + self.deleted + self.disabled + self.restricted + self.closed + self.held
            + self.passwords + self.emails + self.factors + self.removed + self.codes + self.roles + self.tokens
            + self.keys + self.withdrawals + self.objections
        )  # fmt: skip

    def counts(self) -> dict[str, int]:
        """The counts by kind of change, for the audit record and the log."""
        return {
            "erased": self.erased, "deleted": self.deleted, "disabled": self.disabled,
            "restricted": self.restricted, "closed": self.closed, "held": self.held,
            "passwords_cleared": self.passwords, "emails_removed": self.emails, "factors_reset": self.factors,
            "factors_removed": self.removed, "codes_replaced": self.codes, "roles_set": self.roles,
            "tokens_revoked": self.tokens, "keys_deleted": self.keys,
            "consents_withdrawn": self.withdrawals, "objections_made": self.objections,
        }  # fmt: skip


async def replay(by: Replayers) -> Replayed:
    """Sync the ledger and make again each change the database lacks; audit and log what was made.

    Raises:
        StoreUnavailable: The database failed; the next run finds the same entries.
    """
    done = Replayed()
    for entry in await by.ledger.sync():
        if await _make_again(entry, by, done):
            await by.ledger.settle(entry)
    if done.changed:
        counts = done.counts()
        logger.warning(
            "account ledger: made %d change(s) again that the database lacked (restored from a backup?): %s",
            done.changed,
            ", ".join(f"{n} {what.replace('_', ' ')}" for what, n in counts.items() if n),
        )
        await by.audit.record(
            "account.ledger_replayed", actor=ACTOR, details={**counts, "requests": done.refs}
        )
    return done


async def _make_again(entry: Entry, by: Replayers, done: Replayed) -> bool:
    """Make ``entry``'s change again; whether it is made (or there is nothing to make)."""
    kind = KIND[entry.state]
    if kind == "token":
        return await _revoke_token(entry, by, done)
    if kind == "keys":
        return await _delete_keys(entry, by, done)
    if kind == "factor":
        # Named by the factor's owner, row id and creation time: no account look-up needed.
        if await ledgered.make_again(by.db, by.ledger, entry):
            done.removed += 1
        return True
    if entry.state in OPENING:
        return True
    consents = by.consents if kind in PER_PURPOSE else None
    if kind in PER_PURPOSE and consents is None:
        return False  # waits in the file for a process that has the consents
    user = await by.accounts.get(entry.user_id)
    if user is None or not by.ledger.names(user, entry):
        done.absent += 1
        return True
    try:
        if consents is not None:
            return await _purpose_again(user, entry, consents, done)
        await _make_again_for(user, entry, by, done)
    except UnknownAccount:
        # Another worker made it first.
        done.absent += 1
    return True


async def _make_again_for(user: User, entry: Entry, by: Replayers, done: Replayed) -> None:
    if entry.state == "erased":
        outcome = await by.eraser.erase(
            user.id,
            actor=ACTOR,
            ref=entry.ref or "account-ledger",
            keep_for=None,
            reason=f"erased on {entry.at.date().isoformat()}; made again on a database restored from a backup",
            erased_at=entry.at,
        )
        if isinstance(outcome, Held):
            done.held += 1
        else:
            done.erased += 1
            if entry.ref:
                done.refs.append(entry.ref)
    elif entry.state == "deleted":
        await by.accounts.delete(user.id, actor=ACTOR)
        done.deleted += 1
    elif entry.state == "disabled" and not user.disabled:
        await by.accounts.disable(user.id, actor=ACTOR)
        done.disabled += 1
    elif entry.state == "restricted" and not user.restricted:
        await by.accounts.set_restricted(user.id, True, actor=ACTOR)
        done.restricted += 1
    elif entry.state == "closed" and user.closed_at is None:
        await by.accounts.close(user.id, actor=ACTOR)
        done.closed += 1
    else:
        await _credentials_again(user, entry, by, done)


async def _credentials_again(user: User, entry: Entry, by: Replayers, done: Replayed) -> None:
    """A password, second factors, recovery codes or roles changed since the backup."""
    if entry.state == "password-set":
        changed = user.password_changed_at  # aware UTC, as every time the database hands back
        if user.password_hash is not None and (changed is None or changed < entry.at):
            await by.accounts.clear_password(user.id, actor=ACTOR)
            done.passwords += 1
    elif entry.state == "email-set":
        # The address the backup holds was replaced or removed since: removed (never the new one, which
        # the ledger does not keep); an administrator sets the right one again.
        if user.email is not None and user.updated_at < entry.at:
            await by.accounts.set_profile(user.id, email="", actor=ACTOR)
            done.emails += 1
    elif entry.state == "factors-reset":
        removed = await by.accounts.reset_mfa(user.id, actor=ACTOR, before=entry.at)
        if any(removed.get(kind) for kind in ("totp", "webauthn", "recovery_codes")):
            done.factors += 1
    elif entry.state == "codes-replaced":
        if await ledgered.drop_codes_before(by.db, user.id, entry.at):
            done.codes += 1
    elif entry.state == "roles-set":
        # Only ever takes roles away (those the change removed): a replay must never grant one (the
        # re-attack run had a grant made on a copy replayed onto production). A role added since the
        # backup is lost with it, and given again by an administrator.
        kept = [role for role in user.roles.split() if role in entry.ref.split()]
        if kept != user.roles.split():
            await by.accounts.set_roles(user.id, kept, actor=ACTOR)
            done.roles += 1


async def _purpose_again(user: User, entry: Entry, consents: Consents, done: Replayed) -> bool:
    """A consent withdrawn (or refused), or an objection made, since the backup; whether it is made
    (or there is nothing to make). A withdrawal from a purpose not configured now, or not on consent
    now, waits for the configuration that has it: a re-attack run removed the purpose for the first
    start after the restore, put it back, and the restored consent was in force again for good."""
    if entry.state == "objected":
        if await consents.object_again(user.id, entry.ref, actor=ACTOR):
            done.objections += 1
        return True
    answer = (await consents.current(user.id)).get(entry.ref)
    if answer is None or answer.decision != "granted":
        return True  # nothing restored to withdraw: the purpose is not processed without a consent
    try:
        await consents.record(
            user.id, consents.purpose(entry.ref), "withdrawn", "account ledger", actor=ACTOR
        )
    except ConsentRefused:
        return False  # not configured now, or not on consent: made when it is
    done.withdrawals += 1
    return True


async def _revoke_token(entry: Entry, by: Replayers, done: Replayed) -> bool:
    if by.tokens is None:
        return False
    if not by.ledger.names_thing(entry.ref, entry):
        done.absent += 1
        return True
    try:
        view = await by.tokens.revoke_token(entry.ref, actor=ACTOR)
    except UnknownToken:
        done.absent += 1
        return True
    if view.revoked_by == ACTOR:
        done.tokens += 1
    return True


async def _delete_keys(entry: Entry, by: Replayers, done: Replayed) -> bool:
    if by.signing is None:
        return False
    kids = [kid for kid in entry.ref.split(",") if kid]
    if await by.signing.delete_kids(kids):
        done.keys += 1
        if by.fast is not None:
            # The other workers loaded the leaked keys at their start: they reload theirs at once.
            await announce_compromise(by.fast, time.time())
    # This worker too (also when another deleted them first: it may have loaded them before).
    await by.signing.after_compromise()
    return True


async def run_ledger(by: Replayers, *, every: float = SYNC_INTERVAL) -> None:
    """:func:`replay` every ``every`` seconds until cancelled (the start-up run is the caller's)."""
    while True:
        await asyncio.sleep(every)
        try:
            await replay(by)
        except Exception:
            # A store outage must not end the loop: the next round finds the same entries.
            logger.exception("account ledger: the sync failed; it runs again in one interval")
