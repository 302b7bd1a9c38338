"""The targets of one route: load balancing and passive (outlier) ejection.

The proxy calls :meth:`UpstreamPool.pick` before each upstream attempt and :meth:`UpstreamPool.release`
after it, so both are O(number of targets) with no allocation; :meth:`UpstreamPool.responded` marks
the moment the response head arrived. The active health checker (:mod:`gateway.upstream.health`)
reports its verdicts through :meth:`UpstreamPool.set_health` and :meth:`UpstreamPool.readmit`.

A target receives traffic when the active check holds it healthy **and** no passive ejection is in
force **and**, while it is on probation after an ejection, it has no request in flight.

Passive ejection, decided as follows:

* **What counts as a failure.** ``release(ok=False)``: the connection could not be made (refused,
  reset, connect timeout), the response head did not arrive within ``timeouts.response`` (a hung
  target), or the exchange broke (garbage, a close before the response was complete). An HTTP error
  status is a response, not a failure. ``passive.consecutive_failures`` failures in a row eject the
  target for ``passive.ejection_time`` seconds of the injected clock; a completed exchange
  (``release(ok=True)``) resets the count. ``consecutive_failures`` or ``ejection_time`` of ``0``
  disables ejection.
* **Return on probation.** An ejection ends when its time has passed, or earlier when the active
  health check (if the route has one) sees ``healthy_threshold`` passing probes in a row that all
  started after the ejection began (:meth:`UpstreamPool.readmit`). It returns on probation: until it
  sends one response head (:meth:`UpstreamPool.responded`) it gets at most **one request at a
  time**; and its failure count is *not* reset until an exchange completes, so the first failure
  re-ejects it at once. A target that is still hung therefore holds one request per
  ejection, not its share of all traffic until the response timeout (which is what a plain return
  would do), and a target that passes its health check but fails real traffic costs one request per
  readmission.
* A failure reported while the target is already ejected (a request that was in flight when it
  was ejected) does not extend the ejection, so slow stragglers cannot keep a target out forever;
  a straggler's response resets the count but does not end the ejection early either.
* **Ejection may take out every target.** There is no ``max_ejection_percent``: when all targets
  are ejected, unhealthy or busy with their probation request, :meth:`UpstreamPool.pick` raises
  :class:`~gateway.errors.ServiceUnavailable` (503). This is the simplest rule that never sends
  traffic to a target known to be failing, and the return on probation bounds the outage to
  ``ejection_time``.
* An expired (or readmitted) ejection does not override an unhealthy active verdict: a target needs
  both to receive traffic.

All of this is per process: each worker has its own pools and its own view of upstream health.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.errors import ServiceUnavailable
from gateway.settings.schema import ActiveHealthCheck, PassiveHealthCheck, Route
from gateway.upstream.target import Target
from gateway.upstream.tls import TlsClient, tls_client

__all__ = ["Balance", "UpstreamPool"]

logger = logging.getLogger("gateway.upstream")

Balance = Literal["round_robin", "least_outstanding"]


class UpstreamPool:
    """The upstream targets of one route, with load balancing and passive health.

    Args:
        route_name: Name of the route, used in errors and logs.
        upstreams: Configured upstream URLs (see :meth:`Target.from_url`).
        balance: ``"round_robin"`` or ``"least_outstanding"``.
        passive: Passive ejection settings.
        active: Active check settings, or ``None``; the pool only keeps it for the health checker.
        clock: Its monotonic clock times ejections; injected so tests move time instead of sleeping.
        tls: The TLS every https target is reached with (``upstream_tls``), or ``None`` for defaults.

    Raises:
        ValueError: No upstreams, an invalid or duplicate upstream URL, an unknown balance
            algorithm, or negative passive settings.
    """

    __slots__ = (
        "_cursor",
        "_eject_after",
        "_least",
        "_monotonic",
        "_passive",
        "active",
        "balance",
        "route_name",
        "targets",
    )

    def __init__(
        self,
        route_name: str,
        upstreams: Sequence[str],
        *,
        balance: Balance,
        passive: PassiveHealthCheck,
        active: ActiveHealthCheck | None,
        clock: Clock = SYSTEM_CLOCK,
        tls: TlsClient | None = None,
    ) -> None:
        if not upstreams:
            raise ValueError(f"route {route_name!r} has no upstreams")
        if balance not in ("round_robin", "least_outstanding"):
            raise ValueError(f"route {route_name!r}: unknown balance algorithm {balance!r}")
        if passive.consecutive_failures < 0 or passive.ejection_time < 0:
            raise ValueError(f"route {route_name!r}: passive health check settings must not be negative")
        targets = tuple(Target.from_url(url) for url in upstreams)
        seen: set[str] = set()
        for target in targets:
            if target.url in seen:
                # Two entries for one origin would split its health state and double its share of
                # the load: almost certainly a typo. Unique origins also keep snapshot rows distinct.
                raise ValueError(f"route {route_name!r}: duplicate upstream {target.url}")
            seen.add(target.url)
            if target.scheme == "https":
                target.tls = tls
        self.route_name = route_name
        self.targets: tuple[Target, ...] = targets
        self.balance: Balance = balance
        self.active = active
        self._passive = passive
        # Failures in a row that eject a target; 0 when ejection is off (either setting 0).
        self._eject_after = passive.consecutive_failures if passive.ejection_time > 0 else 0
        self._least = balance == "least_outstanding"
        # Bound once: pick() and release() read it on every upstream attempt.
        self._monotonic = clock.monotonic
        # Index where the next scan starts; both algorithms advance it past the chosen target so
        # that round robin rotates and least-outstanding breaks ties in rotation.
        self._cursor = 0

    @classmethod
    def from_route(cls, route: Route, *, clock: Clock = SYSTEM_CLOCK) -> UpstreamPool:
        """Build the pool for a configured route.

        Args:
            route: The route settings.
            clock: The clock of ejections (its monotonic reading).

        Returns:
            A pool with every target healthy and nothing in flight.

        Raises:
            ValueError: As the constructor, and when the route's ``upstream_tls`` files cannot be loaded.
        """
        try:
            tls = tls_client(route.upstream_tls)  # once per snapshot, never per request
        except ValueError as exc:
            raise ValueError(f"route {route.name!r}: {exc}") from exc
        return cls(
            route.name,
            route.upstreams,
            balance=route.balance,
            passive=route.passive_health_check,
            active=route.health_check,
            clock=clock,
            tls=tls,
        )

    @property
    def passive(self) -> PassiveHealthCheck:
        """The passive ejection settings."""
        return self._passive

    def pick(self, *, exclude: Target | None = None) -> Target:
        """Choose the target for the next upstream attempt and count it as in flight.

        Every successful pick must be paired with exactly one :meth:`release`.

        Args:
            exclude: A target not to choose, typically the one a retry is moving away from. The
                exclusion is strict: if it is the only available target, this raises rather than
                returning it again, and the caller decides whether retrying the same target is
                worth it.

        Returns:
            The chosen target, with ``outstanding`` already incremented.

        Raises:
            ServiceUnavailable: No target (other than ``exclude``) is available.
        """
        targets = self.targets
        count = len(targets)
        now = self._monotonic()
        index = self._cursor
        chosen: Target | None = None
        chosen_index = 0
        for _ in range(count):
            target = targets[index]
            if target is not exclude and self._usable(target, now):
                if not self._least:
                    chosen, chosen_index = target, index
                    break
                # Strict "<" keeps the first one in rotation order among equals: ties round-robin.
                if chosen is None or target.outstanding < chosen.outstanding:
                    chosen, chosen_index = target, index
                    if target.outstanding == 0:
                        break  # nothing can beat an idle target
            index += 1
            if index == count:
                index = 0
        if chosen is None:
            raise self._unavailable(exclude, now)
        self._cursor = chosen_index + 1 if chosen_index + 1 < count else 0
        chosen.outstanding += 1
        return chosen

    def release(self, target: Target, *, ok: bool) -> None:
        """Report the end of an attempt that :meth:`pick` started.

        Args:
            target: The target that :meth:`pick` returned.
            ok: ``False`` for a transport failure (connect error or timeout, reset, response
                timeout, a broken response), which counts towards passive ejection; ``True``
                otherwise, which resets the count. An HTTP error status from the upstream is a
                response, so it is ``ok=True``.
        """
        if target.outstanding > 0:
            target.outstanding -= 1
        if ok:
            target.consecutive_failures = 0
            return
        target.consecutive_failures += 1
        threshold = self._eject_after
        if threshold == 0 or target.consecutive_failures < threshold:
            return
        target.probation = False
        now = self._monotonic()
        if now < target.ejected_until:
            return  # a straggler from before the ejection: do not extend it
        target.ejected_until = now + self._passive.ejection_time
        target.ejections += 1
        logger.warning(
            "route %s: upstream %s ejected for %gs after %d consecutive failures",
            self.route_name,
            target.url,
            self._passive.ejection_time,
            target.consecutive_failures,
        )

    def responded(self, target: Target) -> None:
        """Report that ``target`` sent a response head for the attempt in progress.

        The target is alive, so a probation ends here rather than when the body is done: a long
        download or a WebSocket on probation does not keep the target at one request at a time.
        The failure count is left to :meth:`release`, so a target whose answers stall after the
        head still gets ejected.

        Args:
            target: The target that :meth:`pick` returned; :meth:`release` still follows.
        """
        if target.probation:
            target.probation = False

    def ejection_in_force(self, target: Target) -> int:
        """Which passive ejection of the target is in force (its ``ejections`` count), or ``0``.

        The active health checker reads it before probing and hands it back to :meth:`readmit`,
        which ends only that same ejection.
        """
        return target.ejections if target.ejected(self._monotonic()) else 0

    def readmit(self, target: Target, *, ejection: int) -> bool:
        """End a passive ejection early because the active health check found the target healthy.

        Only the ejection that was already in force when the passing probes started may be ended
        (``ejection`` is what :meth:`ejection_in_force` said then): a probe that was in flight when
        the target was ejected proves nothing about the failure that ejected it. The target returns
        on probation, exactly as when the ejection time has passed.

        Args:
            target: One of this pool's targets.
            ejection: What :meth:`ejection_in_force` returned before the probes started.

        Returns:
            Whether an ejection was ended.
        """
        if not ejection or target.ejections != ejection or not target.ejected(self._monotonic()):
            return False
        target.ejected_until = 0.0
        target.probation = True
        logger.info(
            "route %s: upstream %s readmitted by the active health check (on probation)",
            self.route_name,
            target.url,
        )
        return True

    def set_health(self, target: Target, *, healthy: bool) -> None:
        """Record the active health check's verdict for a target, logging a change.

        Args:
            target: One of this pool's targets.
            healthy: The new verdict.
        """
        if target.healthy == healthy:
            return
        target.healthy = healthy
        if healthy:
            logger.info("route %s: upstream %s is healthy again", self.route_name, target.url)
        else:
            logger.warning("route %s: upstream %s is unhealthy", self.route_name, target.url)

    def any_available(self) -> bool:
        """Whether :meth:`pick` would currently find a target (for readiness)."""
        now = self._monotonic()
        return any(self._usable(target, now) for target in self.targets)

    def snapshot(self) -> list[dict[str, object]]:
        """The state of every target, for ``/.gateway/ready`` and metrics.

        Returns:
            One dict per target, in configuration order, with ``url``, ``healthy``, ``ejected``,
            ``probation``, ``outstanding`` and ``consecutive_failures``.
        """
        now = self._monotonic()
        rows: list[dict[str, object]] = []
        for target in self.targets:
            self._usable(target, now)  # lets an expired ejection end (and be logged) first
            rows.append(
                {
                    "url": target.url,
                    "healthy": target.healthy,
                    "ejected": target.ejected(now),
                    "probation": target.probation,
                    "outstanding": target.outstanding,
                    "consecutive_failures": target.consecutive_failures,
                }
            )
        return rows

    def _usable(self, target: Target, now: float) -> bool:
        """Whether ``target`` may take a request now, ending an expired ejection on the way."""
        if target.ejected_until:
            if now < target.ejected_until:
                return False
            # consecutive_failures is kept, so the next failure re-ejects at once.
            target.ejected_until = 0.0
            target.probation = True
            logger.info(
                "route %s: upstream %s returns after ejection (on probation)", self.route_name, target.url
            )
        if not target.healthy:
            return False
        # One request at a time on probation: a target that is still hung holds that one request
        # until the response timeout, instead of every request the balancer would send it meanwhile.
        return target.outstanding == 0 or not target.probation

    def _unavailable(self, exclude: Target | None, now: float) -> ServiceUnavailable:
        if exclude is not None and exclude.available(now):
            return ServiceUnavailable(f"no other upstream target of route {self.route_name} is available")
        return ServiceUnavailable(f"all upstream targets of route {self.route_name} are down")

    def __repr__(self) -> str:
        return f"UpstreamPool({self.route_name!r}, {[t.url for t in self.targets]!r})"
