"""Active health checks: probe every target of every pool that configures one.

Each target is probed with ``GET {target.url}{check.path}`` (the check path is absolute on the
origin; the route's base path is not prepended) under ``check.timeout``. A status inside
``check.expected_status`` (inclusive) is a pass; any other status, a connection error or a timeout
is a failure. ``healthy_threshold`` passes in a row mark a target healthy, ``unhealthy_threshold``
failures in a row mark it unhealthy; targets start healthy, so a freshly started gateway does not
refuse traffic before the first round.

The same ``healthy_threshold`` passes in a row also end a passive ejection early
(:meth:`UpstreamPool.readmit`), but only passes of probes that started while that ejection was
already in force: a target that recovered is back within a few intervals instead of waiting out
``passive_health_check.ejection_time``, and it returns on probation (one request at a time until it
answers one), so a health endpoint that answers while real requests hang costs one request per
readmission.

One asyncio task per pool runs a round every ``check.interval``; the targets of a round are probed
concurrently, so one slow target does not delay the others' verdicts. Tests drive rounds with
:meth:`HealthChecker.check_once` instead of sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable, Sequence
from types import TracebackType

import aiohttp

from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.settings.schema import ActiveHealthCheck
from gateway.upstream.pool import UpstreamPool
from gateway.upstream.target import Target

__all__ = ["HealthChecker"]

logger = logging.getLogger("gateway.upstream")

# Errors that mean "the target failed the probe". Anything else escaping a probe is a bug here,
# which the round loop logs without stopping the checks.
_PROBE_ERRORS = (aiohttp.ClientError, TimeoutError, OSError)


class _PoolCheck:
    """Precomputed per-pool probe data, so a round does no string building or option parsing."""

    __slots__ = ("check", "pool", "server_name", "timeout", "tls", "urls")

    def __init__(self, pool: UpstreamPool, check: ActiveHealthCheck) -> None:
        if check.interval <= 0:
            raise ValueError(f"route {pool.route_name!r}: health check interval must be positive")
        if check.healthy_threshold < 1 or check.unhealthy_threshold < 1:
            raise ValueError(f"route {pool.route_name!r}: health check thresholds must be at least 1")
        path = check.path if check.path.startswith("/") else "/" + check.path
        self.pool = pool
        self.check = check
        self.timeout = aiohttp.ClientTimeout(total=check.timeout)
        self.urls = tuple((target, target.url + path) for target in pool.targets)
        # Probes speak TLS exactly as the proxy does (client certificate, CA, pin, SNI): a check that
        # connected differently could call an upstream healthy that refuses every real request.
        self.tls = next((target.tls for target in pool.targets if target.tls is not None), None)
        self.server_name = None if self.tls is None else self.tls.server_name

    @property
    def ssl(self) -> ssl.SSLContext | bool:
        """The route's context as it is now (a replaced revocation list included)."""
        return True if self.tls is None else self.tls.context


