"""The backups kept in a directory, and pruning them to N daily and M weekly.

Pruning keeps the newest backup of each of the ``keep_daily`` most recent days that have one and of
each of the ``keep_weekly`` most recent ISO weeks that have one (UTC), and always the newest backup.
Days and weeks without a backup do not count, so a pause in backups never prunes the last good ones
away. Partial directories (being written), unreadable ones and those the deployment's keyring did not
sign are never touched. Nor are broken ones (a part's file missing, a symbolic link, of another size
than the manifest says or, for those prune would keep, of other content than its SHA-256 says): kept for
inspection, never counted, so they cannot push a whole backup out (an attack run deleted the newest
backup's database part, and prune kept only that one and deleted the good ones; a re-attack overwrote 4
bytes of it, size kept, with the same result). Symbolic links in the directory (an operator's
``latest``, or one planted) are not backups: never listed, followed or deleted.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import shutil
import stat
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.audit.trail import AuditLog
from gateway.backup.manifest import (
    MANIFEST_NAME,
    BackupError,
    Manifest,
    file_sha256,
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
    "linked_entries",
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
    # Why it is not whole (a part's file missing, not a plain file, or of another size than the manifest
    # says; after prune, of other content than its SHA-256 says, or half deleted); None: whole.
    broken: str | None = None
    # Listed with ``unsigned``: why this deployment's keyring does not vouch for it; None: it does.
    untrusted: str | None = None
    # The manifest as read when listed: prune hashes the parts against this one, not a later read.
    manifest: Manifest | None = field(default=None, repr=False, compare=False)


def _manifests(directory: Path) -> Iterator[tuple[Path, Manifest, dict[str, Any]]]:
    """Every backup directory in ``directory`` with its manifest read (not verified); partial ones
    (a leading dot: being written), symbolic links (:func:`linked_entries`) and those without a
    readable manifest are skipped."""
    if not directory.is_dir():
        return
    for path in directory.iterdir():
        # A link is not a backup: followed, an operator's ``latest -> <id>`` listed that backup twice
        # and made prune call rmtree on the link, which failed after deleting others (a re-attack run).
        if path.name.startswith(".") or path.is_symlink() or not (path / MANIFEST_NAME).is_file():
            continue
        try:
            manifest, doc = parse_manifest((path / MANIFEST_NAME).read_bytes())
        except (BackupError, OSError):
            continue
        yield path, manifest, doc


def linked_entries(directory: Path) -> list[str]:
    """The names of the symbolic links in ``directory`` (sorted), which listing and pruning skip:
    for the operator to be told once."""
    if not directory.is_dir():
        return []
    return sorted(p.name for p in directory.iterdir() if not p.name.startswith(".") and p.is_symlink())


def list_backups(
    directory: Path, *, signed_with: Keyring | None = None, unsigned: bool = False
) -> list[BackupSet]:
    """The backups in ``directory``, oldest first, each with ``broken`` set when its parts are not all
    there as plain files with the manifest's sizes (a stat each: the hashes are verify's, and prune's
    for the backups it keeps); directories without a readable manifest are skipped. With
    ``signed_with``, those whose manifest that keyring did not sign (another deployment's, or one
    anybody who may write the directory wrote) are skipped too, or with ``unsigned`` listed with
    ``untrusted`` saying why."""
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
                manifest,
            )
        )
    return sorted(found, key=lambda s: (s.created_at, s.backup_id))


def _broken(path: Path, manifest: Manifest) -> str | None:
    """Why the backup at ``path`` is not whole: a part's file missing, not a plain file (a symbolic
    link to a file of the right size passed a stat: a re-attack run) or of another size than the
    manifest says; None when each is there."""
    if not manifest.parts:
        return "the manifest names no parts"
    for part in manifest.parts:
        if "/" in part.file or part.file.startswith("."):
            return f"part {part.name}: file {part.file[:80]!r} is not a plain name"
        try:
            info = (path / part.file).lstat()
        except OSError:
            return f"part {part.name}: {part.file} is missing"
        if stat.S_ISLNK(info.st_mode):
            return f"part {part.name}: {part.file} is a symbolic link"
        if not stat.S_ISREG(info.st_mode):
            return f"part {part.name}: {part.file} is not a file"
        if info.st_size != part.size:
            return f"part {part.name}: {part.file} is {info.st_size} bytes, the manifest says {part.size}"
    return None


def _damaged(backup: BackupSet) -> str | None:
    """Why the backup's parts do not hash to what its manifest says (read without following a link),
    or None when each does: a stat passed a part overwritten in place, size kept (a re-attack run)."""
    manifest = backup.manifest
    if manifest is None:
        return "its manifest was not read"
    for part in manifest.parts:
        try:
            digest, size = file_sha256(backup.path / part.file, follow_symlinks=False)
        except OSError as exc:
            return f"part {part.name}: cannot read {part.file} ({exc.strerror or exc})"
        if size != part.size or not hmac.compare_digest(digest, part.sha256):
            return f"part {part.name}: {part.file} does not match its SHA-256 in the manifest (changed or damaged)"
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

    Each backup the plan keeps is hashed against its manifest first; one that does not match is broken
    and the plan is made again without it, until every one kept matches. Those to be deleted are not
    hashed: their content no longer matters. A deletion that fails (the directory swapped for a link,
    a file that cannot be removed) leaves that backup broken and the others are still deleted, so what
    was deleted is always returned (an rmtree failing part-way lost the record of the rest).

    Returns:
        The kept backups, the broken ones among them (``broken`` set: kept for inspection, not
        counted), and the deleted (or, with ``dry_run``, to be deleted) backups; each oldest first.
    """
    ours = list_backups(directory, signed_with=keyring)
    damaged: dict[Path, str | None] = {}  # hashed: why its content does not match, None when it does
    while True:
        whole = [s for s in ours if s.broken is None and damaged.get(s.path) is None]
        keep, drop = prune_plan(whole, keep_daily=keep_daily, keep_weekly=keep_weekly)
        unhashed = [s for s in keep if s.path not in damaged]
        if not unhashed:
            break
        for s in unhashed:
            damaged[s.path] = _damaged(s)
    ours = [replace(s, broken=damaged.get(s.path) or s.broken) for s in ours]
    deleted: list[BackupSet] = []
    if not dry_run:
        for s in drop:
            try:
                shutil.rmtree(s.path)  # never through a link: rmtree refuses one
            except OSError as exc:
                why = f"deleting it failed ({exc.strerror or exc}); what is left may not be a whole backup"
                ours = [replace(o, broken=why) if o.path == s.path else o for o in ours]
            else:
                deleted.append(s)
    kept = {s.path for s in keep}
    return [s for s in ours if s.path in kept or s.broken is not None], drop if dry_run else deleted


# backup.created records read when a key is marked: years of hourly backups.
_RECORDED = 100_000


def backup_directory(settings: Settings) -> Path:
    """Where this node keeps its backups: ``backup.directory``, or ``<data_dir>/backups``."""
    return Path(settings.backup.directory or Path(settings.data_dir) / "backups")
