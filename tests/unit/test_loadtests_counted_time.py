"""The instruction count's clock (``loadtests.inprocess.CountedTime``): short waits end after clock
readings, not after wall time, so a run that other load stretches does the same work per request."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from gateway.clock import SystemClock
from loadtests.inprocess import CLOCK_STEP, CountedTime


@pytest.fixture
def counted() -> Iterator[CountedTime]:
    with CountedTime() as clock:
        yield clock


async def test_restore_puts_the_real_clock_and_sleep_back() -> None:
    """``loadtests.stages.count_stages`` runs in the test suite's process: a counted clock left behind
    made later gateways there answer 500 (no signing key active yet by the counted time)."""
    real = (SystemClock.__dict__["time"], SystemClock.__dict__["monotonic"], asyncio.sleep, asyncio.timeout)
    with CountedTime() as clock:
        clock.install()
        assert SystemClock.time is not time.time
        assert asyncio.sleep is not real[2]
        assert asyncio.timeout is not real[3]
    assert (
        SystemClock.__dict__["time"],
        SystemClock.__dict__["monotonic"],
        asyncio.sleep,
        asyncio.timeout,
    ) == real
    assert SystemClock.time is time.time


async def test_a_short_wait_ends_after_its_length_in_readings_not_in_wall_time(counted: CountedTime) -> None:
    counted.install()
    sleeper = asyncio.create_task(asyncio.sleep(0.05, "woke"))
    await asyncio.sleep(0)  # let the sleeper start its wait
    steps = round(0.05 / CLOCK_STEP)
    for _ in range(steps - 1):
        SystemClock.time()
    done, _ = await asyncio.wait({sleeper}, timeout=0.1)  # twice the wait's length in wall time
    assert not done  # one reading short, however much wall time has passed
    SystemClock.monotonic()  # readings of either clock count
    assert await asyncio.wait_for(sleeper, 1) == "woke"


async def test_the_clock_moves_by_one_step_per_reading(counted: CountedTime) -> None:
    counted.install()
    first, second = SystemClock.time(), SystemClock.time()
    assert second - first == pytest.approx(CLOCK_STEP, abs=1e-6)
    first, second = SystemClock.monotonic(), SystemClock.monotonic()
    assert second - first == pytest.approx(CLOCK_STEP, abs=1e-6)


async def test_release_ends_the_pending_waits_and_later_ones_take_real_time(counted: CountedTime) -> None:
    counted.install()
    sleeper = asyncio.create_task(asyncio.sleep(0.2))
    await asyncio.sleep(0)
    counted.release()
    await asyncio.wait_for(sleeper, 1)  # no reading was taken: release ended it
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.sleep(0.02)
    assert loop.time() - started >= 0.02


async def test_a_cancelled_wait_is_dropped(counted: CountedTime) -> None:
    counted.install()
    sleeper = asyncio.create_task(asyncio.sleep(0.001))
    await asyncio.sleep(0)
    sleeper.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sleeper
    for _ in range(10):
        SystemClock.time()  # waking a cancelled waiter must not raise InvalidStateError


async def test_long_sleeps_are_stretched_out_of_the_run(counted: CountedTime) -> None:
    counted.install()
    sleeper = asyncio.create_task(asyncio.sleep(0.5))
    for _ in range(round(1 / CLOCK_STEP)):
        SystemClock.time()
    await asyncio.sleep(0)
    assert not sleeper.done()
    sleeper.cancel()


async def test_long_timeouts_are_stretched_out_of_the_run(counted: CountedTime) -> None:
    """The listeners that re-read a shared copy every second wait on ``asyncio.timeout``, not on a
    sleep: left real, a run stretched by load re-read the block list from the database more often per
    request (27 more reads per 1,500 requests beside three CPU hogs)."""
    counted.install()
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(1.0) as long:
        deadline = long.when()
        assert deadline is not None
        assert deadline - loop.time() > 900  # a thousandfold: it never fires during a run
    async with asyncio.timeout(0.05) as short:
        deadline = short.when()
        assert deadline is not None
        assert deadline - loop.time() <= 0.05  # a request's own short bound keeps its length
    async with asyncio.timeout(None) as unbounded:
        assert unbounded.when() is None
