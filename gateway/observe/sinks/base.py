"""What every sink shares: a bounded queue, one delivery task, batching, retries, counters, flush.

The request path only calls :meth:`Sink.offer` (an append to a bounded deque): a full queue drops
the event and counts it, so a sink that is down or slow costs requests nothing (a local file's write
runs on the loop while it is quick, see :mod:`gateway.observe.sinks.stream`). What a full queue drops
is an access entry: a security event or checkpoint takes the place of the oldest queued access entry,
and is dropped itself only when the queue holds nothing else (an attack run: a flood of anonymous
requests to a slow collector dropped every sign-in failure and the lock-out). The delivery task takes
batches off the queue and hands them to :meth:`Sink.send`; a failed batch is retried with exponential
back-off (0.2 s doubling up to 30 s) and dropped, counted, after ``retries`` attempts, so one bad
collector never wedges a sink for good.

A sink whose transport bounds a message's size (syslog over UDP) cuts an event that does not fit and
notes it (:meth:`Sink._cut`), or, should even the cut-down event not fit, leaves it out and notes that
(:meth:`Sink._unsendable`): counted in ``truncated``, or as dropped rather than sent, and warned about
at most once a minute. Before, an event over 65,000 bytes vanished and was counted as sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Iterable

    from gateway.observe.access import Entry

__all__ = ["Delivery", "PermanentError", "Sink", "SinkStats", "terminal_safe"]

logger = logging.getLogger("gateway.observe.sinks")

_FIRST_BACKOFF: Final = 0.2
_MAX_BACKOFF: Final = 30.0
# Entry.stream of the events a full queue drops: access entries, one per request. Any other stream
# (security events, audit checkpoints) is kept in an access entry's place.
_ACCESS: Final = "access"
# Seconds between two warnings that a queue of nothing but security events dropped one.
_WARN_EVERY: Final = 60.0


# C1 controls (U+0080-U+009F) and the Unicode line and paragraph separators, UTF-8 encoded. JSON lets them
# through raw, but a terminal reads U+009B as an escape sequence's start (an attack run cleared an
# operator's screen through the User-Agent), and Python's str.splitlines() breaks a line at U+0085 and
# U+2028 (a checked log then failed `gateway audit verify --checkpoint`).
_UNSAFE: Final = re.compile(rb"\xc2[\x80-\x9f]|\xe2\x80[\xa8\xa9]")


def _escaped(match: re.Match[bytes]) -> bytes:
    return b"\\u%04x" % ord(match.group().decode("utf-8"))


def terminal_safe(data: bytes) -> bytes:
    """JSON bytes with the C1 controls and the line separators escaped (``\\u009b``), still the same
    JSON: what every sink writes, as files, syslog and collectors all end up on someone's terminal
    (another attack run found the syslog and HTTP sinks sending them raw)."""
    # The search is memchr-fast; the substitution runs only for data that holds such a character.
    if b"\xc2" in data or b"\xe2\x80" in data:
        return _UNSAFE.sub(_escaped, data)
    return data


class PermanentError(Exception):
    """The collector refused the batch for good (e.g. HTTP 400): retrying would only repeat it."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """How a sink queues and batches: events it may hold, events per delivery, how long it waits for a
    batch to fill, attempts per batch."""

    queue_size: int = 10_000
    batch_size: int = 100
    flush_interval: float = 0.0
    retries: int = 5


@dataclass(frozen=True, slots=True)
class SinkStats:
    """Counters of one sink since start. ``queued`` counts accepted events, ``dropped`` events lost
    (queue full, retries exhausted, refused, or still queued at shutdown), ``dropped_security`` the
    security events and checkpoints among them, ``failures`` failed delivery attempts, ``pending``
    events waiting now, ``truncated`` events sent cut down to fit the transport (counted in ``sent``
    as well)."""

    queued: int
    sent: int
    dropped: int
    failures: int
    pending: int
    dropped_security: int = 0
    truncated: int = 0


class Sink:
    """Base class: subclasses implement :meth:`send` (and :meth:`open` / :meth:`aclose` if they hold
    connections or files)."""

    def __init__(self, name: str, delivery: Delivery) -> None:
        self.name = name
        # A deque and one wake-up future rather than asyncio.Queue: offer() runs once per request,
        # and Queue's put/get/task_done bookkeeping was a third of the access log's cost.
        self._queue: deque[Entry] = deque()
        # Security events and checkpoints that stood at the front of _queue when a full queue made
        # room for one (_make_room): delivered before _queue, so _head + _queue stays in arrival order.
        self._head: deque[Entry] = deque()
        # How many entries _queue may hold: queue_size less those in _head. offer() compares with it
        # alone, so the not-full case costs what it did before there was a _head.
        self._room = self._capacity = delivery.queue_size
        self._wakeup: asyncio.Future[None] | None = None
        self._idle = asyncio.Event()
        self._batch_size = delivery.batch_size
        self._flush_interval = delivery.flush_interval
        self._retries = delivery.retries
        self._task: asyncio.Task[None] | None = None
        # The batch being gathered or delivered: counted as pending, and as dropped if shutdown cuts it.
        self._batch: list[Entry] = []
        self._closing = False
        self._failing = False
        self._queued = self._sent = self._dropped = self._failures = 0
        self._dropped_security = 0
        self._truncated = 0
        # What the current delivery attempt cut down, and the entries it could not send at all
        # (_cut, _unsendable): counted when the attempt succeeds (a failed one is retried whole).
        self._attempt_cut = 0
        self._attempt_lost: list[Entry] = []
        self._oversize_warned_at: float | None = None
        # How many entries of _head are expendable security events (Entry.expendable).
        self._expendable = 0
        self._warned_at: float | None = None

    def offer(self, entry: Entry) -> None:
        """Enqueue without waiting; never raises. A full queue drops an access entry (counted): this
        one, or for a security event or checkpoint the oldest queued one (see :meth:`_make_room`)."""
        if len(self._queue) >= self._room:
            if entry.stream == _ACCESS:
                self._dropped += 1
            else:
                self._make_room(entry)
            return
        self._queue.append(entry)
        self._queued += 1
        wakeup = self._wakeup
        if wakeup is not None and not wakeup.done():
            wakeup.set_result(None)

    def _make_room(self, entry: Entry) -> None:
        """The queue is full and ``entry`` is a security event or checkpoint: the oldest queued access
        entry makes way for it (counted as dropped). Only a queue of nothing but security events and
        checkpoints drops ``entry`` itself: counted in ``dropped_security`` as well, and a warning at
        most once a minute.

        Security events ahead of the oldest access entry move to ``_head``, which is delivered first,
        so the order of events is kept; each moves once, so this costs O(1) per event amortised.
        """
        queue, head = self._queue, self._head
        while queue:
            oldest = queue.popleft()
            if oldest.stream == _ACCESS:
                self._dropped += 1
                queue.append(entry)
                self._queued += 1
                return
            head.append(oldest)
            self._expendable += oldest.expendable
            self._room -= 1
        self._dropped += 1
        self._dropped_security += 1
        if not entry.expendable and self._expendable:
            # Nothing but security events: a refused attempt (a failure that is no alert) makes way for
            # a checkpoint, an alert, a lock-out or a change. Anyone can cause refusals by the thousand
            # (junk logout tokens, wrong passwords from many addresses: a re-attack run filled the
            # queue with them, and the lock-out and the checkpoint after them were the ones dropped).
            for index, queued in enumerate(head):
                if queued.expendable:
                    del head[index]
                    self._expendable -= 1
                    self._room += 1
                    queue.append(entry)
                    self._queued += 1
                    return
        now = time.monotonic()
        if self._warned_at is None or now - self._warned_at >= _WARN_EVERY:
            self._warned_at = now
            logger.warning(
                "log sink %s dropped a security event: its queue holds %d security events and nothing "
                "else (%d dropped so far)",
                self.name,
                len(head),
                self._dropped_security,
            )

    def stats(self) -> SinkStats:
        """A snapshot of the counters."""
        return SinkStats(
            queued=self._queued,
            sent=self._sent,
            dropped=self._dropped,
            failures=self._failures,
            pending=len(self._head) + len(self._queue) + len(self._batch),
            dropped_security=self._dropped_security,
            truncated=self._truncated,
        )

    async def open(self) -> None:
        """Acquire what the sink needs (a client session); connections open lazily in send()."""

    async def send(self, batch: list[Entry]) -> None:
        """Deliver a batch or raise. Must bound its own waiting (timeouts). An entry the transport
        cannot carry whole is cut down (:meth:`_cut`) or, failing that, left out (:meth:`_unsendable`)."""
        raise NotImplementedError

    def _cut(self) -> None:
        """For :meth:`send`: an entry goes out cut down to fit the transport."""
        self._attempt_cut += 1

    def _unsendable(self, entry: Entry) -> None:
        """For :meth:`send`: ``entry`` does not fit the transport even cut down and is left out."""
        self._attempt_lost.append(entry)

    async def aclose(self) -> None:
        """Release connections and files."""

    async def start(self) -> None:
        """Open the sink and start its delivery task."""
        await self.open()
        self._task = asyncio.create_task(self._run(), name=f"log-sink-{self.name}")

    async def close(self, grace: float) -> None:
        """Deliver what is queued for at most ``grace`` seconds, then stop; the rest counts as dropped."""
        self._closing = True
        if self._task is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    await self._drained()
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        lost = (*self._head, *self._queue, *self._batch)
        self._dropped += len(lost)
        self._dropped_security += _security_in(lost)
        self._batch = []
        self._head.clear()
        self._expendable = 0
        self._queue.clear()
        self._room = self._capacity
        try:
            await self.aclose()
        except Exception:  # shutdown must go on for the other sinks
            logger.warning("log sink %s did not close cleanly", self.name, exc_info=True)

    async def _drained(self) -> None:
        # The delivery task sets _idle whenever it runs out of events to deliver.
        while self._head or self._queue or self._batch:
            self._idle.clear()
            await self._idle.wait()

    async def _run(self) -> None:
        while True:
            batch = self._batch = []
            await self._gather(batch)
            await self._deliver(batch)
            self._batch = []

    async def _gather(self, batch: list[Entry]) -> None:
        while not self._queue and not self._head:
            self._idle.set()
            self._wakeup = asyncio.get_running_loop().create_future()
            try:
                await self._wakeup
            finally:
                self._wakeup = None
        waiting = len(self._head) + len(self._queue)
        if self._flush_interval > 0 and not self._closing and waiting < self._batch_size:
            # Let the batch fill by sleeping once, not by waking up for every event: under load a
            # wake-up per request was most of the access log's cost (measured with the guard).
            await asyncio.sleep(self._flush_interval)
        self._drain_into(batch)

    def _drain_into(self, batch: list[Entry]) -> None:
        if self._head:
            take = min(self._batch_size - len(batch), len(self._head))
            popleft = self._head.popleft
            taken = [popleft() for _ in range(take)]
            batch.extend(taken)
            self._room += take
            self._expendable -= sum(queued.expendable for queued in taken)
        take = min(self._batch_size - len(batch), len(self._queue))
        popleft = self._queue.popleft
        batch.extend(popleft() for _ in range(take))

    async def _deliver(self, batch: list[Entry]) -> None:
        delay = _FIRST_BACKOFF
        for attempt in range(1, self._retries + 1):
            self._attempt_cut = 0
            self._attempt_lost = []
            try:
                await self.send(batch)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure of a collector is retried, never raised
                self._failures += 1
                if not self._failing:
                    # Once per outage, not per attempt: a dead collector must not flood the log.
                    self._failing = True
                    logger.warning("log sink %s failed, retrying: %s", self.name, _describe(exc))
                if isinstance(exc, PermanentError) or attempt == self._retries:
                    break
                await asyncio.sleep(delay)
                delay = min(delay * 2, _MAX_BACKOFF)
            else:
                self._sent += len(batch) - len(self._attempt_lost)
                if self._attempt_cut or self._attempt_lost:
                    self._count_oversize()
                if self._failing:
                    self._failing = False
                    logger.warning("log sink %s delivers again", self.name)
                return
        self._dropped += len(batch)
        self._dropped_security += _security_in(batch)

    def _count_oversize(self) -> None:
        """Count what the successful attempt cut down or left out; warn at most once a minute."""
        lost = self._attempt_lost
        self._truncated += self._attempt_cut
        self._dropped += len(lost)
        self._dropped_security += _security_in(lost)
        now = time.monotonic()
        if self._oversize_warned_at is None or now - self._oversize_warned_at >= _WARN_EVERY:
            self._oversize_warned_at = now
            logger.warning(
                "log sink %s: events too large for its transport: %d cut down to fit, %d dropped (%d of "
                "them security events); since start %d cut down, %d security events dropped for any reason",
                self.name,
                self._attempt_cut,
                len(lost),
                _security_in(lost),
                self._truncated,
                self._dropped_security,
            )


def _security_in(entries: Iterable[Entry]) -> int:
    """How many of ``entries`` are security events or checkpoints (on the paths that lose events)."""
    return sum(entry.stream != _ACCESS for entry in entries)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
