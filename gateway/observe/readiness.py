"""Readiness of one gateway process: can it serve the traffic a load balancer sends it?

``/.gateway/ready`` answers 200 when it can and 503 when it cannot; the load balancer takes a replica
out of its pool on 503. Taking a replica out only helps when another replica can do better, so the
verdict counts only what *this* replica needs for the traffic it is sent:

============ ========== ========================================================================
component    required   why
============ ========== ========================================================================
``config``   yes        a snapshot is live (a refused reload keeps the old one serving: reported,
                        not a reason to leave the pool)
``policy``   yes        the policy is loaded and was confirmed current within
                        ``policy.max_staleness``; past that, this replica may be deciding with
                        an authorization policy that was changed everywhere else
``state``    if routes  the fast state (Redis) holds the sessions: without it every signed-in
             need       request on this replica is refused with a 503 (fail closed), so the load
             sessions   balancer should send them to a replica that reaches it. Not required when
                        every route is public (nothing there needs a session)
``storage``  no         the database serves sign-in, second factors, the account portal, the admin
                        API and policy changes; signed-in traffic does not touch it (sessions
                        live in the fast state, the policy in memory). A database outage is
                        reported as *degraded* (those features are unavailable) and the replica
                        stays in the pool: every replica shares the one database, so taking them
                        out would turn a sign-in outage into a total one
============ ========== ========================================================================

The answer itself shows the listener is up. Liveness (``/.gateway/health``) is separate and never
depends on another service: restarting a process does not bring a database back.

The storage and fast-state probes run in the background every ``interval`` (so the
``gateway_component_up`` gauges move without anyone asking) and on demand when the last result is
older than ``max_age``; concurrent callers share one probe. ``/.gateway/ready`` needs no session, so
this bound is also what keeps anyone on the internet from turning it into database load.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.settings.schema import Route

__all__ = [
    "LOST_WITHOUT",
    "Component",
    "ProbeResult",
    "Readiness",
    "ReadinessMonitor",
    "assess",
    "sessions_needed",
]

logger = logging.getLogger("gateway.readiness")


class Component(StrEnum):
    """The parts of a replica that readiness reports on."""

    CONFIG = "config"
    STORAGE = "storage"
    STATE = "state"
    POLICY = "policy"


# What stops working on this replica while a component is down: the ``degraded`` list of the report
# (stable ids for dashboards and runbooks).
LOST_WITHOUT: Final[Mapping[Component, tuple[str, ...]]] = {
    Component.CONFIG: (),
    Component.STORAGE: ("sign-in", "mfa", "account", "admin", "policy-updates"),
    Component.STATE: ("sessions", "sign-in"),
    Component.POLICY: ("authorization",),
}

# Public path patterns that cover every path of a route (``*`` matches any characters).
_EVERYTHING: Final = frozenset({"*", "/*"})


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """One probe of a backing service.

    Attributes:
        ok: The service answered within the timeout.
        error: Why not (for loopback and trusted proxies only: it names internal addresses).
    """

    ok: bool
    error: str | None = None


Probe = Callable[[], Awaitable[None]]


class ReadinessMonitor:
    """Probes backing services in the background and on demand, keeping the last result of each.

    Args:
        probes: Per component, a coroutine function that returns when the service answers and
            raises otherwise (``Database.ping``, ``FastState.ping``).
        timeout: Seconds one probe may take; a slower service counts as down.
        interval: Seconds between background probes.
        max_age: :meth:`current` probes again when the last result is older than this.
        clock: Its monotonic clock ages the last results.
    """

    def __init__(
        self,
        probes: Mapping[Component, Probe],
        *,
        timeout: float = 2.0,
        interval: float = 5.0,
        max_age: float = 1.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._probes = dict(probes)
        self._timeout = timeout
        self._interval = interval
        self._max_age = max_age
        self._clock = clock
        self._results: dict[Component, ProbeResult] = {}
        self._checked_at = -math.inf
        self._in_flight: asyncio.Future[None] | None = None
        self._loop_task: asyncio.Task[None] | None = None

    def latest(self) -> Mapping[Component, ProbeResult]:
        """The last result per component, without probing (components never probed are absent)."""
        return dict(self._results)

    async def current(self) -> Mapping[Component, ProbeResult]:
        """The results, probing first if the last ones are older than ``max_age``."""
        if self._clock.monotonic() - self._checked_at > self._max_age:
            await self.refresh()
        return self.latest()

    async def refresh(self) -> None:
        """Probe every component once, concurrently; callers arriving meanwhile share that probe."""
        if self._in_flight is None or self._in_flight.done():
            self._in_flight = asyncio.ensure_future(self._probe_all())
        # Shielded: a caller that goes away (a load balancer's probe timing out) does not cancel
        # the probe the others are waiting for.
        await asyncio.shield(self._in_flight)

    async def start(self) -> None:
        """Probe once (so the first answer is a real one), then keep probing in the background."""
        await self.refresh()
        if self._loop_task is None:
            self._loop_task = asyncio.create_task(self._run(), name="readiness-probes")

    async def close(self) -> None:
        """Stop the background probes. Idempotent."""
        for task in (self._loop_task, self._in_flight):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._loop_task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.refresh()
            except Exception:
                # A bug in one round must not end the probes (the results would freeze).
                logger.exception("readiness probe round failed")

    async def _probe_all(self) -> None:
        components = tuple(self._probes)
        results = await asyncio.gather(*(self._probe(self._probes[c]) for c in components))
        for component, result in zip(components, results, strict=True):
            self._record(component, result)
        self._checked_at = self._clock.monotonic()

    async def _probe(self, probe: Probe) -> ProbeResult:
        try:
            async with asyncio.timeout(self._timeout):
                await probe()
        except TimeoutError:
            return ProbeResult(ok=False, error=f"no answer within {self._timeout:g}s")
        except Exception as exc:  # noqa: BLE001 - a probe reports any failure, it never raises
            return ProbeResult(ok=False, error=str(exc) or type(exc).__name__)
        return ProbeResult(ok=True)

    def _record(self, component: Component, result: ProbeResult) -> None:
        before = self._results.get(component)
        self._results[component] = result
        if before is None or before.ok == result.ok:
            return
        # Transitions only, so an outage is one log line each way, not one per probe.
        if result.ok:
            logger.info("readiness: %s reachable again", component)
        else:
            lost = ", ".join(LOST_WITHOUT[component]) or "nothing"
            logger.warning(
                "readiness: %s unavailable (%s); unavailable here: %s", component, result.error, lost
            )


@dataclass(frozen=True, slots=True)
class Readiness:
    """The verdict and what backs it.

    Attributes:
        ready: Whether this replica should receive traffic.
        up: Per component, whether it works (what the ``gateway_component_up`` gauge shows).
        degraded: What does not work on this replica right now (ids from :data:`LOST_WITHOUT`),
            also when the replica is still ready.
        checks: Per component, the details for loopback and trusted proxies.
    """

    ready: bool
    up: Mapping[Component, bool]
    degraded: tuple[str, ...]
    checks: Mapping[str, Any]

    def report(self) -> dict[str, Any]:
        """The full ``/.gateway/ready`` body."""
        return {"ready": self.ready, "degraded": list(self.degraded), "checks": dict(self.checks)}


def sessions_needed(routes: Iterable[Route]) -> bool:
    """Whether some route has a path that is not public, i.e. some request needs a session."""
    return any(not _EVERYTHING.intersection(route.public_paths) for route in routes)


def assess(
    *,
    config: Mapping[str, Any],
    policy: Mapping[str, Any],
    probes: Mapping[Component, ProbeResult],
    sessions: bool,
    upstreams: Mapping[str, Any],
) -> Readiness:
    """Combine the component checks into the verdict (see the module docstring for the rules).

    Args:
        config: The config check (``ok``, ``generation``, maybe ``last_reload_error``).
        policy: :meth:`LivePolicy.readiness <gateway.authz.live.LivePolicy.readiness>`.
        probes: The storage and state probes (a missing one counts as down).
        sessions: :func:`sessions_needed` for the live routes.
        upstreams: Per route, the pool's snapshot (reported; never part of the verdict, since every
            replica sees the same targets and one route's outage is not the replica's).

    Returns:
        The verdict, the component states, what is degraded, and the details.
    """
    required = {
        Component.CONFIG: True,
        Component.POLICY: True,
        Component.STATE: sessions,
        Component.STORAGE: False,
    }
    checks: dict[str, Any] = {
        Component.CONFIG.value: dict(config),
        Component.STORAGE.value: _probe_check(probes.get(Component.STORAGE)),
        Component.STATE.value: _probe_check(probes.get(Component.STATE)),
        Component.POLICY.value: dict(policy),
    }
    up = {component: bool(checks[component.value]["ok"]) for component in Component}
    degraded: list[str] = []
    for component in Component:
        check = checks[component.value]
        check["required"] = required[component]
        if not up[component]:
            check["unavailable"] = list(LOST_WITHOUT[component])
            degraded.extend(lost for lost in LOST_WITHOUT[component] if lost not in degraded)
    checks["upstreams"] = dict(upstreams)
    ready = all(up[component] for component in Component if required[component])
    return Readiness(ready=ready, up=up, degraded=tuple(degraded), checks=checks)


def _probe_check(result: ProbeResult | None) -> dict[str, Any]:
    if result is None:
        return {"ok": False, "error": "not started"}
    if result.ok:
        return {"ok": True}
    return {"ok": False, "error": result.error}
