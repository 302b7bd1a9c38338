"""Waiting for something to happen: poll a condition under a deadline, never sleep a fixed time.

A fixed sleep is either too short on a loaded machine (a flaky failure) or too long everywhere else (a
slow suite). Polling returns as soon as the condition holds and fails with a message that says what
never happened. For "X did not happen", wait for a later event that must come after X would have
(a later probe, the next request's answer) and then check X; where only a pause can show it, use
:func:`quiet_period`, which names the pause and the reason.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal, TypeVar, overload

__all__ = ["quiet_period", "quiet_period_async", "wait_until", "wait_until_async"]

_T = TypeVar("_T")


# A predicate answers a truthy value when the condition holds; None or False until then (what is
# returned is the truthy value, so the falsy types drop out of the result).
_Falsy = None | Literal[False]


def wait_until(
    predicate: Callable[[], _T | _Falsy],
    *,
    timeout: float = 30.0,
    interval: float = 0.1,
    what: str = "condition",
) -> _T:
    """Poll ``predicate()`` until it returns something truthy, and return that.

    Raises:
        TimeoutError: it never did within ``timeout`` seconds (the message names ``what`` and the last
            value).
    """
    deadline = time.monotonic() + timeout
    while True:
        last = predicate()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} not reached after {timeout}s (last value: {last!r})")
        time.sleep(interval)


@overload
async def wait_until_async(
    predicate: Callable[[], Awaitable[_T | _Falsy]],
    *,
    timeout: float = ...,
    interval: float = ...,
    what: str = ...,
) -> _T: ...


@overload
async def wait_until_async(
    predicate: Callable[[], _T | _Falsy],
    *,
    timeout: float = ...,
    interval: float = ...,
    what: str = ...,
) -> _T: ...


async def wait_until_async(
    predicate: Callable[[], Any],
    *,
    timeout: float = 10.0,
    interval: float = 0.01,
    what: str = "condition",
) -> Any:
    """:func:`wait_until` on an event loop: ``predicate`` may be a plain or a coroutine function, and
    the loop keeps running (the code under test makes progress) between polls."""
    deadline = time.monotonic() + timeout
    while True:
        last = predicate()
        if inspect.isawaitable(last):
            last = await last
        if last:
            return last
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} not reached after {timeout}s (last value: {last!r})")
        await asyncio.sleep(interval)


def quiet_period(seconds: float, *, why: str) -> None:
    """Let ``seconds`` pass so that something that must NOT happen would have had the chance to.

    Only for the case no later event can show it (the code under test has nothing to observe after
    the non-event); ``why`` says so at the call site.
    """
    assert why, "say why a fixed pause is the only way to show this"
    time.sleep(seconds)


async def quiet_period_async(seconds: float, *, why: str) -> None:
    """:func:`quiet_period` on an event loop (the loop keeps running meanwhile)."""
    assert why, "say why a fixed pause is the only way to show this"
    await asyncio.sleep(seconds)
