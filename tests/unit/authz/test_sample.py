"""The decision sample on SQLite and PostgreSQL: counts per shape and hour, bounded, pruned, erasable;
counts made before an account's deletion never reach the table after it."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import delete, func, select

from gateway.authz.models import DecisionSampleRow
from gateway.authz.sample import MAX_PATH, DecisionSample
from gateway.authz.whatif import Sampled
from gateway.clock import FakeClock
from gateway.identity.models import User
from gateway.store.db import Database

ALICE = frozenset({"user:alice", "authenticated"})
BOB = frozenset({"user:bob", "authenticated"})
HOUR = 3600.0


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_800_000_000.0 - 1_800_000_000.0 % HOUR + 60)  # a minute past an hour


async def add_account(database: Database, name: str, *, created: float) -> int:
    at = datetime.fromtimestamp(created, UTC)
    async with database.session() as session:
        user = User(username=name, password_hash=None, created_at=at, updated_at=at)
        session.add(user)
        await session.commit()
        return user.id


async def delete_account(database: Database, name: str) -> None:
    async with database.session() as session:
        await session.execute(delete(User).where(User.username == name))
        await session.commit()


@pytest.fixture(autouse=True)
async def accounts(database: Database, clock: FakeClock) -> None:
    """Every name the tests count requests for has an account, as every session's does."""
    for name in ("alice", "alice2", "bob"):
        await add_account(database, name, created=clock.time() - HOUR)


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


async def rows_naming(database: Database, principal: str) -> int:
    column = " " + DecisionSampleRow.principals + " "
    async with database.session() as session:
        query = select(func.count()).where(column.contains(f" {principal} ", autoescape=True))
        return int((await session.scalar(query)) or 0)


async def test_counts_made_before_an_erasure_are_not_flushed_after_it(
    database: Database, clock: FakeClock
) -> None:
    """Finding 2: a worker counted ``oli``'s requests, the erasure deleted the account and ran
    ``forget`` (nothing stored yet), and the worker's next flush wrote the counts back: the erased
    name stayed in the table, shown by the what-if, for the sample's 24 hours."""
    oli = frozenset({"user:oli", "authenticated"})
    await add_account(database, "oli", created=clock.time() - HOUR)
    worker, replica = DecisionSample(database, clock=clock), DecisionSample(database, clock=clock)
    for _ in range(8):
        worker.note(oli, "app", "GET", "/decision-probe")
    replica.note(oli, "app", "GET", "/decision-probe")
    worker.note(BOB, "app", "GET", "/decision-probe")
    # The erasure, in its order: the account goes, then the stored rows.
    await delete_account(database, "oli")
    assert await DecisionSample(database, clock=clock).forget(["user:oli"]) == 0
    assert await worker.flush() == 1  # bob's shape only
    assert await replica.flush() == 0
    assert await rows_naming(database, "user:oli") == 0
    assert shapes(await worker.recent(1)) == {(BOB, "app", "GET", "/decision-probe"): 1}


async def test_counts_of_an_erased_name_are_not_given_to_a_new_account_of_that_name(
    database: Database, clock: FakeClock
) -> None:
    """The name made again (by an admin) after the counts were made: they are the erased person's."""
    oli = frozenset({"user:oli", "authenticated"})
    await add_account(database, "oli", created=clock.time() - HOUR)
    sample = DecisionSample(database, clock=clock)
    sample.note(oli, "app", "GET", "/a")
    clock.advance(2)
    await delete_account(database, "oli")
    await add_account(database, "oli", created=clock.time())
    assert await sample.flush() == 0
    clock.advance(1)
    sample.note(oli, "app", "GET", "/a")  # the new person's own requests are counted
    assert await sample.flush() == 1


async def test_a_flush_racing_the_deletion_either_lands_first_or_sees_the_account_gone(
    database: Database, clock: FakeClock
) -> None:
    """The interleaving forced: the flush has read the account and holds its transaction open while
    the erasure deletes the account and forgets the rows. The deletion must wait for the flush (its
    rows then go with ``forget``), or the flush must not find the account; never a row left after."""
    oli = frozenset({"user:oli", "authenticated"})
    await add_account(database, "oli", created=clock.time() - HOUR)
    sample = DecisionSample(database, clock=clock)
    sample.note(oli, "app", "GET", "/a")
    checked, go_on = asyncio.Event(), asyncio.Event()
    original = sample._live_principals

    async def paused(*args: object, **kwargs: object) -> set[frozenset[str]]:
        live = await original(*args, **kwargs)  # type: ignore[arg-type]
        checked.set()
        await go_on.wait()
        return live

    sample._live_principals = paused  # type: ignore[method-assign]

    async def erase() -> int:
        await checked.wait()
        deleting = asyncio.create_task(delete_account(database, "oli"))
        done, _ = await asyncio.wait([deleting], timeout=0.5)
        if done:
            # Not held back by the flush (the old code): the erasure finishes before it writes.
            forgotten = await DecisionSample(database, clock=clock).forget(["user:oli"])
            go_on.set()
            return forgotten
        # Held back by the flush's transaction (SQLite's write lock, PostgreSQL's key-share lock):
        # the flush commits first, then the deletion, then forget removes what the flush wrote.
        go_on.set()
        await deleting
        return await DecisionSample(database, clock=clock).forget(["user:oli"])

    flushed, forgotten = await asyncio.gather(sample.flush(), erase())
    assert (flushed, forgotten) == (1, 1)  # the flush landed first, and forget removed it
    assert await rows_naming(database, "user:oli") == 0


def test_bad_limits_are_refused(database: Database) -> None:
    with pytest.raises(ValueError, match="max_shapes"):
        DecisionSample(database, max_shapes=0)
    with pytest.raises(ValueError, match="retention"):
        DecisionSample(database, retention=timedelta(0))
