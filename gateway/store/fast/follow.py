"""Keep in-process copies current from the fast state's broadcasts.

* :func:`follow_channel`: the IP block list and the lockdown switch. Each worker holds a copy the hot
  path reads without I/O; a message on the channel says "changed: re-read", and a periodic re-read
  catches a message lost while the subscription was down. An outage keeps re-reading (a copy with
  another source stays current) and keeps the last copy while nothing answers.
* :func:`follow_evictions`: the session and API-token caches. A message names the keys to evict; when
  the subscription may have missed messages (not yet live, buffer overflow, reconnection, outage) the
  whole cache is cleared: over-evicting costs a few store reads, under-evicting would accept a revoked
  session or token.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from gateway.store.fast.base import FastState, StateUnavailable, Subscription

__all__ = ["follow_channel", "follow_evictions"]

logger = logging.getLogger("gateway.state")


async def follow_channel(
    state: FastState, channel: str, refresh: Callable[[], Awaitable[None]], *, refresh_every: float, what: str
) -> None:
    """Call ``refresh`` once subscribed, on every message on ``channel``, and every ``refresh_every``
    seconds anyway, until cancelled; without a subscription too. ``what`` names the copy in the log
    (``"lockdown"``)."""
    down = False
    while True:
        try:
            async with state.subscribe(channel) as sub:
                if down:
                    logger.warning("%s subscription is back", what)
                down = False
                # Anything changed before the subscription was live is found by this read.
                await refresh()
                await _follow(sub, refresh, refresh_every)
        except StateUnavailable as exc:
            if not down:
                logger.warning("%s subscription lost (%s); re-reading every %gs", what, exc, refresh_every)
            down = True
            # The re-reads go on without a subscription: a copy with another source (the lockdown's
            # database copy) stays current. A replica started while Redis was out of reach subscribed
            # never, so it never re-read, and served through a lockdown it could read (an attack run).
            with contextlib.suppress(StateUnavailable):
                await refresh()
        await asyncio.sleep(refresh_every)


async def _follow(sub: Subscription, refresh: Callable[[], Awaitable[None]], refresh_every: float) -> None:
    while True:
        try:
            async with asyncio.timeout(refresh_every):
                await sub.__anext__()
        except TimeoutError:
            pass
        except StopAsyncIteration:
            return
        with contextlib.suppress(StateUnavailable):
            await refresh()


async def follow_evictions(
    state: FastState,
    channel: str,
    *,
    forget: Callable[[list[str]], None],
    clear: Callable[[], None],
    listening: asyncio.Event,
    wake_every: float,
    retry_delay: float,
    what: str,
) -> None:
    """Call ``forget`` with the keys of every message on ``channel`` and ``clear`` whenever messages may
    have been missed, until cancelled. ``listening`` is set while subscribed; ``wake_every`` bounds how
    late a reconnection that brought no message is noticed (the cache's lifetime)."""
    while True:
        try:
            async with state.subscribe(channel) as sub:
                clear()  # anything announced before we were live may be lost
                listening.set()
                await _evict(sub, forget, clear, max(wake_every, 0.05))
        except StateUnavailable as exc:
            logger.warning("%s listener unavailable: %s", what, exc)
        finally:
            listening.clear()
        clear()
        await asyncio.sleep(retry_delay)


async def _evict(
    sub: Subscription, forget: Callable[[list[str]], None], clear: Callable[[], None], wake_every: float
) -> None:
    dropped, interruptions = sub.dropped, sub.interruptions
    while True:
        message: bytes | None = None
        try:
            async with asyncio.timeout(wake_every):
                message = await anext(sub)
        except TimeoutError:
            pass
        except StopAsyncIteration:
            return
        if sub.dropped != dropped or sub.interruptions != interruptions:
            dropped, interruptions = sub.dropped, sub.interruptions
            clear()
        if message:
            forget(message.decode("ascii", "replace").split("\n"))
