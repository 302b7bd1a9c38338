"""The fast-state interface: what sessions, challenges, rate limits and invalidations are stored in.

Two implementations share this contract (see ``memory.py`` and ``redis.py``); the test suite runs the
same cases against both. Everything here is about *short-lived* state: values expire, counters reset,
messages on a channel are best-effort. Durable data lives in the SQL store.

Errors::

    ServiceUnavailable (gateway.errors, 503)
    └── StateUnavailable     the backend cannot be reached or answered with an error

Every backend failure is converted to ``StateUnavailable`` at the boundary. Callers never see a
``redis`` exception, so "the store is down" has one spelling and one safe answer: refuse (fail closed),
never treat a missing answer as "no session" or "not rate limited".
"""

from __future__ import annotations

from types import TracebackType
from typing import Protocol, Self, runtime_checkable

from gateway.errors import ServiceUnavailable

__all__ = ["FastState", "StateUnavailable", "Subscription", "validate_ttl"]


class StateUnavailable(ServiceUnavailable):
    """The fast state cannot answer (connection refused, timeout, cluster down, closed)."""

    reason = "state-unavailable"
    title = "Session store unavailable"
    public_message = "Sign-in is unavailable right now; try again in a minute."


@runtime_checkable
class Subscription(Protocol):
    """A subscription to one channel: an async iterator of message payloads.

    Delivery is best-effort and at-most-once. Two counters tell a consumer when it may have missed
    something, so a cache fed by invalidations can flush itself instead of serving stale decisions:

    * ``dropped``: messages discarded locally because the consumer fell behind (oldest go first).
    * ``interruptions``: times the underlying connection was lost; anything published while it
      was down is gone.

    Usable as ``async with state.subscribe("ch") as sub: async for msg in sub: ...``. Entering the
    context waits until the subscription is live, so a message published afterwards is received.
    Iteration ends after ``close()``.
    """

    @property
    def dropped(self) -> int:
        """Messages discarded because the local buffer was full."""
        ...

    @property
    def interruptions(self) -> int:
        """Times the subscription lost its connection (messages published meanwhile are lost)."""
        ...

    async def wait_ready(self) -> None:
        """Wait until the subscription is live (wrap in ``asyncio.timeout`` for a shorter bound).

        Raises:
            StateUnavailable: not live within the backend's ready timeout, or closed.
        """
        ...

    def __aiter__(self) -> Self: ...

    async def __anext__(self) -> bytes: ...

    async def close(self) -> None:
        """Stop receiving; a pending or later ``__anext__`` ends the iteration."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


@runtime_checkable
class FastState(Protocol):
    """Short-lived key/value state, counters and a broadcast channel shared by gateway replicas.

    Keys and channels are plain strings; the implementation prefixes them with its namespace. TTLs
    are in seconds (fractions allowed, must be positive); ``None`` means no expiry. Every method may
    raise ``StateUnavailable``.
    """

    async def get(self, key: str) -> bytes | None:
        """Return the value at ``key``, or None if absent or expired."""
        ...

    async def set(
        self, key: str, value: bytes, *, ttl: float | None = None, only_if_absent: bool = False
    ) -> bool:
        """Store ``value`` at ``key``.

        Args:
            key: The key.
            value: The payload.
            ttl: Seconds until the key expires; None keeps it until deleted.
            only_if_absent: Store only if no live value exists (claim a name, dedupe a request).

        Returns:
            False if ``only_if_absent`` and the key exists; True otherwise.
        """
        ...

    async def delete(self, *keys: str) -> int:
        """Delete ``keys``; return how many existed."""
        ...

    async def drop_old_pages(self) -> None:
        """After deletions that must leave no trace (an erasure): write away old copies of the deleted
        values the store keeps on disk (the embedded store's write-ahead log); nothing for the others."""
        ...

    async def take(self, key: str) -> bytes | None:
        """Atomically get and delete ``key``.

        For single-use codes and challenges: of any number of concurrent callers exactly one gets the
        value, so a replayed code is refused even when the replay races the original.
        """
        ...

    async def incr_window(self, key: str, *, window: float, amount: int = 1) -> int:
        """Atomically add ``amount`` to a fixed-window counter and return the new count.

        The window starts at the first increment and the key expires ``window`` seconds later;
        later increments do not extend it (so a client hammering a limit cannot keep it alive
        forever, and one that stops is forgiven on time).
        """
        ...

    async def compare_and_set(
        self, key: str, expected: bytes | None, new: bytes | None, *, ttl: float | None = None
    ) -> bool:
        """Atomically replace ``expected`` by ``new`` at ``key``.

        Args:
            key: The key.
            expected: The value that must be present; None means the key must be absent.
            new: The value to store; None deletes the key.
            ttl: Expiry for ``new`` as in ``set`` (None: no expiry, an existing TTL is dropped).

        Returns:
            True if the value matched and was replaced, False otherwise.
        """
        ...

    async def publish(self, channel: str, message: bytes) -> None:
        """Send ``message`` to every current subscriber of ``channel`` (on every replica)."""
        ...

    def subscribe(self, channel: str) -> Subscription:
        """Subscribe to ``channel``; see ``Subscription`` for the delivery guarantees."""
        ...

    async def ping(self) -> None:
        """Check the backend answers.

        Raises:
            StateUnavailable: it does not.
        """
        ...

    async def close(self) -> None:
        """Close subscriptions and connections. Later calls raise ``StateUnavailable``."""
        ...


def validate_ttl(ttl: float | None, *, name: str = "ttl") -> None:
    """Reject a non-positive TTL or window.

    A zero or negative TTL is always a caller bug; storing a value that is already expired (or,
    with Redis, failing deep in the command) would hide it.

    Raises:
        ValueError: ``ttl`` is not None and not > 0.
    """
    if ttl is not None and not ttl > 0:
        raise ValueError(f"{name} must be a positive number of seconds, got {ttl!r}")
