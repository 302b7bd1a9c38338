"""The embedded database and the data directory are the gateway user's alone (outside review: with the
usual umask 022, ``gateway.db`` was 0644, so every local user could read the password hashes, the audit
trail and the privacy register)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from gateway.store.db import Database, default_sqlite_url
from gateway.store.private import create_private, private_dir


@pytest.fixture(autouse=True)
def usual_umask() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def _write(data_dir: Path) -> None:
    db = Database.open(default_sqlite_url(data_dir))
    try:
        async with db.session(write=True) as session:
            await session.execute(sa.text("CREATE TABLE IF NOT EXISTS t (x INTEGER)"))
            await session.execute(sa.text("INSERT INTO t VALUES (1)"))
            await session.commit()
            # Still open: the WAL and shared-memory files exist now.
            for name in ("gateway.db", "gateway.db-wal", "gateway.db-shm"):
                assert _mode(data_dir / name) == 0o600, f"{name}: {_mode(data_dir / name):o}"
    finally:
        await db.close()


async def test_a_new_database_and_its_wal_files_are_private(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    private_dir(data_dir)
    assert _mode(data_dir) == 0o700
    await _write(data_dir)


async def test_a_database_an_older_version_left_readable_is_tightened(tmp_path: Path) -> None:
    for name in ("gateway.db", "gateway.db-wal"):
        (tmp_path / name).touch()
        (tmp_path / name).chmod(0o644)
    await _write(tmp_path)


async def test_a_link_in_place_of_the_database_is_left_alone(tmp_path: Path) -> None:
    """A deployment that links its database elsewhere chose where it lives: the link is neither followed
    to change the target's mode nor replaced."""
    elsewhere = tmp_path / "elsewhere.db"
    elsewhere.write_bytes(b"")
    elsewhere.chmod(0o640)
    (tmp_path / "gateway.db").symlink_to(elsewhere)
    create_private(tmp_path / "gateway.db")
    assert (tmp_path / "gateway.db").is_symlink()
    assert _mode(elsewhere) == 0o640


def test_an_existing_database_is_never_opened(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Closing a descriptor of a database file drops this process's POSIX locks on it, SQLite's too (a
    command beside a running gateway then deleted the WAL its workers used): only a new file is opened."""
    database = tmp_path / "gateway.db"
    database.write_bytes(b"")
    database.chmod(0o644)
    opened: list[str] = []
    real_open = os.open

    def spy(path: Any, flags: int, *args: Any) -> int:
        opened.append(str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", spy)
    create_private(database)
    # The one attempt is the O_EXCL create, which fails on an existing file without opening it.
    assert opened == [str(database)]
    assert _mode(database) == 0o600


def test_an_existing_directory_keeps_its_mode(tmp_path: Path) -> None:
    volume = tmp_path / "volume"
    volume.mkdir()
    volume.chmod(0o755)
    private_dir(volume)
    assert _mode(volume) == 0o755


def test_the_parents_a_private_directory_needs_are_private_too(tmp_path: Path) -> None:
    """An attack run: <data_dir>/metrics and <data_dir>/incidents, created as mere parents of a
    private directory, were 0755 (0777 under umask 000)."""
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o755)
    private_dir(data_dir / "metrics" / "127.0.0.1_8080")
    private_dir(data_dir / "incidents" / "inc-0a1b2c3d")
    for created in ("metrics", "metrics/127.0.0.1_8080", "incidents", "incidents/inc-0a1b2c3d"):
        assert _mode(data_dir / created) == 0o700, created
    assert _mode(data_dir) == 0o755  # it was there: kept
