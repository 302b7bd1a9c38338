"""The table of backup runs: what the schedule made, when, by which process, and how it ended.

One row per scheduled period (``period`` is unique, so N workers and M replicas make one backup per
period: the one whose insert wins), one per manual ``gateway backup create``, and one per missed-backup
alert (so that alert goes out once across the deployment). Every replica reads the newest rows for
its readiness details: the others see that it ran.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, Integer, Text
from sqlalchemy.orm import Mapped, mapped_column

from gateway.store.models import Base

__all__ = ["BackupRun"]


class BackupRun(Base):
    """One backup attempt (or one missed-backup alert)."""

    __tablename__ = "backup_runs"
    __table_args__ = (Index("ix_backup_runs_status", "status", "finished_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # "scheduled:<period start, ISO>", "manual:<backup id>" or "missed:<last good backup id|never>".
    period: Mapped[str] = mapped_column(unique=True)
    # scheduled | manual | missed
    kind: Mapped[str]
    # running | ok | failed | alerted
    status: Mapped[str]
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
    # Which process ran it ("<host>:<pid>" or "cli").
    runner: Mapped[str]
    # The backup made (SQLite backup id, or pgBackRest's label), when one was.
    backup_id: Mapped[str | None]
    # Why it failed, or what was done (replicated to, pruned); never key material.
    detail: Mapped[str] = mapped_column(Text, default="")
