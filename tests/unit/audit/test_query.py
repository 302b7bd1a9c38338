"""Finding audit records (gateway.audit.query): every filter, pages by chain position, both backends."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from gateway.audit.query import AuditFilter, find_records, parse_time
from gateway.audit.trail import AuditLog
from gateway.clock import FakeClock
from gateway.crypto.keyring import Keyring
from gateway.store.db import Database

START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
async def trail(database: Database) -> Database:
    clock = FakeClock(START.timestamp())
    audit = AuditLog(database, clock=clock, keyring=Keyring({"k1": b"\x01" * 32}, "k1"))
    events = [
        ("signin.password", "user:alice", "alice", "success"),
        ("signin.failure", "user:bob", "bob", "failure"),
        ("admin.user.disable", "user:boss", "bob", "success"),
        ("admin.keys.rotate", "user:boss", "keys", "failure"),
        ("signin.password", "user:bob", "bob", "success"),
    ]
    for kind, actor, subject, outcome in events:
        await audit.record(kind, actor=actor, subject=subject, outcome=outcome)
        clock.advance(3600)
    return database


async def kinds(db: Database, where: AuditFilter, limit: int = 50) -> list[str]:
    return [r.kind for r in await find_records(db, where, limit=limit)]


async def test_every_filter_narrows_and_the_newest_comes_first(trail: Database) -> None:
    everything = await find_records(trail, AuditFilter(), limit=50)
    assert [r.seq for r in everything] == [5, 4, 3, 2, 1]
    assert await kinds(trail, AuditFilter(actor="user:boss")) == ["admin.keys.rotate", "admin.user.disable"]
    assert await kinds(trail, AuditFilter(subject="bob")) == [
        "signin.password", "admin.user.disable", "signin.failure",
    ]  # fmt: skip
    assert await kinds(trail, AuditFilter(kind="signin.password")) == ["signin.password", "signin.password"]
    assert await kinds(trail, AuditFilter(kind="admin.*")) == ["admin.keys.rotate", "admin.user.disable"]
    assert await kinds(trail, AuditFilter(outcome="failure")) == ["admin.keys.rotate", "signin.failure"]
    # since inclusive, until exclusive: the records of 13:00 and 14:00.
    window = AuditFilter(since=START + timedelta(hours=1), until=START + timedelta(hours=3))
    assert await kinds(trail, window) == ["admin.user.disable", "signin.failure"]
    assert await kinds(trail, AuditFilter(actor="user:boss", outcome="success")) == ["admin.user.disable"]


async def test_pages_are_cut_by_chain_position(trail: Database) -> None:
    first = await find_records(trail, AuditFilter(), limit=2)
    assert [r.seq for r in first] == [5, 4]
    second = await find_records(trail, AuditFilter(before_seq=first[-1].seq), limit=2)
    assert [r.seq for r in second] == [3, 2]
    with pytest.raises(ValueError, match="at least 1"):
        await find_records(trail, AuditFilter(), limit=0)


async def test_a_prefix_is_literal(trail: Database) -> None:
    # "%" and "_" in a prefix are not wildcards.
    assert await kinds(trail, AuditFilter(kind="signin%*")) == []
    assert await kinds(trail, AuditFilter(kind="signin_*")) == []


def test_times_are_utc_unless_they_say_otherwise() -> None:
    assert parse_time("2026-03-01") == datetime(2026, 3, 1, tzinfo=UTC)
    assert parse_time("2026-03-01T08:30") == datetime(2026, 3, 1, 8, 30, tzinfo=UTC)
    assert parse_time("2026-03-01T08:30:00+02:00") == datetime(2026, 3, 1, 6, 30, tzinfo=UTC)
    for edge in ("0001-01-01T00:00:00+23:59", "9999-12-31T23:59:59-23:59"):
        with pytest.raises(ValueError, match="is not an ISO 8601 time"):
            parse_time(edge)
    with pytest.raises(ValueError, match="ISO 8601"):
        parse_time("yesterday")
