"""The audit hash chain on SQLite and PostgreSQL: linear under concurrent writers, every tampering found.

The chain is keyed (HMAC under a key derived from the keyring): the attacks here are performed with
what someone holding only the database credentials has, i.e. SQL, the public canonical form and
SHA-256, and must be found and named. Chains written before keying (legacy, SHA-256 only) still verify.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import itertools
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy.engine import Connection

from gateway.audit.chain import (
    ERASABLE_VERSION,
    GENESIS,
    KEYED_VERSION,
    LEGACY_VERSION,
    SEAL_KIND,
    ChainKeyMissing,
    ChainRecord,
    canonical,
    iter_records,
    verify_database,
)
from gateway.audit.chain_key import ChainKeys
from gateway.audit.checkpoint import ChainBroken, Checkpointer, sign_checkpoint, verify_trail
from gateway.audit.erasable import dump_salts, new_salts
from gateway.audit.erase import erase_person
from gateway.audit.trail import AuditLog, SecurityEvent
from gateway.clock import FakeClock
from gateway.crypto.keyring import Keyring
from gateway.store.db import Database, create_engine
from gateway.store.migrate import alembic_config, upgrade

KEY = bytes(range(32))
KEYRING = Keyring({"k1": KEY}, "k1")


async def _fill(
    db: Database, n: int, clock: FakeClock | None = None, *, keyring: Keyring | None = KEYRING
) -> AuditLog:
    """``n`` records; keyed by default, legacy (as code before keying wrote them) with ``keyring=None``."""
    audit = AuditLog(db, clock=clock or FakeClock(), keyring=keyring)
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


def _legacy_hash(record: ChainRecord) -> str:
    """What a forger with database access computes: SHA-256 over the public canonical form."""
    return hashlib.sha256(record.canonical()).hexdigest()


async def _rewrite(db: Database, change: Callable[[ChainRecord], ChainRecord], *, from_seq: int = 1) -> None:
    """What an attacker with write access does: change records and recompute every later hash.

    Without the chain key the only hash they can compute is the legacy SHA-256, so the rewritten
    records become version 1 (without the salts and erased fields version 1 does not have).
    """
    records = await _records(db)
    prev = records[from_seq - 2].record_hash if from_seq > 1 else GENESIS
    for record in records[from_seq - 1 :]:
        changed = dataclasses.replace(change(record), prev_hash=prev, version=LEGACY_VERSION, key_id="")
        changed = dataclasses.replace(changed, record_hash=_legacy_hash(changed))
        await _sql(
            db,
            "UPDATE audit_events SET actor = :actor, prev_hash = :prev, record_hash = :h, chain_version = 1, "
            "key_id = '', salts = '{}', erased = '{}' WHERE id = :id",
            actor=changed.actor,
            prev=changed.prev_hash,
            h=changed.record_hash,
            id=changed.id,
        )
        prev = changed.record_hash


def _at_param(db: Database, at: datetime) -> object:
    # Raw SQL on SQLite stores what the ORM would: naive UTC text.
    return at if db.backend == "postgresql" else at.replace(tzinfo=None).isoformat(" ")


async def _insert_row(db: Database, record: ChainRecord) -> None:
    await _sql(
        db,
        "INSERT INTO audit_events (id, at, kind, actor, subject, ip, outcome, details, seq, prev_hash, "
        "record_hash, chain_version, key_id, salts, erased) VALUES (:id, :at, :kind, :actor, :subject, :ip, "
        ":outcome, :details, :seq, :prev, :h, :v, :kid, :salts, :erased)",
        id=record.id,
        at=_at_param(db, record.at),
        kind=record.kind,
        actor=record.actor,
        subject=record.subject,
        ip=record.ip,
        outcome=record.outcome,
        details=record.details,
        seq=record.seq,
        prev=record.prev_hash,
        h=record.record_hash,
        v=record.version,
        kid=record.key_id,
        salts=record.salts,
        erased=record.erased,
    )


async def _forge_next(db: Database, *, version: int = LEGACY_VERSION, key_id: str = "") -> ChainRecord:
    """Append the next record with database access only: right seq, right link, SHA-256 hash."""
    head = (await _records(db))[-1]
    forged = ChainRecord(
        head.id + 1,
        head.seq + 1,
        head.at,
        "admin.user.roles",
        "admin:alice",
        "mallory",
        "192.0.2.66",
        "success",
        '{"roles": ["admin"]}',
        head.record_hash,
        "",
        version,
        key_id,
        # Salts are no secret: a forger can pick their own, only the MAC over them is out of reach.
        dump_salts(new_salts()) if version == ERASABLE_VERSION else "{}",
    )
    # The hash anyone can compute; for a "keyed" label it is the best guess without the key.
    forged = dataclasses.replace(forged, record_hash=_legacy_hash(forged))
    await _insert_row(db, forged)
    return forged


# --- appending ----------------------------------------------------------------------------------------


async def test_records_form_one_chain_that_verifies(database: Database) -> None:
    clock = FakeClock()
    await _fill(database, 5, clock)
    records = await _records(database)
    assert [r.seq for r in records] == [1, 2, 3, 4, 5]
    assert records[0].prev_hash == GENESIS
    assert all(b.prev_hash == a.record_hash for a, b in itertools.pairwise(records))
    assert records[0].at == clock.now()
    report = await verify_database(database, keyring=KEYRING)
    assert report.ok, report.problem
    assert (report.records, report.head_hash) == (5, records[-1].record_hash)
    assert {(r.version, r.key_id) for r in records} == {(ERASABLE_VERSION, "k1")}
    assert (report.legacy, report.keyed_from, report.unchecked, report.key_ids) == (
        0,
        1,
        0,
        frozenset({"k1"}),
    )


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
    audit = AuditLog(database, clock=FakeClock(), keyring=KEYRING)
    audit.listeners.append(seen.append)
    await audit.record("user.created", actor="cli:root", subject="alice", details={"roles": ["a"]})
    assert [(e.kind, e.subject, e.details) for e in seen] == [("user.created", "alice", '{"roles": ["a"]}')]
    assert [e.kind for e in await audit.events()] == ["user.created"]


async def test_concurrent_appends_from_several_writers_keep_one_chain(migrated_url: str) -> None:
    # Each AuditLog has its own engine and connections, as separate workers and replicas do.
    writers, per_writer = 5, 12
    dbs = [Database.open(migrated_url, pool_size=3) for _ in range(writers)]
    try:
        logs = [AuditLog(db, clock=FakeClock(), keyring=KEYRING) for db in dbs]

        async def write(w: int) -> None:
            for i in range(per_writer):
                await logs[w].record("test.append", actor=f"worker:{w}", details={"i": i})

        await asyncio.gather(*(write(w) for w in range(writers)))
        report = await verify_database(dbs[0], keyring=KEYRING)
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
    # A forged record slipped in at seq 3, linked to record 2 with the only hash a forger can
    # compute; the records after it are renumbered to make room (two steps: seq is unique).
    records = await _records(db)
    await _sql(
        db,
        "UPDATE audit_events SET seq = -seq - 1 WHERE seq >= 3",
        "UPDATE audit_events SET seq = -seq WHERE seq < 0",
    )
    forged = dataclasses.replace(
        records[2], id=1000, seq=3, actor="user:nobody", prev_hash=records[1].record_hash
    )
    await _insert_row(db, dataclasses.replace(forged, record_hash=_legacy_hash(forged)))


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


async def _recompute_modified(db: Database) -> None:
    # Modify record 4 and recompute its hash and every later one, as a forger can (SHA-256).
    await _rewrite(db, lambda r: dataclasses.replace(r, actor="user:someone-else"), from_seq=4)


async def _recompute_keeping_the_label(db: Database) -> None:
    # The same, but the rows keep claiming to be keyed: the hash is not the chain key's MAC.
    records = await _records(db)
    changed = dataclasses.replace(records[3], actor="user:someone-else")
    await _sql(
        db,
        "UPDATE audit_events SET actor = :actor, record_hash = :h WHERE seq = 4",
        actor=changed.actor,
        h=_legacy_hash(changed),
    )


@pytest.mark.parametrize(
    ("tamper", "seq", "complaint", "good"),
    [
        (_modify, 4, "does not match its hash", 3),
        (_delete_middle, 4, "seq 3 before it are missing", 2),
        (_insert_forged, 3, "written without the chain key (forged)", 2),
        (_swap_contents, 2, "does not match its hash", 1),
        (_reorder, 2, "does not match its hash", 1),
        (_recompute_modified, 4, "it was written without the chain key", 3),
        (_recompute_keeping_the_label, 4, "written without the chain key (forged)", 3),
    ],
    ids=[
        "modify",
        "delete-middle",
        "insert-forged",
        "swap-contents",
        "reorder",
        "recompute",
        "recompute-keyed",
    ],
)
async def test_tampering_is_found_at_the_first_bad_record(
    database: Database, tamper: Tamper, seq: int, complaint: str, good: int
) -> None:
    await _fill(database, 6)
    await tamper(database)
    report = await verify_database(database, keyring=KEYRING)
    assert report.problem is not None
    assert report.problem.seq == seq
    assert complaint in report.problem.what
    assert report.records == good  # the records before the break verified
    assert "What to do:" in str(report.problem)


@pytest.mark.parametrize(
    ("label", "complaint"),
    [
        ((LEGACY_VERSION, ""), "unkeyed (version 1) record after the chain became keyed"),
        ((KEYED_VERSION, "k1"), "written without the chain key (forged)"),
        ((ERASABLE_VERSION, "k1"), "written without the chain key (forged)"),
        ((7, "k1"), "unknown chain version 7"),
    ],
    ids=["as-legacy", "as-keyed", "as-erasable", "as-unknown-version"],
)
async def test_record_forged_at_the_tail_with_database_access_is_named(
    database: Database, tmp_path: Path, label: tuple[int, str], complaint: str
) -> None:
    # The attack of issue 12 item 11: the next record, correctly linked and hashed with what the
    # database and the public canonical form give, inserted with SQL. Before keying it verified.
    await _fill(database, 4)
    forged = await _forge_next(database, version=label[0], key_id=label[1])
    verdict = await verify_trail(database, keyring=KEYRING)
    assert verdict.problem is not None
    assert (verdict.problem.record_id, verdict.problem.seq) == (forged.id, 5)
    assert complaint in verdict.problem.what
    assert f"record id {forged.id} (seq 5)" in str(verdict.problem)
    assert verdict.report.records == 4
    # And no checkpoint signs it, neither from a fresh worker nor from one that signed before.
    with pytest.raises(ChainBroken, match=f"record id {forged.id} \\(seq 5\\)"):
        await Checkpointer(database, KEYRING, directory=tmp_path).checkpoint()
    assert not (tmp_path / "checkpoints.jsonl").exists()


async def test_a_worker_that_signed_before_refuses_to_sign_a_forged_tail(database: Database) -> None:
    await _fill(database, 3)
    checkpointer = Checkpointer(database, KEYRING, directory=None)
    await checkpointer.checkpoint()
    forged = await _forge_next(database)
    with pytest.raises(ChainBroken, match=f"record id {forged.id} \\(seq 4\\).*without the chain key"):
        await checkpointer.checkpoint()


async def test_writers_without_the_key_cannot_extend_a_keyed_chain(database: Database) -> None:
    await _fill(database, 2)
    with pytest.raises(ChainKeyMissing, match="no keyring"):
        await AuditLog(database, clock=FakeClock()).record("test.unkeyed", actor="system")
    assert [r.seq for r in await _records(database)] == [1, 2]  # nothing was written
    assert (await verify_database(database, keyring=KEYRING)).ok


async def test_without_the_keyring_keyed_records_are_checked_for_links_only(database: Database) -> None:
    await _fill(database, 3)
    report = await verify_database(database)
    assert report.ok
    assert (report.unchecked, report.keyed_from) == (3, 1)
    # Structure still counts without the key: a forged legacy record after keyed ones is refused.
    await _forge_next(database)
    report = await verify_database(database)
    assert report.problem is not None
    assert report.problem.seq == 4


async def test_the_chain_key_survives_a_keyring_rotation(database: Database, tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    keyring = Keyring.create(path)
    old_kid = keyring.active_id
    audit = await _fill(database, 2, keyring=keyring)
    new_kid = keyring.rotate(path)  # what `gateway keys rotate --keyring` does
    await audit.record("keys.rotated", actor="cli:root", details={"keyring_key": new_kid})
    await _fill(database, 2, keyring=Keyring.load(path))
    records = await _records(database)
    assert [r.key_id for r in records] == [old_kid, old_kid, new_kid, new_kid, new_kid]
    report = await verify_database(database, keyring=Keyring.load(path))
    assert report.ok, report.problem
    assert report.key_ids == {old_kid, new_kid}


async def test_a_verifier_missing_a_newer_key_names_the_record(database: Database, tmp_path: Path) -> None:
    old = Keyring({"kold": KEY}, "kold")
    await _fill(database, 2, keyring=old)
    await _fill(database, 1, keyring=Keyring({"kold": KEY, "knew": bytes(32)}, "knew"))
    report = await verify_database(database, keyring=old)
    assert report.problem is not None
    assert report.problem.seq == 3
    assert "key id 'knew', which this keyring does not hold" in report.problem.what
    assert "the keyring the gateways use" in report.problem.action


def test_keyed_canonical_form_and_mac_follow_the_documented_recipe() -> None:
    # The recipe in the bundle README, computed here without the gateway's code.
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    data = canonical(
        id=7,
        seq=3,
        at=at,
        kind="k",
        actor="a",
        subject="s",
        ip="::1",
        outcome="success",
        details="{}",
        prev_hash=GENESIS,
        version=KEYED_VERSION,
        key_id="k1",
    )
    assert (
        data
        == (
            '{"actor":"a","at":"2026-01-02T03:04:05.000000+00:00","details":"{}","id":7,"ip":"::1","kid":"k1",'
            '"kind":"k","outcome":"success","prev":"' + GENESIS + '","seq":3,"subject":"s","v":2}'
        ).encode()
    )
    chain_key = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"gateway keyring derive\0audit-chain v2"
    ).derive(KEY)
    record = ChainRecord(7, 3, at, "k", "a", "s", "::1", "success", "{}", GENESIS, "", KEYED_VERSION, "k1")
    assert record.digest(ChainKeys(KEYRING)) == hmac.new(chain_key, data, hashlib.sha256).hexdigest()
    assert record.digest(ChainKeys(KEYRING)) != hashlib.sha256(data).hexdigest()


def test_erasable_canonical_form_and_mac_follow_the_documented_recipe() -> None:
    # Version 3 as the bundle README spells it out, computed here without the gateway's code.
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    values = {"actor": "user:ünï", "subject": "s", "ip": "::1", "details": '{"x":1}'}
    salts = {field: bytes([n]) * 16 for n, field in enumerate(values, start=1)}
    commitments = {
        f"{field}_c": hmac.new(
            salts[field], field.encode() + b"\0" + value.encode(), hashlib.sha256
        ).hexdigest()
        for field, value in values.items()
    }
    doc = {"v": 3, "id": 7, "seq": 3, "at": "2026-01-02T03:04:05.000000+00:00", "kind": "k"}
    doc |= {"outcome": "success", "prev": GENESIS, "kid": "k1", **commitments}
    data = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    chain_key = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"gateway keyring derive\0audit-chain v2"
    ).derive(KEY)
    record = ChainRecord(
        7,
        3,
        at,
        "k",
        values["actor"],
        values["subject"],
        values["ip"],
        "success",
        values["details"],
        GENESIS,
        "",
        ERASABLE_VERSION,
        "k1",
        json.dumps({field: salt.hex() for field, salt in salts.items()}),
    )
    assert record.canonical() == data
    assert b"user:" not in data  # personal fields only as commitments
    assert record.digest(ChainKeys(KEYRING)) == hmac.new(chain_key, data, hashlib.sha256).hexdigest()
    # The same content as version 2 hashes differently: the version is bound into the MAC.
    as_v2 = dataclasses.replace(record, version=KEYED_VERSION, salts="{}")
    assert as_v2.digest(ChainKeys(KEYRING)) != record.digest(ChainKeys(KEYRING))


async def test_erasable_records_round_trip_through_their_json_lines(database: Database) -> None:
    await _fill(database, 2, keyring=None)  # legacy
    await _fill(database, 2)  # erasable
    records = await _records(database)
    for record in records:
        line = json.loads(json.dumps(record.to_json()))
        assert ChainRecord.from_json(line) == record
        assert ({"salts", "erased"} <= set(line)) is (record.version == ERASABLE_VERSION)
    assert json.loads(records[2].salts).keys() == {"actor", "subject", "ip", "details"}
    assert records[2].salts != records[3].salts  # fresh salts per record
    # Lines from bundles exported before version 3 have no salts and erased.
    old = {k: v for k, v in records[0].to_json().items()}
    assert (ChainRecord.from_json(old).salts, ChainRecord.from_json(old).erased) == ("{}", "{}")
    with pytest.raises(ValueError, match="text fields must be strings"):
        ChainRecord.from_json({**records[2].to_json(), "salts": {"actor": "00"}})


# --- checkpoints: what the chain alone cannot show ------------------------------------------------------


async def test_truncated_tail_is_found_only_with_a_checkpoint(database: Database, tmp_path: Path) -> None:
    await _fill(database, 6)
    cp = await Checkpointer(database, KEYRING, directory=tmp_path).checkpoint()
    await _sql(database, "DELETE FROM audit_events WHERE seq >= 5")
    assert (await verify_database(database, keyring=KEYRING)).ok  # a shorter chain is still a valid chain
    verdict = await verify_trail(database, [cp], keyring=KEYRING)
    assert verdict.problem is not None
    assert verdict.problem.seq == 6
    assert "record(s) seq 5..6 are gone from the end" in verdict.problem.what
    assert "truncated" in verdict.problem.what


async def test_a_chain_rewritten_as_legacy_is_found_with_a_checkpoint(
    database: Database, tmp_path: Path
) -> None:
    # The one rewrite the keyed chain alone cannot refuse: every record from the first one on turned
    # into a legacy record with recomputed SHA-256 hashes. The checkpoint the SIEM holds shows it.
    await _fill(database, 3)
    checkpointer = Checkpointer(database, KEYRING, directory=tmp_path)
    first = await checkpointer.checkpoint()
    await _fill(database, 3)
    second = await checkpointer.checkpoint()

    def edit(r: ChainRecord) -> ChainRecord:
        return dataclasses.replace(r, actor="user:someone-else") if r.seq == 5 else r

    await _rewrite(database, edit)
    report = await verify_database(database, keyring=KEYRING)
    assert report.ok  # all legacy now: the chain alone cannot tell ...
    assert (report.legacy, report.keyed_from) == (6, None)  # ... but it no longer claims to be keyed
    verdict = await verify_trail(database, [first, second], keyring=KEYRING)
    assert verdict.problem is not None
    assert verdict.problem.seq == 3
    assert "rewritten" in verdict.problem.what
    assert "between seq 1 and 3" in verdict.problem.what


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        ({"head_hash": "ab" * 32}, "the MAC does not verify"),
        ({"kid": "k2"}, "which this keyring does not hold"),
    ],
)
async def test_altered_checkpoint_files_fail_verification(
    database: Database, tmp_path: Path, change: dict[str, Any], complaint: str
) -> None:
    await _fill(database, 2)
    cp = await Checkpointer(database, KEYRING, directory=tmp_path).checkpoint()
    verdict = await verify_trail(database, [{**cp, **change}], keyring=KEYRING)
    assert verdict.problem is not None
    assert complaint in verdict.problem.what


async def test_a_checkpoint_at_a_position_the_chain_disagrees_with_fails(database: Database) -> None:
    # A genuinely signed checkpoint of another deployment's (or an earlier, replaced) chain.
    await _fill(database, 4)
    other = Keyring({"k1": KEY}, "k1")
    cp = sign_checkpoint(
        {"head_id": 2, "head_seq": 2, "head_hash": "cd" * 32, "count": 2, "at": "2027-01-01T00:00:00+00:00"},
        other,
    )
    verdict = await verify_trail(database, [cp], keyring=KEYRING)
    assert verdict.problem is not None
    assert verdict.problem.seq == 2
    assert "no longer has the hash the checkpoint of 2027-01-01T00:00:00+00:00 signed" in verdict.problem.what


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


# --- legacy chains: written before keying --------------------------------------------------------------


async def test_a_legacy_chain_still_verifies_and_keyed_records_continue_it(database: Database) -> None:
    await _fill(database, 3, keyring=None)  # as the code before keying wrote them
    report = await verify_database(database, keyring=KEYRING)
    assert report.ok, report.problem
    assert (report.legacy, report.keyed_from) == (3, None)
    await _fill(database, 2)
    report = await verify_database(database, keyring=KEYRING)
    assert report.ok, report.problem
    assert (report.records, report.legacy, report.keyed_from) == (5, 3, 4)
    assert [r.version for r in await _records(database)] == [1, 1, 1, 3, 3]
    # Tampering with the legacy part is still found as before.
    await _sql(database, "UPDATE audit_events SET actor = 'user:x' WHERE seq = 2")
    report = await verify_database(database, keyring=KEYRING)
    assert report.problem is not None
    assert (report.problem.seq, report.records) == (2, 1)
    assert "does not match its hash" in report.problem.what


async def test_the_checkpointer_seals_a_legacy_head(database: Database, tmp_path: Path) -> None:
    # An upgraded gateway that writes nothing for a while: the first checkpoint closes the legacy
    # part with a keyed record, so a forged legacy append after it no longer verifies.
    clock = FakeClock()
    await _fill(database, 3, clock, keyring=None)
    checkpointer = Checkpointer(database, KEYRING, directory=tmp_path, clock=clock)
    cp = await checkpointer.checkpoint()
    seal = (await _records(database))[-1]
    assert (cp["head_seq"], cp["head_hash"]) == (4, seal.record_hash)
    assert (seal.kind, seal.actor, seal.version, seal.key_id) == (SEAL_KIND, "system", ERASABLE_VERSION, "k1")
    assert json.loads(seal.details) == {"legacy_records": 3, "legacy_head_hash": seal.prev_hash}
    assert (await checkpointer.checkpoint())["head_seq"] == 4  # sealed once
    forged = await _forge_next(database)
    verdict = await verify_trail(database, [cp], keyring=KEYRING)
    assert verdict.problem is not None
    assert (verdict.problem.record_id, verdict.problem.seq) == (forged.id, 5)
    with pytest.raises(ChainBroken, match="seq 5"):
        await checkpointer.checkpoint()


async def test_no_seal_over_a_legacy_head_that_does_not_verify(database: Database, tmp_path: Path) -> None:
    await _fill(database, 3, keyring=None)
    await _sql(database, "UPDATE audit_events SET actor = 'user:x' WHERE seq = 3")
    with pytest.raises(ChainBroken, match="seq 3"):
        await Checkpointer(database, KEYRING, directory=tmp_path).checkpoint()
    assert [r.version for r in await _records(database)] == [1, 1, 1]


# --- migration ----------------------------------------------------------------------------------------


async def _migrate_to(url: str, revision: str) -> None:
    engine = create_engine(url, pool_size=1)
    try:
        async with engine.connect() as conn:

            def run(sync: Connection) -> None:
                cfg = alembic_config(quiet=True)
                cfg.attributes["connection"] = sync
                command.upgrade(cfg, revision)
                sync.commit()

            await conn.run_sync(run)
    finally:
        await engine.dispose()


async def test_migration_chains_existing_records_in_id_order(database_url: str) -> None:
    await _migrate_to(database_url, "0004")
    engine = create_engine(database_url, pool_size=1)
    try:
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
        report = await verify_database(db, keyring=KEYRING)
        records = await _records(db)
        # New appends continue the migrated chain, keyed.
        await AuditLog(db, clock=FakeClock(), keyring=KEYRING).record("audit.test", actor="system")
        after = await verify_database(db, keyring=KEYRING)
    finally:
        await db.close()
    assert report.ok, report.problem
    assert [(r.id, r.seq, r.version, r.key_id) for r in records] == [
        (10, 1, 1, ""),
        (20, 2, 1, ""),
        (30, 3, 1, ""),
    ]
    assert records[1].at == datetime(2026, 11, 1, 12, 0, 2, 500_000, tzinfo=UTC)
    assert after.ok
    assert (after.records, after.legacy, after.keyed_from) == (4, 3, 4)


async def test_records_written_by_the_previous_release_verify_after_the_upgrade(database_url: str) -> None:
    # Schema 0005 and rows exactly as the previous release's append wrote them (SHA-256 chain).
    await _migrate_to(database_url, "0005")
    prev = GENESIS
    engine = create_engine(database_url, pool_size=1)
    try:
        async with engine.begin() as conn:
            for seq in (1, 2):
                at = datetime(2026, 12, 1, 9, 0, seq, tzinfo=UTC)
                fields = {
                    "kind": "signin.password",
                    "actor": f"user:u{seq}",
                    "subject": f"u{seq}",
                    "ip": "",
                    "outcome": "success",
                    "details": "{}",
                }
                # The previous release's canonical form, spelled out (not through today's code).
                doc = {
                    "v": 1,
                    "id": seq,
                    "seq": seq,
                    "at": at.isoformat(timespec="microseconds"),
                    "prev": prev,
                }
                data = json.dumps(
                    {**doc, **fields}, sort_keys=True, separators=(",", ":"), ensure_ascii=False
                )
                digest = hashlib.sha256(data.encode()).hexdigest()
                await conn.execute(
                    sa.text(
                        "INSERT INTO audit_events (id, at, kind, actor, subject, ip, outcome, details, seq, "
                        "prev_hash, record_hash) VALUES (:id, :at, :kind, :actor, :subject, :ip, :outcome, "
                        ":details, :seq, :prev, :h)"
                    ),
                    {
                        "id": seq,
                        "seq": seq,
                        "prev": prev,
                        "h": digest,
                        **fields,
                        "at": at
                        if engine.dialect.name == "postgresql"
                        else at.replace(tzinfo=None).isoformat(" "),
                    },
                )
                prev = digest
            if engine.dialect.name == "postgresql":  # explicit ids do not advance the id sequence
                await conn.execute(sa.text("SELECT setval(pg_get_serial_sequence('audit_events', 'id'), 2)"))
    finally:
        await engine.dispose()
    await upgrade(database_url)
    db = Database.open(database_url, pool_size=1)
    try:
        report = await verify_database(db, keyring=KEYRING)
        assert report.ok, report.problem
        assert (report.legacy, report.keyed_from) == (2, None)
        await _fill(db, 1)
        await _forge_next(db)
        report = await verify_database(db, keyring=KEYRING)
    finally:
        await db.close()
    assert report.problem is not None
    assert (report.problem.seq, report.records) == (4, 3)


async def test_downgrade_below_erasable_records_is_refused_while_they_exist(migrated_url: str) -> None:
    # Keyed records are erasable (version 3) now: migration 0008 is the first to refuse.
    db = Database.open(migrated_url, pool_size=1)
    try:
        await _fill(db, 1)
    finally:
        await db.close()
    engine = create_engine(migrated_url, pool_size=1)
    try:
        async with engine.connect() as conn:

            def downgrade(sync: Connection) -> None:
                cfg = alembic_config(quiet=True)
                cfg.attributes["connection"] = sync
                command.downgrade(cfg, "0005")

            with pytest.raises(
                RuntimeError, match="1 audit record\\(s\\) are erasable \\(chain version 3\\)"
            ):
                await conn.run_sync(downgrade)
    finally:
        await engine.dispose()


async def test_keyed_records_of_the_release_before_erasable_verify_after_the_upgrade(
    database_url: str,
) -> None:
    # Schema 0007 and version 2 rows exactly as the previous release's append wrote them (HMAC over
    # the fields in the clear), spelled out here rather than through today's code.
    await _migrate_to(database_url, "0007")
    chain_key = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"gateway keyring derive\0audit-chain v2"
    ).derive(KEY)
    prev = GENESIS
    engine = create_engine(database_url, pool_size=1)
    try:
        async with engine.begin() as conn:
            for seq in (1, 2):
                at = datetime(2026, 12, 1, 9, 0, seq, tzinfo=UTC)
                fields = {
                    "kind": "signin.password",
                    "actor": "user:alice",
                    "subject": "alice",
                    "ip": "198.51.100.23",
                    "outcome": "success",
                    "details": "{}",
                }
                doc = {"v": 2, "kid": "k1", "id": seq, "seq": seq, "prev": prev, **fields}
                doc["at"] = at.isoformat(timespec="microseconds")
                data = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
                digest = hmac.new(chain_key, data.encode(), hashlib.sha256).hexdigest()
                await conn.execute(
                    sa.text(
                        "INSERT INTO audit_events (id, at, kind, actor, subject, ip, outcome, details, seq, "
                        "prev_hash, record_hash, chain_version, key_id) VALUES (:id, :at, :kind, :actor, "
                        ":subject, :ip, :outcome, :details, :seq, :prev, :h, 2, 'k1')"
                    ),
                    {
                        "id": seq,
                        "seq": seq,
                        "prev": prev,
                        "h": digest,
                        **fields,
                        "at": at
                        if engine.dialect.name == "postgresql"
                        else at.replace(tzinfo=None).isoformat(" "),
                    },
                )
                prev = digest
            if engine.dialect.name == "postgresql":  # explicit ids do not advance the id sequence
                await conn.execute(sa.text("SELECT setval(pg_get_serial_sequence('audit_events', 'id'), 2)"))
    finally:
        await engine.dispose()
    await upgrade(database_url)
    db = Database.open(database_url, pool_size=1)
    try:
        report = await verify_database(db, keyring=KEYRING)
        assert report.ok, report.problem
        assert (report.keyed_from, report.erasable_from) == (1, None)
        old = await _records(db)
        assert {(r.salts, r.erased) for r in old} == {("{}", "{}")}  # the migration's server default
        # New records continue the chain as version 3; erasing alice reaches only those.
        await AuditLog(db, clock=FakeClock(), keyring=KEYRING).record(
            "signin.password", actor="user:alice", subject="alice", ip="198.51.100.23"
        )
        result = await erase_person(
            db,
            ChainKeys(KEYRING),
            at=datetime(2026, 12, 2, tzinfo=UTC),
            username="alice",
            pseudonym="aa",
            actor="admin:bob",
            request_ref="r-1",
        )
        report = await verify_database(db, keyring=KEYRING)
        records = await _records(db)
    finally:
        await db.close()
    assert report.ok, report.problem
    assert (result.erased, result.kept_legacy) == ((3,), 2)
    assert (report.keyed_from, report.erasable_from, report.erased, report.erasures) == (1, 3, 1, 1)
    assert records[:2] == old
    assert [r.version for r in records] == [2, 2, 3, 3]
    assert records[2].subject == "[erased:aa]"
