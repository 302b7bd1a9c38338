"""Erasure of one person: what goes, what is kept for a legal reason, and the proof that it happened.

In this order, so a failure part-way leaves the person *more* protected, never exposed:

1. **Held?** An active legal hold on the person, or on a class of data the erasure changes
   (registration, audit events, incident records, privacy requests), suspends the erasure: the
   account is restricted instead (no sign-in, no optional processing) and the caller keeps the
   request ``on_hold`` naming the hold.
2. **Removed content** (product policy, and e.g. India's IT Rules 3(1)(g)): the person's export is
   sealed AES-256-GCM under the keyring into ``removed_content`` for ``privacy.retention.
   removed_content`` (180 days), restricted (no view shows it), then deleted by the retention run
   unless a hold covers it. A purge at the end of the registration retention skips this (the data
   has been kept its time already).
3. **The account and what hangs off it** go: factors, consent records and provider links by
   ``ON DELETE CASCADE``, sessions revoked everywhere, decision-sample rows deleted.
4. **The audit trail**: the person's fields in chain-version-3 records become tombstones
   (``gateway.audit.erase``), backed by a keyed erasure record, so ``gateway audit verify`` still
   passes and nothing readable is left; older records (version 1/2) cannot be changed without
   breaking the chain and are reported as kept. What the person did as an admin to others keeps their
   name (``admin.*`` records, and the policy history: who changed the policy, proposed and decided a
   change), as the record of who made a change; it goes with the trail's retention.
5. **Pseudonymised**: the register and the holds keep the person's pseudonym, and
   so do the incident records (``gateway.privacy.incident_records``): every mention of the username or
   email in a case or its timeline (affected users, titles, notes, actors, entry details) becomes the
   same ``[erased:<pseudonym>]`` tombstone the audit erasure writes. Sealed evidence bundles are not
   changed: their hashes are in the chain (``incident.evidence_sealed``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from gateway.audit.chain_key import ChainKeys
from gateway.audit.erase import actor_spellings, erase_person
from gateway.audit.trail import AuditLog
from gateway.authz.sample import DecisionSample
from gateway.clock import Clock
from gateway.crypto.keyring import Keyring
from gateway.identity.accounts import AccountService, UnknownAccount
from gateway.identity.models import User
from gateway.identity.names import fold
from gateway.identity.sessions import SessionStore
from gateway.privacy.export import export_person
from gateway.privacy.holds import Holds, HoldView
from gateway.privacy.incident_records import Erasing, IncidentRecords
from gateway.privacy.ownership import forget_ownership
from gateway.privacy.register import Register
from gateway.privacy.removed import RemovedArchive
from gateway.privacy.subjects import new_pseudonym
from gateway.privacy.traces import forget_person
from gateway.store.db import Database, StoreUnavailable
from gateway.store.fast import FastState, StateUnavailable

__all__ = ["Erased", "Eraser", "Held", "holding_erasure"]


@dataclass(frozen=True, slots=True)
class Held:
    """The erasure is suspended by this hold; the account was restricted instead."""

    hold_ref: str


@dataclass(frozen=True, slots=True)
class Erased:
    """What an erasure did."""

    pseudonym: str
    audit_records: int
    audit_kept_legacy: int
    samples_deleted: int
    sessions_ended: int | None
    archived_until: str | None
    # Incident records (cases and timeline entries) in which a mention was replaced.
    incident_rows: int = 0

    def summary(self) -> dict[str, object]:
        """For the register's outcome and the audit record (no personal data)."""
        return {
            "pseudonym": self.pseudonym,
            "audit_records_erased": self.audit_records,
            "audit_records_kept_legacy": self.audit_kept_legacy,
            "sample_rows_deleted": self.samples_deleted,
            "sessions_ended": self.sessions_ended if self.sessions_ended is not None else "unknown",
            "removed_content_until": self.archived_until,
            "incident_rows_pseudonymised": self.incident_rows,
        }