class HealthChecker:
    """Runs the active health checks of a set of pools.

    Args:
        pools: All pools; those without an active check are ignored.
        session_factory: Either a callable returning a new :class:`aiohttp.ClientSession`, which the
            checker creates on first use and closes in :meth:`stop`, or a session the caller owns
            and closes.
        clock: Its monotonic clock keeps rounds on a fixed schedule.

    Raises:
        ValueError: A pool's check has a non-positive interval or a threshold below 1.

    Call :meth:`stop` when done, even if only :meth:`check_once` was used, so an owned session is
    closed. ``async with HealthChecker(...)`` starts and stops it.
    """

    def __init__(
        self,
        pools: Sequence[UpstreamPool],
        session_factory: Callable[[], aiohttp.ClientSession] | aiohttp.ClientSession,
        *,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._checks = tuple(_PoolCheck(pool, pool.active) for pool in pools if pool.active is not None)
        if isinstance(session_factory, aiohttp.ClientSession):
            self._session: aiohttp.ClientSession | None = session_factory
            self._factory: Callable[[], aiohttp.ClientSession] | None = None
        else:
            self._session = None
            self._factory = session_factory
        self._clock = clock
        # Signed streak per target: +n after n passes in a row, -n after n failures in a row.
        self._streaks: dict[Target, int] = {}
        # Per passively ejected target: (which ejection, passes in a row since it began).
        self._readmissions: dict[Target, tuple[int, int]] = {}
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Start one background task per pool that has an active check. Idempotent."""
        if self._tasks:
            return
        session = self._get_session()
        self._tasks = [
            asyncio.create_task(self._run(session, pc), name=f"health-check:{pc.pool.route_name}")
            for pc in self._checks
        ]

    async def stop(self) -> None:
        """Cancel the background tasks, wait for them, and close an owned session. Idempotent."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            # The tasks handle their own errors, so cancellation is the only way they end.
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._factory is not None and self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def check_once(self) -> None:
        """Run one round of checks for every pool, concurrently, and apply the verdicts."""
        session = self._get_session()
        await asyncio.gather(*(self._check_pool(session, pc) for pc in self._checks))

    async def __aenter__(self) -> HealthChecker:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            assert self._factory is not None  # exactly one of the two is set in __init__
            self._session = self._factory()
        return self._session

    async def _run(self, session: aiohttp.ClientSession, pc: _PoolCheck) -> None:
        interval = pc.check.interval
        next_round = self._clock.monotonic()
        while True:
            try:
                await self._check_pool(session, pc)
            except Exception:
                # A bug in one round must not end health checking for good.
                logger.exception("route %s: health check round failed", pc.pool.route_name)
            next_round += interval
            delay = next_round - self._clock.monotonic()
            if delay < 0:
                # Fell behind (slow probes, paused process): restart the schedule, no burst of rounds.
                next_round, delay = self._clock.monotonic(), 0.0
            await asyncio.sleep(delay)

    async def _check_pool(self, session: aiohttp.ClientSession, pc: _PoolCheck) -> None:
        # Read before probing: only an ejection already in force when a probe starts may be ended by it.
        ejections = [pc.pool.ejection_in_force(target) for target, _ in pc.urls]
        results = await asyncio.gather(*(self._probe(session, pc, url) for _, url in pc.urls))
        for (target, _), ejection, passed in zip(pc.urls, ejections, results, strict=True):
            self._record(pc, target, passed=passed)
            self._consider_readmission(pc, target, ejection, passed=passed)

    async def _probe(self, session: aiohttp.ClientSession, pc: _PoolCheck, url: str) -> bool:
        low, high = pc.check.expected_status
        try:
            # No redirects: a redirect to a login page must not count as the upstream being healthy
            # unless 3xx is in expected_status.
            async with session.get(
                url, timeout=pc.timeout, allow_redirects=False, ssl=pc.ssl, server_hostname=pc.server_name
            ) as response:
                passed = low <= response.status <= high
                if not passed:
                    logger.debug("route %s: probe %s answered %d", pc.pool.route_name, url, response.status)
                return passed
        except _PROBE_ERRORS as exc:
            logger.debug("route %s: probe %s failed: %r", pc.pool.route_name, url, exc)
            return False

    def _record(self, pc: _PoolCheck, target: Target, *, passed: bool) -> None:
        check = pc.check
        streak = self._streaks.get(target, 0)
        # Capped at the threshold: beyond it the count carries no information.
        if passed:
            streak = min(streak + 1, check.healthy_threshold) if streak > 0 else 1
        else:
            streak = max(streak - 1, -check.unhealthy_threshold) if streak < 0 else -1
        self._streaks[target] = streak
        if passed and not target.healthy and streak >= check.healthy_threshold:
            pc.pool.set_health(target, healthy=True)
        elif not passed and target.healthy and -streak >= check.unhealthy_threshold:
            pc.pool.set_health(target, healthy=False)

    def _consider_readmission(self, pc: _PoolCheck, target: Target, ejection: int, *, passed: bool) -> None:
        """Count passes since ``ejection`` began; end it after ``healthy_threshold`` in a row."""
        if not ejection or not passed:
            self._readmissions.pop(target, None)
            return
        counted, passes = self._readmissions.get(target, (ejection, 0))
        # A new ejection (the target failed again after a readmission) starts the count over.
        passes = passes + 1 if counted == ejection else 1
        if passes >= pc.check.healthy_threshold:
            self._readmissions.pop(target, None)
            pc.pool.readmit(target, ejection=ejection)
        else:
            self._readmissions[target] = (ejection, passes)
