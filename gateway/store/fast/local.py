"""Fast state in a SQLite file that every process on one node shares (the embedded default).

Without ``state.redis_url`` the gateway's workers, its admin listener and every ``gateway`` command
open the same file, ``<data_dir>/state.db``, so a session made on one worker is valid on the others,
``gateway user disable`` ends it everywhere and a block made by one worker is listed, and lifted, by
``gateway incident``. No server to install: SQLite is the database that already holds the accounts.

Design (README, "State on one node" has the measurements)::

    kv(key PRIMARY KEY, value BLOB, expires_at REAL NULL)       values, counters; expiry by timestamp
    messages(id AUTOINCREMENT, channel, payload, at)             the broadcast: an append-only feed

* **WAL mode**: readers never wait for a writer and a writer never waits for readers; only writers
  queue behind each other (``busy_timeout``), for microseconds each. ``synchronous=NORMAL``: a power
  cut may lose the last transactions, the same promise Redis makes by default for short-lived state.
* **Atomicity across processes**: ``take`` is one ``DELETE … RETURNING``, ``set(only_if_absent)`` one
  upsert; ``incr_window`` and ``compare_and_set`` read and write inside ``BEGIN IMMEDIATE``, which holds
  the database's write lock from the read on, so no other process can interleave.
* **Expiry**: a row whose ``expires_at`` has passed is absent to every read; the poller deletes such
  rows in bounded batches in the background. Times are Unix seconds (wall clock): the file outlives
  processes and reboots, which a monotonic clock does not.
* **Publish/subscribe**: ``publish`` appends a row; each process runs one poller that reads the rows
  after the last id it saw every ``poll_interval`` (0.1 s) and hands them to its subscriptions. Ids come
  from AUTOINCREMENT under SQLite's single writer, so they are gap-free in commit order: a gap means
  rows were pruned (after ``retention``, 60 s) before this process read them, which is reported as an
  interruption so a cache fed by the feed flushes itself.
* **Off the event loop**: every SQLite call runs on one dedicated thread per instance, with its own
  connection, so a slow disk or a held lock never blocks request handling; a call that does not answer
  within ``op_timeout`` fails closed.

The file is created with mode 0600 (SQLite gives its ``-wal`` and ``-shm`` files the same mode): it
holds session records, and whoever can write it can forge one. Every SQLite or file-system error is
converted to ``StateUnavailable`` at this boundary, so a broken, locked or missing file refuses, never
opens.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Final, Self, TypeVar

from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.store.fast.base import StateUnavailable, validate_ttl
from gateway.store.private import create_private

__all__ = ["STATE_FILE", "LocalFastState", "LocalSubscription"]

_log = logging.getLogger(__name__)

STATE_FILE: Final = "state.db"

_T = TypeVar("_T")
_Row = tuple[int, str, bytes]

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    expires_at REAL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS kv_expiry ON kv (expires_at) WHERE expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    channel TEXT NOT NULL,
    payload BLOB NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_at ON messages (at);
"""

_GET_LIVE: Final = "SELECT value, expires_at FROM kv WHERE key = ? AND (expires_at IS NULL OR expires_at > ?)"
# More keys than this in one delete are split into several statements (in one transaction): SQLite
# bounds the number of parameters of a statement.
_DELETE_CHUNK: Final = 500
# Rows the poller reads per query; it reads again at once while a query comes back full.
_POLL_BATCH: Final = 512
# Seconds between two reads of the feed even when the files look unchanged.
_FULL_POLL: Final = 0.5
# How long the poller's clean-up waits for another process's write lock (it is retried next interval).
_SWEEP_WAIT: Final = 0.1


