"""The pgBackRest repository as a whole: verified, copied to further places, and read from a copy.

**Verify** (:func:`verify_repository`) runs ``pgbackrest verify`` (every file of every backup and every
archived WAL segment against its checksum; the failure names the damaged file and its backup label,
see :mod:`gateway.backup.pgbackrest`), then checks what pgBackRest 2.45's ``verify`` does not: that the
archive holds every WAL segment each backup needs to be consistent, from its start segment to its stop
segment (``info --output=json`` and ``repo-ls``). A backup whose WAL is gone cannot be restored even
though each of its files is intact. It works on the configured repository or on a copy
(``--repo1-path`` pointed at it).

**Copies** (:func:`replicate_repository`): each of ``backup.targets`` receives a mirror of the stanza's
part of the repository after every backup, made with ``rclone sync`` (archive first, then the backups,
so a copied backup's WAL is already there) and compared with ``rclone check``:

* a directory target ``/mnt/offsite`` gets ``/mnt/offsite/pgbackrest/{archive,backup}/<stanza>/``, a
  pgBackRest repository of its own that ``pgbackrest --repo1-path=/mnt/offsite/pgbackrest`` verifies and
  restores from (files owned by ``os_user``, 0640 in 0750 directories);
* ``rclone:<remote>:<path>`` gets ``<remote>:<path>/pgbackrest/…``; to check or restore it, it is
  fetched into a local directory first (:func:`local_copy`).

The files are copied as pgBackRest wrote them: encrypted with the repository passphrase, which a
restore from the copy needs. Only a repository that verified is copied: a damaged one never replaces
the last good copy (``rclone sync`` also deletes at the target what pgBackRest expired).
Why a copy and not a second pgBackRest repository (``repo2-path``): ``docs/backup-postgresql.md``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from gateway.backup.manifest import BackupError
from gateway.backup.pgbackrest import PgBackRestError, owner_ids
from gateway.backup.pgbackrest import run as run_pgbackrest
from gateway.backup.targets import Replicated, rclone
from gateway.settings.checks.backup import RCLONE_TARGET
from gateway.settings.schema import PgBackRestSettings

__all__ = [
    "COPY_DIR",
    "RepoChecked",
    "copy_location",
    "local_copy",
    "missing_wal",
    "needed_segments",
    "replicate_repository",
    "verified_details",
    "verify_repository",
]

# The repository's copy below a target: beside nothing else of the gateway's, named for what it is.
COPY_DIR: Final = "pgbackrest"
# pgBackRest writes each file under this suffix and renames it when complete: never copied.
_TEMPORARY: Final = "*.pgbackrest.tmp"
# PostgreSQL's WAL segment sizes: 1 MiB to 1 GiB, powers of two.
_SEGMENT_SHIFTS: Final = range(20, 31)
# A backup spanning more segments than this is checked at its two ends only (never seen in practice).
_MAX_SEGMENTS: Final = 1_000_000

Progress = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class RepoChecked:
    """A repository that verified.

    Attributes:
        repo: Where it is (the configured ``repo_path``, or a copy).
        backups: The backup labels, oldest first.
        wal_segments: The WAL segments the backups need, each found in the archive.
    """

    repo: str
    backups: tuple[str, ...]
    wal_segments: int


def _lsn(text: str) -> int:
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) | int(low, 16)


def needed_segments(start: str, stop: str, lsn_start: str, lsn_stop: str) -> list[str]:
    """The WAL segments from ``start`` to ``stop`` (pgBackRest's archive start and stop of a backup).

    The segment size is not in ``info``: it is the one under which both LSNs fall in their named
    segments. When none fits (a stop LSN on a segment boundary, a timeline switch), the two ends.
    """
    timeline = start[:8]
    if stop[:8] != timeline:
        return sorted({start, stop})
    low, high = _lsn(lsn_start), _lsn(lsn_stop)
    for shift in _SEGMENT_SHIFTS:
        per_log = 1 << (32 - shift)

        def name(segno: int, per_log: int = per_log) -> str:
            return f"{timeline}{segno // per_log:08X}{segno % per_log:08X}"

        first, last = low >> shift, high >> shift
        if name(first) == start and name(last) == stop and last - first < _MAX_SEGMENTS:
            return [name(n) for n in range(first, last + 1)]
    return sorted({start, stop})


def missing_wal(stanza: Mapping[str, Any], present: Mapping[str, set[str]]) -> list[tuple[str, str, str]]:
    """Each (backup label, archive id, segment) a backup needs that the archive does not hold.

    Args:
        stanza: One stanza of ``pgbackrest info --output=json``.
        present: The segment names (24 hex digits) in the archive, per archive id.
    """
    archive_of = {a["database"]["id"]: a["id"] for a in stanza.get("archive", [])}
    missing = []
    for backup in stanza.get("backup", []):
        archive_id = archive_of.get(backup["database"]["id"], "")
        wal, lsn = backup["archive"], backup["lsn"]
        for segment in needed_segments(wal["start"], wal["stop"], lsn["start"], lsn["stop"]):
            if segment not in present.get(archive_id, set()):
                missing.append((str(backup["label"]), archive_id, segment))
    return missing


def _segments_in(listing: Mapping[str, Any]) -> set[str]:
    # repo-ls names WAL files <first 16 hex>/<segment>-<sha1>[.<compression>]; .backup and .history
    # files are not segments.
    names = set()
    for path, entry in listing.items():
        name = path.rsplit("/", 1)[-1]
        if entry.get("type") == "file" and len(name) > 25 and name[24] == "-":
            names.add(name[:24])
    return names


def verified_details(
    stanza: str,
    command: str,
    target: str | None,
    checked: RepoChecked | None = None,
    failure: BackupError | None = None,
) -> dict[str, object]:
    """The details of a ``backup.pg.verified`` audit record, one shape whichever command verified
    (``gateway backup verify`` or ``gateway pgbackrest verify``): a SIEM rule reads the same keys."""
    details: dict[str, object] = {"stanza": stanza, "command": command}
    if target is not None:
        details["target"] = target
    if checked is not None:
        details.update(backups=list(checked.backups), wal_segments=checked.wal_segments)
    if failure is not None:
        details.update(part=failure.part, problem=failure.detail)
    return details


def verify_repository(
    pg: PgBackRestSettings, *, target: str | None = None, on_line: Progress | None = None
) -> RepoChecked:
    """Verify the configured repository, or with ``target`` its copy at that one of ``backup.targets``
    (an rclone remote's is fetched first: :func:`local_copy`).

    Raises:
        BackupError: pgBackRest failed or found damage (``part``: the backup label or file it
            names), a backup lacks WAL it needs (``part``: its label), or the target holds no copy.
    """
    if target is None:
        return _verify(pg, None, on_line)
    with local_copy(pg, target) as repo:
        return _verify(pg, str(repo), on_line)


def _verify(pg: PgBackRestSettings, repo_path: str | None, on_line: Progress | None) -> RepoChecked:
    where = repo_path or pg.repo_path
    options = [f"--repo1-path={repo_path}"] if repo_path else []
    try:
        # Each damaged file is an INFO line: shown at that level whatever the file says.
        run_pgbackrest(pg, "verify", "--log-level-console=info", *options, on_line=on_line)
        info = json.loads("\n".join(run_pgbackrest(pg, "info", "--output=json", *options).output))
        stanza: dict[str, Any] = next((s for s in info if s.get("name") == pg.stanza), {})
        present: dict[str, set[str]] = {}
        for archive in stanza.get("archive", []):
            listing = run_pgbackrest(
                pg,
                "repo-ls",
                "--recurse",
                "--output=json",
                *options,
                params=[f"archive/{pg.stanza}/{archive['id']}"],
            )
            present[archive["id"]] = _segments_in(json.loads("\n".join(listing.output)))
    except PgBackRestError as exc:
        raise BackupError(f"repository {where}: {exc}", part=exc.part or "pgbackrest") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise BackupError(
            f"repository {where}: pgbackrest info is not what this gateway reads ({exc})", part="pgbackrest"
        ) from exc
    missing = missing_wal(stanza, present)
    if missing:
        label, archive_id, segment = missing[0]
        others = f" (and {len(missing) - 1} more segment(s))" if len(missing) > 1 else ""
        raise BackupError(
            f"repository {where}: backup {label} cannot be restored: WAL segment {segment} it needs is "
            f"missing from archive/{pg.stanza}/{archive_id}{others}",
            part=label,
        )
    backups = tuple(str(b["label"]) for b in stanza.get("backup", []))
    needed = sum(
        len(needed_segments(b["archive"]["start"], b["archive"]["stop"], b["lsn"]["start"], b["lsn"]["stop"]))
        for b in stanza.get("backup", [])
    )
    if on_line is not None:
        on_line(f"WAL of {len(backups)} backup(s) in the archive: {needed} segment(s) checked")
    return RepoChecked(where, backups, needed)


def copy_location(target: str) -> str:
    """Where ``target`` holds the repository's copy: ``<dir>/pgbackrest`` or ``<remote>:<path>/pgbackrest``."""
    match = RCLONE_TARGET.fullmatch(target)
    if match is None:
        return str(Path(target) / COPY_DIR)
    path = match["path"].rstrip("/")
    return f"{match['remote']}:{path + '/' if path else ''}{COPY_DIR}"


def _hand_over(root: Path, os_user: str | None) -> None:
    """Give the copy to the cluster's owner (pgBackRest reads it as that user): 0750 and 0640."""
    ids = owner_ids(os_user)
    for folder, _dirs, files in os.walk(root):
        paths = [(Path(folder), 0o750)] + [(Path(folder) / f, 0o640) for f in files]
        for path, mode in paths:
            os.chmod(path, mode)
            if ids is not None:
                os.chown(path, *ids)


def _copy(pg: PgBackRestSettings, target: str, progress: Progress) -> Replicated:
    source, dest = Path(pg.repo_path), copy_location(target)
    local = RCLONE_TARGET.fullmatch(target) is None
    if local:
        created = not Path(target).exists()
        Path(dest).mkdir(mode=0o750, parents=True, exist_ok=True)
        if created:
            _hand_over(Path(target), pg.os_user)
    started = time.time()
    # The archive first: the WAL of every backup being copied is then in the copy before the backup is.
    for part in ("archive", "backup"):
        rclone("sync", "--exclude", _TEMPORARY, str(source / part / pg.stanza), f"{dest}/{part}/{pg.stanza}")
    # The backups are compared both ways (a mirror); the archive grows while this runs (archive_command),
    # so its files older than the copy are compared, one way.
    rclone("check", "--exclude", _TEMPORARY, str(source / "backup" / pg.stanza), f"{dest}/backup/{pg.stanza}")
    age = f"{int(time.time() - started) + 2}s"
    rclone(
        "check",
        "--one-way",
        "--min-age",
        age,
        "--exclude",
        _TEMPORARY,
        str(source / "archive" / pg.stanza),
        f"{dest}/archive/{pg.stanza}",
    )
    if local:
        _hand_over(Path(dest), pg.os_user)
    progress(f"repository copied to {dest} (checked)")
    return Replicated(target, dest)


def replicate_repository(
    pg: PgBackRestSettings, targets: Sequence[str], progress: Progress = lambda _line: None
) -> tuple[list[Replicated], list[tuple[str, str]]]:
    """Copy the repository to every target; one failing does not stop the others.

    Call it after :func:`verify_repository` passed.

    Returns:
        The copies made, and (target, problem) for each that failed.
    """
    done, failed = [], []
    for target in targets:
        try:
            done.append(_copy(pg, target, progress))
        except BackupError as exc:
            progress(f"copy to {target} FAILED: {exc.detail}")
            failed.append((target, exc.detail))
        except OSError as exc:
            progress(f"copy to {target} FAILED: {exc.strerror or exc}")
            failed.append((target, f"cannot write {copy_location(target)}: {exc.strerror or exc}"))
    return done, failed


@contextmanager
def local_copy(pg: PgBackRestSettings, target: str) -> Iterator[Path]:
    """The repository copy at ``target`` as a local directory pgBackRest can read (``--repo1-path``).

    A directory target's copy is used where it is; an rclone remote's is fetched (``rclone copy``) into
    a temporary directory, removed afterwards.

    Raises:
        BackupError: The target has no copy, or fetching it failed.
    """
    location = copy_location(target)
    if RCLONE_TARGET.fullmatch(target) is None:
        if not (Path(location) / "backup" / pg.stanza).is_dir():
            raise BackupError(f"no repository copy at {location}", part=location)
        yield Path(location)
        return
    scratch = Path(tempfile.mkdtemp(prefix="gateway-pgbackrest-copy-"))
    try:
        repo = scratch / COPY_DIR
        for part in ("archive", "backup"):
            rclone("copy", f"{location}/{part}/{pg.stanza}", str(repo / part / pg.stanza))
        if not (repo / "backup" / pg.stanza).is_dir():
            raise BackupError(f"no repository copy at {location}", part=location)
        _hand_over(scratch, pg.os_user)
        yield repo
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
