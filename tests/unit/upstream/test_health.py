"""HealthChecker against real aiohttp servers on 127.0.0.1: verdicts, thresholds, and recovery."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web

from gateway.errors import ServiceUnavailable
from gateway.settings.schema import ActiveHealthCheck, Duration, PassiveHealthCheck
from gateway.upstream import HealthChecker, Target, UpstreamPool

# Bound for waiting on background work, so a bug fails the test instead of hanging it. Never a
# timing assertion: the awaited condition is what the test checks.
GUARD = 10


class FakeUpstream:
    """A real HTTP server whose health-check answer the test controls."""

    def __init__(self) -> None:
        self.status = 200
        self.location: str | None = None
        self.hang = False
        self.paths: list[str] = []
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._arrived = asyncio.Event()
        self._release = asyncio.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.paths.append(request.path)
        self._arrived.set()
        if self.hang:
            await self._release.wait()
        headers = {"Location": self.location} if self.location else None
        return web.Response(status=self.status, headers=headers)

    async def start(self) -> None:
        """Listen on a random port the first time, and on the same port after a stop."""
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        self.port = runner.addresses[0][1]
        self._runner = runner

    def finish_hanging(self) -> None:
        """Let every held request (and every later one) answer."""
        self.hang = False
        self._release.set()

    async def stop(self) -> None:
        self._release.set()  # let hanging handlers finish so shutdown does not wait on them
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def wait_for_requests(self, count: int) -> None:
        async def wait() -> None:
            while len(self.paths) < count:
                self._arrived.clear()
                await self._arrived.wait()

        await asyncio.wait_for(wait(), GUARD)


@pytest.fixture
async def upstream_factory() -> AsyncIterator[Callable[[], Awaitable[FakeUpstream]]]:
    started: list[FakeUpstream] = []

    async def make() -> FakeUpstream:
        upstream = FakeUpstream()
        await upstream.start()
        started.append(upstream)
        return upstream

    yield make
    for upstream in started:
        await upstream.stop()


@pytest.fixture
async def checker_factory() -> AsyncIterator[Callable[[list[UpstreamPool]], HealthChecker]]:
    checkers: list[HealthChecker] = []

    def make(pools: list[UpstreamPool]) -> HealthChecker:
        checker = HealthChecker(pools, aiohttp.ClientSession)
        checkers.append(checker)
        return checker

    yield make
    for checker in checkers:
        await checker.stop()


def make_pool(
    *upstreams: FakeUpstream,
    name: str = "app",
    check: ActiveHealthCheck | None = None,
    base_path: str = "",
) -> UpstreamPool:
    if check is None:
        check = ActiveHealthCheck(path="/healthz", healthy_threshold=2, unhealthy_threshold=3)
    return UpstreamPool(
        name,
        [u.url + base_path for u in upstreams],
        balance="round_robin",
        passive=PassiveHealthCheck(),
        active=check,
    )


def healthy(target: Target) -> bool:
    """Read the verdict through a call, so mypy does not narrow it across awaited check rounds."""
    return target.healthy


def picked_urls(pool: UpstreamPool, n: int = 10) -> set[str]:
    urls = set()
    for _ in range(n):
        target = pool.pick()
        urls.add(target.url)
        pool.release(target, ok=True)
    return urls


async def rounds(checker: HealthChecker, n: int) -> None:
    for _ in range(n):
        await checker.check_once()


async def test_error_status_marks_unhealthy_then_recovers(
    upstream_factory: Callable[[], Awaitable[FakeUpstream]],
    checker_factory: Callable[[list[UpstreamPool]], HealthChecker],
) -> None:
    a, b = await upstream_factory(), await upstream_factory()
    pool = make_pool(a, b)
    target_a = pool.targets[0]
    checker = checker_factory([pool])

    await rounds(checker, 1)
    assert picked_urls(pool) == {a.url, b.url}

    a.status = 500
    await rounds(checker, 2)
    assert healthy(target_a), "two failures are below unhealthy_threshold=3"
    await rounds(checker, 1)
    assert not healthy(target_a)
    assert picked_urls(pool) == {b.url}

    a.status = 200
    await rounds(checker, 1)
    assert not healthy(target_a), "one pass is below healthy_threshold=2"
    await rounds(checker, 1)
    assert healthy(target_a)
    assert picked_urls(pool) == {a.url, b.url}


async def test_stopped_server_marks_unhealthy_then_recovers(
    upstream_factory: Callable[[], Awaitable[FakeUpstream]],
    checker_factory: Callable[[list[UpstreamPool]], HealthChecker],
) -> None:
    a, b = await upstream_factory(), await upstream_factory()
    pool = make_pool(a, b)
    target_a = pool.targets[0]
    checker = checker_factory([pool])
    await rounds(checker, 1)

    await a.stop()
    await rounds(checker, 3)
    assert not healthy(target_a)
    assert healthy(pool.targets[1])
    assert picked_urls(pool) == {b.url}
    assert pool.snapshot()[0] == {
        "url": a.url,
        "healthy": False,
        "ejected": False,
        "probation": False,
        "outstanding": 0,
        "consecutive_failures": 0,
    }

    await a.start()  # same port
    await rounds(checker, 2)
    assert healthy(target_a)
    assert picked_urls(pool) == {a.url, b.url}


async def test_all_unhealthy_means_pick_raises(
    upstream_factory: Callable[[], Awaitable[FakeUpstream]],
    checker_factory: Callable[[list[UpstreamPool]], HealthChecker],
) -> None:
    a = await upstream_factory()
    a.status = 503
    pool = make_pool(a, check=ActiveHealthCheck(unhealthy_threshold=1))
    await rounds(checker_factory([pool]), 1)
    with pytest.raises(ServiceUnavailable):
        pool.pick()
    assert not pool.any_available()


async def test_interrupted_failure_streak_does_not_flip(
    upstream_factory: Callable[[], Awaitable[FakeUpstream]],
    checker_factory: Callable[[list[UpstreamPool]], HealthChecker],
) -> None:
    a = await upstream_factory()
    pool = make_pool(a)
    checker = checker_factory([pool])
    for status in (500, 500, 200, 500, 500):
        a.status = status
        await rounds(checker, 1)
    assert healthy(pool.targets[0])
    await rounds(checker, 1)
    assert not healthy(pool.targets[0])


async def test_probe_requests_check_path_on_origin(
    upstream_factory: Callable[[], Awaitable[FakeUpstream]],
    checker_factory: Callable[[list[UpstreamPool]], HealthChecker],
) -> None:
    a = await upstream_factory()
    pool = make_pool(a, base_path="/base/", check=ActiveHealthCheck(path="ready"))
    assert pool.targets[0].base_path == "/base"
    await rounds(checker_factory([pool]), 2)
    assert a.paths == ["/ready", "/ready"]


@pytest.mark.parametrize(
    ("status", "expected", "passes"),
    [
        (200, (200, 399), True),
        (204, (200, 399), True),
        (302, (200, 399), True),
        (302, (200, 299), False),
        (399, (200, 399), True),
        (400, (200, 399), False),
        (404, (200, 399), False),
        (500, (200, 399), False),
        (503, (200, 599), True),
        (418, (418, 418), True),
        (200, (418, 418), False),
    ],
)
async def test_expected_status_range(
    upstream_factory: Callable[[], Awaitable[FakeUpstream]],
    checker_factory: Callable[[list[UpstreamPool]], HealthChecker],
    status: int,
    expected: tuple[int, int],
    passes: bool,
) -> None:
    a = await upstream_factory()
    a.status = status
    a.location = "/login"  # only meaningful for 3xx; must not be followed
    check = ActiveHealthCheck(
        path="/healthz", expected_status=expected, healthy_threshold=1, unhealthy_threshold=1
    )
    pool = make_pool(a, check=check)
    # Start from the opposite verdict so that one round must flip it.
    pool.targets[0].healthy = not passes
    await rounds(checker_factory([pool]), 1)
    assert pool.targets[0].healthy is passes
    assert a.paths == ["/healthz"]


async def test_probe_timeout_is_a_failure(
    upstream_factory: Callable[[], Awaitable[FakeUpstream]],
    checker_factory: Callable[[list[UpstreamPool]], HealthChecker],
) -> None:
    slow, fast = await upstream_factory(), await upstream_factory()
    slow.hang = True
    check = ActiveHealthCheck(path="/healthz", timeout=Duration(0.2), unhealthy_threshold=1)
    pool = make_pool(slow, fast, check=check)
    await rounds(checker_factory([pool]), 1)
    assert not healthy(pool.targets[0])
    assert healthy(pool.targets[1])


async def test_pools_without_active_check_are_not_probed(
    upstream_factory: Callable[[], Awaitable[FakeUpstream]],
    checker_factory: Callable[[list[UpstreamPool]], HealthChecker],
) -> None:
    checked, unchecked = await upstream_factory(), await upstream_factory()
    with_check = make_pool(checked, name="checked")
    without = UpstreamPool(
        "unchecked", [unchecked.url], balance="round_robin", passive=PassiveHealthCheck(), active=None
    )
    assert without.targets[0].healthy
    checker = checker_factory([with_check, without])
    await rounds(checker, 1)
    assert checked.paths == ["/healthz"]
    assert unchecked.paths == []


async def test_one_round_covers_every_pool(
    upstream_factory: Callable[[], Awaitable[FakeUpstream]],
    checker_factory: Callable[[list[UpstreamPool]], HealthChecker],
) -> None:
    a, b, c = await upstream_factory(), await upstream_factory(), await upstream_factory()
    one, two = make_pool(a, b, name="one"), make_pool(c, name="two")
    await rounds(checker_factory([one, two]), 1)
    assert (a.paths, b.paths, c.paths) == (["/healthz"], ["/healthz"], ["/healthz"])


def eject(pool: UpstreamPool, target: Target) -> int:
    """Fail ``target`` until the pool ejects it; which ejection is in force."""
    for _ in range(pool.passive.consecutive_failures):
        target.outstanding += 1  # as if picked
        pool.release(target, ok=False)
    ejection = pool.ejection_in_force(target)
    assert ejection, "not ejected"
    return ejection


async def test_active_passes_end_a_passive_ejection_on_probation(
    upstream_factory: Callable[[], Awaitable[FakeUpstream]],
    checker_factory: Callable[[list[UpstreamPool]], HealthChecker],
) -> None:
    a, b = await upstream_factory(), await upstream_factory()
    pool = make_pool(a, b)  # healthy_threshold=2, ejection_time 30 s
    target_a = pool.targets[0]
    eject(pool, target_a)
    checker = checker_factory([pool])
    await rounds(checker, 1)
    assert pool.ejection_in_force(target_a)  # one pass is below the healthy threshold
    assert picked_urls(pool) == {b.url}
    await rounds(checker, 1)
    # Back long before the 30 s ejection time, but on probation: one request at a time.
    assert not pool.ejection_in_force(target_a)
    assert pool.snapshot()[0]["probation"] is True
    held = [pool.pick() for _ in range(4)]
    assert [t.url for t in held].count(a.url) == 1
    for target in held:
        pool.release(target, ok=True)


async def test_a_failed_probe_restarts_the_count_towards_readmission(
    upstream_factory: Callable[[], Awaitable[FakeUpstream]],
    checker_factory: Callable[[list[UpstreamPool]], HealthChecker],
) -> None:
    a, b = await upstream_factory(), await upstream_factory()
    pool = make_pool(
        a, b, check=ActiveHealthCheck(path="/healthz", healthy_threshold=2, unhealthy_threshold=5)
    )
    target_a = pool.targets[0]
    deadline = eject(pool, target_a)
    checker = checker_factory([pool])
    await rounds(checker, 1)
    a.status = 500
    await rounds(checker, 1)
    a.status = 200
    await rounds(checker, 1)
    assert pool.ejection_in_force(target_a) == deadline  # pass, fail, pass: not two in a row
    await rounds(checker, 1)
    assert not pool.ejection_in_force(target_a)


async def test_a_probe_that_started_before_the_ejection_does_not_end_it(
    upstream_factory: Callable[[], Awaitable[FakeUpstream]],
    checker_factory: Callable[[list[UpstreamPool]], HealthChecker],
) -> None:
    a, b = await upstream_factory(), await upstream_factory()
    check = ActiveHealthCheck(path="/healthz", healthy_threshold=1, unhealthy_threshold=1)
    pool = make_pool(a, b, check=check)
    target_a = pool.targets[0]
    checker = checker_factory([pool])
    a.hang = True
    round_in_flight = asyncio.create_task(checker.check_once())
    await a.wait_for_requests(1)
    # The probe is on its way when real traffic ejects the target; then the probe passes.
    deadline = eject(pool, target_a)
    a.finish_hanging()
    await asyncio.wait_for(round_in_flight, GUARD)
    assert healthy(target_a)
    assert pool.ejection_in_force(target_a) == deadline
    # The next probe started during the ejection, so its pass counts.
    await rounds(checker, 1)
    assert not pool.ejection_in_force(target_a)


async def test_failing_probes_never_end_an_ejection(
    upstream_factory: Callable[[], Awaitable[FakeUpstream]],
    checker_factory: Callable[[list[UpstreamPool]], HealthChecker],
) -> None:
    a, b = await upstream_factory(), await upstream_factory()
    a.status = 503
    pool = make_pool(a, b)
    target_a = pool.targets[0]
    deadline = eject(pool, target_a)
    await rounds(checker_factory([pool]), 4)
    assert pool.ejection_in_force(target_a) == deadline
    assert not healthy(target_a)


async def test_background_task_applies_verdicts_and_stops(
    upstream_factory: Callable[[], Awaitable[FakeUpstream]],
) -> None:
    a = await upstream_factory()
    a.status = 500
    check = ActiveHealthCheck(path="/healthz", interval=Duration(0.01), unhealthy_threshold=1)
    pool = make_pool(a, check=check)
    sessions: list[aiohttp.ClientSession] = []

    def factory() -> aiohttp.ClientSession:
        session = aiohttp.ClientSession()
        sessions.append(session)
        return session

    async with HealthChecker([pool], factory) as checker:
        await checker.start()  # idempotent: no second set of tasks, no second session
        # Rounds run one after another, so the second probe means the first verdict is applied.
        await a.wait_for_requests(2)
        assert not healthy(pool.targets[0])
    assert len(sessions) == 1
    assert sessions[0].closed
    seen = len(a.paths)
    await checker.stop()  # idempotent
    # A leaked task would probe every 10 ms: once another checker on the same schedule has probed
    # three times more, such a task would have probed too (it must not exist).
    b = await upstream_factory()
    async with HealthChecker([make_pool(b, name="other", check=check)], factory):
        await b.wait_for_requests(4)
    assert len(a.paths) == seen


async def test_caller_owned_session_is_left_open(
    upstream_factory: Callable[[], Awaitable[FakeUpstream]],
) -> None:
    a = await upstream_factory()
    async with aiohttp.ClientSession() as session:
        checker = HealthChecker([make_pool(a)], session)
        await checker.check_once()
        await checker.stop()
        assert not session.closed
        assert a.paths == ["/healthz"]


@pytest.mark.parametrize(
    ("check", "message"),
    [
        (ActiveHealthCheck(interval=Duration(0)), "interval must be positive"),
        (ActiveHealthCheck(healthy_threshold=0), "thresholds must be at least 1"),
        (ActiveHealthCheck(unhealthy_threshold=0), "thresholds must be at least 1"),
    ],
)
async def test_invalid_check_settings(check: ActiveHealthCheck, message: str) -> None:
    pool = UpstreamPool(
        "app", ["http://127.0.0.1:1"], balance="round_robin", passive=PassiveHealthCheck(), active=check
    )
    with pytest.raises(ValueError, match=message):
        HealthChecker([pool], aiohttp.ClientSession)