class LocalSubscription:
    """One channel of the node's feed, filled by its state's poller.

    Like the other backends: a bounded buffer that drops the oldest message when the consumer is slow
    (publishers never wait for subscribers), and counters that tell the consumer it may have missed
    something (``dropped``, ``interruptions``).
    """

    def __init__(
        self,
        state: LocalFastState,
        channel: str,
        *,
        buffer: int,
        on_close: Callable[[LocalSubscription], None],
    ) -> None:
        self.channel = channel
        self._state = state
        self._limit = buffer
        self._on_close = on_close
        self._buffer: deque[bytes] = deque()
        self._wakeup = asyncio.Event()
        # The id of the last feed row this subscription has seen; None until it is live.
        self.cursor: int | None = None
        self._closed = False
        self._dropped = 0
        self._interruptions = 0

    @property
    def dropped(self) -> int:
        """Messages discarded because the buffer was full."""
        return self._dropped

    @property
    def interruptions(self) -> int:
        """Times messages may have been missed (the feed could not be read, or was pruned unread)."""
        return self._interruptions

    @property
    def live(self) -> bool:
        return self.cursor is not None and not self._closed

    def _deliver(self, message: bytes) -> None:
        if self._closed:
            return
        if len(self._buffer) >= self._limit:
            self._buffer.popleft()
            self._dropped += 1
        self._buffer.append(message)
        self._wakeup.set()

    def _interrupted(self) -> None:
        self._interruptions += 1

    async def wait_ready(self) -> None:
        """Mark the current end of the feed: everything published from now on is received.

        Raises:
            StateUnavailable: the file cannot be read, or the subscription is closed.
        """
        if self._closed:
            raise StateUnavailable("subscription is closed")
        if self.cursor is None:
            self.cursor = await self._state._start_subscription()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> bytes:
        if not self._closed and self.cursor is None:
            await self.wait_ready()
        while not self._buffer:
            if self._closed:
                raise StopAsyncIteration
            self._wakeup.clear()
            await self._wakeup.wait()
        return self._buffer.popleft()

    async def close(self) -> None:
        """Stop receiving; a waiting consumer's iteration ends."""
        if self._closed:
            return
        self._closed = True
        self._buffer.clear()
        self._on_close(self)
        self._wakeup.set()

    async def __aenter__(self) -> Self:
        try:
            await self.wait_ready()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class LocalFastState:
    """``FastState`` in a SQLite file shared by the processes of one node. See the module docstring."""

    def __init__(
        self,
        path: str | Path,
        *,
        namespace: str = "gw:",
        clock: Clock = SYSTEM_CLOCK,
        busy_timeout: float = 1.0,
        op_timeout: float = 2.0,
        poll_interval: float = 0.1,
        retention: float = 60.0,
        sweep_interval: float = 5.0,
        sweep_batch: int = 1000,
        subscription_buffer: int = 1024,
    ) -> None:
        """Use the file at ``path`` (created, mode 0600, at the first call); nothing is opened here.

        Args:
            path: The database file, normally ``<data_dir>/state.db``.
            namespace: Prefix of every key and channel, so deployments sharing a data dir stay apart.
            clock: Expiry and message ages are measured on its Unix time.
            busy_timeout: Seconds one statement waits for another process's write to finish (SQLite's
                busy handler); a statement still busy after it is retried until ``op_timeout``.
            op_timeout: Seconds any call may take in all (queueing on this instance's thread included)
                before it fails closed.
            poll_interval: Seconds between two reads of the feed while something is subscribed.
            retention: Seconds a published message stays in the feed for slow readers.
            sweep_interval: Seconds between two clean-ups of expired keys and old messages.
            sweep_batch: Most rows one clean-up deletes of each kind.
            subscription_buffer: Messages buffered per subscription before the oldest are dropped.
        """
        if sweep_batch < 1 or subscription_buffer < 1:
            raise ValueError("sweep_batch and subscription_buffer must be >= 1")
        if not (busy_timeout > 0 and op_timeout > 0 and poll_interval > 0 and retention > 0):
            raise ValueError("timeouts, poll_interval and retention must be positive")
        self._path = Path(path)
        self._namespace = namespace
        self._clock = clock
        self._busy_timeout = busy_timeout
        self._op_timeout = op_timeout
        self._poll_interval = poll_interval
        self._retention = retention
        self._sweep_interval = sweep_interval
        self._sweep_batch = sweep_batch
        self._subscription_buffer = subscription_buffer
        # One thread owns the connection: SQLite calls block, the event loop must not.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fast-state")
        self._conn: sqlite3.Connection | None = None
        # The inode of the file the connection has open, and whether the poller found that the path
        # names another file now (deleted, or replaced): then the next call opens the path afresh.
        self._opened_ino: int | None = None
        self._replaced = False
        self._subscriptions: set[LocalSubscription] = set()
        self._poller: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def path(self) -> Path:
        """The database file."""
        return self._path

    @property
    def namespace(self) -> str:
        """The prefix of every key and channel."""
        return self._namespace

    # -- the thread ------------------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        """The thread's connection, opened (and the file and schema created) on first use, and again
        once the path names another file than the one open (see :meth:`_check_file`)."""
        if self._replaced and self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None
        self._replaced = False
        if self._conn is None:
            self._conn = _open(self._path, self._busy_timeout)
            with contextlib.suppress(OSError):
                self._opened_ino = os.stat(self._path).st_ino
        return self._conn

    def _check_file(self) -> None:
        """Whether the path still names the file this process has open. A state file deleted or
        replaced under a running gateway (a clean-up, a restore) left the workers on the old file and
        every CLI command on a new one: a `gateway user disable` reported sessions ended that the
        workers kept serving (an attack run). Now the workers follow the path: they drop what they
        cached (everyone signs in again: fail closed) and reopen it."""
        if self._opened_ino is None:
            return
        try:
            ino: int | None = os.stat(self._path).st_ino
        except OSError:
            ino = None
        if ino == self._opened_ino:
            return
        _log.warning("fast state: %s was deleted or replaced; opening it afresh", self._path)
        self._opened_ino = None
        self._replaced = True
        for subscription in list(self._subscriptions):
            if subscription.live:
                subscription._interrupted()

    def _call(self, operation: str, fn: Callable[[sqlite3.Connection, float], _T], deadline: float) -> _T:
        """Run ``fn(connection, now)`` on the thread, converting failures to ``StateUnavailable``.

        A busy database is retried until ``op_timeout``: SQLite's own busy handler covers the common
        case (waiting for another writer), but some lock conflicts return at once without calling it
        (a read snapshot overtaken by a commit, a connection opening while another runs recovery or
        its last checkpoint), and under heavy contention on a loaded machine one ``busy_timeout`` can
        run out although the writers ahead each hold the lock for microseconds. A busy statement did
        not run, so running it again is safe.

        ``deadline`` is the caller's: no try starts after it, and a try begun just before it waits for
        the lock only until then, so a write reported as timed out does not happen a moment later (a
        one-time token consumed, an attempt counted) behind the back of the caller who was told it
        failed.
        """
        pause = 0.005
        while True:
            if time.monotonic() >= deadline:
                raise StateUnavailable(f"fast state {operation} timed out")
            try:
                return self._call_once(fn, deadline)
            except (sqlite3.Error, OSError) as exc:
                if _is_busy(exc) and time.monotonic() + pause < deadline:
                    time.sleep(pause)
                    pause = min(pause * 2, 0.1)
                    continue
                raise StateUnavailable(
                    f"fast state {operation} failed ({type(exc).__name__}: {exc})"
                ) from exc

    def _call_once(self, fn: Callable[[sqlite3.Connection, float], _T], deadline: float) -> _T:
        try:
            conn = self._connection()
            remaining = deadline - time.monotonic()
            if remaining >= self._busy_timeout:
                return fn(conn, self._clock.time())
            # Near the caller's deadline: wait for another writer only as long as the caller waits.
            conn.execute(f"PRAGMA busy_timeout = {max(1, int(remaining * 1000))}")
            try:
                return fn(conn, self._clock.time())
            finally:
                conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
        except (sqlite3.Error, OSError) as exc:
            if self._conn is not None and not _is_busy(exc):
                # Anything but "another process holds the lock" may be a broken connection (file
                # replaced or corrupt, disk error): drop it, the next call opens the file afresh.
                with contextlib.suppress(sqlite3.Error):
                    self._conn.close()
                self._conn = None
            raise

    async def _run(
        self, operation: str, fn: Callable[[sqlite3.Connection, float], _T], *, within: float | None = None
    ) -> _T:
        if self._closed:
            raise StateUnavailable("fast state is closed")
        loop = asyncio.get_running_loop()
        limit = self._op_timeout if within is None else within
        deadline = time.monotonic() + limit
        try:
            async with asyncio.timeout(limit):
                return await loop.run_in_executor(self._executor, self._call, operation, fn, deadline)
        except TimeoutError:
            raise StateUnavailable(f"fast state {operation} timed out") from None
        except RuntimeError as exc:  # the executor was shut down by close() meanwhile
            raise StateUnavailable("fast state is closed") from exc

    def _key(self, key: str) -> str:
        return self._namespace + key

    # -- FastState -------------------------------------------------------------------------------

    async def get(self, key: str) -> bytes | None:
        """See ``FastState.get``."""
        name = self._key(key)

        def get(conn: sqlite3.Connection, now: float) -> bytes | None:
            row = conn.execute(_GET_LIVE, (name, now)).fetchone()
            return None if row is None else bytes(row[0])

        return await self._run("get", get)

    async def set(
        self, key: str, value: bytes, *, ttl: float | None = None, only_if_absent: bool = False
    ) -> bool:
        """See ``FastState.set``."""
        validate_ttl(ttl)
        name, data = self._key(key), bytes(value)

        def set_(conn: sqlite3.Connection, now: float) -> bool:
            expires_at = None if ttl is None else now + ttl
            if not only_if_absent:
                conn.execute(
                    "REPLACE INTO kv (key, value, expires_at) VALUES (?, ?, ?)", (name, data, expires_at)
                )
                return True
            # One statement: either the key is new, or only an expired value is overwritten.
            cursor = conn.execute(
                "INSERT INTO kv (key, value, expires_at) VALUES (?, ?, ?) ON CONFLICT (key) DO UPDATE"
                " SET value = excluded.value, expires_at = excluded.expires_at"
                " WHERE kv.expires_at IS NOT NULL AND kv.expires_at <= ?",
                (name, data, expires_at, now),
            )
            return cursor.rowcount == 1

        return await self._run("set", set_)

    async def drop_old_pages(self) -> None:
        """See ``FastState.drop_old_pages``: the write-ahead log written into the file and emptied (an
        attack run read an erased person's session record in ``state.db-wal`` after the erasure)."""

        def checkpoint(conn: sqlite3.Connection, now: float) -> None:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

        await self._run("checkpoint", checkpoint)

    async def delete(self, *keys: str) -> int:
        """See ``FastState.delete``."""
        names = list(dict.fromkeys(self._key(k) for k in keys))  # a key named twice counts once
        if not names:
            if self._closed:
                raise StateUnavailable("fast state is closed")
            return 0

        def delete(conn: sqlite3.Connection, now: float) -> int:
            with _immediate(conn):
                count = 0
                for start in range(0, len(names), _DELETE_CHUNK):
                    chunk = names[start : start + _DELETE_CHUNK]
                    marks = ",".join("?" * len(chunk))
                    rows = conn.execute(
                        f"DELETE FROM kv WHERE key IN ({marks}) RETURNING expires_at",  # noqa: S608 - only "?" marks
                        chunk,
                    ).fetchall()
                    count += sum(1 for (expires_at,) in rows if expires_at is None or expires_at > now)
                return count

        return await self._run("delete", delete)

    async def take(self, key: str) -> bytes | None:
        """See ``FastState.take``: one ``DELETE … RETURNING``, so exactly one caller gets the value."""
        name = self._key(key)

        def take(conn: sqlite3.Connection, now: float) -> bytes | None:
            row = conn.execute("DELETE FROM kv WHERE key = ? RETURNING value, expires_at", (name,)).fetchone()
            if row is None or (row[1] is not None and row[1] <= now):
                return None
            return bytes(row[0])

        return await self._run("take", take)

    async def incr_window(self, key: str, *, window: float, amount: int = 1) -> int:
        """See ``FastState.incr_window``."""
        validate_ttl(window, name="window")
        name = self._key(key)

        def incr(conn: sqlite3.Connection, now: float) -> int:
            with _immediate(conn):
                row = _live_row(conn, name, now)
                count, expires_at = amount, None
                if row is not None:
                    try:
                        count += int(row[0])
                    except ValueError:
                        # Mirrors Redis' "value is not an integer": every backend fails the same way.
                        raise StateUnavailable(f"value at {key!r} is not a counter") from None
                    expires_at = row[1]
                # A counter without an expiry gets the window now: no counter can become permanent.
                if expires_at is None:
                    expires_at = now + window
                conn.execute(
                    "REPLACE INTO kv (key, value, expires_at) VALUES (?, ?, ?)",
                    (name, str(count).encode(), expires_at),
                )
                return count

        return await self._run("incr_window", incr)

    async def compare_and_set(
        self, key: str, expected: bytes | None, new: bytes | None, *, ttl: float | None = None
    ) -> bool:
        """See ``FastState.compare_and_set``."""
        validate_ttl(ttl)
        name = self._key(key)
        want = None if expected is None else bytes(expected)
        data = None if new is None else bytes(new)

        def cas(conn: sqlite3.Connection, now: float) -> bool:
            with _immediate(conn):
                row = _live_row(conn, name, now)
                if (None if row is None else bytes(row[0])) != want:
                    return False
                if data is None:
                    conn.execute("DELETE FROM kv WHERE key = ?", (name,))
                else:
                    conn.execute(
                        "REPLACE INTO kv (key, value, expires_at) VALUES (?, ?, ?)",
                        (name, data, None if ttl is None else now + ttl),
                    )
                return True

        return await self._run("compare_and_set", cas)

    async def publish(self, channel: str, message: bytes) -> None:
        """See ``FastState.publish``: one row appended to the feed; every process's poller reads it."""
        name, payload = self._key(channel), bytes(message)

        def publish(conn: sqlite3.Connection, now: float) -> None:
            conn.execute("INSERT INTO messages (channel, payload, at) VALUES (?, ?, ?)", (name, payload, now))

        await self._run("publish", publish)

    def subscribe(self, channel: str) -> LocalSubscription:
        """See ``FastState.subscribe``. Live after ``wait_ready`` (or ``async with``)."""
        if self._closed:
            raise StateUnavailable("fast state is closed")
        subscription = LocalSubscription(
            self,
            self._key(channel),
            buffer=self._subscription_buffer,
            on_close=self._subscriptions.discard,
        )
        self._subscriptions.add(subscription)
        return subscription

    async def ping(self) -> None:
        """See ``FastState.ping``: the file opens and answers a query."""

        def ping(conn: sqlite3.Connection, _now: float) -> None:
            conn.execute("SELECT 1 FROM kv LIMIT 1").fetchall()

        await self._run("ping", ping)

    async def close(self) -> None:
        """Stop the poller and every subscription, then close the connection and its thread."""
        if self._closed:
            return
        for subscription in list(self._subscriptions):
            await subscription.close()
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        self._closed = True
        loop = asyncio.get_running_loop()
        with contextlib.suppress(TimeoutError, sqlite3.Error, RuntimeError):
            async with asyncio.timeout(self._op_timeout):
                await loop.run_in_executor(self._executor, self._close_connection)
        self._executor.shutdown(wait=False)

    def _close_connection(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # -- the feed --------------------------------------------------------------------------------

    async def _start_subscription(self) -> int:
        """The id of the newest message (where a new subscription starts); starts the poller."""

        def last_id(conn: sqlite3.Connection, _now: float) -> int:
            row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'messages'").fetchone()
            return int(row[0]) if row is not None else 0

        cursor = await self._run("subscribe", last_id)
        if self._poller is None or self._poller.done():
            self._poller = asyncio.get_running_loop().create_task(
                self._poll_forever(), name="fast-state-poller"
            )
        return cursor

    async def _poll_forever(self) -> None:
        next_sweep = 0.0
        failing = False
        mark: tuple[int, ...] | None = None
        next_full = 0.0
        while True:
            # Sleep first: a subscription that just became live has nothing to read yet.
            await asyncio.sleep(self._poll_interval)
            try:
                # Every commit, from any process, writes the WAL file: while neither file changed
                # there is nothing new to read, and a stat is far cheaper than a query on the
                # thread (idle CPU 8 -> 3 ms/s, measured). A full read every _FULL_POLL seconds
                # covers a change the file times could miss (a coarse clock tick).
                seen, now = _file_mark(self._path), time.monotonic()
                self._check_file()
                if failing or seen is None or seen != mark or now >= next_full:
                    await self.poll()
                    mark, next_full = seen, now + _FULL_POLL
                if self._clock.time() >= next_sweep:
                    next_sweep = self._clock.time() + self._sweep_interval
                    await self._sweep_quietly()
                failing = False
            except StateUnavailable as exc:
                if not failing:
                    # Messages published meanwhile are still in the feed for a while, but a reader
                    # cannot know that it will catch up in time: its consumers flush their caches.
                    _log.warning("fast state feed unreadable: %s", exc)
                    for subscription in list(self._subscriptions):
                        if subscription.live:
                            subscription._interrupted()
                failing = True

    async def poll(self) -> int:
        """Read the feed once and deliver new messages; returns how many were read.

        The poller calls it every ``poll_interval``; public so a test can drive it.

        Raises:
            StateUnavailable: the file cannot be read.
        """
        total = 0
        while True:
            live = [s for s in self._subscriptions if s.live]
            if not live:
                return total
            after = min(s.cursor for s in live if s.cursor is not None)

            def read(conn: sqlite3.Connection, _now: float, after: int = after) -> list[_Row]:
                return conn.execute(
                    "SELECT id, channel, payload FROM messages WHERE id > ? ORDER BY id LIMIT ?",
                    (after, _POLL_BATCH),
                ).fetchall()

            rows = await self._run("poll", read)
            if not rows:
                return total
            self._deliver(rows)
            total += len(rows)
            if len(rows) < _POLL_BATCH:
                return total

    def _deliver(self, rows: Sequence[_Row]) -> None:
        first, last = rows[0][0], rows[-1][0]
        for subscription in [s for s in self._subscriptions if s.live]:
            cursor = subscription.cursor
            assert cursor is not None
            if cursor < first - 1:
                # Ids are gap-free in commit order: the missing ones were pruned before we read them.
                subscription._interrupted()
            for row_id, channel, payload in rows:
                if row_id > cursor and channel == subscription.channel:
                    subscription._deliver(bytes(payload))
            subscription.cursor = max(cursor, last)

    async def _sweep_quietly(self) -> None:
        """The poller's clean-up: it waits for another process's write lock only briefly, and a miss
        is retried at the next interval. This instance has one thread: a sweep waiting out the whole
        ``op_timeout`` behind a held lock made every read queued behind it time out too, a 503 for a
        request that only reads (a test that holds the lock saw the admin listener answer one)."""
        try:
            await self.sweep(within=min(self._op_timeout, _SWEEP_WAIT))
        except StateUnavailable as exc:
            _log.debug("fast state clean-up skipped: %s", exc)

    async def sweep(self, *, within: float | None = None) -> int:
        """Delete up to ``sweep_batch`` expired keys and as many messages older than ``retention``.

        The poller calls it every ``sweep_interval``; public so a test or an operator hook can force
        one. Returns how many rows were deleted. ``within``: seconds it may take (``op_timeout``).

        Raises:
            StateUnavailable: the file cannot be written.
        """
        batch, retention = self._sweep_batch, self._retention

        def sweep(conn: sqlite3.Connection, now: float) -> int:
            with _immediate(conn):
                keys = conn.execute(
                    "DELETE FROM kv WHERE key IN"
                    " (SELECT key FROM kv WHERE expires_at IS NOT NULL AND expires_at <= ? LIMIT ?)",
                    (now, batch),
                ).rowcount
                messages = conn.execute(
                    "DELETE FROM messages WHERE id IN (SELECT id FROM messages WHERE at < ? ORDER BY id LIMIT ?)",
                    (now - retention, batch),
                ).rowcount
            return int(keys) + int(messages)

        return await self._run("sweep", sweep, within=within)


def _file_mark(path: Path) -> tuple[int, ...] | None:
    """Identity, size and modification time of the database and its WAL; None if either is missing."""
    try:
        db, wal = os.stat(path), os.stat(f"{path}-wal")
    except OSError:
        return None
    return (db.st_ino, db.st_size, db.st_mtime_ns, wal.st_ino, wal.st_size, wal.st_mtime_ns)


def _is_busy(exc: BaseException) -> bool:
    # SQLITE_BUSY / SQLITE_LOCKED: another process holds the write lock; the connection is fine.
    text = str(exc)
    return isinstance(exc, sqlite3.OperationalError) and ("locked" in text or "busy" in text)


def _live_row(conn: sqlite3.Connection, name: str, now: float) -> tuple[bytes, float | None] | None:
    row = conn.execute(_GET_LIVE, (name, now)).fetchone()
    return None if row is None else (bytes(row[0]), row[1])


@contextlib.contextmanager
def _immediate(conn: sqlite3.Connection) -> Iterator[None]:
    """A write transaction that takes the database's write lock before its first read.

    ``BEGIN IMMEDIATE`` is what makes read-modify-write atomic across processes: with a plain
    ``BEGIN`` two processes could both read the old value and one would fail (or overwrite) later.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _open(path: Path, busy_timeout: float) -> sqlite3.Connection:
    create_private(path)  # SQLite would create it with the umask
    conn = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
    try:
        (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
        if str(mode).lower() != "wal":
            # Without WAL every read would wait for writers (and vice versa) across all processes.
            raise sqlite3.OperationalError(f"{path}: WAL journal mode unavailable (got {mode!r})")
        conn.execute("PRAGMA synchronous = NORMAL")
        # Deleted values are overwritten, not left in free pages: an erased person's session record,
        # address and user agent must not stay readable in the file (an attack run found them).
        conn.execute("PRAGMA secure_delete = ON")
        conn.executescript(_SCHEMA)
    except BaseException:
        conn.close()
        raise
    return conn
