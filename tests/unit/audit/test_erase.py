"""Erasing a person's personal fields from the audit trail (chain version 3), on SQLite and PostgreSQL.

An erasure must leave the chain verifying and the person's username, addresses and details nowhere in
the table, while other people's fields in the same records stay readable and covered by the MAC. The
attacks here are what someone holding only the database credentials can do (SQL, the stored salts,
the public commitment recipe): put values or salts back, erase fields by hand to hide their tracks
(also a further field of a record a genuine erasure covered, under that erasure's name), change the
erasure record. Each must be found and named. Erasure records written before they committed to their
fields keep verifying, with the older check.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import zipfile
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from gateway.audit import erase as erase_module
from gateway.audit.bundle import export_bundle, verify_bundle
from gateway.audit.chain import (
    ERASABLE_VERSION,
    KEYED_VERSION,
    ChainRecord,
    ChainReport,
    iter_records,
    verify_database,
)
from gateway.audit.chain_key import ChainKeys
from gateway.audit.checkpoint import Checkpointer, verify_trail
from gateway.audit.erasable import (
    ERASURE_KIND,
    ErasureClaim,
    ErasureFormatError,
    commit,
    dump_erased,
    erased_value,
    fields_digest,
    parse_erased,
    parse_erasure_details,
    parse_salts,
)
from gateway.audit.erase import ErasureResult, erase_person
from gateway.audit.trail import AuditLog
from gateway.clock import FakeClock
from gateway.crypto.keyring import Keyring
from gateway.store.db import Database

KEYRING = Keyring({"k1": bytes(range(32))}, "k1")
KEYS = ChainKeys(KEYRING)
T0 = 1_800_000_000.0
ALICE_IP = "198.51.100.23"
PSEUDONYM = "a1b2c3"
TOMBSTONE = f"[erased:{PSEUDONYM}]"
# What must be gone after alice's erasure: her name, her address, details only her records held.
ALICE_TRACES = ("alice", ALICE_IP, "alice-laptop", "promoted-in-q3", "left-the-company")


async def _scenario(db: Database, clock: FakeClock) -> AuditLog:
    """Five records, four naming alice in different roles, one about carol only (seqs 1..5)."""
    audit = AuditLog(db, clock=clock, keyring=KEYRING)
    events: list[tuple[str, dict[str, Any]]] = [
        # 1: alice signs in: actor and subject.
        (
            "signin.password",
            {"actor": "user:alice", "subject": "alice", "ip": ALICE_IP, "details": {"ua": "alice-laptop"}},
        ),
        # 2: bob (an admin) acts on alice: only her subject and the details go; bob stays readable.
        (
            "admin.user.roles",
            {
                "actor": "admin:bob",
                "subject": "alice",
                "ip": "203.0.113.9",
                "details": {"roles": ["staff"], "why": "promoted-in-q3"},
            },
        ),
        # 3: carol, nothing to do with alice.
        ("signin.password", {"actor": "user:carol", "subject": "carol", "ip": "192.0.2.44"}),
        # 4: alice as an admin acting on dave: only her address goes; who acted and why stay (the
        # record of a change), and so does dave.
        (
            "admin.user.disable",
            {
                "actor": "admin:alice",
                "subject": "dave",
                "ip": ALICE_IP,
                "details": {"why": "left-the-company"},
            },
        ),
        # 5: alice as a bare actor name (CLI-era spelling).
        ("mfa.totp.enrolled", {"actor": "alice", "subject": "", "ip": ALICE_IP}),
    ]
    for kind, fields in events:
        await audit.record(kind, **fields)
        clock.advance(60)
    return audit


async def _erase(
    db: Database, clock: FakeClock, username: str = "alice", pseudonym: str = PSEUDONYM
) -> ErasureResult:
    result = await erase_person(
        db,
        KEYS,
        at=clock.now(),
        username=username,
        pseudonym=pseudonym,
        actor="admin:bob",
        request_ref="GDPR-2026-17",
    )
    clock.advance(60)
    return result


async def _records(db: Database) -> list[ChainRecord]:
    return [r async for r in iter_records(db)]


async def _by_seq(db: Database, seq: int) -> ChainRecord:
    return next(r for r in await _records(db) if r.seq == seq)


async def _sql(db: Database, statement: str, **params: Any) -> None:
    async with db.engine.begin() as conn:
        await conn.execute(sa.text(statement), params)


async def _raw_rows(db: Database) -> list[dict[str, str]]:
    """Every column of every row, as text: what a database dump holds."""
    async with db.engine.connect() as conn:
        result = await conn.execute(sa.text("SELECT * FROM audit_events ORDER BY seq"))
        return [{k: str(v) for k, v in row._mapping.items()} for row in result]


async def _verified(db: Database, keyring: Keyring | None = KEYRING) -> ChainReport:
    report = await verify_database(db, keyring=keyring)
    assert report.ok, report.problem
    return report


# --- erasing --------------------------------------------------------------------------------------------


async def test_erasing_a_person_keeps_the_chain_verifying_and_leaves_no_trace(database: Database) -> None:
    clock = FakeClock(T0)
    await _scenario(database, clock)
    before = await _records(database)

    result = await _erase(database, clock)

    assert result.erased == (1, 2, 4, 5)
    assert result.fields == 4 + 2 + 1 + 3
    assert result.kept_legacy == 0
    erasure = result.record
    assert (erasure.seq, erasure.kind, erasure.actor, erasure.version) == (
        6,
        ERASURE_KIND,
        "admin:bob",
        ERASABLE_VERSION,
    )
    assert json.loads(erasure.details) == {
        "request": "GDPR-2026-17",
        "pseudonym": PSEUDONYM,
        "records": 4,
        "seqs_sha256": hashlib.sha256(b"1,2,4,5").hexdigest(),
        # Which fields of which records: the documented lines, spelled out so the format stays put.
        "fields_sha256": hashlib.sha256(
            b"1:actor,details,ip,subject\n2:details,subject\n4:ip\n5:actor,details,ip"
        ).hexdigest(),
    }
    report = await _verified(database)
    assert (report.records, report.erased, report.erasures, report.erasable_from) == (6, 4, 1, 1)
    assert report.erasures_unchecked == 0
    # Hashes never change: checkpoints signed before the erasure still hold.
    after = await _records(database)
    assert [r.record_hash for r in after[:5]] == [r.record_hash for r in before]

    rows = await _raw_rows(database)
    for row in rows:
        for column, value in row.items():
            if row["seq"] == "4" and column in ("actor", "details"):
                continue  # her act as an admin (below)
            for trace in ALICE_TRACES:
                assert trace not in value, (row["seq"], column, trace)

    by_seq = {r.seq: r for r in after}
    assert (by_seq[1].actor, by_seq[1].subject, by_seq[1].ip, by_seq[1].details) == (TOMBSTONE,) * 4
    # Other people's fields in the same records stay readable ...
    assert (by_seq[2].actor, by_seq[2].subject, by_seq[2].ip) == ("admin:bob", TOMBSTONE, "203.0.113.9")
    assert by_seq[2].details == TOMBSTONE
    assert (by_seq[4].actor, by_seq[4].subject, by_seq[4].ip) == ("admin:alice", "dave", TOMBSTONE)
    assert json.loads(by_seq[4].details) == {"why": "left-the-company"}
    assert by_seq[3] == before[2]  # carol's record untouched
    # ... and their salts are kept, the erased fields' salts are gone.
    assert set(parse_salts(by_seq[2].salts)) == {"actor", "ip"}
    assert set(parse_salts(by_seq[4].salts)) == {"actor", "subject", "details"}
    assert {f: e.by for f, e in parse_erased(by_seq[2].erased).items()} == {"subject": 6, "details": 6}


async def test_what_a_person_did_as_an_admin_keeps_who_did_it(database: Database) -> None:
    """An attack run: an admin erased their own account right after acting, and the trail could no
    longer say who had acted. Their acts on others keep the actor and the reason; their acts on
    themselves, a refused request to the admin API and everything else of theirs do not."""
    clock = FakeClock(T0)
    audit = AuditLog(database, clock=clock, keyring=KEYRING)
    await audit.record(
        "admin.user.create", actor="user:mel", subject="puppet", ip=ALICE_IP, details={"reason": "r1"}
    )
    await audit.record(
        "admin.user.roles", actor="user:mel", subject="mel", ip=ALICE_IP, details={"reason": "r2"}
    )
    await audit.record("admin.refused", actor="user:mel", subject="/api/users", ip=ALICE_IP)
    await audit.record("policy.approved", actor="user:mel", subject="user:boss", ip=ALICE_IP)
    await _erase(database, clock, username="mel")
    kept, own, refused, domain = (await _records(database))[:4]
    assert (kept.actor, kept.subject, kept.ip) == ("user:mel", "puppet", TOMBSTONE)
    assert json.loads(kept.details) == {"reason": "r1"}
    for gone in (own, refused, domain):
        assert (gone.actor, gone.ip, gone.details) == (TOMBSTONE,) * 3, gone.kind
    await _verified(database)


async def test_the_persons_email_and_paths_naming_them_are_erased_too(database: Database) -> None:
    """A re-attack run: an admin request refused before its account was found records the email typed
    in its path as the subject, and a refused admin API request records its path; both outlived the
    person's erasure. An admin's act on their own account, addressed by email, is theirs too."""
    clock = FakeClock(T0)
    audit = AuditLog(database, clock=clock, keyring=KEYRING)
    await audit.record(
        "admin.user.enable", actor="user:boss", subject="Erin@Corp.test", details={"reason": "r1"}
    )
    await audit.record("admin.refused", actor="user:boss", subject="/api/users/erin%40corp.test/disable")
    await audit.record("admin.refused", actor="user:boss", subject="/api/users/erin/disable?x=1")
    await audit.record(
        "admin.user.roles", actor="user:erin", subject="erin@corp.test", details={"reason": "mine"}
    )
    # Not hers: a name that only starts like hers, and another person's path.
    await audit.record("admin.refused", actor="user:boss", subject="/api/users/erina/disable")
    await audit.record("admin.user.enable", actor="user:boss", subject="erinb@corp.test")
    # Hers, encoded twice (stored decoded once).
    await audit.record("admin.refused", actor="user:boss", subject="/api/users/e%72in/sessions")
    result = await erase_person(
        database, KEYS, at=clock.now(), username="erin", email="erin@corp.test", pseudonym=PSEUDONYM,
        actor="admin:bob", request_ref="GDPR-1",
    )  # fmt: skip
    assert result.erased == (1, 2, 3, 4, 7)
    by_seq = {r.seq: r for r in await _records(database)}
    for seq in (1, 2, 3, 7):
        assert (by_seq[seq].actor, by_seq[seq].subject) == ("user:boss", TOMBSTONE)
    assert (by_seq[4].actor, by_seq[4].subject, by_seq[4].details) == (TOMBSTONE,) * 3
    assert (by_seq[5].subject, by_seq[6].subject) == ("/api/users/erina/disable", "erinb@corp.test")
    await _verified(database)


async def test_a_person_named_like_a_path_word_takes_nobody_elses_records(database: Database) -> None:
    """A re-attack run: erasing the username "users" (or "api") wiped the subject of every refused admin
    API request. Only the account segment of a path names a person."""
    clock = FakeClock(T0)
    audit = AuditLog(database, clock=clock, keyring=KEYRING)
    await audit.record("admin.refused", actor="user:mallory", subject="/api/users/bob/sessions")
    await audit.record("admin.refused", actor="user:mallory", subject="/api/users")
    await audit.record("admin.refused", actor="user:mallory", subject="/api/users/users/disable")
    for name in ("users", "api"):
        await erase_person(
            database, KEYS, at=clock.now(), username=name, pseudonym=PSEUDONYM, actor="admin:bob",
            request_ref=f"GDPR-{name}",
        )  # fmt: skip
    subjects = [r.subject for r in (await _records(database))[:3]]
    assert subjects == ["/api/users/bob/sessions", "/api/users", TOMBSTONE]
    await _verified(database)


async def test_a_person_named_like_a_backup_stanza_takes_no_backup_records(database: Database) -> None:
    """An attack run's class: records whose subject is never a person (a backup's stanza or label)
    went with the erasure of a person named like it, as the block of an address went with one named
    like the address (those names are refused now: gateway.identity.names.system_shaped)."""
    from sqlalchemy import select

    from gateway.audit.models import AuditEvent
    from gateway.privacy.export import audit_filter

    clock = FakeClock(T0)
    audit = AuditLog(database, clock=clock, keyring=KEYRING)
    await audit.record("backup.pg.created", actor="cli:root", subject="main", details={"stanza": "main"})
    await audit.record("dr.drill", actor="cli:root", subject="main")
    await audit.record("user.created", actor="cli:root", subject="main")
    async with database.session() as session:
        exported = (
            await session.scalars(
                select(AuditEvent.kind).where(audit_filter("main", clock.now() - timedelta(1)))
            )
        ).all()
    assert exported == ["user.created"]
    await erase_person(
        database, KEYS, at=clock.now(), username="main", pseudonym=PSEUDONYM, actor="admin:bob", request_ref="GDPR-9"
    )  # fmt: skip
    subjects = [r.subject for r in (await _records(database))[:3]]
    assert subjects == ["main", "main", TOMBSTONE]
    await _verified(database)


async def test_other_peoples_readable_fields_stay_covered_by_the_mac(database: Database) -> None:
    clock = FakeClock(T0)
    await _scenario(database, clock)
    await _erase(database, clock)
    await _sql(database, "UPDATE audit_events SET subject = 'erin' WHERE seq = 4")  # was dave
    report = await verify_database(database, keyring=KEYRING)
    assert report.problem is not None
    assert report.problem.seq == 4
    assert "does not match its hash" in report.problem.what


async def test_without_the_keyring_erasures_are_still_checked_for_backing(database: Database) -> None:
    clock = FakeClock(T0)
    await _scenario(database, clock)
    await _erase(database, clock)
    report = await _verified(database, keyring=None)
    assert (report.unchecked, report.erased, report.erasures) == (6, 4, 1)
    await _hand_erase_carol(database)  # the attack of the tests below, seen without the keyring
    report = await verify_database(database)
    assert report.problem is not None
    assert report.problem.seq == 6


async def test_a_record_naming_two_people_is_erased_by_two_erasures(database: Database) -> None:
    clock = FakeClock(T0)
    await _scenario(database, clock)
    await _erase(database, clock)  # seq 6, by admin:bob
    second = await _erase(database, clock, username="bob", pseudonym="b0b")
    # Record 2 (bob as an admin acting on alice) loses bob's ip now and keeps who acted; record 6
    # (bob's erasure of alice) loses its actor and ip but keeps the details that back the first erasure.
    assert second.erased == (2, 6)
    assert second.fields == 1 + 2
    report = await _verified(database)
    assert (report.erased, report.erasures) == (5, 2)
    record2 = await _by_seq(database, 2)
    assert {f: e.by for f, e in parse_erased(record2.erased).items()} == {
        "subject": 6,
        "details": 6,
        "ip": 7,
    }
    assert (record2.actor, record2.subject) == ("admin:bob", TOMBSTONE)
    record6 = await _by_seq(database, 6)
    assert (record6.actor, json.loads(record6.details)["records"]) == ("[erased:b0b]", 4)
    # Erasing alice again finds nothing left to erase, and says so on the chain.
    again = await _erase(database, clock)
    assert (again.erased, json.loads(again.record.details)["records"]) == ((), 0)
    await _verified(database)


async def test_erasure_serializes_with_concurrent_appends(database: Database) -> None:
    clock = FakeClock(T0)
    audit = await _scenario(database, clock)

    async def append(i: int) -> None:
        await audit.record("signin.password", actor="user:alice", subject="alice", details={"i": i})

    results = await asyncio.gather(
        *(append(i) for i in range(4)), _erase(database, clock), *(append(i) for i in range(4))
    )
    erasure = next(r for r in results if isinstance(r, ErasureResult))
    report = await _verified(database)
    assert report.records == 5 + 8 + 1
    # Exactly the records appended before the erasure record are erased; later ones are readable.
    for record in await _records(database):
        if record.kind == "signin.password" and record.seq < erasure.record.seq and record.subject != "carol":
            assert record.subject == TOMBSTONE
        elif record.kind == "signin.password" and record.seq > erasure.record.seq:
            assert record.subject == "alice"


async def test_bad_input_is_refused_before_anything_is_written(database: Database) -> None:
    clock = FakeClock(T0)
    await _scenario(database, clock)
    with pytest.raises(ValueError, match="lowercase hex"):
        await _erase(database, clock, pseudonym="Alice")
    with pytest.raises(ValueError, match="lowercase hex"):
        await _erase(database, clock, pseudonym="0" * 33)
    with pytest.raises(ValueError, match="needs a username"):
        await _erase(database, clock, username="")
    assert len(await _records(database)) == 5


# --- tampering after an erasure -------------------------------------------------------------------------

Tamper = Callable[[Database], Awaitable[None]]


async def _tombstone_to_value(db: Database) -> None:
    await _sql(db, "UPDATE audit_events SET subject = 'alice' WHERE seq = 2")


async def _salt_back_with_a_guess(db: Database) -> None:
    # The erased salt is gone; a forger who guesses "alice" can only pick a new salt, whose
    # commitment is not the one the MAC covers.
    record = await _by_seq(db, 2)
    salts = {**json.loads(record.salts), "subject": "00" * 16}
    erased = {f: e for f, e in parse_erased(record.erased).items() if f != "subject"}
    await _sql(
        db,
        "UPDATE audit_events SET subject = 'alice', salts = :s, erased = :e WHERE seq = 2",
        s=json.dumps(salts),
        e=dump_erased(erased),
    )


async def _salt_back_beside_the_commitment(db: Database) -> None:
    # A salt next to a kept commitment would let anyone test guesses against it.
    record = await _by_seq(db, 2)
    salts = {**json.loads(record.salts), "subject": "00" * 16}
    await _sql(db, "UPDATE audit_events SET salts = :s WHERE seq = 2", s=json.dumps(salts))


async def _undo_from_a_backup(db: Database, original: ChainRecord) -> None:
    # Values and salts restored from a backup taken before the erasure: the record verifies again
    # on its own, but the erasure record no longer finds it.
    await _sql(
        db,
        "UPDATE audit_events SET actor = :a, subject = :s, ip = :i, details = :d, salts = :salts, "
        "erased = '{}' WHERE seq = :seq",
        a=original.actor,
        s=original.subject,
        i=original.ip,
        d=original.details,
        salts=original.salts,
        seq=original.seq,
    )


async def _hand_erase(
    db: Database, seq: int, by: int, fields: tuple[str, ...] = ("actor", "ip"), tombstone: str = TOMBSTONE
) -> None:
    """Erase fields by hand as an attacker with database access would: the salt gives the commitment.

    Fields the record already has erased stay as they are, so a record a genuine erasure covered keeps
    that erasure's entries beside the forged ones.
    """
    record = await _by_seq(db, seq)
    salts = parse_salts(record.salts)
    values = record.personal()
    erased = json.loads(record.erased)
    erased.update({f: {"c": commit(f, salts.pop(f), values[f]), "by": by} for f in fields})
    sets = ", ".join(f"{f} = :tomb" for f in fields)
    await _sql(
        db,
        f"UPDATE audit_events SET {sets}, salts = :s, erased = :e WHERE seq = :seq",
        tomb=tombstone,
        s=json.dumps({f: v.hex() for f, v in salts.items()}),
        e=json.dumps(erased),
        seq=seq,
    )


async def _hand_erase_carol(db: Database) -> None:
    await _hand_erase(db, 3, by=6)  # naming alice's genuine erasure record


async def _hand_erase_naming_no_record(db: Database) -> None:
    await _hand_erase(db, 3, by=99)


async def _hand_erase_naming_itself(db: Database) -> None:
    await _hand_erase(db, 3, by=3)


async def _hand_erase_naming_an_ordinary_record(db: Database) -> None:
    await _hand_erase(db, 3, by=4)


async def _erasure_fields_commitment_dropped(db: Database) -> None:
    # Passing a new erasure record off as one written before it committed to its fields.
    record = await _by_seq(db, 6)
    details = {k: v for k, v in json.loads(record.details).items() if k != "fields_sha256"}
    await _sql(db, "UPDATE audit_events SET details = :d WHERE seq = 6", d=json.dumps(details))


async def _erasure_count_changed(db: Database) -> None:
    record = await _by_seq(db, 6)
    details = {**json.loads(record.details), "records": 5}
    await _sql(db, "UPDATE audit_events SET details = :d WHERE seq = 6", d=json.dumps(details))


async def _pseudonym_changed(db: Database) -> None:
    await _sql(db, "UPDATE audit_events SET subject = '[erased:dead]' WHERE seq = 2")


@pytest.mark.parametrize(
    ("tamper", "seq", "complaint"),
    [
        (_tombstone_to_value, 2, "field 'subject' is marked erased but holds a value"),
        (_salt_back_with_a_guess, 2, "does not match its hash"),
        (_salt_back_beside_the_commitment, 2, "marked erased but still has its salt"),
        (_hand_erase_carol, 6, "says it erased 4 record(s), but the records marked erased by it are 5"),
        (_hand_erase_naming_no_record, 3, "erased by seq 99, after the end of the chain"),
        (_hand_erase_naming_itself, 3, "erased by seq 3, which is not after it"),
        (_hand_erase_naming_an_ordinary_record, 3, "which is a 'admin.user.disable' record, not an erasure"),
        (_erasure_fields_commitment_dropped, 6, "does not match its hash"),
        (_erasure_count_changed, 6, "does not match its hash"),
        (_pseudonym_changed, 2, "do not carry that erasure's pseudonym"),
    ],
    ids=[
        "tombstone-to-value",
        "salt-back-with-a-guess",
        "salt-back-beside-commitment",
        "hand-erased-naming-the-erasure",
        "hand-erased-naming-nothing",
        "hand-erased-naming-itself",
        "hand-erased-naming-another-kind",
        "erasure-fields-commitment-dropped",
        "erasure-count-changed",
        "pseudonym-changed",
    ],
)
async def test_tampering_after_an_erasure_is_found(
    database: Database, tamper: Tamper, seq: int, complaint: str
) -> None:
    clock = FakeClock(T0)
    await _scenario(database, clock)
    await _erase(database, clock)
    await tamper(database)
    report = await verify_database(database, keyring=KEYRING)
    assert report.problem is not None
    assert report.problem.seq == seq, report.problem
    assert complaint in report.problem.what, report.problem
    assert "What to do:" in str(report.problem)


# The attack from the audit: seq 2 is admin bob acting on alice; alice's erasure (seq 6) covered it and
# erased her subject and the details. Bob's name and address were never hers, but tombstoned by hand
# under seq 6 (its pseudonym, the commitment moved into ``erased``) they hide who acted, with the same
# records, count and pseudonym and the record's MAC intact. Seq 4 (alice acting on dave) likewise hides
# whom she acted on.
@pytest.mark.parametrize(
    ("seq", "fields"),
    [(2, ("actor",)), (2, ("ip",)), (2, ("actor", "ip")), (4, ("subject",))],
    ids=["actor", "ip", "actor-and-ip", "subject"],
)
async def test_a_further_field_erased_by_hand_under_a_genuine_erasure_is_found(
    database: Database, seq: int, fields: tuple[str, ...]
) -> None:
    clock = FakeClock(T0)
    await _scenario(database, clock)
    await _erase(database, clock)
    before = await _by_seq(database, seq)
    await _hand_erase(database, seq, by=6, fields=fields)
    after = await _by_seq(database, seq)
    assert after.record_hash == before.record_hash  # a signed checkpoint cannot see it either
    assert {f: e.by for f, e in parse_erased(after.erased).items()} == {
        **{f: e.by for f, e in parse_erased(before.erased).items()},
        **dict.fromkeys(fields, 6),
    }
    for keyring in (KEYRING, None):  # the backing is checked with or without the keyring
        report = await verify_database(database, keyring=keyring)
        assert report.problem is not None
        assert (report.problem.seq, report.problem.record_id) == (6, 6), report.problem
        assert (
            "the fields marked erased by this erasure record in seqs 1, 2, 4, 5 are not the ones it says "
            "it erased"
        ) in report.problem.what
        assert "treat the trail as tampered" in report.problem.action


async def test_a_further_field_erased_by_hand_fails_a_bundle(database: Database, tmp_path: Path) -> None:
    clock = FakeClock(T0)
    await _scenario(database, clock)
    await _erase(database, clock)
    await _hand_erase(database, 2, by=6, fields=("actor",))
    verdict = verify_bundle(await _bundle(database, tmp_path, "b.zip", 1, 6), keyring=KEYRING)
    assert verdict.problem is not None
    assert "are not the ones it says it erased" in verdict.problem
    # A range that misses a record the erasure covered cannot hold its fields against it: unchecked.
    verdict = verify_bundle(await _bundle(database, tmp_path, "middle.zip", 2, 6), keyring=KEYRING)
    assert verdict.ok, verdict.problem
    assert verdict.erasures_unchecked == 1


async def test_an_erasure_partly_undone_from_a_backup_is_found(database: Database) -> None:
    # Subject and salt of seq 2 restored from a backup, its details left erased: the same records still
    # name the erasure, only not with the fields it erased.
    clock = FakeClock(T0)
    await _scenario(database, clock)
    backup = await _by_seq(database, 2)
    await _erase(database, clock)
    record = await _by_seq(database, 2)
    salts = {**json.loads(record.salts), "subject": json.loads(backup.salts)["subject"]}
    erased = {f: e for f, e in parse_erased(record.erased).items() if f != "subject"}
    await _sql(
        database,
        "UPDATE audit_events SET subject = :v, salts = :s, erased = :e WHERE seq = 2",
        v=backup.subject,
        s=json.dumps(salts),
        e=dump_erased(erased),
    )
    report = await verify_database(database, keyring=KEYRING)
    assert report.problem is not None
    assert report.problem.seq == 6
    assert "are not the ones it says it erased" in report.problem.what


def _as_the_previous_release(monkeypatch: pytest.MonkeyPatch) -> None:
    """Erasures write the claim releases before ``fields_sha256`` wrote: count and seqs only."""

    def claim(request: str, pseudonym: str, records: int, seqs_sha256: str, _fields: str) -> ErasureClaim:
        return ErasureClaim(request, pseudonym, records, seqs_sha256)

    monkeypatch.setattr(erase_module, "ErasureClaim", claim)


async def test_an_erasure_record_from_before_the_fields_commitment_still_verifies(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock(T0)
    audit = await _scenario(database, clock)
    carol = await _by_seq(database, 3)
    with monkeypatch.context() as patched:
        _as_the_previous_release(patched)
        old = await _erase(database, clock)
    assert set(json.loads(old.record.details)) == {"request", "pseudonym", "records", "seqs_sha256"}
    assert parse_erasure_details(old.record.details).fields_sha256 is None
    report = await _verified(database)
    assert (report.erased, report.erasures) == (4, 1)

    # It keeps the older check: a record it did not erase, naming it, is still found ...
    await _hand_erase_carol(database)
    report = await verify_database(database, keyring=KEYRING)
    assert report.problem is not None
    assert "says it erased 4 record(s), but the records marked erased by it are 5" in report.problem.what
    # ... but which fields it erased was never committed to, so a further field of a record it covered
    # cannot be held against it: the documented limit of erasure records from before the change.
    await _undo_from_a_backup(database, carol)
    await _hand_erase(database, 2, by=6, fields=("actor",))
    await _verified(database)

    # A later erasure on the same chain writes and is held to the new claim.
    await audit.record("admin.user.roles", actor="admin:erin", subject="carol", ip="203.0.113.10")  # seq 7
    await _erase(database, clock, username="carol", pseudonym="ca401")  # seq 8: erases seqs 3 and 7
    await _verified(database)
    await _hand_erase(database, 7, by=8, fields=("actor",), tombstone="[erased:ca401]")
    report = await verify_database(database, keyring=KEYRING)
    assert report.problem is not None
    assert report.problem.seq == 8
    assert "in seqs 3, 7 are not the ones it says it erased" in report.problem.what


def test_the_fields_commitment_is_read_strictly() -> None:
    claim = ErasureClaim("R-1", "a1", 1, "0" * 64, fields_digest([(3, ("subject", "details"))]))
    assert parse_erasure_details(claim.details()) == claim
    assert fields_digest([(3, ("details", "subject"))]) == claim.fields_sha256  # order does not matter
    assert fields_digest([]) == hashlib.sha256(b"").hexdigest()
    bad = {**json.loads(claim.details()), "fields_sha256": 7}
    with pytest.raises(ErasureFormatError, match="fields_sha256 must be a string"):
        parse_erasure_details(json.dumps(bad))
    with pytest.raises(ErasureFormatError, match="are not request, pseudonym"):
        parse_erasure_details(json.dumps({**bad, "extra": 1}))


async def test_an_erasure_undone_from_a_backup_is_found(database: Database) -> None:
    clock = FakeClock(T0)
    await _scenario(database, clock)
    backup = await _by_seq(database, 4)
    await _erase(database, clock)
    await _undo_from_a_backup(database, backup)
    report = await verify_database(database, keyring=KEYRING)
    assert report.problem is not None
    assert report.problem.seq == 6
    assert "the records marked erased by it are 3 (seqs 1, 2, 5)" in report.problem.what
    assert "run it again" in report.problem.action


async def test_a_hand_erasure_without_any_erasure_record_is_found(database: Database) -> None:
    # No erasure ever ran: the attacker can only name a record that is not one.
    clock = FakeClock(T0)
    await _scenario(database, clock)
    await _hand_erase(database, 1, by=2, fields=("actor", "subject", "ip", "details"))
    report = await verify_database(database, keyring=KEYRING)
    assert report.problem is not None
    assert (report.problem.seq, report.problem.record_id) == (1, 1)
    assert "marked erased by seq 2, which is a 'admin.user.roles' record" in report.problem.what


async def test_salts_on_a_record_without_commitments_are_found(database: Database) -> None:
    clock = FakeClock(T0)
    await AuditLog(database, clock=clock).record("user.created", actor="cli:root", subject="zoe")  # legacy
    await _sql(
        database, """UPDATE audit_events SET erased = '{"subject": {"c": "x", "by": 9}}' WHERE seq = 1"""
    )
    report = await verify_database(database, keyring=KEYRING)
    assert report.problem is not None
    assert "version 1 record, which has no erasable fields, but its salts or erased column is set" in (
        report.problem.what
    )


# --- downgrades -------------------------------------------------------------------------------------------


async def _insert_next(db: Database, record: ChainRecord) -> None:
    await _sql(
        db,
        "INSERT INTO audit_events (id, at, kind, actor, subject, ip, outcome, details, seq, prev_hash, "
        "record_hash, chain_version, key_id) VALUES (:id, :at, :kind, :actor, :subject, :ip, :outcome, "
        ":details, :seq, :prev, :h, :v, :kid)",
        id=record.id,
        at=record.at if db.backend == "postgresql" else record.at.replace(tzinfo=None).isoformat(" "),
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
    )


def _next_v2(head: ChainRecord) -> ChainRecord:
    return ChainRecord(
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
        KEYED_VERSION,
        "k1",
    )


async def test_a_genuine_version_2_record_after_version_3_verifies(database: Database) -> None:
    clock = FakeClock(T0)
    await _scenario(database, clock)
    head = (await _records(database))[-1]
    # A replica still on the previous release during a rolling deploy: it holds the chain key and
    # writes version 2. Accepted (its MAC is genuine); only its fields cannot be erased later.
    genuine = _next_v2(head)
    await _insert_next(database, dataclasses.replace(genuine, record_hash=genuine.digest(KEYS)))
    for keyring in (KEYRING, None):
        report = await verify_database(database, keyring=keyring)
        assert report.ok, report.problem


async def test_a_forged_version_2_record_after_version_3_is_named_a_forgery(database: Database) -> None:
    clock = FakeClock(T0)
    await _scenario(database, clock)
    forged = _next_v2((await _records(database))[-1])
    # The best a forger without the key can do: SHA-256 over the public canonical form.
    await _insert_next(
        database, dataclasses.replace(forged, record_hash=hashlib.sha256(forged.canonical()).hexdigest())
    )
    report = await verify_database(database, keyring=KEYRING)
    assert report.problem is not None
    assert report.problem.seq == 6
    assert "written without the chain key (forged)" in report.problem.what


# --- legacy records -------------------------------------------------------------------------------------


async def test_legacy_records_naming_the_person_are_kept_and_counted(database: Database) -> None:
    clock = FakeClock(T0)
    legacy = AuditLog(database, clock=clock)  # as releases before keying wrote them
    await legacy.record("signin.password", actor="user:alice", subject="alice", ip=ALICE_IP)
    await legacy.record("user.created", actor="cli:root", subject="alice")
    await _scenario(database, clock)  # seqs 3..7, version 3
    before = await _records(database)
    result = await _erase(database, clock)
    assert result.kept_legacy == 2
    assert result.erased == (3, 4, 6, 7)
    after = await _records(database)
    assert after[:2] == before[:2]  # left exactly as they were: erasing them would break the chain
    report = await _verified(database)
    assert (report.legacy, report.erased, report.erasures) == (2, 4, 1)


# --- evidence bundles -----------------------------------------------------------------------------------


async def _bundle(db: Database, tmp_path: Path, name: str, since_seq: int, until_seq: int) -> Path:
    """A bundle of the records seq since_seq..until_seq (the scenario writes one a minute from T0)."""
    start = datetime.fromtimestamp(T0, UTC)
    out = tmp_path / name
    await export_bundle(
        db,
        since=start + timedelta(minutes=since_seq - 1),
        until=start + timedelta(minutes=until_seq),
        checkpoints=[],
        out=out,
        now=start + timedelta(days=1),
        keyring=KEYRING,
    )
    return out


async def test_a_bundle_with_erased_records_verifies_offline(database: Database, tmp_path: Path) -> None:
    clock = FakeClock(T0)
    await _scenario(database, clock)
    await _erase(database, clock)
    whole = await _bundle(database, tmp_path, "whole.zip", 1, 6)
    for keyring in (KEYRING, None):
        verdict = verify_bundle(whole, keyring=keyring)
        assert verdict.ok, verdict.problem
        assert (verdict.records, verdict.erased, verdict.erasures_unchecked) == (6, 4, 0)
    with zipfile.ZipFile(whole) as archive:
        events = archive.read("events.jsonl").decode()
    others = [line for line in events.splitlines() if json.loads(line)["seq"] != 4]  # 4: her admin act
    assert all(trace not in line for trace in ALICE_TRACES for line in others)
    assert all({"salts", "erased"} <= set(json.loads(line)) for line in events.splitlines())

    # A range without the erasure record: its erased records are in, their backing is not.
    before = await _bundle(database, tmp_path, "before.zip", 1, 5)
    verdict = verify_bundle(before, keyring=KEYRING)
    assert verdict.ok, verdict.problem
    assert (verdict.records, verdict.erased, verdict.erasures_unchecked) == (5, 4, 4)
    # A range from the middle: the erasure record is in, one of the records it erased is not.
    middle = await _bundle(database, tmp_path, "middle.zip", 2, 6)
    verdict = verify_bundle(middle, keyring=KEYRING)
    assert verdict.ok, verdict.problem
    assert (verdict.records, verdict.erased, verdict.erasures_unchecked) == (5, 3, 1)


async def test_a_bundle_with_a_hand_erased_record_fails(database: Database, tmp_path: Path) -> None:
    clock = FakeClock(T0)
    await _scenario(database, clock)
    await _erase(database, clock)
    await _hand_erase_carol(database)
    bundle = await _bundle(database, tmp_path, "b.zip", 1, 6)
    verdict = verify_bundle(bundle)
    assert verdict.problem is not None
    assert "says it erased 4 record(s), but the records marked erased by it are 5" in verdict.problem


# --- checkpoints ----------------------------------------------------------------------------------------


async def test_checkpoints_signed_before_an_erasure_still_hold(database: Database, tmp_path: Path) -> None:
    clock = FakeClock(T0)
    await _scenario(database, clock)
    checkpointer = Checkpointer(database, KEYRING, directory=tmp_path, clock=clock)
    first = await checkpointer.checkpoint()
    await _erase(database, clock)
    second = await checkpointer.checkpoint()  # walks only the erasure record: its records lie before
    assert (first["head_seq"], second["head_seq"]) == (5, 6)
    verdict = await verify_trail(database, [first, second], keyring=KEYRING)
    assert verdict.ok, verdict.problem
    assert verdict.report.erased == 4


def test_tombstones_are_exactly_the_documented_shape() -> None:
    assert erased_value("0") == "[erased:0]"
    assert erased_value("f" * 32) == "[erased:" + "f" * 32 + "]"
    for bad in ("", "g", "A", "0" * 33, "alice", "0 1"):
        with pytest.raises(ValueError, match="lowercase hex"):
            erased_value(bad)
