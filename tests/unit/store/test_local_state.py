"""What only the node's shared file (``LocalFastState``) must show: the contract's own cases run in
``test_fast_state.py`` against every backend.

Here: several real processes on one file (atomicity and the broadcast across processes, not just
across instances), the file's permissions, failing closed when the file is unusable or locked, and
the feed's pruning reported as an interruption.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
import sys
import textwrap
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest

from gateway.clock import FakeClock
from gateway.settings.loader import parse_settings
from gateway.store.fast import (
    LocalFastState,
    MemoryFastState,
    RedisFastState,
    StateUnavailable,
    open_configured_state,
    open_fast_state,
    shares_state,
    state_file,
)

# A hang guard, not a speed assertion.
BOUND = 30.0

_T = TypeVar("_T")


@pytest.fixture
async def opened(tmp_path: Path) -> AsyncIterator[Callable[..., LocalFastState]]:
    """Make ``LocalFastState`` instances on ``tmp_path/state.db``; all are closed afterwards."""
    made: list[LocalFastState] = []

    def make(path: Path | None = None, **options: object) -> LocalFastState:
        # Behaviour tests, not latency tests: unless a test sets them, timeouts a loaded CI machine
        # cannot run out (the production defaults once failed the first call, which creates the file).
        options.setdefault("op_timeout", 10.0)
        options.setdefault("busy_timeout", 5.0)
        state = LocalFastState(path or tmp_path / "state.db", **options)  # type: ignore[arg-type]
        made.append(state)
        return state

    yield make
    for state in made:
        await state.close()


async def eventually(call: Callable[[], Awaitable[_T]]) -> _T:
    """The result of ``call`` once it stops failing closed (within ``BOUND``)."""
    deadline = time.monotonic() + BOUND
    while True:
        try:
            return await call()
        except StateUnavailable:
            if time.monotonic() > deadline:
                raise


async def answering(state: LocalFastState) -> LocalFastState:
    """``state`` once it answers a ping.

    The first call opens (and may create) the file in the state's thread; on a loaded CI machine that
    alone took longer than a short ``op_timeout``. Tests of short timeouts warm up with this first.
    """
    await eventually(state.ping)
    return state


async def _python(script: str, *args: str) -> str:
    """Run ``script`` in a new interpreter (another process on the node); return its stdout."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        textwrap.dedent(script),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[3],
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), BOUND)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    return out.decode()


_INCREMENTS = """
    import asyncio, sys
    from gateway.store.fast import LocalFastState

    async def main() -> None:
        state = LocalFastState(sys.argv[1], op_timeout=20, busy_timeout=10)
        counts = await asyncio.gather(*(state.incr_window("hits", window=600) for _ in range(100)))
        took = await state.take("code")
        print(" ".join(map(str, counts)), took is not None)
        await state.close()

    asyncio.run(main())
"""


async def test_counters_and_single_use_values_are_atomic_across_processes(
    tmp_path: Path, opened: Callable[..., LocalFastState]
) -> None:
    path = tmp_path / "state.db"
    here = opened(path, op_timeout=20, busy_timeout=10)
    await here.set("code", b"123456", ttl=600)
    # Three processes count at once (two interpreters and this one) and race for one code.
    outputs = await asyncio.gather(
        _python(_INCREMENTS, str(path)),
        _python(_INCREMENTS, str(path)),
        asyncio.gather(*(here.incr_window("hits", window=600) for _ in range(100)), here.take("code")),
    )
    theirs = [line.split() for line in outputs[:2]]
    ours = outputs[2]
    counts = [int(n) for words in theirs for n in words[:-1]] + [int(n) for n in ours[:-1] if n is not None]
    assert sorted(counts) == list(range(1, 301))  # no increment lost, none counted twice
    winners = [words[-1] == "True" for words in theirs] + [ours[-1] is not None]
    assert winners.count(True) == 1  # the code was taken exactly once
    assert await here.get("hits") == b"300"


_PUBLISH = """
    import asyncio, sys
    from gateway.store.fast import LocalFastState

    async def main() -> None:
        state = LocalFastState(sys.argv[1])
        for i in range(3):
            await state.publish("session-revoked", f"hash{i}".encode())
        await state.close()

    asyncio.run(main())
"""


