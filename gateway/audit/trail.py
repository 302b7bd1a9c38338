"""The audit trail: append-only security events in the database, mirrored to the ``gateway.audit`` log.

Every sign-in, MFA event, enrollment, lock and admin action is recorded with who did it, to whom, from
where and the outcome. Details never carry secrets (codes, passwords, tokens): callers pass facts only.
Records are hash-chained as they are written (``gateway.audit.chain``), so a changed, deleted or
inserted row is found by ``gateway audit verify``; signed checkpoints (``gateway.audit.checkpoint``)
kept outside the database reveal a truncated tail. Writers that hold the keyring key each record
(HMAC under a key the database does not hold), so write access to the database is not enough to
append a record that verifies.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.audit.chain import Precondition, append, chain_keys, head_of
from gateway.audit.models import AuditEvent
from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.crypto.keyring import Keyring
from gateway.names import visible
from gateway.store.db import Database

__all__ = ["AuditListener", "AuditLog", "SecurityEvent", "record_once", "record_quietly"]

logger = logging.getLogger("gateway.audit")


@dataclass(frozen=True, slots=True)
class SecurityEvent:
    """An audit event as listeners see it once it is stored (details already JSON)."""

    at: datetime
    kind: str
    actor: str
    subject: str
    ip: str
    outcome: str
    details: str


# Called after an event is stored (sinks, metrics, threat detection): must only count or enqueue.
AuditListener = Callable[[SecurityEvent], None]


class AuditLog:
    """Writes security events. One instance per worker."""

    def __init__(self, db: Database, *, clock: Clock = SYSTEM_CLOCK, keyring: Keyring | None = None) -> None:
        """Args:
        db: The database holding the chain.
        clock: Time source for record times.
        keyring: Keys every record (chain version 2). Every gateway and CLI writer passes it;
            ``None`` writes legacy unkeyed records and is refused once the chain is keyed
            (``ChainKeyMissing``), so it only suits tests and tools on a chain that was never keyed.
        """
        self._db = db
        self._clock = clock
        self._keys = chain_keys(keyring)
        self.listeners: list[AuditListener] = []

    @property
    def db(self) -> Database:
        """The database the trail is written to (other small facts kept beside it use it too)."""
        return self._db

    async def record(
        self,
        kind: str,
        *,
        actor: str,
        subject: str = "",
        ip: str = "",
        outcome: str = "success",
        details: Mapping[str, object] | None = None,
    ) -> None:
        """Append one event, e.g. ``record("signin.failure", actor="user:alice", subject="alice", ip=ip)``."""
        await self._write(kind, actor, subject, ip, outcome, details, None)

    async def record_if(
        self,
        only_if: Precondition,
        kind: str,
        *,
        actor: str,
        subject: str = "",
        ip: str = "",
        outcome: str = "success",
        details: Mapping[str, object] | None = None,
    ) -> bool:
        """:meth:`record`, only if ``only_if`` is true on the connection holding the chain lock.

        For an event that must not outlive a change made concurrently (e.g.
        :func:`gateway.identity.accounts.account_exists`: a sign-in finishing after its account was
        erased must not write a record naming the person the erasure has just tombstoned). Returns
        whether the event was written; one not written reaches neither the log nor the listeners.
        """
        return await self._write(kind, actor, subject, ip, outcome, details, only_if)

    async def record_at_head(
        self,
        prepare: Callable[[int, str], Awaitable[None]],
        kind: str,
        *,
        actor: str,
        subject: str = "",
        details: Mapping[str, object] | None = None,
    ) -> None:
        """:meth:`record`, with ``prepare(seq, hash)`` run first under the chain lock, ``seq`` and ``hash``
        those of the chain's last record; the event is the record right after it.

        For a key marked compromised (:func:`gateway.crypto.lifecycle.mark_compromised`): the mark
        names the last record that may be keyed under the key, and no writer can append between the
        mark and this event. The event is keyed under the keyring file's active key as ``prepare``
        left it, whichever key this process had loaded.
        """

        async def first(conn: AsyncConnection) -> bool:
            await prepare(*await head_of(conn))
            if self._keys is not None:
                self._keys.catch_up()
            return True

        await self._write(kind, actor, subject, "", "success", details, first)

    async def _write(
        self,
        kind: str,
        actor: str,
        subject: str,
        ip: str,
        outcome: str,
        details: Mapping[str, object] | None,
        only_if: Precondition | None,
    ) -> bool:
        payload = json.dumps(dict(details or {}), sort_keys=True, default=str)
        # The details' JSON escapes them already; the two names are stored as given.
        actor, subject = visible(actor), visible(subject)
        at = self._clock.now()
        # Serialized with every other writer (workers, replicas) so the records form one chain.
        written = await append(
            self._db,
            keys=self._keys,
            at=at,
            kind=kind,
            actor=actor,
            subject=subject,
            ip=ip,
            outcome=outcome,
            details=payload,
            only_if=only_if,
        )
        if written is None:
            return False
        # Where listeners send it to the log sinks (the ECS event), this line would repeat it in the same
        # output: a first-day run saw every audit event twice. Without them (a CLI command) it is the
        # only trace on the terminal.
        logger.log(
            logging.DEBUG if self.listeners else logging.INFO,
            "%s",
            json.dumps(
                {
                    "event": kind,
                    "actor": actor,
                    "subject": subject,
                    "ip": ip,
                    "outcome": outcome,
                    "details": payload,
                }
            ),
        )
        event = SecurityEvent(at, kind, actor, subject, ip, outcome, payload)
        for listener in self.listeners:
            try:
                listener(event)
            except Exception:
                logger.exception("audit listener %r failed", listener)
        return True

    async def events(
        self, *, subject: str | None = None, kind: str | None = None, limit: int = 100
    ) -> list[AuditEvent]:
        """The latest events, newest first (for tests, the portal and the admin console)."""
        query = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit)
        if subject is not None:
            query = query.where(AuditEvent.subject == subject)
        if kind is not None:
            query = query.where(AuditEvent.kind == kind)
        async with self._db.session() as session:
            return list((await session.scalars(query)).all())


async def record_once(
    url: str,
    kind: str,
    *,
    keyring: Keyring | None,
    actor: str,
    subject: str = "",
    outcome: str = "success",
    details: Mapping[str, object] | None = None,
) -> None:
    """Record one event through a short-lived connection (CLI commands that hold no ``AuditLog``).

    The schema must already be current (the caller ran ``ensure_schema`` or ``gateway migrate``).
    ``keyring`` keys the record, as :class:`AuditLog` does.
    """
    db = Database.open(url, pool_size=1)
    try:
        audit = AuditLog(db, keyring=keyring)
        await audit.record(kind, actor=actor, subject=subject, outcome=outcome, details=details)
    finally:
        await db.close()


async def record_quietly(audit: AuditLog | None, kind: str, **fields: Any) -> None:
    """:meth:`AuditLog.record`, but a failure is logged instead of raised (``audit`` may be ``None``).

    For events about something that already happened (a reload applied): failing to record it must
    not turn it into an error for the caller.
    """
    if audit is None:
        logger.warning("audit event %s not recorded: no audit log yet", kind)
        return
    try:
        await audit.record(kind, **fields)
    except Exception:
        logger.exception("audit event %s could not be recorded", kind)
