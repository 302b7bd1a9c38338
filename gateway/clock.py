"""Time, injected: code asks a Clock, tests move a FakeClock instead of sleeping.

One shape for every reader of time: Unix time (``time``, ``now``) for what is stored or shown and
outlives the process, the monotonic clock (``monotonic``) for intervals inside one process (TTLs of the
in-process store, ejections, probe schedules), which a wall-clock step cannot bend.
"""

from __future__ import annotations

import time as _time
from datetime import UTC, datetime
from typing import Protocol

__all__ = ["SYSTEM_CLOCK", "Clock", "FakeClock", "SystemClock", "as_utc"]


class Clock(Protocol):
    def time(self) -> float:
        """Unix time in seconds."""
        ...

    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back; only differences between readings mean anything."""
        ...


class SystemClock:
    """The real clock."""

    # The C functions themselves rather than wrappers: the data plane reads the clock on every request
    # (upstream pools bind ``clock.monotonic`` once), so the real clock costs what time.monotonic does.
    time = staticmethod(_time.time)
    monotonic = staticmethod(_time.monotonic)

    def now(self) -> datetime:
        return datetime.now(UTC)


class FakeClock:
    """A clock that only moves when told to (tests).

    ``advance`` moves Unix time and the monotonic clock together, so code that reads either sees the
    same seconds pass. They start far apart (Unix time in 2027, the monotonic clock at 1000 s), so
    a test cannot pass by mixing them up.
    """

    def __init__(self, start: float = 1_800_000_000.0, *, monotonic_start: float = 1000.0) -> None:
        self.t = start
        self.mono = monotonic_start

    def time(self) -> float:
        return self.t

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.t, UTC)

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.t += seconds
        self.mono += seconds


SYSTEM_CLOCK = SystemClock()


def as_utc(moment: datetime) -> datetime:
    """``moment`` as aware UTC; a naive one is taken as UTC (what SQLite gives back, and what a time
    typed without an offset means here)."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def span_words(seconds: float) -> str:
    """A length of time as a sentence says it: ``3600`` "an hour", ``7200`` "2 hours", ``600`` "10
    minutes", ``20`` "20 seconds" (not "1 minute(s)", which a window under a minute was told)."""
    if seconds >= 3600 and seconds % 3600 == 0:
        hours = int(seconds // 3600)
        return "an hour" if hours == 1 else f"{hours} hours"
    if seconds < 59.5:
        whole = max(1, round(seconds))
        return "a second" if whole == 1 else f"{whole} seconds"
    minutes = round(seconds / 60)
    return "a minute" if minutes == 1 else f"{minutes} minutes"
