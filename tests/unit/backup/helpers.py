"""A node's data directory with a migrated database, a keyring and a keyed audit trail, for the backup tests."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from gateway.audit.trail import AuditLog
from gateway.clock import FakeClock
from gateway.crypto.keyring import Keyring
from gateway.store.db import Database, default_sqlite_url
from gateway.store.migrate import upgrade

__all__ = ["Node", "backup_with_checkpoints", "make_node", "rows"]


@dataclass
class Node:
    """A data directory and what writes to it."""

    data_dir: Path
    keyring: Keyring
    db: Database
    audit: AuditLog

    @property
    def database(self) -> Path:
        """The live SQLite file."""
        return self.data_dir / "gateway.db"


async def make_node(data_dir: Path, clock: FakeClock, records: int = 5) -> Node:
    """Migrate a fresh database and append ``records`` keyed audit records."""
    data_dir.mkdir(parents=True, exist_ok=True)
    url = default_sqlite_url(data_dir)
    await upgrade(url)
    keyring = Keyring.create(data_dir / "keys" / "keyring.json")
    db = Database.open(url, pool_size=4)
    audit = AuditLog(db, clock=clock, keyring=keyring)
    for i in range(records):
        await audit.record("test.seed", actor="cli:test", subject=f"user{i}", details={"i": i})
    return Node(data_dir, keyring, db, audit)


def rows(database: Path) -> dict[str, list[tuple[object, ...]]]:
    """Every table's rows, sorted: two databases with equal results hold the same state."""
    with closing(sqlite3.connect(database)) as conn:
        names = [
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        return {n: sorted(conn.execute(f'SELECT * FROM "{n}"').fetchall(), key=repr) for n in names}


async def backup_with_checkpoints(
    tmp_path: Path, clock: FakeClock, *, records: int = 4, checkpoints: bool = True
) -> tuple[Path, Keyring]:
    """A finished backup (the database, and the audit checkpoints unless ``checkpoints`` is false),
    and the keyring it is under."""
    from gateway.backup.archive import create_backup

    node = await make_node(tmp_path / "live", clock, records=records)
    if checkpoints:
        written = node.data_dir / "audit-checkpoints" / "checkpoints.jsonl"
        written.parent.mkdir()
        written.write_text('{"head_seq": 2}\n')
    try:
        _manifest, path = create_backup(
            node.database, node.data_dir, tmp_path / "backups", node.keyring, clock
        )
    finally:
        await node.db.close()
    return path, node.keyring
