"""The audit chain's status for the overview: the newest checkpoint of the node, held against the chain."""

from __future__ import annotations

import json
from pathlib import Path

from gateway.audit.checkpoint import CHECKPOINT_DIR, CHECKPOINT_FILE, Checkpointer
from gateway.audit.status import chain_status
from gateway.audit.trail import AuditLog
from gateway.clock import FakeClock
from gateway.crypto.keyring import Keyring
from gateway.store.db import Database

T0 = 1_800_000_000.0


async def _fill(db: Database, clock: FakeClock, keyring: Keyring, n: int) -> None:
    audit = AuditLog(db, clock=clock, keyring=keyring)
    for i in range(n):
        await audit.record("signin.password", actor=f"user:u{i}", subject=f"u{i}")
        clock.advance(60)


async def test_no_checkpoint_yet_is_none(database: Database, tmp_path: Path) -> None:
    keyring = Keyring.create(tmp_path / "keyring.json")
    assert await chain_status(database, keyring, tmp_path) is None
    # A file holding no checkpoint is the same.
    (tmp_path / CHECKPOINT_DIR).mkdir()
    (tmp_path / CHECKPOINT_DIR / CHECKPOINT_FILE).write_text('{"type": "something else"}\n')
    assert await chain_status(database, keyring, tmp_path) is None


async def test_the_newest_checkpoint_verifies_and_the_chain_still_holds_it(
    database: Database, tmp_path: Path
) -> None:
    keyring = Keyring.create(tmp_path / "keyring.json")
    clock = FakeClock(T0)
    checkpointer = Checkpointer(database, keyring, directory=tmp_path / CHECKPOINT_DIR, clock=clock)
    await _fill(database, clock, keyring, 2)
    await checkpointer.checkpoint()
    await _fill(database, clock, keyring, 3)
    await checkpointer.checkpoint()
    status = await chain_status(database, keyring, tmp_path)
    assert status is not None
    assert status.ok
    assert (status.head_seq, status.count) == (5, 5)
    assert status.at.timestamp() == clock.time()
    # Records appended after the checkpoint do not change it.
    await _fill(database, clock, keyring, 1)
    status = await chain_status(database, keyring, tmp_path)
    assert status is not None
    assert status.ok
    assert status.head_seq == 5


async def test_a_rewritten_chain_or_a_forged_checkpoint_shows(database: Database, tmp_path: Path) -> None:
    keyring = Keyring.create(tmp_path / "keyring.json")
    clock = FakeClock(T0)
    await _fill(database, clock, keyring, 3)
    await Checkpointer(database, keyring, directory=tmp_path / CHECKPOINT_DIR, clock=clock).checkpoint()
    async with database.engine.begin() as conn:
        await conn.exec_driver_sql("UPDATE audit_events SET record_hash = 'f00d' WHERE seq = 3")
    status = await chain_status(database, keyring, tmp_path)
    assert status is not None
    assert not status.chain_reaches
    assert status.signature_problem is None
    assert not status.ok
    # A line appended by someone without the keyring: its MAC does not verify.
    path = tmp_path / CHECKPOINT_DIR / CHECKPOINT_FILE
    doc = json.loads(path.read_text().splitlines()[-1])
    doc["count"] = 99
    with path.open("a") as file:
        file.write(json.dumps(doc) + "\n")
    status = await chain_status(database, keyring, tmp_path)
    assert status is not None
    assert status.count == 99
    assert status.signature_problem is not None
    assert "does not verify" in status.signature_problem


async def test_only_the_tail_of_a_long_file_is_read(database: Database, tmp_path: Path) -> None:
    keyring = Keyring.create(tmp_path / "keyring.json")
    clock = FakeClock(T0)
    checkpointer = Checkpointer(database, keyring, directory=tmp_path / CHECKPOINT_DIR, clock=clock)
    path = tmp_path / CHECKPOINT_DIR / CHECKPOINT_FILE
    await checkpointer.checkpoint()
    # Much more than the tail that is read: a megabyte of older lines before the newest checkpoint.
    older = path.read_text()
    path.write_text(older * (1_000_000 // len(older)))
    await _fill(database, clock, keyring, 1)
    await checkpointer.checkpoint()
    status = await chain_status(database, keyring, tmp_path)
    assert status is not None
    assert status.ok
    assert status.head_seq == 1
