"""The embedded database and the data directory are the gateway user's alone (outside review: with the
usual umask 022, ``gateway.db`` was 0644, so every local user could read the password hashes, the audit
trail and the privacy register)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from gateway.store.db import Database, default_sqlite_url
from gateway.store.private import private_dir


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


async def test_a_link_in_place_of_the_database_is_not_followed(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere.db"
    elsewhere.write_bytes(b"")
    elsewhere.chmod(0o644)
    (tmp_path / "gateway.db").symlink_to(elsewhere)
    db = Database.open(default_sqlite_url(tmp_path))
    try:
        with pytest.raises(OSError, match="symbolic links"):
            async with db.session() as session:
                await session.execute(sa.text("SELECT 1"))
    finally:
        await db.close()
    assert _mode(elsewhere) == 0o644
    assert elsewhere.read_bytes() == b""


def test_an_existing_directory_keeps_its_mode(tmp_path: Path) -> None:
    volume = tmp_path / "volume"
    volume.mkdir()
    volume.chmod(0o755)
    private_dir(volume)
    assert _mode(volume) == 0o755
