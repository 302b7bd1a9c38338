"""Audit writes of the token verifiers, outside the request: bounded in number, never raising into it.

A token use or refusal is recorded after the request has its answer; a flood of tokens must not become
an unbounded pile of pending writes, and a failing write must not surface in any request. Beyond
``limit`` writes in flight a record is dropped and counted (logged at the 1st, 100th and every
10,000th).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any

__all__ = ["BackgroundWrites"]

_log = logging.getLogger(__name__)


class BackgroundWrites:
    """Writes in flight, at most ``limit``; ``what`` names them in the log (``"token audit record"``)."""

    __slots__ = ("_limit", "_what", "dropped", "pending")

    def __init__(self, what: str, *, limit: int = 256) -> None:
        self._what = what
        self._limit = limit
        self.pending: set[asyncio.Task[None]] = set()
        self.dropped = 0

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` in the background, or drop it (closed, counted) when ``limit`` are in flight."""
        if len(self.pending) >= self._limit:
            work.close()
            self.dropped += 1
            if self.dropped in (1, 100) or self.dropped % 10_000 == 0:
                _log.warning("%ss dropped: %d (too many writes in flight)", self._what, self.dropped)
            return
        task = asyncio.ensure_future(self._guarded(work))
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    async def _guarded(self, work: Coroutine[Any, Any, None]) -> None:
        try:
            await work
        except Exception as exc:  # noqa: BLE001 - a failing audit write must not surface in any request
            _log.warning("could not write a %s: %s", self._what, exc)

    async def close(self, *, grace: float = 2.0) -> None:
        """Let the writes in flight finish (at most ``grace`` seconds), then cancel the rest."""
        if self.pending:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    await asyncio.gather(*self.pending, return_exceptions=True)
        for task in list(self.pending):
            task.cancel()
