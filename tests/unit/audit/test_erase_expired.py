"""Erasing audit records for their age (``gateway.audit.erase.erase_expired``), on SQLite and PostgreSQL.

Every personal field of every version 3 record before the cutoff becomes ``[erased:0]``, backed by one
erasure record, and the chain verifies; records after the cutoff, records naming a held person and the
details of an earlier erasure record (which back that erasure) stay; a run with nothing due writes
nothing. ``expiring`` predicts exactly what the erasure then does.
"""

from __future__ import annotations

import json

from gateway.audit.chain import iter_records, verify_database
from gateway.audit.chain_key import ChainKeys
from gateway.audit.erasable import ERASURE_KIND, parse_erasure_details, parse_salts
from gateway.audit.erase import EXPIRED_PSEUDONYM, erase_expired, erase_person, expiring
from gateway.audit.trail import AuditLog
from gateway.clock import FakeClock
from gateway.crypto.keyring import Keyring
from gateway.store.db import Database

KEYRING = Keyring({"k1": bytes(range(32))}, "k1")
KEYS = ChainKeys(KEYRING)
DAY = 86400.0
GONE = f"[erased:{EXPIRED_PSEUDONYM}]"


async def test_old_records_lose_every_personal_field_and_the_chain_verifies(database: Database) -> None:
    clock = FakeClock()
    audit = AuditLog(database, clock=clock, keyring=KEYRING)
    await audit.record("signin.password", actor="user:alice", subject="alice", ip="198.51.100.1")
    await audit.record("admin.user.roles", actor="admin:bob", subject="carol", details={"roles": ["x"]})
    await audit.record("signin.password", actor="user:held", subject="held", ip="198.51.100.2")
    # An earlier erasure (seq 4 erases nothing here but is an erasure record with details).
    await erase_person(
        database,
        KEYS,
        at=clock.now(),
        username="nobody",
        pseudonym="abc",
        actor="admin:bob",
        request_ref="PR-1",
    )
    clock.advance(10 * DAY)
    await audit.record("signin.password", actor="user:dave", subject="dave", ip="198.51.100.3")
    cutoff = clock.now()
    clock.advance(DAY)

    predicted = await expiring(database, before=cutoff, spare=frozenset({"held"}))
    result, done = await erase_expired(
        database,
        KEYS,
        at=clock.now(),
        before=cutoff,
        actor="system:retention",
        request_ref="retention:test",
        spare=frozenset({"held"}),
    )
    assert result is not None
    assert result.erased == (1, 2, 4)  # the erasure record loses its actor, not its details
    assert [seq for seq, _ in predicted.due] == list(result.erased)
    assert done.spared == predicted.spared == {"held": 1}
    report = await verify_database(database, keyring=KEYRING)
    assert report.ok, report.problem

    records = {r.seq: r for r in [r async for r in iter_records(database)]}
    for seq in (1, 2):
        assert (records[seq].actor, records[seq].subject, records[seq].ip, records[seq].details) == (
            GONE,
        ) * 4
        assert parse_salts(records[seq].salts) == {}
    assert records[3].subject == "held"
    assert records[4].actor == GONE
    assert parse_erasure_details(records[4].details).request == "PR-1"
    assert records[5].subject == "dave"
    claim = parse_erasure_details(records[6].details)
    assert records[6].kind == ERASURE_KIND
    assert (claim.request, claim.pseudonym, claim.records) == ("retention:test", EXPIRED_PSEUDONYM, 3)
    assert json.loads(records[6].details)["records"] == 3

    # Again with the same cutoff: nothing is due, and no erasure record is written.
    again, _ = await erase_expired(
        database,
        KEYS,
        at=clock.now(),
        before=cutoff,
        actor="system:retention",
        request_ref="retention:2",
        spare=frozenset({"held"}),
    )
    assert again is None
    assert max([r.seq async for r in iter_records(database)]) == 6
