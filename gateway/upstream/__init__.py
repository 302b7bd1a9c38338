"""Upstream targets of the routes: load balancing, active health checks and passive ejection.

``UpstreamPool.pick`` / ``UpstreamPool.release`` frame every upstream attempt of the proxy;
``HealthChecker`` probes the pools in the background and reports its verdicts to them.
"""

from gateway.upstream.health import HealthChecker
from gateway.upstream.pool import Balance, UpstreamPool
from gateway.upstream.target import Target

__all__ = ["Balance", "HealthChecker", "Target", "UpstreamPool"]
