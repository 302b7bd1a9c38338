"""Fast state in Redis (standalone, Sentinel or Cluster), shared by every gateway replica.

This sits on the request path, so it is tuned to fail fast rather than to ride out outages: short
socket timeouts, one immediate retry, and every backend error converted to ``StateUnavailable`` at
this boundary so callers fail closed with a 503 instead of hanging or mistaking an outage for
"no session".

Atomicity: ``take`` is ``GETDEL``; ``incr_window`` and ``compare_and_set`` are Lua scripts. Each
script touches exactly one key, so in a cluster it runs on the node owning that key's slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from types import TracebackType
from typing import Any, Self, cast

from redis.asyncio.client import PubSub
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import RedisClusterException, RedisError

from gateway.store.fast.base import StateUnavailable, validate_ttl
from gateway.store.fast.url import RedisClient, build_client, parse_redis_url

__all__ = ["RedisFastState", "RedisSubscription"]

_log = logging.getLogger(__name__)

# Everything redis-py (and the sockets under it) can raise on a failed call. RedisClusterException
# is not a RedisError subclass, hence listed on its own.
_BACKEND_ERRORS = (RedisError, RedisClusterException, OSError, TimeoutError)

# Start (or keep) a fixed window: a counter with no expiry gets one, so no counter can become
# permanent even if something wrote the key without a TTL.
_INCR_WINDOW = """
local n = redis.call('INCRBY', KEYS[1], ARGV[1])
if redis.call('PTTL', KEYS[1]) < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return n
"""

# ARGV: expected_present ('0'/'1'), expected, new_present ('0'/'1'), new, ttl_ms (0 = none).
_COMPARE_AND_SET = """
local current = redis.call('GET', KEYS[1])
if ARGV[1] == '1' then
  if current ~= ARGV[2] then return 0 end
elseif current then
  return 0
end
if ARGV[3] == '1' then
  local ttl = tonumber(ARGV[5])
  if ttl > 0 then
    redis.call('SET', KEYS[1], ARGV[4], 'PX', ttl)
  else
    redis.call('SET', KEYS[1], ARGV[4])
  end
else
  redis.call('DEL', KEYS[1])
