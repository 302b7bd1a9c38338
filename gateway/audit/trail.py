"""The audit trail: append-only security events in the database, mirrored to the ``gateway.audit`` log.

Every sign-in, MFA event, enrollment, lock and admin action is recorded with who did it, to whom, from
where and the outcome. Details never carry secrets (codes, passwords, tokens): callers pass facts only.
The hash chain that makes tampering detectable is added by the audit-trail issue on top of this table.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select

from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.identity.models import AuditEvent
from gateway.store.db import Database

__all__ = ["AuditListener", "AuditLog", "SecurityEvent"]

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

    def __init__(self, db: Database, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self._db = db
        self._clock = clock
        self.listeners: list[AuditListener] = []

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
        payload = json.dumps(dict(details or {}), sort_keys=True, default=str)
        at = self._clock.now()
        async with self._db.session() as session:
            session.add(
                AuditEvent(
                    at=at,
                    kind=kind,
                    actor=actor,
                    subject=subject,
                    ip=ip,
                    outcome=outcome,
                    details=payload,
                )
            )
            await session.commit()
        logger.info(
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