class Eraser:
    """Erases people; see the module docstring for the order and what is kept."""

    def __init__(
        self,
        db: Database,
        *,
        keyring: Keyring,
        accounts: AccountService,
        sessions: SessionStore | None,
        audit: AuditLog,
        holds: Holds,
        register: Register,
        incident_records: IncidentRecords,
        removed: RemovedArchive,
        clock: Clock,
        fast: FastState | None = None,
    ) -> None:
        """Args are the stores and services an erasure touches."""
        self._db = db
        self._removed = removed
        self._incident_records = incident_records
        self._keyring = keyring
        self._accounts = accounts
        self._sessions = sessions
        self._audit = audit
        self._holds = holds
        self._register = register
        self._clock = clock
        # The short-lived keys that name the person (gateway.privacy.traces); none: not reached.
        self._fast = fast

    async def erase(
        self,
        user_id: int,
        *,
        actor: str,
        ref: str,
        keep_for: timedelta | None,
        reason: str,
        expect: Callable[[User], bool] | None = None,
        erased_at: datetime | None = None,
    ) -> Erased | Held:
        """Erase the person with account ``user_id`` (see the module docstring).

        Args:
            user_id: The account.
            actor: Who asked for it ("user:alice", "admin:bob", "system:retention").
            ref: The privacy request (or retention run) reference, quoted in every record.
            keep_for: How long the sealed removed content is kept; ``None`` keeps none.
            reason: Why, in words ("erasure request", "registration closed 180 days ago").
            expect: What the account must still be, checked first and again in the deleting
                transaction (:meth:`AccountService.delete`).
            erased_at: For an erasure made again on a restored database (the account ledger): when it
                was first done. Only a hold placed by then suspends it: the data was gone when a later
                one was placed, and a re-attack run's hold placed after an erasure, carried across a
                restore, kept the erased person's account.

        Raises:
            UnknownAccount: No such account, or not as ``expect`` wants it.
            StoreUnavailable: A store failed; what was done so far stays done (see the order).
        """
        user = await self._accounts.get(user_id)
        if user is None or (expect is not None and not expect(user)):
            raise UnknownAccount(f"No account has id {user_id}.")
        hold = await holding_erasure(self._holds, user.username, placed_by=erased_at)
        if hold is not None:
            if not user.restricted:
                await self._accounts.set_restricted(user_id, True, actor=actor)
            return Held(hold.reference)
        pseudonym = new_pseudonym()
        tombstone = f"[erased:{pseudonym}]"
        if actor in actor_spellings(user.username):
            # Self-service erasure: the records of it must not name the person either.
            actor = tombstone
        now = self._clock.now()
        until = None
        if keep_for is not None:
            until = now + keep_for
            await self._seal(user, ref=ref, pseudonym=pseudonym, reason=reason, until=until)
        ended = await self._accounts.delete(user_id, actor=actor, expect=expect, recorded_as=tombstone)
        await forget_person(self._fast, user.username, user.email)
        samples = await DecisionSample(self._db, clock=self._clock).forget([f"user:{user.username}"])
        result = await erase_person(
            self._db,
            ChainKeys(self._keyring),
            at=self._clock.now(),
            username=user.username,
            email=user.email,
            pseudonym=pseudonym,
            actor=actor,
            request_ref=ref,
            since=user.created_at,
        )
        await self._register.pseudonymise(user_id, tombstone)
        await self._removed.pseudonymise(user.username, pseudonym)
        await self._holds.pseudonymise(user.username, tombstone)
        held = frozenset(
            fold(h.subject) for h in await self._holds.find(active_only=True) if h.scope == "person"
        )
        erasing = Erasing(user.username, user.email, since=user.created_at, held=held)
        incident_rows = await self._incident_records.pseudonymise(erasing, tombstone)
        await forget_ownership(self._db, erasing.mentions(tombstone))
        if self._accounts.ledger is not None:
            # Outside the database too: a gateway started on a restored one erases the person again.
            await self._accounts.ledger.record(user, "erased", ref=ref)
        with contextlib.suppress(StoreUnavailable):  # done; the log is emptied at a later checkpoint
            await self._db.drop_old_pages()
        if self._fast is not None:
            with contextlib.suppress(StateUnavailable):
                await self._fast.drop_old_pages()
        erased = Erased(
            pseudonym=pseudonym,
            audit_records=len(result.erased),
            audit_kept_legacy=result.kept_legacy,
            samples_deleted=samples,
            sessions_ended=ended,
            archived_until=until.isoformat() if until is not None else None,
            incident_rows=incident_rows,
        )
        await self._audit.record(
            "privacy.erased",
            actor=actor,
            subject=tombstone,
            details={"request": ref, "reason": reason, **erased.summary()},
        )
        return erased

    async def _seal(self, user: User, *, ref: str, pseudonym: str, reason: str, until: datetime) -> None:
        document = await export_person(self._db, user, sessions=self._sessions, now=self._clock.now())
        await self._removed.keep(
            document, ref=ref, pseudonym=pseudonym, username=user.username, reason=reason, until=until
        )


# The classes an erasure deletes or rewrites: the account, the audit trail's fields, the incident
# records' mentions, the register's rows of the person's requests.
_ERASED_CLASSES: Final = ("registration", "audit_events", "incidents", "privacy_requests")


async def holding_erasure(
    holds: Holds, username: str, *, placed_by: datetime | None = None
) -> HoldView | None:
    """The active hold an erasure of ``username`` must wait for: one on the person, or on a class of
    data the erasure changes (a re-attack run: under a class hold on ``audit_events`` an erasure
    tombstoned the person's audit records for good, which the hold was placed to keep); with
    ``placed_by`` (an erasure made again), only one placed by then."""
    return await holds.covering(username=username, data_class=_ERASED_CLASSES, placed_by=placed_by)
