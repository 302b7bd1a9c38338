"""Refused token uses, recorded in the audit trail at most once per kind of refusal and interval.

Anyone holding a token, an expired or revoked one too, or guessing, could otherwise make every request
a hash-chained audit write: an attack run slowed other clients' requests from ~10 ms to seconds. So the
first refusal of each key (a token, its reason and route; or "unknown") is recorded at once, and the
ones after it in the same interval are summed: their count and the addresses they came from (the first
:data:`MAX_ADDRESSES`, and how many more) are recorded when the interval ends, by a timer, or when the
process stops. A re-attack run had seen a revoked token used from a new address within the minute
leave no trace, and the count of a flood lost at a restart.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = ["MAX_ADDRESSES", "RefusalTally"]

#: Addresses a summary names; the rest are counted.
MAX_ADDRESSES: Final = 16
# Keys remembered at once (a flood of ever new tokens or routes costs a flush, not memory).
_MAX_KEYS: Final = 10_000

Write = Callable[[str, str, dict[str, Any]], None]


@dataclass(slots=True)
class _Window:
    since: float
    actor: str
    details: dict[str, Any]
    count: int = 0
    addresses: list[str] = field(default_factory=list)
    more: int = 0
    timer: asyncio.TimerHandle | None = None


class RefusalTally:
    """The refusals of one process, by key. ``write(actor, ip, details)`` records one (in the background)."""

    def __init__(self, interval: float, write: Write) -> None:
        self._interval = interval
        self._write = write
        self._windows: dict[Hashable, _Window] = {}

    def refused(self, key: Hashable, *, actor: str, ip: str, details: dict[str, Any], mono: float) -> None:
        """Note one refusal at ``mono`` (monotonic seconds) from ``ip``."""
        window = self._windows.get(key)
        # A refusal whose clock was read before the window's first (it awaited the database longer)
        # belongs to the window too.
        if window is not None and mono - window.since < self._interval:
            window.count += 1
            if ip and ip not in window.addresses:
                if len(window.addresses) < MAX_ADDRESSES:
                    window.addresses.append(ip)
                else:
                    window.more += 1
            if window.timer is None:
                window.timer = self._later(self._interval - (mono - window.since), key)
            return
        if window is not None:
            self._summarise(key)
        if len(self._windows) >= _MAX_KEYS:
            self.flush()
        self._windows[key] = _Window(since=mono, actor=actor, details=details)
        self._write(actor, ip, details)

    def flush(self) -> None:
        """Record every window's refusals not yet recorded, and forget the windows (at shutdown)."""
        for key in list(self._windows):
            self._summarise(key)

    def _summarise(self, key: Hashable) -> None:
        window = self._windows.pop(key, None)
        if window is None:
            return
        if window.timer is not None:
            window.timer.cancel()
        if window.count:
            details = {
                **window.details,
                "refused_since_last_record": window.count,
                "addresses": window.addresses,
                "more_addresses": window.more,
            }
            self._write(window.actor, "", details)

    def _later(self, delay: float, key: Hashable) -> asyncio.TimerHandle | None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a synchronous caller): the next refusal or the flush records it
            return None
        return loop.call_later(max(delay, 0.0), self._summarise, key)
