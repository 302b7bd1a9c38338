"""The backup schedule: one backup per period across processes, failures and missed backups alerted
once, and the readiness line every process shows (real SQLite, real backups where one is made)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from gateway.audit.models import AuditEvent
from gateway.audit.trail import AuditLog
from gateway.backup.jobs import Made, job_for
from gateway.backup.manifest import BackupError
from gateway.backup.models import BackupRun
from gateway.backup.schedule import BackupSchedule
from gateway.backup.verify import restore_backup
from gateway.clock import FakeClock
from gateway.settings.loader import parse_settings
from gateway.settings.schema import BackupSettings, Settings
from tests.unit.backup.helpers import Node, make_node

DAY = 86400.0
# A Wednesday, mid-period.
T0 = datetime(2026, 12, 2, 10, 0, tzinfo=UTC)


class Job:
    """Counts its calls; fails while ``failing`` is set (the real jobs are tested below and elsewhere)."""

    def __init__(self) -> None:
        self.calls = 0
        self.failing: str | None = None

    async def __call__(self, now: datetime) -> Made:
        self.calls += 1
        await asyncio.sleep(0.05)  # long enough for a competing claim to arrive meanwhile
        if self.failing is not None:
            raise BackupError(self.failing, part="gateway.db")
        return Made(f"b{self.calls}", {"backup_id": f"b{self.calls}"})


def _settings(**values: Any) -> BackupSettings:
    return BackupSettings(**{"interval": DAY, "grace": 7200.0, **values})


async def _events(node: Node, kind: str) -> list[AuditEvent]:
    async with node.db.session() as session:
        return list((await session.scalars(select(AuditEvent).where(AuditEvent.kind == kind))).all())


@pytest.fixture
async def node(tmp_path: Path) -> Any:
    clock = FakeClock(start=T0.timestamp())
    made = await make_node(tmp_path / "live", clock, records=1)
    try:
        yield made
    finally:
        await made.db.close()


def _schedule(node: Node, job: Any, clock: FakeClock, runner: str = "a:1") -> BackupSchedule:
    return BackupSchedule(
        node.db, AuditLog(node.db, clock=clock, keyring=node.keyring), job, _settings, clock, runner
    )


async def test_one_backup_per_period_however_many_processes_try(node: Node) -> None:
    clock = FakeClock(start=T0.timestamp())
    job = Job()
    schedules = [_schedule(node, job, clock, runner=f"host{i}:1") for i in range(4)]
    results = await asyncio.gather(*(s.run_period(clock.now()) for s in schedules))
    assert sorted(results, key=str) == [None, None, None, "ok"]
    assert job.calls == 1
    # The next period: one more, and the period names its start.
    clock.advance(DAY)
    results = await asyncio.gather(*(s.run_period(clock.now()) for s in schedules))
    assert results.count("ok") == 1
    async with node.db.session() as session:
        runs = (await session.scalars(select(BackupRun).order_by(BackupRun.id))).all()
    assert [(r.period, r.status, r.backup_id) for r in runs] == [
        ("scheduled:2026-12-02T00:00:00+00:00", "ok", "b1"),
        ("scheduled:2026-12-03T00:00:00+00:00", "ok", "b2"),
    ]
    created = await _events(node, "backup.created")
    assert [e.actor for e in created] == ["system:backup", "system:backup"]
    # Every process sees it, not only the one that made it.
    state = await schedules[3].refresh()
    assert state.last_ok_id == "b2"
    line = schedules[3].readiness()
    assert line is not None
    assert (line["ok"], line["last_backup"]) == (True, "b2")


async def test_a_failed_backup_is_an_alert_and_a_red_line_until_one_succeeds(node: Node) -> None:
    clock = FakeClock(start=T0.timestamp())
    job = Job()
    schedule, other = _schedule(node, job, clock), _schedule(node, job, clock, runner="b:2")
    assert await schedule.run_period(clock.now()) == "ok"
    clock.advance(DAY)
    job.failing = "cannot write backups to /backups: No space left on device"
    assert await schedule.run_period(clock.now()) == "failed"
    (failed,) = await _events(node, "backup.failed")
    assert failed.outcome == "failure"
    assert "No space left" in json.loads(failed.details)["problem"]
    await other.refresh()
    line = other.readiness()
    assert line is not None
    assert line["ok"] is False
    assert "the last backup failed" in line["error"]
    assert "No space left" in line["error"]
    assert line["last_backup"] == "b1"  # the newest good one is still named

    clock.advance(DAY)
    job.failing = None
    assert await schedule.run_period(clock.now()) == "ok"
    await other.refresh()
    line = other.readiness()
    assert line is not None
    assert (line["ok"], line["last_backup"]) == (True, "b3")
    assert "error" not in line


async def test_a_backup_made_but_not_replicated_counts_as_failed(node: Node) -> None:
    clock = FakeClock(start=T0.timestamp())

    async def unreplicated(_now: datetime) -> Made:
        return Made("b1", {"backup_id": "b1"}, problem="replication to rclone:offsite:gw failed: timeout")

    schedule = _schedule(node, unreplicated, clock)
    assert await schedule.run_period(clock.now()) == "failed"
    (created,) = await _events(node, "backup.created")
    assert created.outcome == "partial"
    (failed,) = await _events(node, "backup.failed")
    assert json.loads(failed.details)["backup_id"] == "b1"
    await schedule.refresh()
    line = schedule.readiness()
    assert line is not None
    assert line["ok"] is False
    assert "rclone:offsite:gw" in line["error"]


async def test_a_missed_backup_is_alerted_once_across_processes(node: Node) -> None:
    clock = FakeClock(start=T0.timestamp())
    job = Job()
    schedules = [_schedule(node, job, clock, runner=f"host{i}:1") for i in range(3)]
    assert await schedules[0].run_period(clock.now()) == "ok"
    # One interval plus less than the grace: not yet missed.
    clock.advance(DAY + 7000)
    assert not any(await asyncio.gather(*(s.alert_if_missed() for s in schedules)))
    line = schedules[1].readiness()
    assert line is not None
    assert line["ok"] is True
    # Past the grace (the gateway was down at the period's start, say): one alert, from one process.
    clock.advance(300)
    assert sorted(await asyncio.gather(*(s.alert_if_missed() for s in schedules))) == [False, False, True]
    assert not any(await asyncio.gather(*(s.alert_if_missed() for s in schedules)))
    (missed,) = await _events(node, "backup.missed")
    assert missed.outcome == "failure"
    assert json.loads(missed.details)["last_backup"] == "b1"
    line = schedules[2].readiness()
    assert line is not None
    assert line["ok"] is False
    assert line["error"].startswith("missed: no good backup since 2026-12-02T10:00")
    # A backup clears it; the next stale one is a new alert.
    assert await schedules[1].run_period(clock.now()) == "ok"
    assert not await schedules[0].alert_if_missed()
    clock.advance(DAY + 7300)
    assert await schedules[0].alert_if_missed()
    assert len(await _events(node, "backup.missed")) == 2


async def test_a_deployment_that_never_backed_up_is_missed_from_its_first_start(node: Node) -> None:
    clock = FakeClock(start=T0.timestamp())
    schedule = _schedule(node, Job(), clock)
    assert not await schedule.alert_if_missed()  # first start recorded now
    clock.advance(DAY + 7300)
    assert await schedule.alert_if_missed()
    (missed,) = await _events(node, "backup.missed")
    assert json.loads(missed.details)["last_backup"] is None
    line = schedule.readiness()
    assert line is not None
    assert "no backup yet since the first start at 2026-12-02T10:00:00+00:00" in line["error"]


async def test_a_backup_whose_process_died_shows_after_a_while(node: Node) -> None:
    clock = FakeClock(start=T0.timestamp())
    schedule = _schedule(node, Job(), clock)
    assert await schedule.run_period(clock.now()) == "ok"
    clock.advance(DAY)
    async with node.db.session() as session:
        session.add(
            BackupRun(
                period=schedule.period_of(clock.now()), kind="scheduled", status="running",
                started_at=clock.now(), finished_at=None, runner="gone:9", backup_id=None, detail="",
            )
        )  # fmt: skip
        await session.commit()
    await schedule.refresh()
    assert (schedule.readiness() or {})["ok"] is True  # still running, as far as anyone knows
    clock.advance(7 * 3600)
    await schedule.refresh()
    line = schedule.readiness()
    assert line is not None
    assert line["ok"] is False
    assert "started by gone:9 and never finished" in line["error"]


async def test_without_a_way_to_back_up_the_readiness_line_says_so(node: Node) -> None:
    clock = FakeClock(start=T0.timestamp())
    schedule = _schedule(node, None, clock)
    assert await schedule.run_period(clock.now()) is None
    await schedule.refresh()
    line = schedule.readiness()
    assert line is not None
    assert line["ok"] is False
    assert "backup.pgbackrest is not configured" in line["error"]
    postgres = parse_settings(
        json.dumps(
            {
                "public_url": "https://gw.example",
                "storage": {"url": "postgresql+asyncpg://postgres@127.0.0.1/test"},
            }
        )
    )
    assert job_for(lambda: postgres, node.keyring, clock) is None


def _embedded(node: Node, tmp_path: Path, **backup: Any) -> Settings:
    return parse_settings(
        json.dumps(
            {
                "public_url": "https://gw.example",
                "data_dir": str(node.data_dir),
                "backup": {"directory": str(tmp_path / "backups"), **backup},
            }
        )
    )


async def test_the_embedded_job_makes_a_verified_replicated_backup_whose_restore_is_not_running(
    node: Node, tmp_path: Path
) -> None:
    clock = FakeClock(start=T0.timestamp())
    settings = _embedded(node, tmp_path, targets=[str(tmp_path / "offsite")], keep_daily=1, keep_weekly=0)
    job = job_for(lambda: settings, node.keyring, clock)
    assert job is not None
    schedule = BackupSchedule(
        node.db,
        AuditLog(node.db, clock=clock, keyring=node.keyring),
        job,
        lambda: settings.backup,
        clock,
        "a:1",
    )
    assert await schedule.run_period(clock.now()) == "ok"
    (created,) = await _events(node, "backup.created")
    details = json.loads(created.details)
    backup_id = details["backup_id"]
    assert details["verified_rows"] > 0
    assert details["replicated"] == [str(tmp_path / "offsite" / backup_id)]
    assert (tmp_path / "offsite" / backup_id / "manifest.json").is_file()
    # The next day's backup prunes the first (keep_daily 1).
    clock.advance(DAY)
    assert await schedule.run_period(clock.now()) == "ok"
    kept = sorted(p.name for p in (tmp_path / "backups").iterdir())
    assert len(kept) == 1
    assert kept[0] != backup_id

    # Restored, the run that made the backup is not "running" (which would hold its period claimed).
    restored = await restore_backup(tmp_path / "backups" / kept[0], node.keyring, tmp_path / "restored")
    with closing(sqlite3.connect(restored.database)) as conn:
        statuses = conn.execute("SELECT status, backup_id FROM backup_runs ORDER BY id").fetchall()
    assert statuses == [("ok", backup_id), ("ok", kept[0])]


async def test_the_embedded_job_fails_naming_why(node: Node, tmp_path: Path) -> None:
    clock = FakeClock(start=T0.timestamp())
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    settings = parse_settings(
        json.dumps(
            {
                "public_url": "https://gw.example",
                "data_dir": str(node.data_dir),
                "backup": {"directory": str(blocker)},
            }
        )
    )
    job = job_for(lambda: settings, node.keyring, clock)
    assert job is not None
    schedule = BackupSchedule(
        node.db,
        AuditLog(node.db, clock=clock, keyring=node.keyring),
        job,
        lambda: settings.backup,
        clock,
        "a:1",
    )
    assert await schedule.run_period(clock.now()) == "failed"
    (failed,) = await _events(node, "backup.failed")
    assert f"cannot write backups to {blocker}" in json.loads(failed.details)["problem"]
