"""Fast state: sessions, one-time challenges, rate-limit counters, blocks and the broadcast.

Three backends satisfy ``FastState`` and fail closed with ``StateUnavailable``:

* ``LocalFastState`` (``local.py``): a SQLite file in ``data_dir`` shared by every process on the node
  (workers, admin listener, CLI). The embedded default: ``state.redis_url`` unset.
* ``RedisFastState`` (``redis.py``): Redis (standalone, Sentinel or Cluster; see ``url.py``), shared by
  every replica.
* ``MemoryFastState`` (``memory.py``): inside one process only; unit tests, and ``state.embedded:
  memory`` for a single-process gateway (benchmarks).

``open_configured_state(settings)`` picks the one the configuration asks for; ``refuse_unverified_tls``
is the start-up check that a ``rediss://`` server's certificate passes verification.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.errors import ConfigError
from gateway.store.fast.base import FastState, StateUnavailable, Subscription
from gateway.store.fast.local import STATE_FILE, LocalFastState
from gateway.store.fast.memory import MemoryFastState
from gateway.store.fast.redis import RedisFastState
from gateway.store.fast.url import RedisMode, RedisTarget, parse_redis_url
from gateway.store.tls import verification_failure

if TYPE_CHECKING:
    from gateway.settings.schema import Settings

__all__ = [
    "STATE_FILE",
    "FastState",
    "LocalFastState",
    "MemoryFastState",
    "RedisFastState",
    "RedisMode",
    "RedisTarget",
    "StateUnavailable",
    "Subscription",
    "open_configured_state",
    "open_fast_state",
    "parse_redis_url",
    "refuse_unverified_tls",
    "shares_state",
    "state_file",
]


def open_fast_state(
    redis_url: str | None,
    *,
    namespace: str = "gw:",
    local_path: str | Path | None = None,
    clock: Clock = SYSTEM_CLOCK,
    connect_timeout: float = 0.5,
    op_timeout: float = 1.0,
) -> FastState:
    """Open a fast state: Redis if ``redis_url``, else the node's file at ``local_path``, else memory.

    Nothing connects or opens a file here; the first call does (and raises ``StateUnavailable`` if it
    cannot), so a gateway can start while Redis is still coming up and report it through its health
    check.

    Args:
        redis_url: A Redis URL, or None.
        namespace: Prefix of every key and channel (Redis and the local file).
        local_path: The shared SQLite file, used when ``redis_url`` is None; None keeps the state in
            this process.
        clock: The in-process store's TTLs run on its monotonic clock, the file's on its Unix time
            (Redis keeps its own).
        connect_timeout: Seconds to connect to Redis.
        op_timeout: Seconds to wait for a Redis reply.

    Raises:
        ValueError: ``redis_url`` is malformed; the message lists the accepted shapes.
    """
    if redis_url is not None:
        return RedisFastState.from_url(
            redis_url, namespace=namespace, connect_timeout=connect_timeout, op_timeout=op_timeout
        )
    if local_path is not None:
        return LocalFastState(local_path, namespace=namespace, clock=clock)
    return MemoryFastState(clock=clock)


def state_file(data_dir: str | Path) -> Path:
    """Where the embedded default keeps the node's shared fast state."""
    return Path(data_dir) / STATE_FILE


def shares_state(settings: Settings) -> bool:
    """Whether other processes (the CLI, the admin listener, other workers) see this fast state.

    False only for ``state.embedded: memory``: the state lives inside one gateway process.
    """
    return settings.state.redis_url is not None or settings.state.embedded == "file"


def open_configured_state(settings: Settings, *, clock: Clock = SYSTEM_CLOCK) -> FastState:
    """The fast state ``settings`` ask for: Redis, the node's shared file, or (opted in) memory."""
    local = state_file(settings.data_dir) if settings.state.embedded == "file" else None
    return open_fast_state(
        settings.state.redis_url, namespace=settings.state.namespace, local_path=local, clock=clock
    )


async def refuse_unverified_tls(settings: Settings) -> None:
    """Ping a ``rediss://`` fast state once and refuse to go on if its certificate was refused.

    The fast state otherwise connects lazily, so a gateway starts while Redis is still coming up and
    reports that through readiness. A certificate that fails verification is different: the CA file
    or the host name in ``state.redis_url`` is wrong, waiting will not fix it, and every request would
    be a 503. Any other failure (refused, timed out) is left to readiness as before.

    Raises:
        ConfigError: The TLS handshake refused the server's certificate (the message says why).
    """
    url = settings.state.redis_url
    if url is None or not parse_redis_url(url).tls:
        return
    state = open_configured_state(settings)
    try:
        await state.ping()
    except StateUnavailable as exc:
        refused = verification_failure(exc)
        if refused is not None:
            raise ConfigError(
                f"state.redis_url: TLS verification of the Redis server failed: {refused}; check"
                " ssl_ca_certs (the CA that issued the server's certificate) and that the host in the"
                " URL is a name the certificate carries"
            ) from None
    finally:
        await state.close()
