"""Durations and sizes as the config (and the CLI) writes them: ``1h30m``, ``500ms``, ``64KiB``, ``5MB``."""

from __future__ import annotations

import math
import re
from typing import Final

from gateway.settings.schema import ByteSize, Duration

__all__ = ["DURATION_HELP", "MAX_DURATION", "MAX_SIZE", "SIZE_HELP", "parse_byte_size", "parse_duration"]

DURATION_HELP: Final = "a duration such as 500ms, 30s, 15m, 12h, 7d, 1h30m or a number of seconds"
SIZE_HELP: Final = "a size such as 64KiB, 10MiB, 1GiB, 10kB, 5MB or a number of bytes"

#: The longest duration anything takes: 100 years. Longer ones only overflowed timestamps and timers
#: (a fuzzing run: a retention of 10**30 seconds crashed the plan, a header timeout the server).
MAX_DURATION: Final = 100 * 365 * 86400.0
#: The largest size anything takes: 1 PiB.
MAX_SIZE: Final = 2**50

# ASCII digits only: \d takes every script's (1 and an Arabic-Indic 1 before "h" read as 11 hours: a
# fuzzing run).
_DURATION_PART: Final = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|d|h|m|s)")
_DURATION_UNITS: Final = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_SIZE: Final = re.compile(r"([0-9]+)\s*([A-Za-z]+)")
_SIZE_UNITS: Final = {
    "B": 1,
    "kB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KiB": 2**10,
    "MiB": 2**20,
    "GiB": 2**30,
    "TiB": 2**40,
}


def parse_duration(value: object) -> Duration:
    """Read a duration: a number of seconds, or text such as ``500ms``, ``30s``, ``15m``, ``1h30m``, ``7d``.

    Args:
        value: An int or float (seconds) or a string with units, largest unit first.

    Returns:
        The duration in seconds.

    Raises:
        ValueError: ``value`` is not a duration (the message says what is expected).
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ValueError(f"expected {DURATION_HELP}")
        return _bounded(Duration(value))
    if not isinstance(value, str):
        raise ValueError(f"expected {DURATION_HELP}")
    text = value.strip()
    total, pos, last_rank = 0.0, 0, len(_DURATION_UNITS)
    ranks = {unit: rank for rank, unit in enumerate(reversed(_DURATION_UNITS))}
    while pos < len(text):
        match = _DURATION_PART.match(text, pos)
        # Units must go from largest to smallest, each once: "30m1h" is more likely a typo than intent.
        if match is None or ranks[match[2]] >= last_rank:
            raise ValueError(f"expected {DURATION_HELP}")
        total += float(match[1]) * _DURATION_UNITS[match[2]]
        last_rank, pos = ranks[match[2]], match.end()
    if not text:
        raise ValueError(f"expected {DURATION_HELP}")
    return _bounded(Duration(total))


def _bounded(duration: Duration) -> Duration:
    if duration > MAX_DURATION:
        raise ValueError("expected a duration of at most 100 years (36500d)")
    return duration


def parse_byte_size(value: object) -> ByteSize:
    """Read a size: a number of bytes, or text such as ``64KiB``, ``10MiB``, ``1GiB``, ``10kB``, ``5MB``.

    Args:
        value: A whole number of bytes, or a string of a whole number and a unit (``B``, ``kB``, ``MB``,
            ``GB``, ``TB`` are powers of 1000; ``KiB``, ``MiB``, ``GiB``, ``TiB`` powers of 1024).

    Returns:
        The size in bytes.

    Raises:
        ValueError: ``value`` is not a size (the message says what is expected).
    """
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    size: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    elif isinstance(value, str):
        match = _SIZE.fullmatch(value.strip())
        if match is not None and match[2] in _SIZE_UNITS:
            size = int(match[1]) * _SIZE_UNITS[match[2]]
    if size is None:
        raise ValueError(f"expected {SIZE_HELP}")
    if size > MAX_SIZE:
        raise ValueError("expected a size of at most 1 PiB")
    return ByteSize(size)
