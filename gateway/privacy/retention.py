"""The retention engine: what each data class keeps and for how long, what would go and when
(:meth:`Retention.plan`), and the purge (:meth:`Retention.run`), once per period across every process.

The rules per data class are in :mod:`gateway.privacy.retention_rules`; their periods are
``privacy.retention`` (read at every plan and run, so a reload applies). A run also carries out held
erasures whose hold was released (:meth:`gateway.privacy.service.Privacy.resume_held_erasures`).

**Once per period.** Every worker of every replica tries each period; a run first claims its period
by inserting a ``retention_runs`` row, whose ``period`` is unique, so one process does the work and
the others find the row (a unique-constraint conflict is the same answer, for the race). The period
key is the UTC start of the period: ``2026-12-01`` when ``retention.interval`` is a whole number of
days, ``2026-12-01T06:00:00Z`` otherwise, periods counted from the Unix epoch. A forced run (``gateway
retention run --force``) runs whatever was done and claims ``<period>/manual-<n>``, ``n`` counting the
forced runs of that period from 1, so every run has its row. A run that dies half-way keeps its claim:
what it left is due at the next period's run (every purge is idempotent).

**Records.** The run's row keeps the summary (per class: how many items went, which holds kept how
many, the error if a class failed) and one ``privacy.retention_run`` audit event carries the same
counts; neither names a person. The erasures themselves are in the register and the trail as any
erasure is, by ``system:retention``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from sqlalchemy import func, select, update

from gateway.audit.chain_key import ChainKeys
from gateway.audit.trail import AuditLog
from gateway.clock import Clock
from gateway.crypto.keyring import Keyring
from gateway.errors import BadRequest, GatewayError
from gateway.privacy.models import RetentionRun
from gateway.privacy.retention_rules import (
    ACTOR,
    NEXT_SHOWN,
    ActiveHolds,
    AuditEventsRule,
    IncidentsRule,
    Item,
    RegistrationRule,
    RemovedContentRule,
    RequestsRule,
    Rule,
    Survey,
)
from gateway.privacy.service import Privacy
from gateway.settings.schema import PrivacySettings
from gateway.store.claims import insert_once
from gateway.store.db import Database, store_errors
from gateway.threat.incidents import IncidentStore

__all__ = [
    "ACTOR",
    "VERBS",
    "ClassPlan",
    "ClassRun",
    "Plan",
    "Retention",
    "RunReport",
    "period_of",
    "plan_moment_problem",
]

# The years a plan may look at: a moment whose retention periods reach out of the calendar (year 1
# minus ten years) made the plan fail with a 500; no data is older than 1970 or kept past 9000.
_PLAN_YEARS: Final = (1970, 9000)


def plan_moment_problem(at: datetime) -> str | None:
    """Why ``at`` cannot be a plan's moment, or None."""
    low, high = _PLAN_YEARS
    if low <= at.year < high:
        return None
    return f"a plan looks at a moment from {low} to {high - 1}, not {at.year}"


logger = logging.getLogger("gateway.privacy")

# Two forced runs racing for the same manual key try the next number.
_CLAIM_ATTEMPTS: Final = 10
# What each class's purge does to an item, for people reading a plan or a run.
VERBS: Final = {
    "registration": "erased",
    "removed_content": "deleted",
    "audit_events": "anonymised (personal fields erased, records kept)",
    "incidents": "deleted",
    "privacy_requests": "deleted",
}


def period_of(now: datetime, interval: float) -> str:
    """The key of the period ``now`` falls in (see the module docstring)."""
    step = max(1, int(interval))
    start = datetime.fromtimestamp(int(now.timestamp()) // step * step, UTC)
    return start.strftime("%Y-%m-%d") if step % 86400 == 0 else start.strftime("%Y-%m-%dT%H:%M:%SZ")


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at is not None else None


def _item(item: Item) -> dict[str, Any]:
    return {"what": item.label, "due_at": item.due_at.isoformat()}


@dataclass(frozen=True, slots=True)
class ClassPlan:
    """One class in a plan: its rule and its survey (see :class:`~gateway.privacy.retention_rules.Survey`)."""

    data_class: str
    keep: timedelta
    survey: Survey
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        """JSON-ready (this is for the operator: ``what`` may name a person)."""
        s = self.survey
        return {
            "data_class": self.data_class,
            "keep_days": self.keep.total_seconds() / 86400,
            "action": VERBS[self.data_class],
            "due_now": len(s.due),
            "oldest_due_at": _iso(s.oldest_due),
            "due": [_item(i) for i in s.due[:NEXT_SHOWN]],
            "held": s.held,
            "next": [_item(i) for i in s.upcoming],
            "later": s.later,
            "error": self.error,
        }


@dataclass(frozen=True, slots=True)
class Plan:
    """What a run at ``at`` would do, per class; ``resumable``: held erasures whose hold is gone."""

    at: datetime
    classes: tuple[ClassPlan, ...]
    resumable: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "at": self.at.isoformat(),
            "classes": [c.to_json() for c in self.classes],
            "resumable_erasures": list(self.resumable),
        }


