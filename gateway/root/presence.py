"""What a serving process says about itself in the replica registry, and under which version.

Every serving process heartbeats into ``replicas`` (:mod:`gateway.observe.replicas`) so the admin
overview lists the whole deployment. A worker reports its full readiness (what ``/.gateway/ready``
answers); the admin listener serves no data-plane traffic, so its readiness is its live policy's (the
one thing its answers depend on besides the stores, whose probes the overview shows separately).
"""

from __future__ import annotations

from gateway.authz.live import LivePolicy
from gateway.observe.replicas import Heartbeat, ReplicaReport
from gateway.pipeline.snapshot import LiveState
from gateway.services import ReadinessReport

__all__ = ["admin_report", "worker_report"]

# Seconds between two heartbeats; ReplicaRegistry shows a row as gone after 30 s without one.
HEARTBEAT_INTERVAL = 10.0


def worker_report(readiness: ReadinessReport, policy: LivePolicy, live: LiveState) -> ReplicaReport:
    """A worker's heartbeat: its readiness report (probing if stale), policy version, config generation."""

    async def report() -> Heartbeat:
        answer = await readiness()
        return Heartbeat(
            ready=bool(answer.get("ready")),
            policy_version=policy.version,
            config_generation=live.current.generation,
        )

    return report


def admin_report(policy: LivePolicy, live: LiveState) -> ReplicaReport:
    """The admin listener's heartbeat: ready while its policy is confirmed current."""

    async def report() -> Heartbeat:
        return Heartbeat(
            ready=bool(policy.readiness()["ok"]),
            policy_version=policy.version,
            config_generation=live.current.generation,
        )

    return report
