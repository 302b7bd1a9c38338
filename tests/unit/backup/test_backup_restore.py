"""Backup and restore of the embedded database: identical state, online while records are written."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
from contextlib import closing
from pathlib import Path

import pytest

from gateway.audit.chain import verify_database
from gateway.backup.archive import CHECKPOINTS_PART, DATABASE_PART, create_backup
from gateway.backup.manifest import MANIFEST_NAME, BackupError
from gateway.backup.restore import database_in_use
from gateway.backup.verify import restore_backup, verify_backup
from gateway.clock import FakeClock
from gateway.store.db import Database, default_sqlite_url
from gateway.store.migrate import head_revision
from tests.unit.backup.helpers import backup_with_checkpoints, make_node, rows


async def test_backup_restores_to_identical_state(tmp_path: Path, clock: FakeClock) -> None:
    node = await make_node(tmp_path / "live", clock, records=12)
    checkpoints = node.data_dir / "audit-checkpoints" / "checkpoints.jsonl"
    checkpoints.parent.mkdir()
    checkpoints.write_text('{"head_seq": 3}\n')
    try:
        lines: list[str] = []
        manifest, path = create_backup(
            node.database, node.data_dir, tmp_path / "backups", node.keyring, clock, lines.append
        )
        before = rows(node.database)
    finally:
        await node.db.close()

    assert path == tmp_path / "backups" / manifest.backup_id
    assert [p.name for p in manifest.parts] == [DATABASE_PART, CHECKPOINTS_PART]
    assert len(lines) == 2
    assert lines[0].startswith("part gateway.db:")
    assert manifest.schema_revision == head_revision()
    assert manifest.audit_head_seq == 12
    assert manifest.key_id == node.keyring.active_id
    # Nothing in the backup is plaintext, and the keyring is not in it.
    names = sorted(p.name for p in path.iterdir())
    assert names == sorted([MANIFEST_NAME, "gateway.db.enc", "audit-checkpoints.jsonl.enc"])
    assert b"test.seed" not in (path / "gateway.db.enc").read_bytes()
    assert b"SQLite format" not in (path / "gateway.db.enc").read_bytes()

    verified = await verify_backup(path, node.keyring)
    assert verified.row_counts["audit_events"] == 12
    assert verified.audit_records == 12

    target = tmp_path / "restored"
    restored = await restore_backup(path, node.keyring, target)
    assert rows(restored.database) == before
    assert (target / "audit-checkpoints" / "checkpoints.jsonl").read_text() == '{"head_seq": 3}\n'
    db = Database.open(default_sqlite_url(target), pool_size=1)
    try:
        assert (await verify_database(db, keyring=node.keyring)).ok
    finally:
        await db.close()


async def test_backup_is_consistent_while_records_are_written(tmp_path: Path, clock: FakeClock) -> None:
    node = await make_node(tmp_path / "live", clock, records=3)
    stop = asyncio.Event()
    written = 0

    async def writer() -> None:
        nonlocal written
        while not stop.is_set():
            await node.audit.record("test.during", actor="cli:test", details={"n": written})
            written += 1

    task = asyncio.create_task(writer())
    try:
        while written < 20:
            await asyncio.sleep(0.01)
        manifest, path = await asyncio.to_thread(
            create_backup, node.database, node.data_dir, tmp_path / "backups", node.keyring, clock
        )
        at_backup = written
        while written < at_backup + 20:  # writes went on after the snapshot too
            await asyncio.sleep(0.01)
    finally:
        stop.set()
        await task
        live = rows(node.database)
        await node.db.close()

    assert 23 <= manifest.audit_head_seq < 3 + written
    restored = await restore_backup(path, node.keyring, tmp_path / "restored")
    got = rows(restored.database)
    # The snapshot is the live database as of one moment: the chain up to its head, nothing after.
    head = manifest.audit_head_seq
    seq_col = _column(restored.database, "audit_events", "seq")
    assert got["audit_events"] == [r for r in live["audit_events"] if int(r[seq_col]) <= head]  # type: ignore[call-overload]
    assert {k: v for k, v in got.items() if k != "audit_events"} == {
        k: v for k, v in live.items() if k != "audit_events"
    }


def _column(database: Path, table: str, name: str) -> int:
    with closing(sqlite3.connect(database)) as conn:
        return [r[1] for r in conn.execute(f"PRAGMA table_info({table})")].index(name)


async def test_restore_refuses_an_existing_database_without_force(tmp_path: Path, clock: FakeClock) -> None:
    node = await make_node(tmp_path / "live", clock, records=2)
    try:
        _manifest, path = create_backup(
            node.database, node.data_dir, tmp_path / "backups", node.keyring, clock
        )
        await node.audit.record("test.after", actor="cli:test")
    finally:
        await node.db.close()
    with pytest.raises(BackupError, match="exists and is not empty"):
        await restore_backup(path, node.keyring, node.data_dir)
    # Refused means untouched: the record written after the backup is still there.
    assert len(rows(node.database)["audit_events"]) == 3
    (node.data_dir / "state.db").write_bytes(b"old sessions")
    restored = await restore_backup(path, node.keyring, node.data_dir, force=True)
    assert len(rows(restored.database)["audit_events"]) == 2
    assert not (node.data_dir / "state.db").exists()


async def test_restore_refuses_a_database_a_process_holds_open(tmp_path: Path, clock: FakeClock) -> None:
    node = await make_node(tmp_path / "live", clock, records=2)
    try:
        _manifest, path = create_backup(
            node.database, node.data_dir, tmp_path / "backups", node.keyring, clock
        )
    finally:
        await node.db.close()
    # Another process holds the database open, as a running gateway does; it says so once it has.
    holder = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        f"import sys; f = open({str(node.database)!r}); print('open', flush=True); sys.stdin.read()",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None
        assert await holder.stdout.readline() == b"open\n"
        assert holder.pid in database_in_use(node.database)
        with pytest.raises(BackupError, match=f"open in process {holder.pid}"):
            await restore_backup(path, node.keyring, node.data_dir, force=True)
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        await holder.wait()


async def test_a_backups_directory_others_may_write_is_refused(tmp_path: Path, clock: FakeClock) -> None:
    """An attack run: backup.directory a link to a 0777 directory, where another user hid a backup and
    planted one. Refused with what to do; the link itself is fine when its target is private."""
    node = await make_node(tmp_path / "live", clock, records=1)
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    link = tmp_path / "backups-link"
    link.symlink_to(shared)
    try:
        for directory in (shared, link):
            with pytest.raises(BackupError, match=r"writable by other users.*chmod 700"):
                create_backup(node.database, node.data_dir, directory, node.keyring, clock)
        assert list(shared.iterdir()) == []
        shared.chmod(0o700)
        _manifest, path = create_backup(node.database, node.data_dir, link, node.keyring, clock)
        assert path.parent == link
    finally:
        await node.db.close()


def test_a_holder_is_found_under_another_name_of_the_same_file(tmp_path: Path) -> None:
    """An attack run: a gateway in another mount namespace opens the database under another path, and
    a restore replaced it under that live gateway. Holders are found by device and inode; here the
    other name is a hard link (a bind mount needs root)."""
    database = tmp_path / "gateway.db"
    database.write_bytes(b"x")
    other = tmp_path / "elsewhere.db"
    os.link(database, other)
    with other.open("rb"):
        assert os.getpid() in database_in_use(database)
    assert os.getpid() not in database_in_use(database)
    assert database_in_use(tmp_path / "missing.db") == []


async def test_a_failed_restore_leaves_the_target_as_it_was(tmp_path: Path, clock: FakeClock) -> None:
    node = await make_node(tmp_path / "live", clock, records=2)
    try:
        _manifest, path = create_backup(
            node.database, node.data_dir, tmp_path / "backups", node.keyring, clock
        )
        await node.audit.record("test.after", actor="cli:test")
    finally:
        await node.db.close()
    before = rows(node.database)
    target = path / "gateway.db.enc"
    target.write_bytes(target.read_bytes()[:-2] + b"\n")
    with pytest.raises(BackupError, match=r"part gateway\.db: sha256 mismatch"):
        await restore_backup(path, node.keyring, node.data_dir, force=True)
    assert rows(node.database) == before
    assert sorted(p.name for p in node.data_dir.iterdir() if p.name.startswith(".")) == []


async def test_a_backup_that_fails_the_restored_checks_leaves_the_target_as_it_was(
    tmp_path: Path, clock: FakeClock
) -> None:
    """Outside review: a validly signed backup of a database whose audit chain had been altered was
    installed over the target before the chain check refused it, deleting the target's database."""
    source = await make_node(tmp_path / "source", clock, records=2)
    try:
        with closing(sqlite3.connect(source.database)) as conn:
            conn.execute("UPDATE audit_events SET actor = 'someone-else' WHERE seq = 1")
            conn.commit()
        _manifest, path = create_backup(
            source.database, source.data_dir, tmp_path / "backups", source.keyring, clock
        )
    finally:
        await source.db.close()
    target = await make_node(tmp_path / "target", clock, records=3)
    await target.db.close()
    before = rows(target.database)
    (target.data_dir / "state.db").write_bytes(b"live sessions")
    with pytest.raises(BackupError, match="audit chain broken"):
        await restore_backup(path, source.keyring, target.data_dir, force=True)
    assert rows(target.database) == before
    assert (target.data_dir / "state.db").read_bytes() == b"live sessions"
    assert sorted(p.name for p in target.data_dir.iterdir() if p.name.startswith(".")) == []


async def test_a_restore_never_writes_through_a_symbolic_link_in_the_target(
    tmp_path: Path, clock: FakeClock
) -> None:
    """An attack run planted ``incidents -> /elsewhere`` in the target data directory and the
    restore wrote the evidence there; the same holds for the audit checkpoints' directory."""
    path, keyring = await backup_with_checkpoints(tmp_path, clock, records=2)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    target = tmp_path / "restored"
    target.mkdir()
    (target / "audit-checkpoints").symlink_to(elsewhere)
    with pytest.raises(BackupError, match="symbolic link"):
        await restore_backup(path, keyring, target)
    assert list(elsewhere.iterdir()) == []
    assert not (target / DATABASE_PART).exists()
