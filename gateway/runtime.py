"""One worker's resources and lifecycle: config snapshot, storage, fast state, upstream client.

Created at ASGI lifespan start-up and closed at shutdown. Reload (SIGHUP) builds a new snapshot off
the request path and swaps it in; a config that fails validation is refused and the old one keeps
serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

from gateway.audit.checkpoint import CHECKPOINT_DIR, Checkpointer
from gateway.authz.live import LivePolicy
from gateway.authz.store import PolicyStore
from gateway.clock import SYSTEM_CLOCK
from gateway.crypto.signing import SigningKeys
from gateway.errors import ConfigError
from gateway.identity.assertion import AssertionSigner
from gateway.identity.services import IdentityServices, keyring_path
from gateway.observe.access import CheckpointEntry, access_observer, audit_listener
from gateway.observe.readiness import (
    Component,
    ProbeResult,
    Readiness,
    ReadinessMonitor,
    assess,
    sessions_needed,
)
from gateway.observe.record import Observer
from gateway.observe.sinks import SinkHub
from gateway.pipeline.snapshot import LiveState, Snapshot, build_snapshot
from gateway.settings.loader import load_settings
from gateway.settings.schema import Settings
from gateway.store.db import Database, default_sqlite_url
from gateway.store.fast import FastState, open_configured_state
from gateway.store.migrate import ensure_schema
from gateway.threat import IpBlocks, Responder, ThreatDetector, Webhook
from gateway.upstream import HealthChecker
from gateway.upstream.http1 import Http1Client

if TYPE_CHECKING:
    from gateway.observe.metrics import Metrics

__all__ = ["Runtime"]

logger = logging.getLogger("gateway")


def storage_url(settings: Settings) -> str:
    """The configured database URL, or the embedded SQLite file in data_dir."""
    return settings.storage.url or default_sqlite_url(settings.data_dir)


class Runtime:
    """Owns everything a worker shares between requests."""

    def __init__(self, config_path: str | Path, settings: Settings) -> None:
        self.config_path = Path(config_path)
        self.live = LiveState(build_snapshot(settings, generation=1, source=str(config_path)))
        # aiohttp for WebSockets and health checks; the proxy stage's own HTTP/1.1 client for the rest.
        self.session: aiohttp.ClientSession | None = None
        self.upstream: Http1Client | None = None
        self.db: Database | None = None
        self.fast: FastState | None = None
        self.identity: IdentityServices | None = None
        self.signing: SigningKeys | None = None
        self.assertions: AssertionSigner | None = None
        self._signing_refresh: asyncio.Future[None] | None = None
        self.policy: LivePolicy | None = None
        # Called with each request's record when it ends (access log, metrics); they only enqueue.
        self.observers: list[Observer] = []
        self._listener: asyncio.Future[None] | None = None
        self._checker: HealthChecker | None = None
        # Probes the database and the fast state for /.gateway/ready and the component gauges.
        self._readiness: ReadinessMonitor | None = None
        self._checkpoints: asyncio.Future[None] | None = None
        self._reload_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[bool]] = set()
        self.last_reload_error: str | None = None
        # Set by the server when a SIGHUP arrived before start() could install its handler.
        self.early_reload: threading.Event | None = None
        # This process's Prometheus metrics (request observer, audit listener); built at start.
        self.metrics: Metrics | None = None
        # Access-log and security-event sinks (logging.sinks); None until start().
        self.sinks: SinkHub | None = None
        # Blocked client addresses, checked in the receive stage (in-process; kept current by the
        # threat detector from the fast state's broadcast and the block-list files).
        self.ip_blocks = IpBlocks(SYSTEM_CLOCK)
        self.threats: ThreatDetector | None = None

    @property
    def snapshot(self) -> Snapshot:
        return self.live.current

    async def start(self) -> None:
        """Open connections and start background work. Fails loudly: a worker must not half-start."""
        settings = self.snapshot.settings
        await asyncio.to_thread(Path(settings.data_dir).mkdir, parents=True, exist_ok=True)
        connector = aiohttp.TCPConnector(
            limit=settings.limits.max_upstream_connections,
            limit_per_host=0,
            keepalive_timeout=60,
            ttl_dns_cache=30,
        )
        # The session never stores cookies: upstream Set-Cookie headers belong to the browser.
        self.session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            # Never let aiohttp invent headers the client did not send: the upstream sees the client's request.
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        )
        self.upstream = Http1Client(max_connections=settings.limits.max_upstream_connections)
        url = storage_url(settings)
        await ensure_schema(url, auto=url.startswith("sqlite"))
        self.db = Database.open(url, pool_size=settings.storage.pool_size, echo=settings.storage.echo)
        # Redis, or the node's shared file in data_dir: every worker, the admin listener and the CLI
        # see the same sessions, counters, blocks and broadcasts.
        self.fast = open_configured_state(settings)
        self.identity = IdentityServices.build(settings, self.db, self.fast)
        self._listener = asyncio.ensure_future(self.identity.sessions.run_invalidation_listener())
        self.signing = SigningKeys(
            self.db,
            self.identity.keyring,
            self.identity.clock,
            settings.assertion,
            keyring_path=keyring_path(settings),
        )
        await self.signing.ensure()
        self._signing_refresh = asyncio.ensure_future(self.signing.run_refresh(30.0))
        self.assertions = AssertionSigner(
            self.signing.current,
            issuer=self.snapshot.public_url,
            ttl=settings.assertion.ttl,
            clock=self.identity.clock,
        )
        self.policy = LivePolicy(
            PolicyStore(self.db, self.fast, self.identity.audit, self.identity.clock), settings.policy
        )
        await self.policy.start()
        self._readiness = ReadinessMonitor({Component.STORAGE: self.db.ping, Component.STATE: self.fast.ping})
        await self._readiness.start()
        self._start_metrics()
        await self._start_access_log()
        await self._start_threats()
        self._start_checkpoints()
        self._checker = HealthChecker(self.snapshot.pools, self.session)
        await self._checker.start()
        try:
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self._on_sighup)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - non-main thread or Windows
            logger.warning("SIGHUP reload is not available in this process")
        if self.early_reload is not None and self.early_reload.is_set():
            # The config may have changed between loading it and now: honour that reload.
            await self.reload()

    def _start_metrics(self) -> None:
        # Imported here, not at the top: the master process imports this module before it sets the
        # metrics directory, and prometheus_client must not pick its storage before that.
        from gateway.observe.metrics import Metrics

        assert self.identity is not None
        assert self.policy is not None
        metrics = Metrics()
        metrics.watch_decision_cache(self.policy.authorizer.cache)
        metrics.watch_policy_version(lambda: self.policy.version if self.policy is not None else 0)
        # Read when sampled: the sink hub is built after this (and only when sinks are configured).
        metrics.watch_sinks(lambda: self.sinks.stats() if self.sinks is not None else {})
        metrics.watch_readiness(self._readiness_gauges)
        self.observers.append(metrics.observe_request)
        self.identity.audit.listeners.append(metrics.observe_audit)
        metrics.start()
        self.metrics = metrics

    def _start_checkpoints(self) -> None:
        """Sign a checkpoint of the audit chain every interval and send it out of the database."""
        assert self.db is not None
        assert self.identity is not None
        settings = self.snapshot.settings
        checkpointer = Checkpointer(
            self.db, self.identity.keyring, directory=Path(settings.data_dir) / CHECKPOINT_DIR
        )
        clock = self.identity.clock

        def emit(checkpoint: dict[str, Any]) -> None:
            if self.sinks is not None:
                self.sinks.publish(CheckpointEntry(checkpoint, clock.time()))

        self._checkpoints = asyncio.ensure_future(
            checkpointer.run_checkpoints(emit, float(settings.audit.checkpoint_interval))
        )

    async def _start_access_log(self) -> None:
        assert self.identity is not None
        config = self.snapshot.settings.logging
        if not config.sinks or not (config.access_log or config.security_events):
            return
        hub = SinkHub.from_settings(config)
        await hub.start()
        self.sinks = hub
        # With access_log off no observer is registered at all: the load tests measure its cost that way.
        if config.access_log:
            self.observers.append(access_observer(hub))
        if config.security_events:
            self.identity.audit.listeners.append(audit_listener(hub))

    async def _start_threats(self) -> None:
        assert self.identity is not None
        assert self.fast is not None
        settings = self.snapshot.settings
        threat = settings.threat
        if not threat.enabled:
            return
        webhook = None
        if threat.webhook_url is not None:
            webhook = Webhook(
                threat.webhook_url, queue_size=threat.webhook_queue, timeout=float(threat.webhook_timeout)
            )
        clock = self.identity.clock
        responder = Responder(
            state=self.fast,
            audit=self.identity.audit,
            accounts=self.identity.accounts,
            sessions=self.identity.sessions,
            clock=clock,
            # Alerts reach the sinks as the ``threat.<rule>`` security event (audit listener above).
            emit=None,
            webhook=webhook,
        )
        self.threats = ThreatDetector(
            settings=lambda: self.snapshot.settings.threat,
            state=self.fast,
            responder=responder,
            blocks=self.ip_blocks,
            clock=clock,
        )
        await self.threats.start()
        self.observers.append(self.threats.observe)
        self.identity.audit.listeners.append(self.threats.on_audit)

    def _on_sighup(self) -> None:
        task = asyncio.ensure_future(self.reload())
        # Keep a reference until done: the loop only holds tasks weakly.
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def reload(self) -> bool:
        """Re-read the config file; swap it in if valid. Returns whether the new config is live."""
        async with self._reload_lock:
            try:
                settings = await asyncio.to_thread(load_settings, self.config_path)
                new = build_snapshot(
                    settings, generation=self.snapshot.generation + 1, source=str(self.config_path)
                )
            except (ConfigError, ValueError) as exc:
                self.last_reload_error = str(exc)
                logger.error("config reload refused, the previous config keeps serving:\n%s", exc)
                await self._audit_reload("failure", str(exc))
                return False
            refused = self._refuse_restart_only_changes(self.snapshot.settings, settings)
            if refused:
                self.last_reload_error = refused
                logger.error("config reload refused: %s", refused)
                await self._audit_reload("failure", refused)
                return False
            assert self.session is not None
            checker = HealthChecker(new.pools, self.session)
            await checker.start()
            self.live.swap(new)
            old_checker, self._checker = self._checker, checker
            if old_checker is not None:
                await old_checker.stop()
            self.last_reload_error = None
            logger.info("config reloaded (generation %d, %d routes)", new.generation, len(new.routes))
            await self._audit_reload("success", f"generation {new.generation}")
            return True

    async def _audit_reload(self, outcome: str, detail: str) -> None:
        from gateway.audit.trail import record_quietly

        audit = self.identity.audit if self.identity is not None else None
        details = {
            "config": str(self.config_path),
            "detail": detail.splitlines()[0] if detail else "",
            "pid": os.getpid(),
        }
        await record_quietly(audit, "config.reloaded", actor="system", outcome=outcome, details=details)

    @staticmethod
    def _refuse_restart_only_changes(old: Settings, new: Settings) -> str | None:
        # These are bound when the process starts (sockets, files, connections); pretending to apply
        # them live would leave the running gateway different from its config.
        for key in (
            "listen",
            "tls",
            "data_dir",
            "storage",
            "state",
            "server",
            "policy",
            "assertion",
            "admin",
            "logging",
        ):
            if getattr(old, key) != getattr(new, key):
                return f"'{key}' changed; it only takes effect on restart. Restart the gateway to apply it."
        return None

    def may_see_internals(self, peer_ip: str) -> bool:
        """Loopback and trusted proxies may see operational details (addresses, errors)."""
        return peer_ip in ("127.0.0.1", "::1") or self.snapshot.trusted.is_trusted(peer_ip)

    async def readiness(self) -> dict[str, Any]:
        """What /.gateway/ready reports: whether this replica can serve its traffic, and what is degraded.

        The rules are in :mod:`gateway.observe.readiness`: a database outage degrades sign-in but
        keeps the replica ready; an unreachable fast state (while routes need sessions) or a stale
        policy makes it not ready.
        """
        probes = await self._readiness.current() if self._readiness is not None else {}
        return self._assess(probes, upstreams=True).report()

    def _readiness_gauges(self) -> tuple[bool, Mapping[str, bool]]:
        # For the metrics sampler: the last probe results, no I/O.
        probes = self._readiness.latest() if self._readiness is not None else {}
        verdict = self._assess(probes, upstreams=False)
        return verdict.ready, {component.value: up for component, up in verdict.up.items()}

    def _assess(self, probes: Mapping[Component, ProbeResult], *, upstreams: bool) -> Readiness:
        snapshot = self.snapshot
        config: dict[str, Any] = {"ok": True, "generation": snapshot.generation}
        if self.last_reload_error:
            config["last_reload_error"] = self.last_reload_error.splitlines()[0]
        policy = self.policy.readiness() if self.policy is not None else {"ok": False, "error": "not loaded"}
        return assess(
            config=config,
            policy=policy,
            probes=probes,
            sessions=sessions_needed(snapshot.settings.routes),
            upstreams={name: rt.pool.snapshot() for name, rt in snapshot.routes.items()} if upstreams else {},
        )

    async def close(self) -> None:
        """Stop background work and close connections (graceful shutdown, after requests drained)."""
        for task in (self._listener, self._signing_refresh, self._checkpoints):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self._checker is not None:
            await self._checker.stop()
        if self._readiness is not None:
            await self._readiness.close()
        # In this order: detectors and metrics first, then the sinks (requests have drained: they
        # deliver what is queued, within logging.flush_timeout), then the connections.
        for part in (
            self.threats,
            self.metrics,
            self.sinks,
            self.policy,
            self.session,
            self.upstream,
            self.fast,
            self.db,
        ):
            if part is not None:
                await part.close()


def load_runtime(config_path: str | Path) -> Runtime:
    """Load and validate the config, ready for ``start()``. Raises ConfigError."""
    return Runtime(config_path, load_settings(config_path))
