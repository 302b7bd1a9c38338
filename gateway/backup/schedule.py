"""Backups from a running deployment: one per ``backup.interval`` across every worker and replica, an
alert when one fails or is missed, and the state every replica shows in its readiness details.

Every worker runs :func:`run_backups`. At the start of each period (plus a little jitter) each one
tries to insert the period's ``backup_runs`` row; the unique ``period`` lets exactly one insert win,
and that process makes the backup and marks the row ``ok`` or ``failed``. The others see the row.

* **failed**: a ``backup.failed`` audit record (outcome ``failure``), which goes to the sinks as a
  security event, naming what failed;
* **missed**: no good backup for longer than ``interval + grace`` (the gateway was down at the
  period's start, the backup hangs, every attempt fails): one ``backup.missed`` record per stale
  backup (its row is claimed like a period, so one replica sends it), and until a backup succeeds
  the readiness details show ``checks.backup.ok = false`` with the reason. A deployment that never
  had a good backup counts from its first start.

Readiness reads the last state this process saw (refreshed every :data:`STATUS_INTERVAL`), never the
database on the request path: ``/.gateway/ready`` is public. A backup that fails does not take the
replica out of the load balancer's pool: serving does not depend on it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from sqlalchemy import select, update

from gateway.audit.trail import AuditLog
from gateway.backup.jobs import Job, Made
from gateway.backup.manifest import BackupError
from gateway.backup.models import BackupRun
from gateway.clock import Clock
from gateway.settings.schema import BackupSettings
from gateway.store.claims import insert_once
from gateway.store.db import Database, store_errors
from gateway.store.instance import born

__all__ = ["BackupSchedule", "BackupState", "record_manual", "run_backups"]

logger = logging.getLogger("gateway.backup")

# The first attempt waits this long after start (or one interval, if shorter): a restarted process,
# or a test gateway that lives a minute, does not back up on its way up.
FIRST_RUN_DELAY: Final = 300.0
# At most this spread after a period starts, so the workers do not all try the claim at once.
JITTER: Final = 60.0
# How often each process re-reads the runs for its readiness details and the missed check.
STATUS_INTERVAL: Final = 60.0
# A "running" row older than this is a backup that died with its process: it counts as failed.
STALE_RUNNING: Final = timedelta(hours=6)
ACTOR: Final = "system:backup"


@dataclass(frozen=True, slots=True)
class BackupState:
    """What the runs say, as read by :meth:`BackupSchedule.refresh`.

    Attributes:
        configured: The deployment can back up (SQLite, or PostgreSQL with ``backup.pgbackrest``).
        last_ok_at: When the newest good backup finished; ``None``: never.
        last_ok_id: Its backup id.
        last_failure_at: When the newest failed attempt finished, if after the newest good one.
        last_failure: Why it failed.
        since: When the deployment first started (the clock for "never backed up").
    """

    configured: bool
    every: float
    grace: float
    since: datetime
    last_ok_at: datetime | None = None
    last_ok_id: str | None = None
    last_failure_at: datetime | None = None
    last_failure: str | None = None

    def missed(self, now: datetime) -> bool:
        """No good backup for longer than the interval plus the grace."""
        reference = self.last_ok_at or self.since
        return now - reference > timedelta(seconds=self.every + self.grace)

    def check(self, now: datetime) -> dict[str, Any]:
        """The readiness line: ``ok`` false (red) when not configured, missed or last failed."""
        line: dict[str, Any] = {"ok": True, "required": False, "every": f"{self.every:g}s"}
        if not self.configured:
            return {
                **line,
                "ok": False,
                "error": "no backups: storage is PostgreSQL and backup.pgbackrest is not configured",
            }
        if self.last_ok_at is not None:
            line["last_backup"] = self.last_ok_id
            line["last_backup_at"] = self.last_ok_at.isoformat()
            line["age"] = f"{(now - self.last_ok_at).total_seconds():.0f}s"
        if self.last_failure_at is not None:
            line["ok"] = False
            line["error"] = (
                f"the last backup failed at {self.last_failure_at.isoformat()}: {self.last_failure}"
            )
        elif self.missed(now):
            line["ok"] = False
            line["error"] = (
                f"missed: no good backup since {self.last_ok_at.isoformat()}"
                if self.last_ok_at is not None
                else f"missed: no backup yet since the first start at {self.since.isoformat()}"
            )
        return line


class BackupSchedule:
    """Claims, runs and records the deployment's backups (see the module docstring).

    Args:
        db: The database holding ``backup_runs``.
        audit: Where ``backup.created``, ``backup.failed`` and ``backup.missed`` go (and so the sinks).
        job: The backup for this storage (:func:`gateway.backup.jobs.job_for`); ``None``: none possible.
        settings: The ``backup`` settings in force (read each time: a reload applies).
        clock: Wall time for periods and ages.
        runner: This process, for the run rows.
    """

    def __init__(
        self,
        db: Database,
        audit: AuditLog,
        job: Job | None,
        settings: Callable[[], BackupSettings],
        clock: Clock,
        runner: str | None = None,
    ) -> None:
        self._db = db
        self._audit = audit
        self._job = job
        self._settings = settings
        self.clock = clock
        self._runner = runner or f"{socket.gethostname()}:{os.getpid()}"
        self._state: BackupState | None = None

    def interval(self) -> float:
        """Seconds between scheduled backups."""
        return max(1.0, float(self._settings().interval))

    def period_of(self, now: datetime) -> str:
        """The period ``now`` falls in, named by its start: ``scheduled:2026-12-03T00:00:00+00:00``."""
        every = self.interval()
        start = now.timestamp() // every * every
        return f"scheduled:{datetime.fromtimestamp(start, UTC).isoformat()}"

    def readiness(self) -> dict[str, Any] | None:
        """The readiness line from the last state read (no I/O); ``None`` before the first read."""
        if self._state is None:
            return None
        return self._state.check(self.clock.now())

    async def run_period(self, now: datetime) -> str | None:
        """Make this period's backup unless another process claimed it.

        Returns:
            ``"ok"`` or ``"failed"``; ``None`` when the period was claimed elsewhere or no job exists.
        """
        if self._job is None:
            return None
        claimed = await self._claim(self.period_of(now), kind="scheduled", now=now)
        if claimed is None:
            return None
        try:
            made = await self._job(now)
        except Exception as exc:
            # Anything else is a bug in a backup path: reported the same way, never silent.
            detail = exc.detail if isinstance(exc, BackupError) else f"{type(exc).__name__}: {exc}"
            if not isinstance(exc, BackupError):
                logger.exception("backup: the scheduled backup failed unexpectedly")
            await self._finish(claimed, "failed", None, detail)
            await self._audit.record(
                "backup.failed", actor=ACTOR, outcome="failure", details={"run": claimed, "problem": detail}
            )
            logger.error("backup: the scheduled backup FAILED: %s", detail)
            return "failed"
        return await self._made(claimed, made)

    async def _made(self, claimed: str, made: Made) -> str:
        status = "ok" if made.problem is None else "failed"
        await self._finish(claimed, status, made.backup_id, made.problem or "")
        await self._audit.record(
            "backup.created",
            actor=ACTOR,
            outcome="success" if made.problem is None else "partial",
            details={"run": claimed, **made.details},
        )
        if made.problem is not None:
            await self._audit.record(
                "backup.failed",
                actor=ACTOR,
                outcome="failure",
                details={"run": claimed, "backup_id": made.backup_id, "problem": made.problem},
            )
            logger.error("backup: %s made, but %s", made.backup_id, made.problem)
        else:
            logger.info("backup: %s made, verified and replicated", made.backup_id)
        return status

    async def refresh(self) -> BackupState:
        """Read the newest good and failed runs (and the deployment's start) into the state."""
        now = self.clock.now()
        settings = self._settings()
        async with self._db.session() as session:
            with store_errors("cannot read the backup runs"):
                ok = (
                    await session.scalars(
                        select(BackupRun)
                        .where(BackupRun.status == "ok")
                        .order_by(BackupRun.finished_at.desc())
                        .limit(1)
                    )
                ).first()
                failed = (
                    await session.scalars(
                        select(BackupRun)
                        .where(BackupRun.status.in_(("failed", "running")), BackupRun.kind != "missed")
                        .order_by(BackupRun.started_at.desc())
                        .limit(1)
                    )
                ).first()
        since = await born(self._db, now)
        failure_at, failure = _failure(failed, now)
        last_ok_at = ok.finished_at if ok is not None else None
        if failure_at is not None and last_ok_at is not None and failure_at <= last_ok_at:
            failure_at = failure = None
        self._state = BackupState(
            configured=self._job is not None,
            every=self.interval(),
            grace=float(settings.grace),
            since=since,
            last_ok_at=last_ok_at,
            last_ok_id=ok.backup_id if ok is not None else None,
            last_failure_at=failure_at,
            last_failure=failure,
        )
        return self._state

    async def alert_if_missed(self) -> bool:
        """Send ``backup.missed`` once per stale backup, across the deployment; True if this did."""
        state = await self.refresh()
        now = self.clock.now()
        if not state.configured or not state.missed(now):
            return False
        claimed = await self._claim(f"missed:{state.last_ok_id or 'never'}", kind="missed", now=now)
        if claimed is None:
            return False
        await self._finish(claimed, "alerted", None, "")
        since = state.last_ok_at or state.since
        await self._audit.record(
            "backup.missed",
            actor=ACTOR,
            outcome="failure",
            details={
                "last_backup": state.last_ok_id,
                "since": since.isoformat(),
                "overdue_seconds": round((now - since).total_seconds() - state.every),
                "last_failure": state.last_failure,
            },
        )
        logger.error("backup: missed, no good backup since %s", since.isoformat())
        return True

    async def _claim(self, period: str, *, kind: str, now: datetime) -> str | None:
        row = BackupRun(
            period=period, kind=kind, status="running", started_at=now, finished_at=None,
            runner=self._runner, backup_id=None, detail="",
        )  # fmt: skip
        if not await insert_once(self._db, row, BackupRun.period, what="the backup run"):
            return None
        return period

    async def _finish(self, period: str, status: str, backup_id: str | None, detail: str) -> None:
        async with self._db.session() as session:
            with store_errors("cannot record the backup run"):
                await session.execute(
                    update(BackupRun)
                    .where(BackupRun.period == period)
                    .values(
                        status=status, finished_at=self.clock.now(), backup_id=backup_id, detail=detail[:2000]
                    )
                )
                await session.commit()


async def record_manual(db: Database, made: Made, now: datetime) -> None:
    """Record a backup made by hand (``gateway backup create``), so every replica's readiness sees it.

    Raises:
        StoreUnavailable: The database failed.
    """
    async with db.session() as session:
        session.add(
            BackupRun(
                period=f"manual:{made.backup_id}", kind="manual",
                status="ok" if made.problem is None else "failed", started_at=now, finished_at=now,
                runner="cli", backup_id=made.backup_id, detail=made.problem or "",
            )
        )  # fmt: skip
        with store_errors("cannot record the backup"):
            await session.commit()


def _failure(row: BackupRun | None, now: datetime) -> tuple[datetime | None, str | None]:
    if row is None:
        return None, None
    if row.status == "failed":
        return row.finished_at or row.started_at, row.detail or "unknown"
    if now - row.started_at > STALE_RUNNING:
        return row.started_at, f"started by {row.runner} and never finished (the process died?)"
    return None, None


def _until_next_period(schedule: BackupSchedule) -> float:
    every = schedule.interval()
    return every - schedule.clock.time() % every + random.uniform(0.0, min(JITTER, every / 10))  # noqa: S311


async def run_backups(schedule: BackupSchedule, enabled: Callable[[], bool]) -> None:
    """The scheduled backups and the missed check, until cancelled (``enabled`` read each period)."""
    async with asyncio.TaskGroup() as group:
        group.create_task(_watch(schedule))
        group.create_task(_backups(schedule, enabled))


async def _watch(schedule: BackupSchedule) -> None:
    while True:
        try:
            await schedule.alert_if_missed()
        except Exception:
            # A store outage must not end the loop: the next round looks again.
            logger.exception("backup: the missed-backup check failed; it runs again in a minute")
        await asyncio.sleep(min(STATUS_INTERVAL, schedule.interval() / 4))


async def _backups(schedule: BackupSchedule, enabled: Callable[[], bool]) -> None:
    delay = min(FIRST_RUN_DELAY, schedule.interval())
    while True:
        await asyncio.sleep(delay)
        if enabled():
            try:
                # None: another worker or replica claimed this period.
                if await schedule.run_period(schedule.clock.now()) is not None:
                    await schedule.refresh()
            except Exception:
                logger.exception(
                    "backup: the scheduled backup could not be recorded; the next period retries"
                )
        delay = _until_next_period(schedule)
