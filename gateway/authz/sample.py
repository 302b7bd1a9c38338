"""The decision sample: what the data plane decided, counted per request shape and hour.

The what-if (:mod:`gateway.authz.whatif`) needs the requests a draft policy would meet. Every worker
counts the shapes it authorizes (principals, route, method, canonical path) in memory, one dict
increment per request, and adds the counts to ``decision_samples`` every ``flush_interval``, one row
per shape and hour, so a busy route is a handful of rows, not one per request, and every replica's
traffic lands in the same table. Rows older than ``retention`` are deleted.

What is kept is bounded: at most ``max_shapes`` distinct shapes per flush (a scan of random paths
must not grow the table without bound; the excess is counted in ``dropped``), and paths longer than
``MAX_PATH`` are cut there (they still decide by their prefix). The sample holds user names and
paths, personal data with the same retention as the access log; privacy erasure deletes a user's
rows (``forget``).

An erasure (or deletion) must not be undone by a flush. ``forget`` deletes the stored rows once, but
every worker of every replica still holds counts it made before the erasure, and flushed them up to
``flush_interval`` later: the erased person's name was back in the table for ``retention`` (24 h),
shown to admins by the what-if. So a flush drops every shape naming ``user:<name>`` whose account is
gone (or was made after the shape was first counted: a new account of a recycled name is someone
else), checked in the flush's own write transaction with the accounts' rows locked against deletion
(``FOR KEY SHARE`` on PostgreSQL; SQLite's ``BEGIN IMMEDIATE`` serializes it with the delete): a flush
either commits before the account's deletion, and ``forget``, which runs after the deletion, removes
its rows, or sees the account gone. This holds for workers, replicas and the CLI alike, since the
database is what they share. Every ``user:`` principal names an account (sessions and linked tokens
exist only for accounts).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Final

from sqlalchemy import delete, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.authz.models import DecisionSampleRow
from gateway.authz.whatif import Sampled
from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.identity.models import User
from gateway.store.db import Database, StoreUnavailable, store_errors

__all__ = ["MAX_PATH", "DecisionSample"]

logger = logging.getLogger("gateway.authz")

MAX_PATH = 512
_Shape = tuple[frozenset[str], str, str, str]
_USER: Final = "user:"
# Names per account look-up at flush (well under SQLite's and PostgreSQL's bound-parameter limits).
_CHUNK: Final = 500


class DecisionSample:
    """Counts request shapes in memory and adds them to ``decision_samples``; see the module docstring."""

    def __init__(
        self,
        db: Database,
        *,
        clock: Clock = SYSTEM_CLOCK,
        max_shapes: int = 10_000,
        retention: timedelta = timedelta(hours=24),
    ) -> None:
        if max_shapes < 1:
            raise ValueError("max_shapes must be >= 1")
        if retention <= timedelta(0):
            raise ValueError("retention must be positive")
        self._db = db
        self._clock = clock
        self._max_shapes = max_shapes
        self._retention = retention
        self._pending: dict[_Shape, int] = {}
        # When each set of principals was first counted in this batch (set for new shapes only, off
        # the per-request path): an account created after that is not the one the counts are about.
        self._first_seen: dict[frozenset[str], float] = {}
        self._bucket = self._hour()
        # Requests not counted because the shape limit was reached (since start).
        self.dropped = 0

    def note(self, principals: frozenset[str], route: str, method: str, path: str) -> None:
        """Count one decided request (hot path: no I/O, one dict update)."""
        shape = (principals, route, method, path[:MAX_PATH])
        pending = self._pending
        count = pending.get(shape)
        if count is not None:
            pending[shape] = count + 1
        elif len(pending) < self._max_shapes:
            if not pending:
                # The first request since the last flush names the hour this batch is counted in.
                self._bucket = self._hour()
            pending[shape] = 1
            self._first_seen.setdefault(principals, self._clock.time())
        else:
            self.dropped += 1

    async def flush(self) -> int:
        """Add the counts so far to the table, in the hour they were made; returns the shapes written.

        Shapes naming an account that no longer exists are dropped, not written: see the module
        docstring (a flush after an erasure put the erased person's name back for 24 hours).
        """
        pending, self._pending = self._pending, {}
        first_seen, self._first_seen = self._first_seen, {}
        bucket = self._bucket
        if not pending:
            return 0
        dialect = postgresql if self._db.backend == "postgresql" else sqlite
        table = DecisionSampleRow.__table__
        statement = dialect.insert(table)
        statement = statement.on_conflict_do_update(
            index_elements=["bucket", "principals", "route", "method", "path"],
            set_={"count": table.c.count + statement.excluded.count},
        )
        with store_errors("decision sample flush"):
            # A write transaction from the first read: the accounts checked stay as read until commit.
            async with self._db.session(write=True) as session:
                live = await self._live_principals(session, first_seen)
                rows = [
                    {
                        "bucket": bucket,
                        "principals": " ".join(sorted(principals)),
                        "route": route,
                        "method": method,
                        "path": path,
                        "count": count,
                    }
                    for (principals, route, method, path), count in pending.items()
                    if principals in live
                ]
                if rows:
                    await session.execute(statement, rows)
                await session.commit()
        return len(rows)

    async def _live_principals(
        self, session: AsyncSession, first_seen: dict[frozenset[str], float]
    ) -> set[frozenset[str]]:
        """The principal sets whose ``user:<name>`` accounts all exist, and existed when first counted.

        The account rows are locked against deletion until the caller's transaction ends (PostgreSQL
        ``FOR KEY SHARE``; on SQLite the caller's ``BEGIN IMMEDIATE`` already excludes the delete), so
        an erasure cannot delete an account between this check and the flush's commit.
        """
        names = sorted({p[len(_USER) :] for s in first_seen for p in s if p.startswith(_USER)})
        created: dict[str, datetime] = {}
        for start in range(0, len(names), _CHUNK):
            query = (
                select(User.username, User.created_at)
                .where(User.username.in_(names[start : start + _CHUNK]))
                .with_for_update(read=True, key_share=True)
            )
            created.update({name: at for name, at in (await session.execute(query)).all()})
        live: set[frozenset[str]] = set()
        for principals, seen in first_seen.items():
            users = [p[len(_USER) :] for p in principals if p.startswith(_USER)]
            if all(u in created and created[u].timestamp() <= seen for u in users):
                live.add(principals)
        return live

    async def recent(self, hours: int) -> list[Sampled]:
        """Every shape of the last ``hours`` hours (this hour included), counts summed over hours."""
        if hours < 1:
            raise ValueError("hours must be >= 1")
        since = self._hour() - timedelta(hours=hours - 1)
        total = func.sum(DecisionSampleRow.count)
        query = (
            select(
                DecisionSampleRow.principals,
                DecisionSampleRow.route,
                DecisionSampleRow.method,
                DecisionSampleRow.path,
                total,
            )
            .where(DecisionSampleRow.bucket >= since)
            .group_by(
                DecisionSampleRow.principals,
                DecisionSampleRow.route,
                DecisionSampleRow.method,
                DecisionSampleRow.path,
            )
        )
        with store_errors("decision sample read"):
            async with self._db.session() as session:
                result = (await session.execute(query)).all()
        return [
            Sampled(frozenset(principals.split()), route, method, path, int(count))
            for principals, route, method, path, count in result
        ]

    async def prune(self) -> int:
        """Delete the hours older than ``retention``; returns the rows deleted."""
        cutoff = self._hour() - self._retention
        with store_errors("decision sample prune"):
            async with self._db.session() as session:
                result = await session.execute(
                    delete(DecisionSampleRow).where(DecisionSampleRow.bucket < cutoff)
                )
                await session.commit()
        return int(getattr(result, "rowcount", 0) or 0)

    async def forget(self, principals: Iterable[str]) -> int:
        """Delete every row naming one of ``principals`` (``user:<name>``): erasure of a data subject."""
        deleted = 0
        with store_errors("decision sample erase"):
            async with self._db.session() as session:
                for principal in principals:
                    # The column is space-separated and sorted: match the name as a whole word.
                    column = " " + DecisionSampleRow.principals + " "
                    result = await session.execute(
                        delete(DecisionSampleRow).where(column.contains(f" {principal} ", autoescape=True))
                    )
                    deleted += int(getattr(result, "rowcount", 0) or 0)
                await session.commit()
        return deleted

    async def run(self, interval: float) -> None:
        """Flush every ``interval`` seconds and prune once an hour, until cancelled (then flush once more)."""
        last_prune = -1.0
        try:
            while True:
                await asyncio.sleep(interval)
                await self._flush_quietly()
                now = self._clock.time()
                if now - last_prune >= 3600:
                    with contextlib.suppress(StoreUnavailable):
                        await self.prune()
                    last_prune = now
        finally:
            with contextlib.suppress(StoreUnavailable):
                await asyncio.shield(self.flush())

    async def _flush_quietly(self) -> None:
        # A database outage loses this interval's counts, never a request: the sample is advisory.
        try:
            await self.flush()
        except StoreUnavailable as exc:
            logger.warning("decision sample not saved: %s", exc)

    def _hour(self) -> datetime:
        now = datetime.fromtimestamp(self._clock.time(), UTC)
        return now.replace(minute=0, second=0, microsecond=0)
