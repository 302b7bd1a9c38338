"""How many sessions the fast state holds, for the admin overview, on whichever backend it is.

The ``FastState`` protocol has no way to enumerate keys (the hot path never needs one), so counting
is done beside it, per backend, read-only and bounded:

* the node's file (embedded default): one ``COUNT`` over the primary-key range of the session keys,
  on a connection of its own in a thread — an index range scan, milliseconds for 10^5 sessions;
* Redis: a ``SCAN`` of the session keys (what ``gateway_sessions_active`` counts), a cursor walk that
  costs one round trip per 1000 keys;
* memory (``state.embedded: memory``): each worker's sessions live inside it, out of reach of the
  admin process: no count.

Every stored session counts, also one idle until its expiry ends it; expired rows of the file do
not. A count that fails or takes longer than 2 s is ``None`` with the reason.
"""

from __future__ import annotations

import asyncio
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.observe.metrics import redis_session_count
from gateway.store.fast import FastState, LocalFastState, RedisFastState

__all__ = ["SessionCount", "count_sessions"]

# Every session is stored under this key (see gateway.identity.sessions), after the namespace.
_PREFIX: Final = "sess:"
# A count that takes longer is given up (Redis with very many keys): the overview must answer.
_TIMEOUT: Final = 2.0


@dataclass(frozen=True, slots=True)
class SessionCount:
    """The number of stored sessions, or None and why not."""

    count: int | None
    detail: str = ""


async def count_sessions(
    fast: FastState, *, redis_url: str | None, clock: Clock = SYSTEM_CLOCK
) -> SessionCount:
    """Count the sessions ``fast`` holds (see the module docstring); never raises.

    ``clock`` says which file rows have expired: the one the file's writers use.
    """
    try:
        async with asyncio.timeout(_TIMEOUT):
            if isinstance(fast, LocalFastState):
                return SessionCount(
                    await asyncio.to_thread(_count_file, fast.path, fast.namespace, clock.time())
                )
            if isinstance(fast, RedisFastState) and redis_url:
                return SessionCount(await redis_session_count(redis_url, fast.namespace)())
    except TimeoutError:
        return SessionCount(None, f"not counted within {_TIMEOUT:g} s")
    except Exception as exc:  # noqa: BLE001 - a count is informative; the stores' own probes report outages
        return SessionCount(None, f"cannot count: {type(exc).__name__}")
    return SessionCount(None, "sessions live inside each worker (state.embedded: memory)")


def _count_file(path: Path, namespace: str, now: float) -> int:
    if not path.exists():
        return 0  # created by the first process that stores anything: nobody has signed in yet
    low = namespace + _PREFIX
    # The first key after every "<ns>sess:..." key: ':' + 1 is ';'.
    high = low[:-1] + chr(ord(low[-1]) + 1)
    conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=1.0)
    try:
        row = conn.execute(
            "SELECT count(*) FROM kv WHERE key >= ? AND key < ? AND (expires_at IS NULL OR expires_at > ?)",
            (low, high, now),
        ).fetchone()
    finally:
        conn.close()
    return int(row[0])
