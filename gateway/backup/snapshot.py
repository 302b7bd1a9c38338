"""A consistent copy of the live SQLite database, taken with SQLite's online backup API.

``sqlite3.Connection.backup`` copies every page under one read transaction when asked for all pages
in one step, so the copy is the database as of one moment even while gateways keep writing (WAL mode:
writers are not blocked, they append to the WAL past the snapshot). Copying the file instead could
catch a page half-written or miss what is still in the WAL.

Only ``gateway.db`` is backed up, not the fast state ``state.db``: sessions, counters and one-time
codes are disposable by design (a restore signs everyone out, which after a disaster is what one
wants), and the keyring is never part of a backup.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

from sqlalchemy.engine import make_url

__all__ = ["snapshot_sqlite", "sqlite_path"]


def sqlite_path(url: str) -> Path:
    """The file of a ``sqlite+aiosqlite:///…`` URL.

    Raises:
        ValueError: Not a SQLite file URL (PostgreSQL is backed up with pgBackRest).
    """
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        raise ValueError("not a SQLite database file")
    return Path(parsed.database)


def snapshot_sqlite(source: Path, dest: Path) -> None:
    """Copy the database at ``source`` into the new file ``dest`` (mode 0600) as of one moment.

    Raises:
        FileNotFoundError: ``source`` does not exist (a backup never creates an empty database).
        sqlite3.Error: The copy failed.
    """
    if not source.is_file():
        raise FileNotFoundError(f"no database at {source}")
    dest.touch(mode=0o600, exist_ok=False)
    # The gateways' own busy timeout: the read lock waits for a checkpoint in progress, not fail.
    with closing(sqlite3.connect(source, timeout=30)) as src, closing(sqlite3.connect(dest)) as dst:
        src.backup(dst, pages=-1)
        # A self-contained file: no WAL beside it, so one file is the whole snapshot.
        dst.execute("PRAGMA journal_mode=DELETE")
