"""Argument types for the commands' options: a bad value is argparse's usage error (exit 2, one line
naming the option), never a traceback from deeper down (a fuzzing run: ``--timeout -1``,
``--port 99999999999999999999999`` after a restore had run, ``--listen abc``, ``--limit 10**22``)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

__all__ = ["ip_address", "listen_address", "one_line", "seconds", "short_name", "whole_number"]


def whole_number(low: int, high: int) -> Callable[[str], int]:
    """A type for a whole number from ``low`` to ``high``, in ASCII digits."""

    def parse(text: str) -> int:
        digits = text[1:] if text.startswith("-") else text
        if not (digits.isascii() and digits.isdigit() and len(digits) <= 12):
            raise argparse.ArgumentTypeError(
                f"expected a whole number from {low} to {high}, got {text[:40]!r}"
            )
        value = int(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected a whole number from {low} to {high}, got {value}")
        return value

    return parse


def seconds(high: float) -> Callable[[str], float]:
    """A type for a number of seconds above 0 and at most ``high``."""

    def parse(text: str) -> float:
        try:
            value = float(text) if text.isascii() else math.nan
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and 0 < value <= high):
            raise argparse.ArgumentTypeError(
                f"expected seconds above 0 and at most {high:g}, got {text[:40]!r}"
            )
        return value

    return parse


def listen_address(text: str) -> str:
    """A type for ``host:port`` (IPv6 in brackets), checked as the config's ``listen`` is."""
    from gateway.settings.checks.values import listen_problem

    problem = listen_problem(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(f"expected host:port such as 127.0.0.1:8080 ({problem[:200]})")
    return text


def one_line(text: str) -> str:
    """A type for a required line of text (a reason, how an identity was verified): not blank, one line
    of printable characters, at most 2,000 of them, as the console's."""
    from gateway.reasons import reason_problem

    problem = reason_problem(text) or ("at most 2000 characters" if len(text) > 2000 else None)
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    return text


def short_name(text: str) -> str:
    """A type for a name (a person, a route, an owner): 1 to 256 characters on one line, no control
    characters, as the console's incident fields take."""
    if not 1 <= len(text) <= 256 or any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise argparse.ArgumentTypeError(
            f"expected a name of 1 to 256 characters without control characters, got {text[:40]!r}"
        )
    return text


def ip_address(text: str) -> str:
    """A type for one IP address (IPv4 or IPv6), written back as the trail writes it (no zone)."""
    from gateway.response.cases import canonical_address

    address = canonical_address(text)
    if address is None:
        raise argparse.ArgumentTypeError(f"expected an IP address, got {text[:40]!r}")
    return address
