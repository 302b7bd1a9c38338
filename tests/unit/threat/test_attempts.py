"""The sign-in work one address may ask for: failed passwords and passkey challenges per window."""

from __future__ import annotations

import asyncio

import pytest

from gateway.clock import FakeClock
from gateway.settings.schema import Duration, RegulationSettings
from gateway.store.fast import MemoryFastState
from gateway.threat.attempts import AddressAttempts, TooManyAttempts

SETTINGS = RegulationSettings(address_failures=3, address_challenges=5, address_window=Duration(60))


@pytest.fixture
async def attempts(clock: FakeClock) -> AddressAttempts:
    return AddressAttempts(MemoryFastState(clock=clock), lambda: SETTINGS)


async def test_an_address_past_its_failures_is_refused_until_the_window_ends(
    attempts: AddressAttempts, clock: FakeClock
) -> None:
    for _ in range(3):
        await attempts.reserve("password", "198.51.100.7")  # three that failed: never released
    with pytest.raises(TooManyAttempts) as refused:
        await attempts.reserve("password", "198.51.100.7")
    assert refused.value.status == 429
    await attempts.reserve("password", "198.51.100.8")  # another address counts alone
    await attempts.reserve("challenge", "198.51.100.7")  # and another kind of work
    clock.advance(61)
    await attempts.reserve("password", "198.51.100.7")


async def test_a_burst_sent_at_once_is_counted_before_any_work(attempts: AddressAttempts) -> None:
    """The attack run: 120 sign-ins at once all passed a check that only read the counter."""
    results = await asyncio.gather(
        *(attempts.reserve("password", "198.51.100.9") for _ in range(20)), return_exceptions=True
    )
    assert sum(1 for r in results if r is None) == 3
    assert all(isinstance(r, TooManyAttempts) for r in results if r is not None)


async def test_successes_are_taken_back(attempts: AddressAttempts) -> None:
    for _ in range(10):  # a busy office behind one address
        await attempts.reserve("password", "198.51.100.10")
        await attempts.release("password", "198.51.100.10")
    await attempts.reserve("password", "198.51.100.10")


async def test_an_ipv6_subscriber_counts_by_its_64_and_a_nat64_client_by_its_ipv4(
    attempts: AddressAttempts,
) -> None:
    for n in range(3):
        await attempts.reserve("password", f"2001:db8:7:9::{n + 1}")
    with pytest.raises(TooManyAttempts):
        await attempts.reserve("password", "2001:db8:7:9::abcd")
    await attempts.reserve("password", "2001:db8:7:a::1")
    for _ in range(3):
        await attempts.reserve("password", "64:ff9b::c633:6442")
    with pytest.raises(TooManyAttempts):
        await attempts.reserve("password", "198.51.100.66")
    await attempts.reserve("password", "64:ff9b::c633:6443")


async def test_challenges_are_spent_whatever_comes_of_them(attempts: AddressAttempts) -> None:
    for _ in range(5):
        await attempts.reserve("challenge", "203.0.113.9")
    with pytest.raises(TooManyAttempts):
        await attempts.reserve("challenge", "203.0.113.9")


async def test_zero_turns_a_limit_off(clock: FakeClock) -> None:
    off = AddressAttempts(
        MemoryFastState(clock=clock), lambda: RegulationSettings(address_failures=0, address_challenges=0)
    )
    for _ in range(50):
        await off.reserve("password", "203.0.113.9")
        await off.reserve("challenge", "203.0.113.9")


class _WrongGuess(Exception):
    """What the client got wrong (a wrong password), named in ``failures``."""


async def _count_left(attempts: AddressAttempts, ip: str) -> int:
    """How many more attempts the address may start before it is refused (reserves them: probe last)."""
    left = 0
    while True:
        try:
            await attempts.reserve("password", ip)
        except TooManyAttempts:
            return left
        left += 1


async def test_counting_keeps_failures_and_takes_back_everything_else(attempts: AddressAttempts) -> None:
    ip = "198.51.100.20"
    async with attempts.counting("password", ip):
        pass  # a success: taken back
    with pytest.raises(RuntimeError):
        async with attempts.counting("password", ip):
            raise RuntimeError("an outage, not the client's fault: taken back")
    with pytest.raises(asyncio.CancelledError):
        async with attempts.counting("password", ip):
            raise asyncio.CancelledError  # a client that went away: taken back
    async with attempts.counting("password", ip) as counted:
        counted.fail()  # a wrong code: kept
    with pytest.raises(_WrongGuess):
        async with attempts.counting("password", ip, failures=(_WrongGuess,)):
            raise _WrongGuess  # a wrong password: kept
    assert await _count_left(attempts, ip) == 1


async def test_counting_past_the_limit_never_runs_the_block(attempts: AddressAttempts) -> None:
    ip = "198.51.100.21"
    for _ in range(3):
        await attempts.reserve("password", ip)
    ran = False
    with pytest.raises(TooManyAttempts):
        async with attempts.counting("password", ip):
            ran = True
    assert not ran
