"""Restoring a backup into a new data directory, and refusing to overwrite a live one.

The target's ``gateway.db`` is written to a temporary file beside it and renamed into place, so it is
the whole backup or the old file, never half of one. An existing non-empty database is replaced only
with ``force``; a database some process has open (a gateway running on that data directory, found
through ``/proc``) is never replaced: stop the gateway first. With ``force`` the old WAL files and the
node's fast state (``state.db``: sessions, counters) are removed too, since they belong to the old
database: a stale WAL would be replayed into the restored file, and sessions of the old state would
outlive a disabled account of the restored one.

The sealed incident evidence (``incidents/…`` parts) is put back under ``<data_dir>/incidents/``, each
file renamed into place. Evidence files already there and not in the backup are left alone, also
with ``force``: a restore never deletes evidence.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from gateway.audit.checkpoint import local_checkpoint_file
from gateway.backup.archive import CHECKPOINTS_PART, DATABASE_PART, INCIDENTS_DIR, fsync_dir
from gateway.backup.manifest import BackupError

__all__ = ["database_in_use", "install_parts", "refuse_live_target", "staging_dir"]

_STALE = (
    "gateway.db-wal",
    "gateway.db-shm",
    "gateway.db-journal",
    "state.db",
    "state.db-wal",
    "state.db-shm",
)


def database_in_use(path: Path) -> list[int]:
    """The ids of processes that hold ``path`` open (Linux ``/proc``; empty where it cannot tell).

    Compared by device and inode, not by the name the link shows: a gateway in a container or another
    mount namespace opens the same file under another path (an attack run restored under a live
    gateway that way, which went on serving the replaced file).
    """
    try:
        wanted = path.stat()
    except OSError:
        return []
    target = (wanted.st_dev, wanted.st_ino)
    holders = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            fds = list((proc / "fd").iterdir())
        except OSError:
            continue  # gone, or another user's process we may not look into
        for fd in fds:
            try:
                held = fd.stat()  # follows the link to the open file itself
            except OSError:
                continue
            if (held.st_dev, held.st_ino) == target:
                holders.append(int(proc.name))
                break
    return holders


def refuse_live_target(data_dir: Path, *, force: bool) -> None:
    """Raise unless the data directory's database may be replaced.

    Raises:
        BackupError: A process has the database open (always), or it exists and is not empty
            (unless ``force``).
    """
    db = data_dir / DATABASE_PART
    if not db.exists():
        return
    holders = [pid for pid in database_in_use(db) if pid != os.getpid()]
    if holders:
        raise BackupError(
            f"{db} is open in process {', '.join(map(str, holders))} (a gateway running on it?): stop it first"
        )
    if db.stat().st_size > 0 and not force:
        raise BackupError(
            f"{db} exists and is not empty: restore into a new data directory, or pass --force to replace it"
        )


def install_parts(staged: Path, data_dir: Path) -> Path:
    """Move decrypted parts from ``staged`` (on the same file system) into ``data_dir``.

    The database, the audit checkpoints and each evidence file are renamed into place, so each is the
    restored file or the old one, never half of one.

    Returns:
        The restored database file.
    """
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    _refuse_links(staged, data_dir)
    for stale in _STALE:
        (data_dir / stale).unlink(missing_ok=True)
    db = data_dir / DATABASE_PART
    os.replace(staged / DATABASE_PART, db)
    if (staged / CHECKPOINTS_PART).exists():
        checkpoints = local_checkpoint_file(data_dir)
        checkpoints.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.replace(staged / CHECKPOINTS_PART, checkpoints)
    evidence = staged / INCIDENTS_DIR
    if evidence.is_dir():
        for source in sorted(p for p in evidence.rglob("*") if p.is_file()):
            dest = data_dir / INCIDENTS_DIR / source.relative_to(evidence)
            dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.replace(source, dest)
            fsync_dir(dest.parent)
    fsync_dir(data_dir)
    return db


def _refuse_links(staged: Path, data_dir: Path) -> None:
    """Raise BackupError, before anything moves, if a directory the parts go into is a symbolic link
    below ``data_dir``: the restore would write there (an attack run planted ``incidents -> /elsewhere``
    and the evidence landed in /elsewhere), where making a backup refuses to follow the same link."""
    targets = [local_checkpoint_file(data_dir).parent]
    evidence = staged / INCIDENTS_DIR
    if evidence.is_dir():
        targets += [
            data_dir / INCIDENTS_DIR / p.relative_to(evidence) for p in evidence.rglob("*") if p.is_dir()
        ]
        targets.append(data_dir / INCIDENTS_DIR)
    for target in targets:
        for directory in (target, *target.parents):
            if directory == data_dir or data_dir not in directory.parents:
                break
            if directory.is_symlink():
                raise BackupError(
                    f"{directory} is a symbolic link: a restore never writes through one; remove it and restore again"
                )


def staging_dir(data_dir: Path) -> Path:
    """A new 0700 directory inside ``data_dir`` to decrypt into (same file system: the moves are renames)."""
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=data_dir, prefix=".restore-"))
