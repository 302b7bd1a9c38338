"""What a serving process shares between requests: built whole by the composition root, then frozen.

:func:`gateway.root.start` opens every part in order and hands back one of these; nothing in it is
``None`` because it "has not started yet", and nothing swaps a part later (a reload swaps the
configuration inside ``live``, never a service). Two shapes, one per kind of process:

* :class:`Services` — every serving process: the admin listener has exactly these.
* :class:`WorkerServices` — a gateway worker adds what the data plane and its pages run: signing
  keys, the assertion signer, blocked addresses, the request observers, threat detection, the
  upstream clients and the readiness report.

The data plane, the pages (``gateway/web/``) and the admin API (``admin/``) receive them; the pages
and the admin API get the parts as typed handler parameters through Litestar's dependency injection
(``web/app.py``, ``admin/app.py``). This module sits just above the domains so all three can name it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from gateway.authz.live import LivePolicy
from gateway.crypto.signing import SigningKeys
from gateway.identity.assertion import AssertionSigner
from gateway.identity.services import IdentityServices
from gateway.observe.metrics import Metrics
from gateway.observe.record import Observer
from gateway.observe.sinks import SinkHub
from gateway.settings.current import LiveConfig
from gateway.store.db import Database
from gateway.store.fast import FastState
from gateway.threat import IpBlocks, ThreatDetector
from gateway.upstream.http1 import Http1Client

__all__ = ["ReadinessReport", "Services", "WorkerServices"]

#: What ``/.gateway/ready`` answers (see :mod:`gateway.observe.readiness`), probing if the last
#: results are stale.
ReadinessReport = Callable[[], Awaitable[dict[str, Any]]]


@dataclass(frozen=True, slots=True)
class Services:
    """The parts every serving process runs (a gateway worker, the admin listener)."""

    # The configuration in force; a reload (SIGHUP) swaps what ``live.current`` returns.
    live: LiveConfig
    db: Database
    # Sessions, counters, blocks and the invalidation broadcast, shared by every process of the node.
    fast: FastState
    identity: IdentityServices
    policy: LivePolicy
    metrics: Metrics
    # None when logging configures no sink this process writes to.
    sinks: SinkHub | None


@dataclass(frozen=True, slots=True)
class WorkerServices(Services):
    """A gateway worker's parts: the admin listener's, and what the data plane and its pages run."""

    signing: SigningKeys
    assertions: AssertionSigner
    # Blocked client addresses, checked in the receive stage; kept current by the threat detector.
    ip_blocks: IpBlocks
    # None when ``threat.enabled`` is false.
    threats: ThreatDetector | None
    # Called with each request's record when it ends (metrics, access log, threats); they only
    # enqueue. Registered at start-up, in that order.
    observers: list[Observer]
    # The proxy stage's own HTTP/1.1 client, and aiohttp for WebSockets (and the health checks).
    upstream: Http1Client
    websockets: aiohttp.ClientSession
    readiness: ReadinessReport