async def test_a_message_published_by_another_process_is_received(
    tmp_path: Path, opened: Callable[..., LocalFastState]
) -> None:
    state = opened(tmp_path / "state.db")
    async with state.subscribe("session-revoked") as subscription:
        await _python(_PUBLISH, str(tmp_path / "state.db"))
        received = [await asyncio.wait_for(anext(subscription), BOUND) for _ in range(3)]
    assert received == [b"hash0", b"hash1", b"hash2"]


@pytest.mark.parametrize("how", ["deleted", "replaced"])
async def test_a_state_file_deleted_or_replaced_under_a_running_gateway_is_followed(
    tmp_path: Path, opened: Callable[..., LocalFastState], how: str
) -> None:
    """An attack run deleted state.db under a running node: its workers kept the old file open while
    every CLI command wrote a new one, so `gateway user disable` reported sessions ended that the
    workers kept serving. The worker now follows the path: what it held is gone (everyone signs in
    again), and what the CLI writes to the new file reaches it."""
    path = tmp_path / "state.db"
    worker = opened(path, poll_interval=0.05)
    async with worker.subscribe("session-revoked") as subscription:
        await worker.set("session:alice", b"live")
        assert await worker.get("session:alice") == b"live"
        interruptions = subscription.interruptions
        for name in ("state.db", "state.db-wal", "state.db-shm"):
            (tmp_path / name).unlink(missing_ok=True)
        if how == "replaced":
            other = opened(tmp_path / "other.db")
            await other.set("unrelated", b"x")
            await other.close()
            (tmp_path / "other.db").rename(path)
        # What a CLI command writes now goes to the file at the path.
        cli = opened(path)
        await cli.set("session:alice-revoked", b"yes")
        await cli.publish("session-revoked", b"alice")
        deadline = time.monotonic() + BOUND
        while await worker.get("session:alice-revoked") != b"yes":
            assert time.monotonic() < deadline, "the worker still reads the old file"
            await asyncio.sleep(0.05)
        assert await worker.get("session:alice") is None  # the old file's sessions are gone
        assert subscription.interruptions > interruptions  # its consumers dropped what they cached


async def test_the_file_and_its_wal_files_are_private(
    tmp_path: Path, opened: Callable[..., LocalFastState]
) -> None:
    loose = tmp_path / "loose.db"
    loose.touch(mode=0o644)
    loose.chmod(0o644)
    for path in (tmp_path / "state.db", loose):
        state = opened(path)
        await state.set("sess:x", b"session record", ttl=60)
        for name in (path.name, path.name + "-wal", path.name + "-shm"):
            mode = stat.S_IMODE((tmp_path / name).stat().st_mode)
            assert mode == 0o600, f"{name}: {mode:o}"


async def test_keys_carry_the_namespace_on_disk(
    tmp_path: Path, opened: Callable[..., LocalFastState]
) -> None:
    state = opened(namespace="site-a:")
    await state.set("k", b"v")
    with sqlite3.connect(tmp_path / "state.db") as conn:
        assert conn.execute("SELECT key, value FROM kv").fetchall() == [("site-a:k", b"v")]


@pytest.mark.parametrize("kind", ["directory", "garbage", "missing-dir"])
async def test_an_unusable_file_fails_closed(
    tmp_path: Path, opened: Callable[..., LocalFastState], kind: str
) -> None:
    path = tmp_path / "state.db"
    if kind == "directory":
        path.mkdir()
    elif kind == "garbage":
        path.write_bytes(b"this is not a database" * 100)
    else:
        path = tmp_path / "nowhere" / "state.db"
    state = opened(path)
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: state.get("sess:x"),
        lambda: state.set("k", b"v"),
        lambda: state.take("k"),
        lambda: state.incr_window("k", window=1),
        lambda: state.compare_and_set("k", None, b"v"),
        lambda: state.publish("ch", b"m"),
        state.ping,
    ]
    for call in calls:
        with pytest.raises(StateUnavailable) as caught:
            await call()
        assert caught.value.status == 503
    with pytest.raises(StateUnavailable):
        async with state.subscribe("ch"):
            pass


