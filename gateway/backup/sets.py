"""The backups kept in a directory, and pruning them to N daily and M weekly.

Pruning keeps the newest backup of each of the ``keep_daily`` most recent days that have one and of
each of the ``keep_weekly`` most recent ISO weeks that have one (UTC), and always the newest backup.
Days and weeks without a backup do not count, so a pause in backups never prunes the last good ones
away. Partial directories (being written), unreadable ones and those the deployment's keyring did not
sign are never touched. Nor are broken ones (a part's file missing, or of another size than the
manifest says): kept for inspection, never counted, so they cannot push a whole backup out (an attack
run deleted the newest backup's database part, and prune kept only that one and deleted the good ones).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import stat
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.audit.trail import AuditLog
from gateway.backup.manifest import (
    MANIFEST_NAME,
    BackupError,
    Manifest,
    mac_problem,
    parse_manifest,
    signature_mac,
    signature_problem,
)
from gateway.clock import SYSTEM_CLOCK, Clock, as_utc
from gateway.crypto.keyring import Keyring
from gateway.settings.schema import Settings

__all__ = [
    "BackupSet",
    "backup_directory",
    "find_backup",
    "list_backups",
    "prune",
    "prune_plan",
    "recorded_backups",
    "signed_under",
    "vouching",
]


@dataclass(frozen=True, slots=True)
class BackupSet:
    """One backup directory as listed (its manifest read, not verified)."""

    backup_id: str
    path: Path
    created_at: datetime
    parts: int
    size: int
    # Why it is not whole (a part's file missing, or of another size than the manifest says); None: whole.
    broken: str | None = None
    # Listed with ``unsigned``: why this deployment's keyring does not vouch for it; None: it does.
    untrusted: str | None = None


def _manifests(directory: Path) -> Iterator[tuple[Path, Manifest, dict[str, Any]]]:
    """Every backup directory in ``directory`` with its manifest read (not verified); partial ones
    (a leading dot: being written) and those without a readable manifest are skipped."""
    if not directory.is_dir():
        return
    for path in directory.iterdir():
        if path.name.startswith(".") or not (path / MANIFEST_NAME).is_file():
            continue
        try:
            manifest, doc = parse_manifest((path / MANIFEST_NAME).read_bytes())
        except (BackupError, OSError):
            continue
        yield path, manifest, doc


def list_backups(
    directory: Path, *, signed_with: Keyring | None = None, unsigned: bool = False
) -> list[BackupSet]:
    """The backups in ``directory``, oldest first, each with ``broken`` set when its parts are not all
    there with the manifest's sizes (a stat each: the hashes are verify's); directories without a
    readable manifest are skipped. With ``signed_with``, those whose manifest that keyring did not sign
    (another deployment's, or one anybody who may write the directory wrote) are skipped too, or with
    ``unsigned`` listed with ``untrusted`` saying why."""
    found: list[BackupSet] = []
    for path, manifest, doc in _manifests(directory):
        created = _created(manifest)
        if created is None:
            continue
        untrusted = None
        if signed_with is not None and signature_problem(manifest, doc, signed_with) is not None:
            if not unsigned:
                continue
            untrusted = (
                "signed under a compromised key (not a backup it signed before it was marked)"
                if mac_problem(manifest, doc, signed_with) is None
                else "not signed by this keyring"
            )
        elif signed_with is not None and (mark := signed_with.compromised.get(manifest.key_id)) is not None:
            # Never newer than the mark: whatever it claims, a backup under a leaked key cannot pass a
            # backup made since, as the newest or when pruning.
            created = min(created, mark.time)
        size = sum(p.size for p in manifest.parts)
        found.append(
            BackupSet(
                manifest.backup_id,
                path,
                created,
                len(manifest.parts),
                size,
                _broken(path, manifest),
                untrusted,
            )
        )
    return sorted(found, key=lambda s: (s.created_at, s.backup_id))


def _broken(path: Path, manifest: Manifest) -> str | None:
    """Why the backup at ``path`` is not whole: a part's file missing, not a plain file or of another
    size than the manifest says; None when each is there."""
    if not manifest.parts:
        return "the manifest names no parts"
    for part in manifest.parts:
        if "/" in part.file or part.file.startswith("."):
            return f"part {part.name}: file {part.file[:80]!r} is not a plain name"
        try:
            info = (path / part.file).stat()
        except OSError:
            return f"part {part.name}: {part.file} is missing"
        if not stat.S_ISREG(info.st_mode):
            return f"part {part.name}: {part.file} is not a file"
        if info.st_size != part.size:
            return f"part {part.name}: {part.file} is {info.st_size} bytes, the manifest says {part.size}"
    return None


def signed_under(
    directory: Path,
    keyring: Keyring,
    kid: str,
    *,
    recorded: Mapping[str, Mapping[str, str]] | None = None,
    before: datetime | None = None,
) -> dict[str, str]:
    """The backups in ``directory`` whose manifest ``keyring`` signed under key ``kid``: id → MAC.

    What a key marked compromised vouches for from then on (:meth:`Keyring.mark_compromised`): only
    signatures that hold now, so a manifest planted without the key is not vouched for; with
    ``before``, none dated later (whoever held the leaked key before the mark planted backups dated
    2099, which then were the newest, and made pruning delete the real ones: a re-attack run); with
    ``recorded`` (backup id → its parts' SHA-256, from the audit trail's ``backup.created``), only
    backups the gateway recorded making, part for part.
    """
    vouched: dict[str, str] = {}
    for _path, manifest, doc in _manifests(directory):
        if manifest.key_id != kid or signature_problem(manifest, doc, keyring) is not None:
            continue
        if before is not None and ((created := _created(manifest)) is None or created > before):
            continue
        if recorded is not None and recorded.get(manifest.backup_id) != manifest.summary()["parts"]:
            continue
        vouched[manifest.backup_id] = signature_mac(doc)
    return vouched


async def recorded_backups(audit: AuditLog, before: datetime | None = None) -> dict[str, dict[str, str]]:
    """Every backup the audit trail says the gateway made (before ``before``, when given): id → its
    parts' SHA-256 (``backup.created``)."""
    made: dict[str, dict[str, str]] = {}
    for event in await audit.events(kind="backup.created", limit=_RECORDED):
        if before is not None and as_utc(event.at) >= before:
            continue
        try:
            details = json.loads(event.details)
            parts = details["parts"]
            if isinstance(parts, dict):
                made.setdefault(str(details["backup_id"]), {str(k): str(v) for k, v in parts.items()})
        except (ValueError, KeyError, TypeError):
            continue
    return made


def vouching(
    directory: Path, keyring: Keyring, audit: AuditLog, clock: Clock = SYSTEM_CLOCK
) -> Callable[[str, datetime | None], Awaitable[dict[str, str]]]:
    """What a key marked compromised vouches for (:func:`signed_under` with the audit trail's record
    and nothing dated after now, or after the leak's time when it is known), as
    :func:`gateway.crypto.lifecycle.rotate_keys` asks for it."""

    async def signed(kid: str, leaked_since: datetime | None) -> dict[str, str]:
        until = clock.now() if leaked_since is None else min(clock.now(), leaked_since)
        recorded = await recorded_backups(audit, before=leaked_since)
        return await asyncio.to_thread(signed_under, directory, keyring, kid, recorded=recorded, before=until)

    return signed


def _created(manifest: Manifest) -> datetime | None:
    """When the manifest says the backup was made (UTC), or ``None`` when that does not read."""
    try:
        return datetime.fromisoformat(manifest.created_at).astimezone(UTC)
    except ValueError:
        return None


def find_backup(directory: Path, ref: str | None, *, signed_with: Keyring | None = None) -> Path:
    """A backup given by path or by id (in ``directory``); the newest in ``directory`` without ``ref``,
    of those ``signed_with`` signed when given (an attack run planted an unsigned manifest dated 2099,
    which verify and drills then picked and failed on).

    Raises:
        LookupError: No such backup, or none at all (the message says which, for the operator).
    """
    if ref is None:
        backups = list_backups(directory, signed_with=signed_with)
        if not backups:
            raise LookupError(f"no backups in {directory}; make one with `gateway backup create`")
        return backups[-1].path
    for candidate in (Path(ref), directory / ref):
        if candidate.is_dir():
            return candidate
    raise LookupError(f"no backup {ref!r}: neither a directory nor a backup id in {directory}")


def _newest_per(sets: list[BackupSet], key: str, count: int) -> set[str]:
    newest: dict[tuple[int, int], BackupSet] = {}
    for s in sets:  # oldest first: a later one of the same period replaces an earlier
        iso = s.created_at.isocalendar()
        period = (
            (s.created_at.year, s.created_at.timetuple().tm_yday) if key == "day" else (iso.year, iso.week)
        )
        newest[period] = s
    return {newest[p].backup_id for p in sorted(newest, reverse=True)[:count]}


def prune_plan(
    sets: list[BackupSet], *, keep_daily: int, keep_weekly: int
) -> tuple[list[BackupSet], list[BackupSet]]:
    """Which backups to keep and which to delete (each list oldest first)."""
    keep = _newest_per(sets, "day", keep_daily) | _newest_per(sets, "week", keep_weekly)
    if sets:
        keep.add(sets[-1].backup_id)
    return [s for s in sets if s.backup_id in keep], [s for s in sets if s.backup_id not in keep]


def prune(
    directory: Path, keyring: Keyring, *, keep_daily: int, keep_weekly: int, dry_run: bool = False
) -> tuple[list[BackupSet], list[BackupSet]]:
    """Delete the backups :func:`prune_plan` does not keep (none with ``dry_run``), among the whole ones
    this deployment's ``keyring`` signed: others are neither counted nor deleted. Counted by their
    unsigned dates, another deployment's backups in a shared directory, or manifests dated in the future
    that anybody able to write the directory could add, pushed every real backup out (an attack run);
    counted, a broken backup did the same (another attack run).

    Returns:
        The kept backups, the broken ones among them (``broken`` set: kept for inspection, not
        counted), and the deleted (or, with ``dry_run``, to be deleted) backups; each oldest first.
    """
    ours = list_backups(directory, signed_with=keyring)
    keep, drop = prune_plan(
        [s for s in ours if s.broken is None], keep_daily=keep_daily, keep_weekly=keep_weekly
    )
    if not dry_run:
        for s in drop:
            shutil.rmtree(s.path)
    kept = {s.backup_id for s in keep}
    return [s for s in ours if s.backup_id in kept or s.broken is not None], drop


# backup.created records read when a key is marked: years of hourly backups.
_RECORDED = 100_000


def backup_directory(settings: Settings) -> Path:
    """Where this node keeps its backups: ``backup.directory``, or ``<data_dir>/backups``."""
    return Path(settings.backup.directory or Path(settings.data_dir) / "backups")