end
return 1
"""


def _ms(seconds: float) -> int:
    # Round up: a TTL must never be shortened to 0 ms (which Redis rejects) or below what was asked.
    return max(1, math.ceil(seconds * 1000))


@contextlib.contextmanager
def _boundary(operation: str) -> Iterator[None]:
    """Convert backend errors into ``StateUnavailable`` (the original stays chained for the log)."""
    try:
        yield
    except _BACKEND_ERRORS as exc:
        raise StateUnavailable(f"fast state {operation} failed ({type(exc).__name__})") from exc


class RedisSubscription:
    """One channel on its own pub/sub connection, read by a background task.

    The task reconnects with exponential back-off and jitter (so replicas do not stampede a Redis that
    just came back) and sends a PING after ``health_interval`` seconds of silence; no answer within
    another interval counts as a dead connection, which catches half-open TCP sessions. Messages go to
    a bounded buffer that drops the oldest when the consumer is slow, so a stuck consumer cannot grow
    memory without bound.
    """

    def __init__(
        self,
        client: RedisClient,
        channel: str,
        *,
        buffer: int,
        ready_timeout: float,
        health_interval: float,
        backoff: tuple[float, float],
        on_close: Callable[[RedisSubscription], None],
    ) -> None:
        self.channel = channel
        self._client = client
        self._limit = buffer
        self._ready_timeout = ready_timeout
        self._health_interval = health_interval
        self._backoff = backoff
        self._on_close = on_close
        self._buffer: deque[bytes] = deque()
        self._wakeup = asyncio.Event()
        self._live = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._dropped = 0
        self._interruptions = 0
        self._last_error: BaseException | None = None
        with contextlib.suppress(RuntimeError):  # no running loop: start on first await instead
            self._start()

    @property
    def dropped(self) -> int:
        """Messages discarded because the buffer was full."""
        return self._dropped

    @property
    def interruptions(self) -> int:
        """Times a live subscription lost its connection."""
        return self._interruptions

    def _start(self) -> None:
        if self._task is None and not self._closed:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"fast-state-subscription:{self.channel}"
            )

    def _deliver(self, message: bytes) -> None:
        if len(self._buffer) >= self._limit:
            self._buffer.popleft()
            self._dropped += 1
        self._buffer.append(message)
        self._wakeup.set()

    def _lost(self, exc: BaseException) -> None:
        self._last_error = exc
        if self._live.is_set():
            self._interruptions += 1
            self._live.clear()

    async def _run(self) -> None:
        delay = self._backoff[0]
        while not self._closed:
            pubsub = self._client.pubsub()
            try:
                await pubsub.subscribe(self.channel)
                await self._pump(pubsub)
            # Broad on purpose: whatever breaks one connection, the reader must keep reconnecting,
            # because a dead reader would silently stop cache invalidations on this replica.
            except Exception as exc:  # noqa: BLE001
                if self._live.is_set():
                    # It worked until now: the outage is new, so retry quickly before backing off.
                    delay = self._backoff[0]
                    _log.warning("fast state subscription %s lost: %r", self.channel, exc)
                self._lost(exc)
            finally:
                with contextlib.suppress(*_BACKEND_ERRORS):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
            # Full jitter keeps a fleet of replicas from reconnecting in lockstep.
            await asyncio.sleep(random.uniform(delay / 2, delay))  # noqa: S311 - not security relevant
            delay = min(delay * 2, self._backoff[1])

    async def _pump(self, pubsub: PubSub) -> None:
        awaiting_pong = False
        while True:
            message = cast(
                dict[str, Any] | None,
                await pubsub.get_message(timeout=self._health_interval),
            )
            if message is None:
                if awaiting_pong:
                    raise TimeoutError("pub/sub connection did not answer a ping")
                await pubsub.ping()
                awaiting_pong = True
                continue
            awaiting_pong = False
            kind = message["type"]
            if kind == "message":
                self._deliver(bytes(message["data"]))
            elif kind == "subscribe":
                # A second confirmation means redis-py reconnected and resubscribed on its own:
                # messages may have been lost in between, which the consumer must learn about.
                if self._live.is_set():
                    self._interruptions += 1
                self._live.set()
            elif kind == "unsubscribe":  # e.g. the cluster moved the channel's slot: start over
                raise RedisError("unsubscribed by the server")

    async def wait_ready(self) -> None:
        """Wait until the server confirmed the subscription.

        Raises:
            StateUnavailable: not confirmed within the store's ``ready_timeout``, or closed.
        """
        if self._closed:
            raise StateUnavailable("subscription is closed")
        self._start()
        try:
            async with asyncio.timeout(self._ready_timeout):
                await self._live.wait()
        except TimeoutError:
            raise StateUnavailable("fast state subscribe failed (not confirmed in time)") from (
                self._last_error
            )

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> bytes:
        self._start()
        while not self._buffer:
            if self._closed:
                raise StopAsyncIteration
            self._wakeup.clear()
            await self._wakeup.wait()
        return self._buffer.popleft()

    async def close(self) -> None:
        """Stop the reader task, close its connection and end iteration."""
        if self._closed:
            return
        self._closed = True
        self._on_close(self)
        self._buffer.clear()
        self._wakeup.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

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


class RedisFastState:
    """``FastState`` on Redis. Keys and channels are prefixed with ``namespace``."""

    def __init__(
        self,
        client: RedisClient,
        *,
        namespace: str = "gw:",
        sentinel: Sentinel | None = None,
        subscription_buffer: int = 1024,
        ready_timeout: float = 2.0,
        health_interval: float = 5.0,
        reconnect_backoff: tuple[float, float] = (0.1, 5.0),
    ) -> None:
        """Wrap an already-built client (see ``from_url``); this object owns and closes it.

        Args:
            client: A redis-py asyncio ``Redis`` or ``RedisCluster`` without ``decode_responses``.
            namespace: Prefix of every key and channel, so several deployments can share a Redis.
            sentinel: The ``Sentinel`` that made ``client``, closed together with it.
            subscription_buffer: Messages buffered per subscription before the oldest are dropped.
            ready_timeout: Seconds ``Subscription.wait_ready`` (and ``async with``) waits by default.
            health_interval: Seconds of pub/sub silence before a PING checks the connection.
            reconnect_backoff: First and largest delay between pub/sub reconnection attempts.
        """
        if subscription_buffer < 1:
            raise ValueError("subscription_buffer must be >= 1")
        self._client = client
        self._sentinel = sentinel
        self._namespace = namespace
        self._subscription_buffer = subscription_buffer
        self._ready_timeout = ready_timeout
        self._health_interval = health_interval
        self._reconnect_backoff = reconnect_backoff
        self._subscriptions: set[RedisSubscription] = set()
        self._closed = False
        self._incr_window = client.register_script(_INCR_WINDOW)
        self._compare_and_set = client.register_script(_COMPARE_AND_SET)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        namespace: str = "gw:",
        connect_timeout: float = 0.5,
        op_timeout: float = 1.0,
        retries: int = 1,
        **options: Any,
    ) -> RedisFastState:
        """Connect (lazily) to the Redis that ``url`` names; see ``url.py`` for the accepted shapes.

        Args:
            url: The Redis URL.
            namespace: Key and channel prefix.
            connect_timeout: Seconds to establish a connection.
            op_timeout: Seconds to wait for a reply.
            retries: Immediate retries after a connection error or timeout.
            **options: Passed to ``RedisFastState.__init__``.

        Raises:
            ValueError: the URL is malformed.
        """
        client, sentinel = build_client(
            parse_redis_url(url), connect_timeout=connect_timeout, op_timeout=op_timeout, retries=retries
        )
        return cls(client, namespace=namespace, sentinel=sentinel, **options)

    @property
    def namespace(self) -> str:
        """The prefix of every key and channel."""
        return self._namespace

    def _key(self, key: str) -> str:
        return self._namespace + key

    async def _call(self, operation: str, awaitable: Awaitable[Any]) -> Any:
        if self._closed:
            # Close the coroutine we will not await, or Python warns it was never awaited.
            if asyncio.iscoroutine(awaitable):
                awaitable.close()
            raise StateUnavailable("fast state is closed")
        with _boundary(operation):
            return await awaitable

    async def get(self, key: str) -> bytes | None:
        """See ``FastState.get``."""
        return cast(bytes | None, await self._call("get", self._client.get(self._key(key))))

    async def set(
        self, key: str, value: bytes, *, ttl: float | None = None, only_if_absent: bool = False
    ) -> bool:
        """See ``FastState.set``."""
        validate_ttl(ttl)
        result = await self._call(
            "set",
            self._client.set(self._key(key), value, px=None if ttl is None else _ms(ttl), nx=only_if_absent),
        )
        return bool(result)

    async def drop_old_pages(self) -> None:
        """See ``FastState.drop_old_pages``: Redis's own persistence is the server's (its RDB or AOF
        files are rewritten by the server; README, Privacy)."""

    async def delete(self, *keys: str) -> int:
        """See ``FastState.delete``."""
        if not keys:
            return 0
        names = list(dict.fromkeys(self._key(k) for k in keys))
        return int(await self._call("delete", self._client.delete(*names)))

    async def take(self, key: str) -> bytes | None:
        """See ``FastState.take``."""
        return cast(bytes | None, await self._call("take", self._client.getdel(self._key(key))))

    async def incr_window(self, key: str, *, window: float, amount: int = 1) -> int:
        """See ``FastState.incr_window``."""
        validate_ttl(window, name="window")
        result = await self._call(
            "incr_window", self._incr_window(keys=[self._key(key)], args=[amount, _ms(window)])
        )
        return int(result)

    async def compare_and_set(
        self, key: str, expected: bytes | None, new: bytes | None, *, ttl: float | None = None
    ) -> bool:
        """See ``FastState.compare_and_set``."""
        validate_ttl(ttl)
        args = [
            "0" if expected is None else "1",
            b"" if expected is None else expected,
            "0" if new is None else "1",
            b"" if new is None else new,
            0 if ttl is None else _ms(ttl),
        ]
        result = await self._call("compare_and_set", self._compare_and_set(keys=[self._key(key)], args=args))
        return bool(result == 1)

    async def publish(self, channel: str, message: bytes) -> None:
        """See ``FastState.publish``."""
        await self._call("publish", self._client.publish(self._key(channel), message))

    def subscribe(self, channel: str) -> RedisSubscription:
        """See ``FastState.subscribe``. Call ``wait_ready`` (or use ``async with``) before relying on it."""
        if self._closed:
            raise StateUnavailable("fast state is closed")
        subscription = RedisSubscription(
            self._client,
            self._key(channel),
            buffer=self._subscription_buffer,
            ready_timeout=self._ready_timeout,
            health_interval=self._health_interval,
            backoff=self._reconnect_backoff,
            on_close=self._subscriptions.discard,
        )
        self._subscriptions.add(subscription)
        return subscription

    async def ping(self) -> None:
        """See ``FastState.ping``."""
        await self._call("ping", self._client.ping())

    async def close(self) -> None:
        """Close every subscription, then the client (and the Sentinel connections, if any)."""
        if self._closed:
            return
        self._closed = True
        for subscription in list(self._subscriptions):
            await subscription.close()
        with contextlib.suppress(*_BACKEND_ERRORS):
            await self._client.aclose()
        if self._sentinel is not None:
            with contextlib.suppress(*_BACKEND_ERRORS):
                await self._sentinel.aclose()
