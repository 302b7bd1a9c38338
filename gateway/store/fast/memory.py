"""In-process fast state for a single gateway node.

Expiry follows an injected monotonic clock, so tests move the clock instead of sleeping. Expired keys
are removed lazily when touched and by a bounded sweep that runs at most every ``sweep_interval``
seconds on the back of ordinary calls: memory stays proportional to live keys without a background task
and without any single call paying for a full scan.

Every method body runs without awaiting in the middle, so on one event loop each operation is atomic
by construction (the same guarantee the Redis implementation gets from Lua scripts).
"""

from __future__ import annotations

import asyncio
import heapq
import weakref
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import Self

from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.store.fast.base import StateUnavailable, validate_ttl

__all__ = ["MemoryFastState", "MemorySubscription"]


class MemorySubscription:
    """A subscription served from an in-process bounded buffer.

    A slow consumer must never block publishers (publishing happens on the request path), so when the
    buffer is full the oldest message is discarded and counted in ``dropped``.
    """

    def __init__(self, channel: str, *, buffer: int, on_close: Callable[[MemorySubscription], None]) -> None:
        self.channel = channel
        self._buffer: deque[bytes] = deque()
        self._limit = buffer
        self._ready = asyncio.Event()
        self._closed = False
        self._on_close = on_close
        self._dropped = 0

    @property
    def dropped(self) -> int:
        """Messages discarded because the buffer was full."""
        return self._dropped

    @property
    def interruptions(self) -> int:
        """Always 0: an in-process channel has no connection to lose."""
        return 0

    def _deliver(self, message: bytes) -> None:
        if self._closed:
            return
        if len(self._buffer) >= self._limit:
            self._buffer.popleft()
            self._dropped += 1
        self._buffer.append(message)
        self._ready.set()

    async def wait_ready(self) -> None:
        """Return at once: registration happened in ``subscribe``."""
        if self._closed:
            raise StateUnavailable("subscription is closed")

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> bytes:
        while not self._buffer:
            if self._closed:
                raise StopAsyncIteration
            self._ready.clear()
            await self._ready.wait()
        return self._buffer.popleft()

    async def close(self) -> None:
        """Unregister and wake a waiting consumer, whose iteration then ends."""
        if self._closed:
            return
        self._closed = True
        self._buffer.clear()
        self._on_close(self)
        self._ready.set()

    async def __aenter__(self) -> Self:
        await self.wait_ready()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class MemoryFastState:
    """``FastState`` held in this process.

    Values (counters included, stored as ASCII decimal like Redis does) live in a dict of
    ``key -> (value, expires_at | None)``. A min-heap of ``(expires_at, key)`` feeds the sweep; heap
    entries made stale by overwrites are skipped, and the heap is rebuilt when stale entries outnumber
    live ones, so it cannot grow without bound either.
    """

    def __init__(
        self,
        *,
        clock: Clock = SYSTEM_CLOCK,
        sweep_interval: float = 1.0,
        sweep_batch: int = 1000,
        subscription_buffer: int = 1024,
    ) -> None:
        """Create an empty store.

        Args:
            clock: All TTLs are measured on its monotonic clock.
            sweep_interval: Minimum seconds between two sweeps of expired keys.
            sweep_batch: Most expired keys one sweep removes, bounding the latency it adds to a call.
            subscription_buffer: Messages buffered per subscriber before the oldest are dropped.
        """
        if sweep_batch < 1 or subscription_buffer < 1:
            raise ValueError("sweep_batch and subscription_buffer must be >= 1")
        # Bound once: every call reads it.
        self._monotonic = clock.monotonic
        self._data: dict[str, tuple[bytes, float | None]] = {}
        self._expiries: list[tuple[float, str]] = []
        self._volatile = 0
        self._sweep_interval = sweep_interval
        self._sweep_batch = sweep_batch
        self._next_sweep = self._monotonic() + sweep_interval
        self._subscription_buffer = subscription_buffer
        # Weak so a subscription the caller forgot to close does not keep receiving (and holding
        # memory) forever.
        self._subscribers: dict[str, weakref.WeakSet[MemorySubscription]] = {}
        self._closed = False

    # -- internals -------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise StateUnavailable("fast state is closed")

    def _tick(self) -> float:
        """Check the store is open, run a sweep if one is due, and return the current time."""
        self._check_open()
        now = self._monotonic()
        if now >= self._next_sweep:
            self.sweep(now)
        return now

    def _live(self, key: str, now: float) -> bytes | None:
        entry = self._data.get(key)
        if entry is None:
            return None
        value, expires_at = entry
        if expires_at is not None and expires_at <= now:
            self._remove(key)
            return None
        return value

    def _remove(self, key: str) -> bool:
        entry = self._data.pop(key, None)
        if entry is None:
            return False
        if entry[1] is not None:
            self._volatile -= 1
        return True

    def _store(self, key: str, value: bytes, expires_at: float | None) -> None:
        self._remove(key)
        self._data[key] = (value, expires_at)
        if expires_at is not None:
            self._volatile += 1
            heapq.heappush(self._expiries, (expires_at, key))
            # Overwriting a volatile key leaves its old heap entry behind; rebuild once the stale
            # entries dominate so refreshing one session a million times costs O(1) memory.
            if len(self._expiries) > 2 * self._volatile + 64:
                self._expiries = [(exp, k) for k, (_, exp) in self._data.items() if exp is not None]
                heapq.heapify(self._expiries)

    def sweep(self, now: float | None = None) -> int:
        """Remove up to ``sweep_batch`` expired keys; return how many were removed.

        Called automatically; public so an operator hook or a test can force one.
        """
        if now is None:
            now = self._monotonic()
        self._next_sweep = now + self._sweep_interval
        removed = 0
        heap = self._expiries
        while heap and heap[0][0] <= now and removed < self._sweep_batch:
            expires_at, key = heapq.heappop(heap)
            entry = self._data.get(key)
            # Only the entry matching the live expiry counts; others are leftovers of overwrites.
            if entry is not None and entry[1] == expires_at:
                self._remove(key)
                removed += 1
        return removed

    def __len__(self) -> int:
        """Number of stored keys, including expired ones not yet swept."""
        return len(self._data)

    # -- FastState -------------------------------------------------------------------------------

    async def get(self, key: str) -> bytes | None:
        """See ``FastState.get``."""
        return self._live(key, self._tick())

    async def set(
        self, key: str, value: bytes, *, ttl: float | None = None, only_if_absent: bool = False
    ) -> bool:
        """See ``FastState.set``."""
        validate_ttl(ttl)
        now = self._tick()
        if only_if_absent and self._live(key, now) is not None:
            return False
        self._store(key, bytes(value), None if ttl is None else now + ttl)
        return True

    async def drop_old_pages(self) -> None:
        """See ``FastState.drop_old_pages``: nothing is on disk."""

    async def delete(self, *keys: str) -> int:
        """See ``FastState.delete``."""
        now = self._tick()
        count = 0
        for key in dict.fromkeys(keys):  # Redis counts a key named twice once
            if self._live(key, now) is not None:
                self._remove(key)
                count += 1
        return count

    async def take(self, key: str) -> bytes | None:
        """See ``FastState.take``."""
        value = self._live(key, self._tick())
        if value is not None:
            self._remove(key)
        return value

    async def incr_window(self, key: str, *, window: float, amount: int = 1) -> int:
        """See ``FastState.incr_window``."""
        validate_ttl(window, name="window")
        now = self._tick()
        current = self._live(key, now)
        expires_at: float | None = None
        count = amount
        if current is not None:
            try:
                count += int(current)
            except ValueError:
                # Mirrors Redis' "value is not an integer" so both backends fail the same way.
                raise StateUnavailable(f"value at {key!r} is not a counter") from None
            expires_at = self._data[key][1]
        # A counter without an expiry (first increment, or one written by set) gets the window now,
        # so no counter can ever become permanent.
        if expires_at is None:
            expires_at = now + window
        self._store(key, str(count).encode(), expires_at)
        return count

    async def compare_and_set(
        self, key: str, expected: bytes | None, new: bytes | None, *, ttl: float | None = None
    ) -> bool:
        """See ``FastState.compare_and_set``."""
        validate_ttl(ttl)
        now = self._tick()
        if self._live(key, now) != expected:
            return False
        if new is None:
            self._remove(key)
        else:
            self._store(key, bytes(new), None if ttl is None else now + ttl)
        return True

    async def publish(self, channel: str, message: bytes) -> None:
        """See ``FastState.publish``. Never blocks: slow subscribers drop their oldest messages."""
        self._check_open()
        for subscription in list(self._subscribers.get(channel, ())):
            subscription._deliver(bytes(message))

    def subscribe(self, channel: str) -> MemorySubscription:
        """See ``FastState.subscribe``. Live as soon as this returns."""
        self._check_open()
        subscription = MemorySubscription(
            channel, buffer=self._subscription_buffer, on_close=self._unsubscribe
        )
        self._subscribers.setdefault(channel, weakref.WeakSet()).add(subscription)
        return subscription

    def _unsubscribe(self, subscription: MemorySubscription) -> None:
        subscribers = self._subscribers.get(subscription.channel)
        if subscribers is not None:
            subscribers.discard(subscription)
            if not subscribers:
                del self._subscribers[subscription.channel]

    async def ping(self) -> None:
        """See ``FastState.ping``: fails only once closed."""
        self._check_open()

    async def close(self) -> None:
        """See ``FastState.close``."""
        if self._closed:
            return
        for subscribers in list(self._subscribers.values()):
            for subscription in list(subscribers):
                await subscription.close()
        self._closed = True
        self._data.clear()
        self._expiries.clear()
        self._volatile = 0
