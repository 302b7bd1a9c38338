"""Files and directories only the gateway's own user may read: the data directory and its databases.

SQLite creates a missing database file with the process umask (usually 0644), so every local user could
read the password hashes, the audit trail and the privacy register; the file is created 0600 before
SQLite opens it, and SQLite gives its WAL and shared-memory files the same mode.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

__all__ = ["create_private", "private_dir", "private_dirs", "write_new_private"]

#: The files SQLite keeps beside a database.
_SIBLINGS = ("-wal", "-shm", "-journal")


def private_dir(path: Path) -> None:
    """Create ``path`` and its missing parents if needed, each created one mode 0700.

    Parents the gateway creates are its own too: ``<data_dir>/metrics`` and ``<data_dir>/incidents``,
    made as mere parents, took the umask's mode (0755; 0777 under umask 000, where another local
    user could replace what is below them: an attack run). An existing directory keeps its mode: it
    may be a mounted volume others are meant to list.
    """
    private_dirs(path)


def private_dirs(path: Path) -> None:
    """Create ``path`` and every missing parent, each created one mode 0700 (an existing one keeps its
    mode). For a file deep inside the data directory (``keys/keyring.json``): created as a mere
    parent with ``mkdir(parents=True)``, the data directory took the umask's mode, 0777 under umask
    000, and another local user could replace the database in it (an attack run)."""
    missing = []
    for directory in (path, *path.parents):
        if directory.exists():
            break
        missing.append(directory)
    for directory in reversed(missing):
        directory.mkdir(mode=0o700, exist_ok=True)


def write_new_private(path: Path, data: bytes) -> None:
    """Write ``data`` to a new file at ``path``, mode 0600 (exports of personal data and audit evidence).

    Raises:
        FileExistsError: ``path`` exists, or is a link (never followed, never replaced).
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def create_private(path: Path) -> None:
    """Create ``path`` with mode 0600 if it is missing, and tighten a looser existing one (and the SQLite
    files beside it). A link is left alone: neither followed nor changed.

    An existing file is never opened: closing any descriptor of a database file drops every POSIX lock
    this process holds on it, SQLite's included, and a connection that has lost its locks can delete the
    WAL other processes still use (the database then reads as malformed). So a new file is made with
    ``O_EXCL``, which opens nothing that exists, and an existing one is changed by its path.
    """
    # An existing file (or a link) makes this fail without opening it: its mode is checked below, by path.
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600))
    for candidate in (path, *(path.with_name(path.name + suffix) for suffix in _SIBLINGS)):
        _tighten(candidate)


def _tighten(path: Path) -> None:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    mode = stat.S_IMODE(info.st_mode)
    if stat.S_ISREG(info.st_mode) and mode & 0o077:
        os.chmod(path, mode & 0o700)
