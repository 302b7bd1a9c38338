"""The decision sample on SQLite and PostgreSQL: counts per shape and hour, bounded, pruned, erasable."""

from __future__ import annotations

from datetime import timedelta

import pytest

from gateway.authz.sample import MAX_PATH, DecisionSample
from gateway.authz.whatif import Sampled
from gateway.clock import FakeClock
from gateway.store.db import Database

ALICE = frozenset({"user:alice", "authenticated"})
BOB = frozenset({"user:bob", "authenticated"})
HOUR = 3600.0


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_800_000_000.0 - 1_800_000_000.0 % HOUR + 60)  # a minute past an hour


def shapes(sampled: list[Sampled]) -> dict[tuple[frozenset[str], str, str, str], int]:
    return {(s.principals, s.route, s.method, s.path): s.count for s in sampled}


async def test_counts_add_up_across_flushes_and_replicas(database: Database, clock: FakeClock) -> None:
    here, there = DecisionSample(database, clock=clock), DecisionSample(database, clock=clock)
    for _ in range(3):
        here.note(ALICE, "app", "GET", "/reports/7")
    here.note(BOB, "app", "GET", "/reports/7")
    there.note(ALICE, "app", "GET", "/reports/7")
    assert await here.flush() == 2
    assert await there.flush() == 1
    here.note(ALICE, "app", "GET", "/reports/7")
    await here.flush()
    assert await here.flush() == 0  # nothing new
    assert shapes(await there.recent(1)) == {
        (ALICE, "app", "GET", "/reports/7"): 5,
        (BOB, "app", "GET", "/reports/7"): 1,
    }


async def test_hours_are_kept_apart_summed_on_read_and_pruned(database: Database, clock: FakeClock) -> None:
    sample = DecisionSample(database, clock=clock, retention=timedelta(hours=2))
    sample.note(ALICE, "app", "GET", "/a")
    await sample.flush()
    clock.advance(HOUR)
    sample.note(ALICE, "app", "GET", "/a")
    await sample.flush()
    assert shapes(await sample.recent(1)) == {(ALICE, "app", "GET", "/a"): 1}
    assert shapes(await sample.recent(2)) == {(ALICE, "app", "GET", "/a"): 2}
    clock.advance(2 * HOUR)
    assert await sample.prune() == 1  # the first hour is older than two hours now
    assert shapes(await sample.recent(24)) == {(ALICE, "app", "GET", "/a"): 1}


async def test_distinct_shapes_are_bounded_and_long_paths_cut(database: Database, clock: FakeClock) -> None:
    sample = DecisionSample(database, clock=clock, max_shapes=3)
    for i in range(10):
        sample.note(BOB, "app", "GET", f"/scan/{i}")
    sample.note(BOB, "app", "GET", "/scan/0")  # a known shape is still counted
    assert sample.dropped == 7
    await sample.flush()
    got = shapes(await sample.recent(1))
    assert len(got) == 3
    assert got[(BOB, "app", "GET", "/scan/0")] == 2
    sample.note(BOB, "app", "GET", "/" + "x" * 5000)
    await sample.flush()
    paths = [path for (_, _, _, path) in shapes(await sample.recent(1))]
    assert max(len(p) for p in paths) == MAX_PATH


async def test_forget_erases_one_user_whole_word(database: Database, clock: FakeClock) -> None:
    sample = DecisionSample(database, clock=clock)
    sample.note(ALICE, "app", "GET", "/a")
    sample.note(frozenset({"user:alice2", "authenticated"}), "app", "GET", "/a")
    sample.note(BOB, "app", "GET", "/a")
    await sample.flush()
    assert await sample.forget(["user:alice"]) == 1
    remaining = {principals for (principals, _, _, _) in shapes(await sample.recent(1))}
    assert remaining == {frozenset({"user:alice2", "authenticated"}), BOB}


def test_bad_limits_are_refused(database: Database) -> None:
    with pytest.raises(ValueError, match="max_shapes"):
        DecisionSample(database, max_shapes=0)
    with pytest.raises(ValueError, match="retention"):
        DecisionSample(database, retention=timedelta(0))
