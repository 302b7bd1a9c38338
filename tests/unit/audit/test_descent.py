"""How far two audit trails are one (:func:`gateway.audit.descent.shared_trail`), on SQLite copies.

A copy of a database is an earlier state of it; each then goes on with records of its own. Found by
halving: the newest shared record, also when retention deleted the oldest records of one of them, and
none for another deployment's trail or an empty one.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import sqlalchemy as sa

from gateway.audit.descent import SharedTrail, shared_trail
from gateway.audit.trail import AuditLog
from gateway.clock import FakeClock
from gateway.crypto.keyring import Keyring
from gateway.store.db import Database
from gateway.store.migrate import upgrade

KEYRING = Keyring({"k1": bytes(range(32))}, "k1")


async def _migrated(path: Path) -> Database:
    url = f"sqlite+aiosqlite:///{path}"
    await upgrade(url)
    return Database.open(url, pool_size=1)


async def _fill(db: Database, n: int, who: str) -> None:
    audit = AuditLog(db, clock=FakeClock(), keyring=KEYRING)
    for i in range(n):
        await audit.record("signin.password", actor=f"user:{who}{i}", subject=f"{who}{i}")


async def test_a_copy_and_its_original_share_the_records_before_they_parted(tmp_path: Path) -> None:
    live = await _migrated(tmp_path / "live.db")
    await _fill(live, 10, "a")
    await live.close()
    shutil.copy(tmp_path / "live.db", tmp_path / "restored.db")
    live, restored = (
        Database.open(f"sqlite+aiosqlite:///{tmp_path / 'live.db'}"),
        Database.open(f"sqlite+aiosqlite:///{tmp_path / 'restored.db'}"),
    )
    try:
        assert await shared_trail(restored, live) == SharedTrail(10, 10)
        await _fill(live, 7, "live")
        await _fill(restored, 3, "restored")
        found = await shared_trail(restored, live)
        assert found == SharedTrail(10, 13)
        assert found.own == 3
        assert await shared_trail(live, restored) == SharedTrail(10, 17)
        # Retention deleted the live trail's oldest records: the range both hold still tells.
        async with live.engine.begin() as conn:
            await conn.execute(sa.text("DELETE FROM audit_events WHERE seq <= 4"))
        assert await shared_trail(restored, live) == SharedTrail(10, 13)
    finally:
        await live.close()
        await restored.close()


async def test_another_deployments_trail_or_an_empty_one_shares_nothing(tmp_path: Path) -> None:
    live, other, empty = [await _migrated(tmp_path / f"{name}.db") for name in ("live", "other", "empty")]
    try:
        await _fill(live, 5, "a")
        await _fill(other, 5, "b")  # same seqs, other records: other hashes
        assert await shared_trail(other, live) == SharedTrail(None, 5)
        assert (await shared_trail(other, live)).own == 5
        assert await shared_trail(empty, live) == SharedTrail(None, None)
        assert await shared_trail(live, empty) == SharedTrail(None, 5)
    finally:
        for db in (live, other, empty):
            await db.close()
