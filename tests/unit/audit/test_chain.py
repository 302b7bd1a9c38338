"""The audit hash chain on SQLite and PostgreSQL: linear under concurrent writers, every tampering found."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy.engine import Connection

from gateway.audit.chain import GENESIS, ChainRecord, canonical, iter_records, verify_database
from gateway.audit.checkpoint import Checkpointer, verify_trail
from gateway.audit.trail import AuditLog, SecurityEvent
from gateway.clock import FakeClock
from gateway.crypto.keyring import Keyring
from gateway.store.db import Database, create_engine
from gateway.store.migrate import alembic_config, upgrade

KEYRING = Keyring({"k1": bytes(range(32))}, "k1")


async def _fill(db: Database, n: int, clock: FakeClock | None = None) -> AuditLog:
    audit = AuditLog(db, clock=clock or FakeClock())
    for i in range(n):
        await audit.record(
            "signin.password",
            actor=f"user:u{i}",
            subject=f"u{i}",
            ip="192.0.2.7",
            outcome="failure" if i % 2 else "success",
            details={"n": i, "note": "naïve ✓"},
        )
    return audit


async def _sql(db: Database, *statements: str, **params: Any) -> None:
    async with db.engine.begin() as conn:
        for statement in statements:
            await conn.execute(sa.text(statement), params)


async def _records(db: Database) -> list[ChainRecord]:
    return [r async for r in iter_records(db)]


async def _rewrite(db: Database, change: Callable[[ChainRecord], ChainRecord]) -> None:
    """What an attacker with write access does: change records and recompute every later hash."""
    prev = GENESIS
    for record in await _records(db):
        changed = dataclasses.replace(change(record), prev_hash=prev)
        changed = dataclasses.replace(changed, record_hash=changed.computed_hash())
        await _sql(
            db,
            "UPDATE audit_events SET actor = :actor, prev_hash = :prev, record_hash = :h WHERE id = :id",
            actor=changed.actor,
            prev=changed.prev_hash,
            h=changed.record_hash,
            id=changed.id,
        )
        prev = changed.record_hash


# --- appending ----------------------------------------------------------------------------------------


async def test_records_form_one_chain_that_verifies(database: Database) -> None:
    clock = FakeClock()
    await _fill(database, 5, clock)
    records = await _records(database)
    assert [r.seq for r in records] == [1, 2, 3, 4, 5]
    assert records[0].prev_hash == GENESIS
    assert all(b.prev_hash == a.record_hash for a, b in itertools.pairwise(records))
    assert records[0].at == clock.now()
    report = await verify_database(database)
    assert report.ok, report.problem
    assert (report.records, report.head_hash) == (5, records[-1].record_hash)


def test_canonical_form_is_stable() -> None:
    # Frozen format (version 1): bundles and migration 0005 depend on these exact bytes.
    data = canonical(
        id=7,
        seq=3,
        at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        kind="k",
        actor="a",
        subject="s",
        ip="::1",
        outcome="success",
        details='{"x":"é"}',
        prev_hash=GENESIS,
    )
    assert (
        data
        == (
            '{"actor":"a","at":"2026-01-02T03:04:05.000000+00:00","details":"{\\"x\\":\\"é\\"}","id":7,'
            '"ip":"::1","kind":"k","outcome":"success","prev":"' + GENESIS + '","seq":3,"subject":"s","v":1}'
        ).encode()
    )


async def test_listeners_still_see_stored_events(database: Database) -> None:
    seen: list[SecurityEvent] = []
    audit = AuditLog(database, clock=FakeClock())
    audit.listeners.append(seen.append)
    await audit.record("user.created", actor="cli:root", subject="alice", details={"roles": ["a"]})
    assert [(e.kind, e.subject, e.details) for e in seen] == [("user.created", "alice", '{"roles": ["a"]}')]
    assert [e.kind for e in await audit.events()] == ["user.created"]


async def test_concurrent_appends_from_several_writers_keep_one_chain(migrated_url: str) -> None:
    # Each AuditLog has its own engine and connections, as separate workers and replicas do.
    writers, per_writer = 5, 12
    dbs = [Database.open(migrated_url, pool_size=3) for _ in range(writers)]
    try:
        logs = [AuditLog(db, clock=FakeClock()) for db in dbs]

        async def write(w: int) -> None:
            for i in range(per_writer):
                await logs[w].record("test.append", actor=f"worker:{w}", details={"i": i})

        await asyncio.gather(*(write(w) for w in range(writers)))
        report = await verify_database(dbs[0])
        records = await _records(dbs[0])
    finally:
        for db in dbs:
            await db.close()
    assert report.ok, report.problem
    assert [r.seq for r in records] == list(range(1, writers * per_writer + 1))
    assert sorted((r.actor, json.loads(r.details)["i"]) for r in records) == sorted(
        (f"worker:{w}", i) for w in range(writers) for i in range(per_writer)
    )


# --- tampering ----------------------------------------------------------------------------------------

Tamper = Callable[[Database], Awaitable[None]]


async def _modify(db: Database) -> None:
    await _sql(db, "UPDATE audit_events SET outcome = 'success' WHERE seq = 4")


async def _delete_middle(db: Database) -> None:
    await _sql(db, "DELETE FROM audit_events WHERE seq = 3")


async def _insert_forged(db: Database) -> None:
    # A forged record slipped in at seq 3, linked to record 2 with a correctly computed hash; the
    # records after it are renumbered to make room (two steps: seq is unique).
    records = await _records(db)
    await _sql(
        db,
        "UPDATE audit_events SET seq = -seq - 1 WHERE seq >= 3",
        "UPDATE audit_events SET seq = -seq WHERE seq < 0",
    )
    forged = dataclasses.replace(
        records[2], id=1000, seq=3, actor="user:nobody", prev_hash=records[1].record_hash
    )
    forged = dataclasses.replace(forged, record_hash=forged.computed_hash())
    await _sql(
        db,
        "INSERT INTO audit_events (id, at, kind, actor, subject, ip, outcome, details, seq, prev_hash, record_hash) "
        "VALUES (:id, :at, :kind, :actor, :subject, :ip, :outcome, :details, :seq, :prev, :h)",
        id=forged.id,
        at=records[2].at if db.backend == "postgresql" else records[2].at.replace(tzinfo=None).isoformat(" "),
        kind=forged.kind,
        actor=forged.actor,
        subject=forged.subject,
        ip=forged.ip,
        outcome=forged.outcome,
        details=forged.details,
        seq=forged.seq,
        prev=forged.prev_hash,
        h=forged.record_hash,
    )


async def _swap_contents(db: Database) -> None:
    await _sql(
        db,
        "UPDATE audit_events SET actor = CASE seq WHEN 2 THEN 'user:u4' ELSE 'user:u1' END, "
        "subject = CASE seq WHEN 2 THEN 'u4' ELSE 'u1' END WHERE seq IN (2, 5)",
    )


async def _reorder(db: Database) -> None:
    # Whole rows (hashes included) trade places in the chain.
    await _sql(
        db,
        "UPDATE audit_events SET seq = -seq WHERE seq IN (2, 3)",
        "UPDATE audit_events SET seq = CASE seq WHEN -2 THEN 3 ELSE 2 END WHERE seq < 0",
    )


@pytest.mark.parametrize(
    ("tamper", "seq", "complaint", "good"),
    [
        (_modify, 4, "does not match its hash", 3),
        (_delete_middle, 4, "seq 3 before it are missing", 2),
        # The forged record itself links and hashes correctly; the renumbered one after it does not.
        (_insert_forged, 4, "does not match its hash", 3),
        (_swap_contents, 2, "does not match its hash", 1),
        (_reorder, 2, "does not match its hash", 1),
    ],
    ids=["modify", "delete-middle", "insert-forged", "swap-contents", "reorder"],
)
async def test_tampering_is_found_at_the_first_bad_record(
    database: Database, tamper: Tamper, seq: int, complaint: str, good: int
) -> None:
    await _fill(database, 6)
    await tamper(database)
    report = await verify_database(database)
    assert report.problem is not None
    assert report.problem.seq == seq
    assert complaint in report.problem.what
    assert report.records == good  # the records before the break verified
    assert "What to do:" in str(report.problem)


async def test_truncated_tail_is_found_only_with_a_checkpoint(database: Database, tmp_path: Path) -> None:
    await _fill(database, 6)
    cp = await Checkpointer(database, KEYRING, directory=tmp_path).checkpoint()
    await _sql(database, "DELETE FROM audit_events WHERE seq >= 5")
    assert (await verify_database(database)).ok  # a shorter chain is still a valid chain
    verdict = await verify_trail(database, [cp], keyring=KEYRING)
    assert verdict.problem is not None
    assert verdict.problem.seq == 6
    assert "record(s) seq 5..6 are gone from the end" in verdict.problem.what
    assert "truncated" in verdict.problem.what


async def test_rewritten_chain_is_found_with_a_checkpoint(database: Database, tmp_path: Path) -> None:
    await _fill(database, 3)
    checkpointer = Checkpointer(database, KEYRING, directory=tmp_path)
    first = await checkpointer.checkpoint()
    await _fill(database, 3)
    second = await checkpointer.checkpoint()

    def edit(r: ChainRecord) -> ChainRecord:
        return dataclasses.replace(r, actor="user:someone-else") if r.seq == 5 else r

    await _rewrite(database, edit)
    assert (await verify_database(database)).ok  # hashes recomputed: the chain alone cannot tell
    verdict = await verify_trail(database, [first, second], keyring=KEYRING)
    assert verdict.problem is not None
    assert verdict.problem.seq == 6
    assert "rewritten" in verdict.problem.what
    assert "between seq 4 and 6" in verdict.problem.what


async def test_intact_chain_reaches_every_checkpoint(database: Database, tmp_path: Path) -> None:
    checkpointer = Checkpointer(database, KEYRING, directory=tmp_path)
    docs = [await checkpointer.checkpoint()]
    for _ in range(3):
        await _fill(database, 2)
        docs.append(await checkpointer.checkpoint())
    verdict = await verify_trail(database, docs, keyring=KEYRING)
    assert verdict.ok, verdict.problem
    assert verdict.checkpoints_checked == 4
    assert [d["head_seq"] for d in docs] == [0, 2, 4, 6]


# --- migration ----------------------------------------------------------------------------------------


async def test_migration_chains_existing_records_in_id_order(database_url: str) -> None:
    engine = create_engine(database_url, pool_size=1)
    try:
        async with engine.connect() as conn:

            def to_0004(sync: Connection) -> None:
                cfg = alembic_config(quiet=True)
                cfg.attributes["connection"] = sync
                command.upgrade(cfg, "0004")
                sync.commit()

            await conn.run_sync(to_0004)
        async with engine.begin() as conn:
            for i, kind in enumerate(["user.created", "signin.password", "policy.changed"], start=1):
                at = datetime(2026, 11, 1, 12, 0, i, 250_000 * i, tzinfo=UTC)
                await conn.execute(
                    sa.text(
                        "INSERT INTO audit_events (id, at, kind, actor, subject, ip, outcome, details) "
                        "VALUES (:id, :at, :kind, 'cli:root', 'alice', '', 'success', '{}')"
                    ),
                    {
                        "id": i * 10,
                        "at": at
                        if engine.dialect.name == "postgresql"
                        else at.replace(tzinfo=None).isoformat(" "),
                        "kind": kind,
                    },
                )
    finally:
        await engine.dispose()
    await upgrade(database_url)
    db = Database.open(database_url, pool_size=1)
    try:
        report = await verify_database(db)
        records = await _records(db)
        # New appends continue the migrated chain.
        await AuditLog(db, clock=FakeClock()).record("audit.test", actor="system")
        after = await verify_database(db)
    finally:
        await db.close()
    assert report.ok, report.problem
    assert [(r.id, r.seq) for r in records] == [(10, 1), (20, 2), (30, 3)]
    assert records[1].at == datetime(2026, 11, 1, 12, 0, 2, 500_000, tzinfo=UTC)
    assert after.ok
    assert after.records == 4
