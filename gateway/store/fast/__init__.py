"""Fast state: sessions, one-time challenges, rate-limit counters and the cross-replica broadcast.

``open_fast_state(None)`` keeps it in this process (one node); ``open_fast_state("redis://...")`` shares
it through Redis (standalone, Sentinel or Cluster; see ``url.py``). Both satisfy ``FastState`` and fail
closed with ``StateUnavailable``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from gateway.store.fast.base import FastState, StateUnavailable, Subscription
from gateway.store.fast.memory import MemoryFastState
from gateway.store.fast.redis import RedisFastState
from gateway.store.fast.url import RedisMode, RedisTarget, parse_redis_url

__all__ = [
    "FastState",
    "MemoryFastState",
    "RedisFastState",
    "RedisMode",
    "RedisTarget",
    "StateUnavailable",
    "Subscription",
    "open_fast_state",
    "parse_redis_url",
]


def open_fast_state(
    redis_url: str | None,
    *,
    namespace: str = "gw:",
    clock: Callable[[], float] = time.monotonic,
    connect_timeout: float = 0.5,
    op_timeout: float = 1.0,
) -> FastState:
    """Open the fast state the configuration asks for.

    Nothing connects here; the first call does (and raises ``StateUnavailable`` if it cannot), so a
    gateway can start while Redis is still coming up and report it through its health check.

    Args:
        redis_url: A Redis URL, or None for the in-process store.
        namespace: Prefix of every Redis key and channel (ignored in process).
        clock: Monotonic clock for the in-process store's TTLs (Redis keeps its own time).
        connect_timeout: Seconds to connect to Redis.
        op_timeout: Seconds to wait for a Redis reply.

    Raises:
        ValueError: ``redis_url`` is malformed; the message lists the accepted shapes.
    """
    if redis_url is None:
        return MemoryFastState(clock=clock)
    return RedisFastState.from_url(
        redis_url, namespace=namespace, connect_timeout=connect_timeout, op_timeout=op_timeout
    )