async def test_a_held_write_lock_fails_writes_closed_and_they_recover(
    tmp_path: Path, opened: Callable[..., LocalFastState]
) -> None:
    tolerant = opened()
    await tolerant.set("sess:x", b"record")
    state = await answering(opened(busy_timeout=0.1, op_timeout=0.5))
    blocker = sqlite3.connect(tmp_path / "state.db", isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")  # another process in the middle of a long write
        for call in (
            lambda: state.set("k", b"v"),
            lambda: state.incr_window("k", window=1),
            lambda: state.compare_and_set("k", None, b"v"),
            lambda: state.take("sess:x"),
        ):
            with pytest.raises(StateUnavailable):
                await call()
        # WAL: reading is never blocked by a writer, so signed-in traffic keeps flowing.
        assert await tolerant.get("sess:x") == b"record"
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    # The instance whose writes failed closed works again once the lock is gone.
    assert await eventually(lambda: state.set("after", b"v"))
    assert await tolerant.get("after") == b"v"


async def test_the_pollers_clean_up_does_not_hold_up_reads_behind_a_held_lock(
    tmp_path: Path, opened: Callable[..., LocalFastState]
) -> None:
    """The embedded node's test saw the admin listener answer 503 (1 run in 4): its one thread was
    busy with the poller's clean-up, waiting out the whole op_timeout for another process's write
    lock, and a read queued behind it ran out of the same time. The clean-up now waits only briefly."""
    state = opened(busy_timeout=0.5, op_timeout=1.0)
    await state.set("sess:x", b"record")
    blocker = sqlite3.connect(tmp_path / "state.db", isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        sweeping = asyncio.ensure_future(state._sweep_quietly())
        await asyncio.sleep(0)  # the clean-up has the thread
        assert await state.get("sess:x") == b"record"
        await sweeping  # a miss, retried at the next interval; never raised
        with pytest.raises(StateUnavailable):
            await state.sweep()  # asked for itself, it still says the file cannot be written
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()


async def test_a_call_reported_failed_does_not_happen_later(
    tmp_path: Path, opened: Callable[..., LocalFastState]
) -> None:
    # A call is retried until op_timeout, each try waiting up to busy_timeout for the lock. A try
    # begun shortly before the caller's deadline must not go on waiting past it: the caller has been
    # told "timed out", and a one-time token consumed just after would be gone behind its back.
    tolerant = opened()
    await tolerant.set("token", b"one-time")
    state = await answering(opened(busy_timeout=0.4, op_timeout=0.5))
    blocker = sqlite3.connect(tmp_path / "state.db", isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        with pytest.raises(StateUnavailable, match="timed out"):
            await state.take("token")
        # Released after the deadline but well within a second try's busy_timeout.
        await asyncio.sleep(0.15)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    await asyncio.sleep(0.5)
    assert await tolerant.get("token") == b"one-time"


async def test_a_write_waits_out_a_lock_longer_than_busy_timeout_within_op_timeout(
    tmp_path: Path, opened: Callable[..., LocalFastState]
) -> None:
    # SQLite's busy handler gives up after busy_timeout; the call retries until op_timeout, so a
    # burst of contention on a loaded node delays a write instead of failing it closed.
    state = opened(busy_timeout=0.05, op_timeout=10.0)
    await state.ping()
    blocker = sqlite3.connect(tmp_path / "state.db", isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN IMMEDIATE")
    release = threading.Timer(0.5, lambda: blocker.execute("ROLLBACK"))
    release.start()
    try:
        assert await state.incr_window("k", window=60) == 1
        assert await state.set("k2", b"v")  # no write can pass BEGIN IMMEDIATE: these waited for it
    finally:
        release.join()
        blocker.close()


async def test_a_call_that_cannot_finish_in_time_fails_closed(
    tmp_path: Path, opened: Callable[..., LocalFastState]
) -> None:
    # op_timeout well below busy_timeout: the blocked write below must time out, not wait SQLite out.
    state = await answering(opened(busy_timeout=3.0, op_timeout=1.0))
    blocker = sqlite3.connect(tmp_path / "state.db", isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        with pytest.raises(StateUnavailable, match="timed out"):
            await state.incr_window("k", window=1)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()


async def test_expired_rows_are_swept_in_bounded_batches(
    tmp_path: Path, opened: Callable[..., LocalFastState], clock: FakeClock
) -> None:
    state = opened(clock=clock, sweep_batch=100)
    for i in range(250):
        await state.set(f"k{i}", b"v", ttl=5)
    await state.set("keep", b"v")
    clock.advance(6)
    assert await state.sweep() == 100
    assert await state.sweep() == 100
    assert await state.sweep() == 50
    with sqlite3.connect(tmp_path / "state.db") as conn:
        assert conn.execute("SELECT count(*) FROM kv").fetchone() == (1,)


async def test_messages_pruned_before_they_were_read_count_as_an_interruption(
    tmp_path: Path, opened: Callable[..., LocalFastState], clock: FakeClock
) -> None:
    # Polled by hand: the background poller would only wake up after an hour.
    reader = opened(clock=clock, poll_interval=3600)
    writer = opened(clock=clock)
    async with reader.subscribe("ch") as subscription:
        await writer.publish("ch", b"first")
        assert await reader.poll() == 1
        assert await anext(subscription) == b"first"
        for i in range(3):
            await writer.publish("ch", f"lost{i}".encode())
        clock.advance(61)  # the reader stalled for longer than the feed keeps messages
        assert await writer.sweep() == 4
        await writer.publish("ch", b"after")
        assert await reader.poll() == 1
        assert subscription.interruptions == 1
        assert await anext(subscription) == b"after"
        # Reading on without a gap is no interruption.
        await writer.publish("ch", b"next")
        await reader.poll()
        assert subscription.interruptions == 1
        assert await anext(subscription) == b"next"


async def test_the_configuration_picks_the_backend(tmp_path: Path) -> None:
    base = f"public_url: https://auth.example.com\ndata_dir: {tmp_path}\n"
    default = parse_settings(base)
    state = open_configured_state(default)
    assert isinstance(state, LocalFastState)
    assert state.path == state_file(tmp_path) == tmp_path / "state.db"
    assert shares_state(default)
    await state.ping()
    await state.close()
    memory = parse_settings(base + "state: {embedded: memory}\nadmin: {listen: null}\n")
    assert isinstance(open_configured_state(memory), MemoryFastState)
    assert not shares_state(memory)
    redis = parse_settings(base + "state: {redis_url: 'redis://127.0.0.1:6379/0', namespace: 'x:'}\n")
    shared = open_configured_state(redis)
    assert isinstance(shared, RedisFastState)
    assert shares_state(redis)
    await shared.close()
    assert isinstance(open_fast_state(None, local_path=tmp_path / "s.db"), LocalFastState)


def test_nonsense_limits_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=">= 1"):
        LocalFastState(tmp_path / "s.db", subscription_buffer=0)
    with pytest.raises(ValueError, match="positive"):
        LocalFastState(tmp_path / "s.db", poll_interval=0)


def test_nothing_is_opened_before_the_first_call(tmp_path: Path) -> None:
    LocalFastState(tmp_path / "state.db")
    assert not os.path.exists(tmp_path / "state.db")


async def test_a_deleted_value_is_not_left_on_disk_once_old_pages_are_dropped(
    opened: Callable[..., LocalFastState], tmp_path: Path
) -> None:
    """A re-attack run read an erased person's session record (name, address, user agent) in
    ``state.db-wal`` after the erasure: deleted values are overwritten, and the erasure empties the log."""
    state = opened()
    secret = b'{"username":"zeldaq","ip":"127.0.0.77","user_agent":"ZeldaBrowser/9.9"}'
    await state.set("sess:zelda", secret, ttl=600)
    for filler in range(50):  # more pages, so the value is not only in the newest one
        await state.set(f"other:{filler}", b"x" * 200, ttl=600)

    def on_disk() -> bytes:
        return b"".join(f.read_bytes() for f in sorted(tmp_path.glob("state.db*")))

    assert b"ZeldaBrowser" in on_disk()  # the check can fail
    assert await state.delete("sess:zelda") == 1
    await state.drop_old_pages()
    assert b"ZeldaBrowser" not in on_disk()
    assert await state.get("other:0") == b"x" * 200  # the rest is there
