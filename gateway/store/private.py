"""Files and directories only the gateway's own user may read: the data directory and its databases.

SQLite creates a missing database file with the process umask (usually 0644), so every local user could
read the password hashes, the audit trail and the privacy register; the file is created 0600 before
SQLite opens it, and SQLite gives its WAL and shared-memory files the same mode.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

__all__ = ["create_private", "private_dir", "write_new_private"]

#: The files SQLite keeps beside a database.
_SIBLINGS = ("-wal", "-shm", "-journal")


def private_dir(path: Path) -> None:
    """Create ``path`` (and missing parents) if needed; a directory it creates is mode 0700.

    An existing directory keeps its mode: it may be a mounted volume others are meant to list.
    """
    path.mkdir(mode=0o700, parents=True, exist_ok=True)


def write_new_private(path: Path, data: bytes) -> None:
    """Write ``data`` to a new file at ``path``, mode 0600 (exports of personal data and audit evidence).

    Raises:
        FileExistsError: ``path`` exists, or is a link (never followed, never replaced).
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def create_private(path: Path) -> None:
    """Create ``path`` with mode 0600 if it is missing, and tighten a looser existing one (and the
    SQLite files beside it). Symbolic links are not followed."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        _tighten(fd)
    finally:
        os.close(fd)
    for suffix in _SIBLINGS:
        sibling = path.with_name(path.name + suffix)
        try:
            fd = os.open(sibling, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            continue  # absent (the usual case), or a link: left alone
        try:
            _tighten(fd)
        finally:
            os.close(fd)


def _tighten(fd: int) -> None:
    mode = os.fstat(fd).st_mode
    if stat.S_ISREG(mode) and stat.S_IMODE(mode) & 0o077:
        os.fchmod(fd, stat.S_IMODE(mode) & 0o700)
