"""The names under which the admin app injects its services into handlers (Litestar DI).

A handler declares a parameter with one of these types; the parameter's name is the dependency's
name, provided once for the whole app in :func:`admin.app.dependencies`::

    async def history(live_policy: Policy, limit: int = 20) -> History: ...
"""

from __future__ import annotations

from typing import TypeAlias

from litestar.di import NamedDependency

from gateway.authz.live import LivePolicy
from gateway.observe.metrics import Metrics, Scraper
from gateway.services import Services

__all__ = ["AdminServices", "LocalMetrics", "MetricsScraper", "Policy"]

#: ``live_policy``: the live policy (and its store).
Policy: TypeAlias = NamedDependency[LivePolicy]
#: ``services``: everything the admin process started (stores, identity, sinks, ...).
AdminServices: TypeAlias = NamedDependency[Services]
#: ``local_metrics``: this process's metrics.
LocalMetrics: TypeAlias = NamedDependency[Metrics]
#: ``scraper``: the metrics scraper.
MetricsScraper: TypeAlias = NamedDependency[Scraper]
