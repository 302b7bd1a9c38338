"""Whether this process can serve its traffic: the probes, the live config and the policy, combined.

The rules are in :mod:`gateway.observe.readiness`: a database outage degrades sign-in but keeps the
replica ready; an unreachable fast state (while routes need sessions) or a stale policy makes it not
ready. ``/.gateway/ready`` asks :meth:`ProcessReadiness.report`; the metrics sampler reads
:meth:`ProcessReadiness.gauges` (no I/O: the last probe results).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from gateway.authz.live import LivePolicy
from gateway.observe.readiness import (
    Component,
    ProbeResult,
    Readiness,
    ReadinessMonitor,
    assess,
    sessions_needed,
)
from gateway.pipeline.snapshot import LiveState
from gateway.root.reload import Reloader

__all__ = ["ProcessReadiness"]


class ProcessReadiness:
    """This process's readiness, from its probes, its reloader's last refusal and its live policy."""

    def __init__(
        self, monitor: ReadinessMonitor, live: LiveState, reloader: Reloader, policy: LivePolicy
    ) -> None:
        self._monitor = monitor
        self._live = live
        self._reloader = reloader
        self._policy = policy
        # The backups' line (gateway.backup.schedule), once the schedule runs here; never a reason
        # to leave the pool: serving does not depend on it.
        self.backup: Callable[[], dict[str, Any] | None] = lambda: None

    async def report(self) -> dict[str, Any]:
        """What ``/.gateway/ready`` reports: the verdict, what is degraded, and the details."""
        report = self._assess(await self._monitor.current(), upstreams=True).report()
        backup = self.backup()
        if backup is not None:
            report["checks"]["backup"] = backup
        return report

    def gauges(self) -> tuple[bool, Mapping[str, bool]]:
        """For the metrics sampler: the verdict and, per component, whether it is up (no I/O)."""
        verdict = self._assess(self._monitor.latest(), upstreams=False)
        return verdict.ready, {component.value: up for component, up in verdict.up.items()}

    def _assess(self, probes: Mapping[Component, ProbeResult], *, upstreams: bool) -> Readiness:
        snapshot = self._live.current
        config: dict[str, Any] = {"ok": True, "generation": snapshot.generation}
        if self._reloader.last_error:
            config["last_reload_error"] = self._reloader.last_error.splitlines()[0]
        return assess(
            config=config,
            policy=self._policy.readiness(),
            probes=probes,
            sessions=sessions_needed(snapshot.settings.routes),
            upstreams={name: rt.pool.snapshot() for name, rt in snapshot.routes.items()} if upstreams else {},
        )
