"""The replica registry: which gateway processes are running, as each last reported itself.

The admin console's overview shows every replica of the deployment, not only the node it runs on.
Each process (worker or admin listener) upserts one row in ``replicas`` every ``interval`` with its
readiness, policy version and config generation; a row not refreshed for ``stale_after`` is shown as
gone, and deleted after ``forget_after``. The relational store is the one place every replica shares
on every deployment (the embedded default has no Redis), and a heartbeat every 10 s is a few rows a
minute, nothing for a database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.dialects import postgresql, sqlite

from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.observe.models import ReplicaRow
from gateway.store.db import Database, StoreUnavailable, store_errors

__all__ = ["Heartbeat", "Replica", "ReplicaRegistry", "ReplicaReport"]

logger = logging.getLogger("gateway.observe")


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """What a process says about itself at each beat."""

    ready: bool
    policy_version: int
    config_generation: int


@dataclass(frozen=True, slots=True)
class Replica:
    id: str
    host: str
    pid: int
    role: str
    version: str
    started_at: datetime
    seen_at: datetime
    ready: bool
    policy_version: int
    config_generation: int
    # Not heard from for longer than stale_after: stopped, crashed or cut off.
    gone: bool


ReplicaReport = Callable[[], Awaitable[Heartbeat]]


class ReplicaRegistry:
    """One process's entry in ``replicas``, and the list of all of them; see the module docstring."""

    def __init__(
        self,
        db: Database,
        *,
        role: str,
        version: str,
        clock: Clock = SYSTEM_CLOCK,
        stale_after: timedelta = timedelta(seconds=30),
        forget_after: timedelta = timedelta(hours=1),
    ) -> None:
        if stale_after <= timedelta(0) or forget_after < stale_after:
            raise ValueError("stale_after must be positive and forget_after at least stale_after")
        self._db = db
        self._clock = clock
        self._stale_after = stale_after
        self._forget_after = forget_after
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.id = f"{self.host}:{self.pid}:{secrets.token_hex(3)}"
        self.role = role
        self.version = version
        self.started_at = clock.now()

    async def beat(self, heartbeat: Heartbeat) -> None:
        """Record this process as alive now, with what ``heartbeat`` says."""
        values = {
            "id": self.id,
            "host": self.host,
            "pid": self.pid,
            "role": self.role,
            "version": self.version,
            "started_at": self.started_at,
            "seen_at": self._clock.now(),
            "ready": heartbeat.ready,
            "policy_version": heartbeat.policy_version,
            "config_generation": heartbeat.config_generation,
        }
        dialect = postgresql if self._db.backend == "postgresql" else sqlite
        statement = dialect.insert(ReplicaRow.__table__).values(**values)
        changing = ("seen_at", "ready", "policy_version", "config_generation")
        statement = statement.on_conflict_do_update(
            index_elements=["id"], set_={name: statement.excluded[name] for name in changing}
        )
        with store_errors("replica heartbeat"):
            async with self._db.session() as session:
                await session.execute(statement)
                await session.commit()

    async def replicas(self) -> list[Replica]:
        """Every process heard from within ``forget_after``, the most recently started first."""
        now = self._clock.now()
        query = (
            select(ReplicaRow)
            .where(ReplicaRow.seen_at >= now - self._forget_after)
            .order_by(ReplicaRow.started_at.desc(), ReplicaRow.id)
        )
        with store_errors("replica list"):
            async with self._db.session() as session:
                rows = (await session.scalars(query)).all()
        return [
            Replica(
                id=row.id,
                host=row.host,
                pid=row.pid,
                role=row.role,
                version=row.version,
                started_at=row.started_at,
                seen_at=row.seen_at,
                ready=row.ready,
                policy_version=row.policy_version,
                config_generation=row.config_generation,
                gone=now - row.seen_at > self._stale_after,
            )
            for row in rows
        ]

    async def leave(self) -> None:
        """Remove this process's row (clean shutdown), so the overview does not show it as gone."""
        with store_errors("replica leave"):
            async with self._db.session() as session:
                await session.execute(delete(ReplicaRow).where(ReplicaRow.id == self.id))
                await session.commit()

    async def forget_old(self) -> int:
        """Delete rows not refreshed for ``forget_after``; returns how many."""
        cutoff = self._clock.now() - self._forget_after
        with store_errors("replica prune"):
            async with self._db.session() as session:
                result = await session.execute(delete(ReplicaRow).where(ReplicaRow.seen_at < cutoff))
                await session.commit()
        return int(getattr(result, "rowcount", 0) or 0)

    async def announce(self, report: ReplicaReport) -> None:
        """Beat once now, and forget rows silent for ``forget_after``; a database outage is only logged.

        The composition root calls it before the process serves, so the process is listed from its
        first request on, and then runs :meth:`run` with ``beat_first=False``.
        """
        try:
            await self.beat(await report())
            await self.forget_old()
        except StoreUnavailable as exc:
            # The overview shows this replica as gone while the database is away; nothing else
            # depends on the heartbeat.
            logger.debug("replica heartbeat skipped: %s", exc)

    async def run(self, report: ReplicaReport, interval: float = 10.0, *, beat_first: bool = True) -> None:
        """Beat every ``interval`` seconds (the first one at once, unless ``beat_first`` is false)
        until cancelled, then leave."""
        try:
            if not beat_first:
                await asyncio.sleep(interval)
            while True:
                await self.announce(report)
                await asyncio.sleep(interval)
        finally:
            with contextlib.suppress(StoreUnavailable):
                await asyncio.shield(self.leave())
