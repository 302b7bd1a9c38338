"""What one backup of a deployment is, by storage backend: the unit the schedule runs.

* **SQLite** (the embedded default): an online snapshot, encrypted and signed
  (:func:`gateway.backup.archive.create_backup`), verified end to end as ``gateway backup verify``
  does (decrypt, restore into a scratch directory, audit chain, row counts), copied to every
  ``backup.targets`` (each copy checked), then pruned to ``keep_daily``/``keep_weekly``.
* **PostgreSQL** with ``backup.pgbackrest``: ``pgbackrest backup``, full on ``backup.full_on`` and
  incremental otherwise (pgBackRest makes it full when the repository has none), then the repository
  verified (:func:`gateway.backup.pg_repo.verify_repository`: ``pgbackrest verify`` and the WAL every
  backup needs), then copied to every ``backup.targets`` (each copy checked); pgBackRest's own
  ``retention_full`` prunes, and the copies follow.

A failure raises :class:`~gateway.backup.manifest.BackupError` naming what failed; a backup that was
made but not copied everywhere comes back with ``problem`` set (the schedule reports it as failed: a
lost site would lose it).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from gateway.backup.archive import Progress, create_backup
from gateway.backup.manifest import BackupError
from gateway.backup.pg_repo import replicate_repository, verify_repository
from gateway.backup.pgbackrest import BackupType, PgBackRestError
from gateway.backup.pgbackrest import run as run_pgbackrest
from gateway.backup.sets import backup_directory, prune
from gateway.backup.snapshot import sqlite_path
from gateway.backup.targets import Replicated, replicate_all
from gateway.backup.verify import verify_backup
from gateway.clock import Clock
from gateway.crypto.keyring import Keyring
from gateway.settings.schema import PgBackRestSettings, Settings
from gateway.store.db import configured_url

__all__ = ["Job", "Made", "job_for", "pgbackrest_backup", "scheduled_type", "sqlite_backup"]


@dataclass(frozen=True, slots=True)
class Made:
    """One backup made.

    Attributes:
        backup_id: The SQLite backup id, or pgBackRest's backup label.
        details: For the audit record and the run row (ids, hashes, copies; never key material).
        problem: Made, but something after it failed (a target the copy did not reach).
    """

    backup_id: str
    details: dict[str, object] = field(default_factory=dict)
    problem: str | None = None


# One backup of the deployment at ``now``; raises BackupError when none was made.
Job = Callable[[datetime], Awaitable[Made]]


async def sqlite_backup(
    settings: Settings,
    keyring: Keyring,
    clock: Clock,
    *,
    verify: bool = True,
    replicate: bool = True,
    prune_old: bool = True,
    to: Path | None = None,
    progress: Progress = lambda _line: None,
) -> Made:
    """Snapshot, encrypt, sign, verify, replicate and prune (see the module docstring).

    Raises:
        BackupError: No backup was made, or the one made failed verification (naming the part).
    """
    database = sqlite_path(configured_url(settings))
    directory = to or backup_directory(settings)
    # Signed under the file's active key, not the one this process loaded: a key rotated out (and
    # perhaps marked compromised) since would sign a backup verify then refuses.
    await asyncio.to_thread(keyring.follow_file)
    # The refusal of a shared directory names what the operator gave (an attack run was told about
    # backup.directory after `backup create --to /tmp`).
    named = "backup.directory" if to is None else "--to"
    manifest, path = await asyncio.to_thread(
        create_backup, database, Path(settings.data_dir), directory, keyring, clock, progress, named=named
    )
    details = manifest.summary()
    if verify:
        # On a thread with its own loop: decrypting and checking a large database is seconds of
        # blocking work that must not stall the requests this worker's loop is serving.
        verified = await asyncio.to_thread(asyncio.run, verify_backup(path, keyring))
        details["verified_rows"] = sum(verified.row_counts.values())
        progress(f"verified: restored, audit chain of {verified.audit_records} record(s) checked")
    done, failed = await asyncio.to_thread(replicate_all, path, settings.backup.targets if replicate else ())
    problem = _copies(details, done, failed)
    for copy in done:
        progress(f"replicated to {copy.location} (checked)")
    for target, why in failed:
        progress(f"replication to {target} FAILED: {why}")
    if prune_old and to is None:
        b = settings.backup
        kept, dropped = await asyncio.to_thread(
            prune, directory, keyring, keep_daily=b.keep_daily, keep_weekly=b.keep_weekly
        )
        details["pruned"] = [s.backup_id for s in dropped]
        if broken := [s.backup_id for s in kept if s.broken is not None]:
            # Kept for inspection, not counted: the record says so, so somebody looks.
            details["broken"] = broken
            progress(f"broken backups kept, not counted: {', '.join(broken)}")
    return Made(manifest.backup_id, details, problem)


def _copies(details: dict[str, object], done: list[Replicated], failed: list[tuple[str, str]]) -> str | None:
    """Note the copies in ``details``; the problem a failed one makes of the backup, if any."""
    details["replicated"] = [c.location for c in done]
    details["replication_failed"] = [t for t, _p in failed]
    return "; ".join(f"replication to {t} failed: {why}" for t, why in failed) or None


_LABEL = re.compile(r"new backup label = (\S+)")


def scheduled_type(full_on: int, now: datetime) -> BackupType:
    """A full backup on the ISO weekday ``full_on``, an incremental one on the others."""
    return "full" if now.isoweekday() == full_on else "incr"


def pgbackrest_backup(
    pg: PgBackRestSettings,
    kind: BackupType,
    now: datetime,
    progress: Progress,
    *,
    targets: tuple[str, ...] = (),
    verify: bool = True,
) -> Made:
    """``pgbackrest backup --type=<kind>``, then the repository verified and copied to ``targets``.

    The copies are made only from a repository that verified (so ``verify=False`` with targets still
    verifies): a damaged repository never replaces the last good copy.

    Raises:
        BackupError: pgBackRest failed (part ``pgbackrest``), or the repository did not verify (the
            part names the backup label or file).
    """
    try:
        made = run_pgbackrest(pg, "backup", f"--type={kind}", on_line=progress)
    except PgBackRestError as exc:
        raise BackupError(str(exc), part="pgbackrest") from None
    labels = [m.group(1) for line in made.output if (m := _LABEL.search(line))]
    label = labels[-1] if labels else f"{kind}@{now:%Y%m%dT%H%M%SZ}"
    details: dict[str, object] = {"backup_id": label, "type": kind, "stanza": pg.stanza, "verified": False}
    if verify or targets:
        verify_repository(pg, on_line=progress)
        details["verified"] = True
    done, failed = replicate_repository(pg, targets, progress)
    return Made(label, details, _copies(details, done, failed))


def job_for(settings: Callable[[], Settings], keyring: Keyring, clock: Clock) -> Job | None:
    """The scheduled job for this deployment's storage; ``None`` when it has no way to back up
    (PostgreSQL without ``backup.pgbackrest``: the readiness details say so)."""
    if configured_url(settings()).startswith("sqlite"):

        async def embedded(_now: datetime) -> Made:
            return await sqlite_backup(settings(), keyring, clock)

        return embedded
    if settings().backup.pgbackrest is None:
        return None

    async def postgresql(now: datetime) -> Made:
        current = settings()
        pg = current.backup.pgbackrest
        if pg is None:
            raise BackupError("backup.pgbackrest was removed from the configuration", part="pgbackrest")
        return await asyncio.to_thread(
            pgbackrest_backup,
            pg,
            scheduled_type(current.backup.full_on, now),
            now,
            lambda _l: None,
            targets=current.backup.targets,
        )

    return postgresql
