"""The replica registry on SQLite and PostgreSQL: heartbeats, gone replicas, clean leave, pruning."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from gateway.clock import FakeClock
from gateway.observe.replicas import Heartbeat, ReplicaRegistry
from gateway.store.db import Database
from tests.support.wait import wait_until_async


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


async def test_every_replica_is_listed_with_what_it_last_said(database: Database, clock: FakeClock) -> None:
    one = ReplicaRegistry(database, role="worker", version="1.0", clock=clock)
    two = ReplicaRegistry(database, role="admin", version="1.0", clock=clock)
    assert one.id != two.id
    await one.beat(Heartbeat(ready=True, policy_version=3, config_generation=1))
    await two.beat(Heartbeat(ready=False, policy_version=2, config_generation=1))
    clock.advance(5)
    await one.beat(Heartbeat(ready=True, policy_version=4, config_generation=2))
    seen = {r.id: r for r in await one.replicas()}
    assert set(seen) == {one.id, two.id}
    assert (seen[one.id].policy_version, seen[one.id].config_generation) == (4, 2)
    assert (seen[two.id].role, seen[two.id].ready) == ("admin", False)
    assert not seen[one.id].gone
    assert not seen[two.id].gone


async def test_a_silent_replica_is_gone_then_forgotten(database: Database, clock: FakeClock) -> None:
    quiet = ReplicaRegistry(database, role="worker", version="1.0", clock=clock)
    live = ReplicaRegistry(
        database, role="worker", version="1.0", clock=clock, forget_after=timedelta(minutes=5)
    )
    await quiet.beat(Heartbeat(ready=True, policy_version=1, config_generation=1))
    clock.advance(31)
    await live.beat(Heartbeat(ready=True, policy_version=1, config_generation=1))
    gone = {r.id: r.gone for r in await live.replicas()}
    assert gone == {quiet.id: True, live.id: False}
    clock.advance(300)
    await live.beat(Heartbeat(ready=True, policy_version=1, config_generation=1))
    assert await live.forget_old() == 1
    assert [r.id for r in await live.replicas()] == [live.id]


async def test_a_stopped_replica_leaves_the_list(database: Database, clock: FakeClock) -> None:
    registry = ReplicaRegistry(database, role="worker", version="1.0", clock=clock)

    async def report() -> Heartbeat:
        return Heartbeat(ready=True, policy_version=1, config_generation=1)

    task = asyncio.ensure_future(registry.run(report, interval=0.01))
    await wait_until_async(registry.replicas, what="the replica's first heartbeat")
    assert [r.id for r in await registry.replicas()] == [registry.id]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await registry.replicas() == []


async def test_announced_at_start_then_beating_an_interval_later(
    database: Database, clock: FakeClock
) -> None:
    registry = ReplicaRegistry(database, role="admin", version="1.0", clock=clock)
    versions = iter(range(1, 100))

    async def report() -> Heartbeat:
        return Heartbeat(ready=True, policy_version=next(versions), config_generation=1)

    await registry.announce(report)
    assert [r.policy_version for r in await registry.replicas()] == [1]
    task = asyncio.ensure_future(registry.run(report, interval=0.05, beat_first=False))
    # The next beat comes an interval later, not at once: the row then says what the second report said.
    found = await wait_until_async(lambda: _versions(registry), what="the beat after the announcement")
    assert found == [2]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await registry.replicas() == []


async def _versions(registry: ReplicaRegistry) -> list[int]:
    versions = [r.policy_version for r in await registry.replicas()]
    return versions if versions != [1] else []


def test_bad_windows_are_refused(database: Database) -> None:
    with pytest.raises(ValueError, match="stale_after"):
        ReplicaRegistry(database, role="worker", version="1", stale_after=timedelta(0))
    with pytest.raises(ValueError, match="forget_after"):
        ReplicaRegistry(database, role="worker", version="1", forget_after=timedelta(seconds=1))