@dataclass(frozen=True, slots=True)
class ClassRun:
    """What a run did to one class: items removed, what each hold kept, or the error that stopped it."""

    data_class: str
    done: int
    held: dict[str, int] = field(default_factory=dict)
    error: str | None = None
    # Items of each kind that went, for a class of several kinds (incidents).
    parts: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready; names no person."""
        return {
            "done": self.done,
            "action": VERBS.get(self.data_class, ""),
            "held": self.held,
            "error": self.error,
            **({"parts": self.parts} if self.parts else {}),
        }


@dataclass(slots=True)
class RunReport:
    """One run: its period key, who ran it, what it did per class and the erasures it resumed."""

    period: str
    runner: str
    forced: bool
    started_at: datetime
    classes: list[ClassRun] = field(default_factory=list)
    resumed: int = 0
    resume_error: str | None = None
    finished_at: datetime | None = None

    @property
    def ok(self) -> bool:
        """No class failed."""
        return self.resume_error is None and all(c.error is None for c in self.classes)

    def summary(self) -> dict[str, Any]:
        """The run row's summary and the audit event's details: counts, hold references, no person."""
        return {
            "period": self.period,
            "runner": self.runner,
            "forced": self.forced,
            "started_at": self.started_at.isoformat(),
            "finished_at": _iso(self.finished_at),
            "classes": {c.data_class: c.to_json() for c in self.classes},
            "resumed_erasures": self.resumed,
            "resume_error": self.resume_error,
        }


def _merge(*counts: dict[str, int]) -> dict[str, int]:
    merged: dict[str, int] = {}
    for count in counts:
        for ref, n in count.items():
            merged[ref] = merged.get(ref, 0) + n
    return merged


class Retention:
    """Plans and runs the retention rules over one process's stores (see the module docstring)."""

    def __init__(
        self,
        db: Database,
        privacy: Privacy,
        *,
        keyring: Keyring,
        audit: AuditLog,
        incidents: IncidentStore,
        settings: Callable[[], PrivacySettings],
        clock: Clock,
    ) -> None:
        """Args:
        db: The database.
        privacy: The rights service (its register, holds and eraser).
        keyring: Keys the audit erasure record.
        audit: Where the run's event goes.
        incidents: The threat detections of the shared fast state (the incident records of the
            database come with ``privacy``).
        settings: The privacy settings in force (read at every plan and run).
        clock: Time source of the chores loop that schedules runs.
        """
        self._db = db
        self._privacy = privacy
        self._audit = audit
        self._settings = settings
        self.clock = clock
        self._rules: tuple[Rule, ...] = (
            RegistrationRule(
                db,
                holds=privacy.holds,
                register=privacy.register,
                eraser=privacy.eraser,
                settings=settings,
            ),
            RemovedContentRule(db, holds=privacy.holds, keyring=keyring),
            AuditEventsRule(db, keys=ChainKeys(keyring)),
            IncidentsRule(incidents, privacy.incident_records),
            RequestsRule(db),
        )

    def interval(self) -> float:
        """Seconds between runs (``retention.interval`` in force)."""
        return float(self._settings().retention.interval)

    def _keep(self, data_class: str) -> timedelta:
        return timedelta(seconds=float(getattr(self._settings().retention, data_class)))

    # -- the plan ---------------------------------------------------------------------------------------

    async def plan(self, now: datetime) -> Plan:
        """What a run at ``now`` would remove per class, what holds keep, and what falls due next.

        A class whose store cannot answer is listed with its error instead of failing the plan.

        Raises:
            BadRequest: ``now`` is outside the years a plan looks at (:func:`plan_moment_problem`).
        """
        problem = plan_moment_problem(now)
        if problem is not None:
            raise BadRequest(f"Cannot plan: {problem}.")
        holds = await ActiveHolds.load(self._privacy.holds)
        classes = []
        for rule in self._rules:
            keep = self._keep(rule.data_class)
            try:
                survey = await rule.survey(now, keep, holds)
            except GatewayError as exc:
                classes.append(ClassPlan(rule.data_class, keep, Survey(), error=exc.detail))
            else:
                classes.append(ClassPlan(rule.data_class, keep, survey))
        resumable = await self._privacy.resumable_erasures()
        return Plan(now, tuple(classes), tuple(request.ref for request in resumable))

    # -- the run ----------------------------------------------------------------------------------------

    async def run(
        self,
        now: datetime,
        runner: str,
        *,
        force: bool = False,
        progress: Callable[[ClassRun], None] | None = None,
    ) -> RunReport | None:
        """Purge what is due at ``now``, once per period (see the module docstring).

        Args:
            now: The moment the rules are applied at.
            runner: Which process runs it (``<host>:<pid>``, ``cli:<os user>``), kept in the run row.
            force: Run even if the period was run (a ``<period>/manual-<n>`` row).
            progress: Called with each class's result as soon as it is done.

        Returns:
            The report, or ``None`` when the period was claimed by another run (nothing was done).

        Raises:
            StoreUnavailable: The run could not be claimed or recorded. A class whose store fails is
                reported in the summary and the next classes still run.
        """
        period = period_of(now, self.interval())
        claimed = await (
            self._claim_manual(period, now, runner) if force else self._claim(period, now, runner)
        )
        if claimed is None:
            return None
        run_id, key = claimed
        report = RunReport(key, runner, force, now)
        ref = f"retention:{key}"
        holds = await ActiveHolds.load(self._privacy.holds)
        for rule in self._rules:
            keep = self._keep(rule.data_class)
            try:
                survey = await rule.survey(now, keep, holds)
                purged = await rule.purge(now, keep, survey, holds, ref)
            except GatewayError as exc:
                logger.error("retention: %s failed: %s", rule.data_class, exc)
                result = ClassRun(rule.data_class, 0, error=exc.detail)
            else:
                result = ClassRun(
                    rule.data_class, purged.done, _merge(survey.held, purged.held), parts=purged.parts
                )
            report.classes.append(result)
            if progress is not None:
                progress(result)
        try:
            resumed = await self._privacy.resume_held_erasures(settings=self._settings(), actor=ACTOR)
        except GatewayError as exc:
            report.resume_error = exc.detail
        else:
            report.resumed = len(resumed)
        report.finished_at = self.clock.now()
        await self._finish(run_id, report)
        return report

    async def _claim(self, period: str, now: datetime, runner: str) -> tuple[int, str] | None:
        """Insert the run row for ``period``; ``None`` if another process has it."""
        row = RetentionRun(period=period, started_at=now, finished_at=None, runner=runner, summary="{}")
        if not await insert_once(self._db, row, RetentionRun.period, what="the retention run"):
            return None
        return row.id, period

    async def _claim_manual(self, period: str, now: datetime, runner: str) -> tuple[int, str] | None:
        prefix = f"{period}/manual-"
        for _ in range(_CLAIM_ATTEMPTS):
            async with self._db.session() as session:
                with store_errors("cannot read retention runs"):
                    count = await session.scalar(
                        select(func.count()).where(RetentionRun.period.startswith(prefix, autoescape=True))
                    )
            claimed = await self._claim(f"{prefix}{int(count or 0) + 1}", now, runner)
            if claimed is not None:
                return claimed
        return None

    async def _finish(self, run_id: int, report: RunReport) -> None:
        summary = report.summary()
        async with self._db.session() as session:
            with store_errors("cannot record the retention run"):
                await session.execute(
                    update(RetentionRun)
                    .where(RetentionRun.id == run_id)
                    .values(finished_at=report.finished_at, summary=json.dumps(summary, sort_keys=True))
                )
                await session.commit()
        await self._audit.record(
            "privacy.retention_run",
            actor=ACTOR,
            outcome="success" if report.ok else "failure",
            details=summary,
        )

    async def runs(self, limit: int = 20) -> list[dict[str, Any]]:
        """The latest runs, newest first, as stored (period, runner, times, summary)."""
        query = select(RetentionRun).order_by(RetentionRun.id.desc()).limit(limit)
        async with self._db.session() as session:
            with store_errors("cannot read retention runs"):
                rows = (await session.scalars(query)).all()
        return [
            {
                "period": r.period,
                "runner": r.runner,
                "started_at": r.started_at.isoformat(),
                "finished_at": _iso(r.finished_at),
                "summary": json.loads(r.summary or "{}"),
            }
            for r in rows
        ]
