"""Replicating a finished backup to further targets: a directory, or an rclone remote.

A directory target gets ``<target>/<backup id>/``: the files are copied under a hidden name, each
checked against the source's hashes there (the manifest byte for byte, every part's SHA-256 from the
manifest), then renamed into place. An ``rclone:<remote>:<path>`` target is written with
``rclone copy`` and compared with ``rclone check`` (sizes and hashes, one way: the remote may hold
other backups). No keyring is needed: the copies are the encrypted parts.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from gateway.backup.manifest import MANIFEST_NAME, BackupError, file_sha256, parse_manifest
from gateway.settings.checks.backup import RCLONE_TARGET

__all__ = ["Replicated", "rclone", "replicate", "replicate_all"]

_RCLONE_TIMEOUT = 3600.0


@dataclass(frozen=True, slots=True)
class Replicated:
    """Where a backup was copied to and checked."""

    target: str
    location: str


def _check_copy(source: Path, copy: Path) -> None:
    raw = (source / MANIFEST_NAME).read_bytes()
    try:
        copied = (copy / MANIFEST_NAME).read_bytes()
    except FileNotFoundError:
        raise BackupError(f"{MANIFEST_NAME}: missing in the copy at {copy}", part=MANIFEST_NAME) from None
    if copied != raw:
        raise BackupError(f"{MANIFEST_NAME}: the copy at {copy} differs", part=MANIFEST_NAME)
    manifest, _doc = parse_manifest(raw)
    for part in manifest.parts:
        try:
            digest, _size = file_sha256(copy / part.file)
        except FileNotFoundError:
            raise BackupError(f"part {part.name}: missing in the copy at {copy}", part=part.name) from None
        if digest != part.sha256:
            raise BackupError(f"part {part.name}: sha256 mismatch in the copy at {copy}", part=part.name)


def _to_directory(backup: Path, target: Path) -> str:
    final = target / backup.name
    if final.exists():
        _check_copy(backup, final)  # made by an earlier run: check it, never overwrite it
        return str(final)
    work = target / f".{backup.name}.partial"
    try:
        target.mkdir(mode=0o700, parents=True, exist_ok=True)
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(backup, work)
        _check_copy(backup, work)
        work.rename(final)
    except OSError as exc:
        shutil.rmtree(work, ignore_errors=True)
        raise BackupError(f"cannot copy the backup to {target}: {exc.strerror or exc}") from exc
    except BackupError:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return str(final)


def rclone(*args: str) -> None:
    """Run ``rclone <args>`` (from PATH, the gateway's environment: ``RCLONE_CONFIG``, ``RCLONE_CONFIG_<REMOTE>_…``).

    Raises:
        BackupError: rclone is missing, timed out or failed (its last line of output).
    """
    try:
        done = subprocess.run(  # noqa: S603 - fixed program, arguments from the configuration
            ["rclone", *args],  # noqa: S607 - rclone from PATH, as the operator installed it
            capture_output=True,
            text=True,
            timeout=_RCLONE_TIMEOUT,
            check=False,
        )
    except FileNotFoundError:
        raise BackupError("rclone is not installed (apt install rclone)") from None
    except subprocess.TimeoutExpired:
        raise BackupError(f"rclone {args[0]} did not finish within {_RCLONE_TIMEOUT:g} s") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise BackupError(f"rclone {args[0]} failed (exit {done.returncode}): {last[:300]}")


def _to_rclone(backup: Path, remote: str, path: str) -> str:
    dest = f"{remote}:{path.rstrip('/') + '/' if path.strip('/') else ''}{backup.name}"
    rclone("copy", "--checksum", str(backup), dest)
    rclone("check", "--one-way", str(backup), dest)
    return dest


def replicate(backup: Path, target: str) -> Replicated:
    """Copy the backup directory to one target and check the copy there.

    Raises:
        BackupError: The copy failed or does not match.
    """
    match = RCLONE_TARGET.fullmatch(target)
    if match is not None:
        return Replicated(target, _to_rclone(backup, match["remote"], match["path"]))
    return Replicated(target, _to_directory(backup, Path(target)))


def replicate_all(backup: Path, targets: tuple[str, ...]) -> tuple[list[Replicated], list[tuple[str, str]]]:
    """Replicate to every target; one failing does not stop the others.

    Returns:
        The copies made, and (target, problem) for each that failed.
    """
    done, failed = [], []
    for target in targets:
        try:
            done.append(replicate(backup, target))
        except BackupError as exc:
            failed.append((target, exc.detail))
    return done, failed
