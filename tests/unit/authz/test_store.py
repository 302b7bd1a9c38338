"""The policy store on SQLite and PostgreSQL (real servers), broadcasting through memory and Redis.

What matters for a multi-replica deployment is checked directly: concurrent writers on separate
connections pools get distinct versions and lose no update, concurrent bootstraps store exactly one
version 1, a rejected change leaves nothing behind, and a change reaches another replica's watcher
by broadcast (within a second) or, without one, by polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import delete, select

from gateway.audit.models import AuditEvent
from gateway.audit.trail import AuditLog
from gateway.authz.models import PolicyRuleRow, PolicyVersion
from gateway.authz.rules import PolicyError, PolicyRules, Rule, parse_policy
from gateway.authz.store import (
    CHANNEL,
    NOTHING_STORED,
    PolicyRejected,
    PolicyStore,
    RuleExists,
    RuleNotFound,
    UnknownVersion,
    VersionStamp,
)
from gateway.clock import FakeClock
from gateway.store.db import Database, StoreUnavailable
from gateway.store.fast import FastState, MemoryFastState
from tests.support.wait import wait_until_async

BASE = """\
p, admin, *, /*, *, allow
p, authenticated, app, /public/*, GET|HEAD, allow
p, user:alice, app, /reports/:id, GET, allow
g, group:ops, admin
"""
CHANGED = """\
p, admin, *, /*, *, allow
p, authenticated, app, /public/*, GET, allow
p, staff, app, /wiki/*, GET, allow
g, group:ops, admin
g, user:bob, staff
"""
# '*' inside a segment is a regex repeat to keyMatch2: validate() reports it as an error.
INVALID = """\
p, user:root, *, /files*, GET, allow
"""


def rules(text: str) -> PolicyRules:
    return parse_policy(text)


@pytest.fixture
async def open_db(migrated_url: str) -> AsyncIterator[Callable[[], Database]]:
    """Open more handles on the test database: each is its own pool, as another replica's would be."""
    opened: list[Database] = []

    def open_one() -> Database:
        db = Database.open(migrated_url, pool_size=2)
        opened.append(db)
        return db

    yield open_one
    for db in opened:
        await db.close()


@pytest.fixture
def store(database: Database, clock: FakeClock) -> PolicyStore:
    return PolicyStore(database, MemoryFastState(), AuditLog(database, clock=clock), clock)


def replica(db: Database, fast: FastState, clock: FakeClock) -> PolicyStore:
    return PolicyStore(db, fast, AuditLog(db, clock=clock), clock)


async def policy_events(db: Database) -> list[AuditEvent]:
    async with db.session() as session:
        query = select(AuditEvent).where(AuditEvent.kind == "policy.changed").order_by(AuditEvent.id)
        return list((await session.scalars(query)).all())


async def rule_rows(db: Database) -> list[tuple[str, ...]]:
    async with db.session() as session:
        rows = (await session.scalars(select(PolicyRuleRow).order_by(PolicyRuleRow.id))).all()
        return [(r.ptype, r.v0, r.v1, r.v2, r.v3, r.v4, r.v5) for r in rows]


# -- versions, diff, history -----------------------------------------------------------------------------


async def test_an_empty_store_is_version_zero(store: PolicyStore) -> None:
    assert await store.version() == 0
    current = await store.current()
    assert (current.version, len(current.rules), current.csv, current.created_at) == (0, 0, "", None)
    assert await store.history() == []


async def test_replace_stores_versions_with_diff_and_history(
    store: PolicyStore, database: Database, clock: FakeClock
) -> None:
    first_at = clock.now()
    assert await store.replace(rules(BASE), actor="cli:root", reason="first") == 1
    clock.advance(60)
    assert await store.replace(rules(CHANGED), actor="user:alice", reason="wiki for staff") == 2

    current = await store.current()
    assert current.version == 2
    assert current.csv == rules(CHANGED).to_csv()
    assert list(current.rules) == list(rules(CHANGED))
    assert current.created_at == clock.now()
    assert await store.version() == 2

    # policy_rules mirrors the current version in casbin's rule-table shape.
    assert await rule_rows(database) == [
        ("p", "admin", "*", "/*", "*", "allow", ""),
        ("p", "authenticated", "app", "/public/*", "GET", "allow", ""),
        ("p", "staff", "app", "/wiki/*", "GET", "allow", ""),
        ("g", "group:ops", "admin", "", "", "", ""),
        ("g", "user:bob", "staff", "", "", "", ""),
    ]

    newest, first = await store.history()
    assert (newest.version, newest.actor, newest.reason, newest.lines) == (
        2,
        "user:alice",
        "wiki for staff",
        5,
    )
    assert (newest.added, newest.removed, newest.restored_from) == (3, 2, None)
    assert "-p, authenticated, app, /public/*, GET|HEAD, allow\n" in newest.diff
    assert "+p, staff, app, /wiki/*, GET, allow\n" in newest.diff
    assert newest.diff.startswith("--- version 1\n+++ version 2\n")
    assert (first.version, first.added, first.removed, first.diff) == (1, 4, 0, "")
    assert [e.version for e in await store.history(1)] == [2]

    old = await store.get(1)
    assert old.csv == rules(BASE).to_csv()
    assert old.created_at == first_at
    with pytest.raises(UnknownVersion):
        await store.get(3)
    with pytest.raises(UnknownVersion):
        await store.describe(7)
    assert (await store.describe(2)).added == 3


async def test_an_unchanged_policy_makes_no_version(store: PolicyStore, database: Database) -> None:
    await store.replace(rules(BASE), actor="cli:root", reason="first")
    assert await store.replace(rules(BASE), actor="cli:root", reason="again") == 1
    assert len(await store.history()) == 1
    assert len(await policy_events(database)) == 1


async def test_every_change_is_audited(store: PolicyStore, database: Database) -> None:
    await store.replace(rules(BASE), actor="cli:root", reason="first")
    await store.replace(rules(CHANGED), actor="user:alice", reason="wiki")
    events = await policy_events(database)
    assert [(e.actor, e.subject) for e in events] == [("cli:root", "policy"), ("user:alice", "policy")]
    details = json.loads(events[1].details)
    assert details["version"] == 2
    assert details["reason"] == "wiki"
    assert (details["added"], details["removed"]) == (3, 2)
    assert "+p, staff, app, /wiki/*, GET, allow" in details["diff"]


async def test_a_huge_diff_is_truncated_in_the_audit_record(store: PolicyStore, database: Database) -> None:
    many = "".join(f"p, user:u{i}, app, /area/{i}/*, GET, allow\n" for i in range(2000))
    await store.replace(rules(BASE), actor="cli:root", reason="first")
    await store.replace(rules(BASE + many), actor="cli:root", reason="many")
    details = json.loads((await policy_events(database))[-1].details)
    assert len(details["diff"].encode()) < 9 * 1024
    assert "more bytes in the version" in details["diff"]
    assert details["added"] == 2000
    # The version itself keeps the whole diff.
    assert "/area/1999/*" in (await store.describe(2)).diff


# -- add, remove, restore --------------------------------------------------------------------------------


async def test_add_and_remove(store: PolicyStore) -> None:
    await store.replace(rules(BASE), actor="cli:root", reason="first")
    wiki = Rule.allow("staff", "app", "/wiki/*", "GET")
    grant = Rule.link("user:bob", "staff")
    assert await store.add([wiki, grant], actor="cli:root", reason="wiki") == 2
    current = await store.current()
    assert wiki in current.rules.policies
    assert grant in current.rules.links

    assert await store.remove([wiki], actor="cli:root", reason="no wiki") == 3
    assert wiki not in (await store.current()).rules
    entry = (await store.history(1))[0]
    assert (entry.added, entry.removed) == (0, 1)


async def test_removing_a_missing_rule_changes_nothing(store: PolicyStore, database: Database) -> None:
    await store.replace(rules(BASE), actor="cli:root", reason="first")
    present = Rule.allow("admin", "*", "/*", "*")
    missing = Rule.allow("nobody", "app", "/x", "GET")
    with pytest.raises(RuleNotFound, match="nobody"):
        await store.remove([present, missing], actor="cli:root", reason="oops")
    assert await store.version() == 1
    assert present in (await store.current()).rules
    assert len(await policy_events(database)) == 1


async def test_adding_a_present_rule_changes_nothing(store: PolicyStore) -> None:
    await store.replace(rules(BASE), actor="cli:root", reason="first")
    with pytest.raises(RuleExists, match="group:ops"):
        await store.add([Rule.link("group:ops", "admin")], actor="cli:root", reason="dup")
    assert await store.version() == 1


async def test_restore_makes_a_new_version_with_the_old_policy(
    store: PolicyStore, database: Database
) -> None:
    await store.replace(rules(BASE), actor="cli:root", reason="first")
    await store.replace(rules(CHANGED), actor="cli:root", reason="second")
    assert await store.restore(1, actor="user:alice", reason="roll back") == 3
    current = await store.current()
    assert current.csv == (await store.get(1)).csv
    entry = (await store.history(1))[0]
    assert (entry.version, entry.restored_from, entry.actor, entry.reason) == (
        3,
        1,
        "user:alice",
        "roll back",
    )
    assert json.loads((await policy_events(database))[-1].details)["restored_from"] == 1
    # Restoring what is already current is not a change.
    assert await store.restore(3, actor="cli:root", reason="again") == 3
    with pytest.raises(UnknownVersion):
        await store.restore(9, actor="cli:root", reason="no such")


# -- validation ------------------------------------------------------------------------------------------


async def test_an_invalid_change_is_rejected_and_changes_nothing(
    store: PolicyStore, database: Database
) -> None:
    await store.replace(rules(BASE), actor="cli:root", reason="first")
    with pytest.raises(PolicyRejected) as caught:
        await store.replace(rules(INVALID), actor="cli:root", reason="bad")
    assert caught.value.findings
    assert any(f.severity == "error" for f in caught.value.findings)
    assert await store.version() == 1
    assert (await store.current()).csv == rules(BASE).to_csv()
    assert len(await rule_rows(database)) == 4
    assert len(await policy_events(database)) == 1
    # An operator who knows better can store it anyway.
    assert await store.replace(rules(INVALID), actor="cli:root", reason="forced", force=True) == 2


# -- concurrency -----------------------------------------------------------------------------------------


async def test_concurrent_replaces_from_two_replicas_get_distinct_versions(
    store: PolicyStore,
    database: Database,
    open_db: Callable[[], Database],
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fast = MemoryFastState()
    one, two = replica(open_db(), fast, clock), replica(open_db(), fast, clock)
    texts = [BASE + f"p, user:u{i}, app, /u/{i}, GET, allow\n" for i in range(10)]
    with caplog.at_level(logging.INFO, logger="gateway.policy"):
        versions = await asyncio.gather(
            *(
                (one if i % 2 else two).replace(rules(text), actor=f"cli:{i}", reason=f"r{i}")
                for i, text in enumerate(texts)
            )
        )
    assert sorted(versions) == list(range(1, 11))
    if database.backend == "postgresql":
        # Writers that read the same max collided on the primary key and retried (SQLite serialises
        # writers at BEGIN IMMEDIATE instead).
        assert "version clash" in caplog.text
    history = await store.history(20)
    assert [e.version for e in history] == list(range(10, 0, -1))
    # The current policy is the one of the writer that got the highest version.
    winner = versions.index(10)
    assert (await store.current()).csv == rules(texts[winner]).to_csv()


async def test_concurrent_adds_lose_no_update(
    store: PolicyStore, open_db: Callable[[], Database], clock: FakeClock
) -> None:
    await store.replace(rules(BASE), actor="cli:root", reason="first")
    fast = MemoryFastState()
    one, two = replica(open_db(), fast, clock), replica(open_db(), fast, clock)
    added = [Rule.allow(f"user:u{i}", "app", f"/u/{i}", "GET") for i in range(8)]
    versions = await asyncio.gather(
        *(
            (one if i % 2 else two).add([rule], actor="cli:root", reason=f"add {i}")
            for i, rule in enumerate(added)
        )
    )
    assert sorted(versions) == list(range(2, 10))
    current = (await store.current()).rules
    assert all(rule in current for rule in added)


async def test_concurrent_bootstraps_store_exactly_one_version_1(
    open_db: Callable[[], Database], clock: FakeClock, tmp_path: Path, database: Database
) -> None:
    path = tmp_path / "policy.csv"
    path.write_text(BASE)
    fast = MemoryFastState()
    stores = [replica(open_db(), fast, clock) for _ in range(5)]
    results = await asyncio.gather(*(s.bootstrap(path) for s in stores))
    assert sorted(results, key=lambda r: r or 0) == [None, None, None, None, 1]
    history = await stores[0].history()
    assert [(e.version, e.actor) for e in history] == [(1, "system:bootstrap")]
    assert len(await policy_events(database)) == 1
    # Once a policy is stored the file is not even read.
    assert await stores[0].bootstrap(tmp_path / "missing.csv") is None


async def test_bootstrap_reports_a_malformed_file_with_its_line(store: PolicyStore, tmp_path: Path) -> None:
    path = tmp_path / "policy.csv"
    path.write_text("p, admin, *, /*, *, allow\n\np, admin, *, /x, GET, alow\n")
    with pytest.raises(PolicyError, match=r"policy\.csv:3: effect must be"):
        await store.bootstrap(path)
    assert await store.version() == 0


# -- broadcast and watch ---------------------------------------------------------------------------------


@dataclass
class Seen:
    versions: list[int] = field(default_factory=list)
    event: asyncio.Event = field(default_factory=asyncio.Event)

    async def __call__(self, version: int) -> None:
        self.versions.append(version)
        self.event.set()

    async def next(self, timeout: float) -> int:
        async with asyncio.timeout(timeout):
            await self.event.wait()
        self.event.clear()
        return self.versions[-1]


class CountingStore(PolicyStore):
    """Counts version checks (to know when a watcher has subscribed and checked)."""

    checks = 0
    fail = 0

    async def stamp(self) -> VersionStamp:
        self.checks += 1
        if self.fail:
            self.fail -= 1
            raise StoreUnavailable("database down (test)")
        return await super().stamp()


@contextlib.asynccontextmanager
async def watching(
    store: PolicyStore,
    on_version: Callable[[int], Awaitable[None]],
    *,
    poll_interval: float,
    since: VersionStamp = NOTHING_STORED,
) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(store.watch(on_version, poll_interval=poll_interval, since=since))
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_change_reaches_another_replica_by_broadcast_within_a_second(
    open_db: Callable[[], Database],
    fast_state: FastState,
    fast_state_peer: FastState,
    clock: FakeClock,
) -> None:
    writer = replica(open_db(), fast_state, clock)
    reader = CountingStore(open_db(), fast_state_peer, AuditLog(open_db(), clock=clock), clock)
    seen = Seen()
    # A poll interval far beyond the deadline: only the broadcast can deliver in time.
    async with watching(reader, seen, poll_interval=60):
        # The start-up check, then one more once the subscription is live.
        await wait_until_async(lambda: reader.checks >= 2, timeout=5.0, what="two version checks")
        version = await writer.replace(rules(BASE), actor="cli:root", reason="first")
        assert await seen.next(timeout=1.0) == version
        version = await writer.add([Rule.link("user:bob", "admin")], actor="cli:root", reason="bob")
        assert await seen.next(timeout=1.0) == version
    assert seen.versions == [1, 2]


async def test_the_broadcast_carries_the_version(
    database: Database, fast_state: FastState, clock: FakeClock
) -> None:
    store = replica(database, fast_state, clock)
    async with fast_state.subscribe(CHANNEL) as subscription:
        await store.replace(rules(BASE), actor="cli:root", reason="first")
        async with asyncio.timeout(2):
            assert await anext(subscription) == b"1"


async def test_without_a_broadcast_the_watcher_polls(
    open_db: Callable[[], Database], clock: FakeClock
) -> None:
    # Separate in-process states: nothing published by one reaches the other.
    writer = replica(open_db(), MemoryFastState(), clock)
    reader = replica(open_db(), MemoryFastState(), clock)
    seen = Seen()
    async with watching(reader, seen, poll_interval=0.1):
        await writer.replace(rules(BASE), actor="cli:root", reason="first")
        assert await seen.next(timeout=2.0) == 1


async def test_a_failed_broadcast_does_not_fail_the_change(
    store: PolicyStore, database: Database, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    closed = MemoryFastState()
    await closed.close()
    writer = replica(database, closed, clock)
    with caplog.at_level(logging.WARNING, logger="gateway.policy"):
        assert await writer.replace(rules(BASE), actor="cli:root", reason="first") == 1
    assert "broadcast failed" in caplog.text
    assert await store.version() == 1


async def test_the_watcher_survives_outages_and_failing_loads(
    open_db: Callable[[], Database], clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    down = MemoryFastState()
    await down.close()  # the broadcast is unavailable for the whole test
    writer = replica(open_db(), MemoryFastState(), clock)
    reader = CountingStore(open_db(), down, AuditLog(open_db(), clock=clock), clock)
    reader.fail = 3  # and the database for the first three checks
    loads: list[int] = []

    async def flaky_load(version: int) -> None:
        loads.append(version)
        if len(loads) == 1:
            raise StoreUnavailable("load failed (test)")

    await writer.replace(rules(BASE), actor="cli:root", reason="first")
    assert reader.last_confirmed == 0.0
    with caplog.at_level(logging.WARNING, logger="gateway.policy"):
        async with watching(reader, flaky_load, poll_interval=0.05) as task:
            await wait_until_async(lambda: len(loads) >= 2, timeout=5.0, what="the load retried")
            assert not task.done()
    # The failed load was retried with the same version; once it succeeded, no more calls.
    assert loads == [1, 1]
    assert reader.last_confirmed > 0
    assert "version check failed" in caplog.text
    assert "broadcast unavailable" in caplog.text


async def test_the_watcher_reports_only_newer_versions(database: Database, clock: FakeClock) -> None:
    store = CountingStore(database, MemoryFastState(), AuditLog(database, clock=clock), clock)
    await store.replace(rules(BASE), actor="cli:root", reason="first")
    seen = Seen()
    async with watching(store, seen, poll_interval=0.05, since=await store.stamp()):
        # A second check starts only after the first one's report (if any) is done.
        await wait_until_async(lambda: store.checks >= 2, timeout=5.0, what="two version checks")
        assert seen.versions == []
        await store.replace(rules(CHANGED), actor="cli:root", reason="second")
        assert await seen.next(timeout=2.0) == 2


async def test_the_same_number_stored_again_after_a_restore_is_reported(
    database: Database, clock: FakeClock
) -> None:
    """A suspicion of the last note, confirmed: a database restored to version 1 under a worker deciding
    on version 2 numbered the next change 2 again, and the worker, comparing numbers, kept deciding
    on its own version 2 (another policy) for good."""
    store = CountingStore(database, MemoryFastState(), AuditLog(database, clock=clock), clock)
    await store.replace(rules(BASE), actor="cli:root", reason="first")
    await store.replace(rules(CHANGED), actor="cli:root", reason="second")
    seen = Seen()
    async with watching(store, seen, poll_interval=0.05, since=await store.stamp()):
        await wait_until_async(lambda: store.checks >= 3, timeout=5.0, what="three version checks")
        assert seen.versions == []
        # The restore: version 2 is gone; the next change is numbered 2 again, a second later.
        async with database.session() as session:
            await session.execute(delete(PolicyVersion).where(PolicyVersion.version == 2))
            await session.commit()
        clock.advance(1)
        assert (
            await store.replace(rules(BASE + "p, ops, app, /x, GET, allow\n"), actor="cli:root", reason="x")
            == 2
        )
        assert await seen.next(timeout=2.0) == 2


async def test_the_watcher_stops_when_cancelled(database: Database, clock: FakeClock) -> None:
    store = CountingStore(database, MemoryFastState(), AuditLog(database, clock=clock), clock)
    seen = Seen()
    task = asyncio.create_task(store.watch(seen, poll_interval=60))
    # Running, not just created: it has checked once and waits for the next poll or a broadcast.
    await wait_until_async(lambda: store.checks >= 1, timeout=5.0, what="the first version check")
    task.cancel()
    async with asyncio.timeout(1):
        with pytest.raises(asyncio.CancelledError):
            await task
