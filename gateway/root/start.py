"""Start-up: one function opens a process's parts in order and hands back the frozen services.

``start(config_path, settings, role=...)`` opens the stores, the identity services, the live policy,
readiness, metrics, sinks and the replica heartbeat (every serving process), and for a gateway worker
also the signing keys, the upstream clients and health checks, threat detection, the audit
checkpoints and the decision sample. Each part
is registered for closing as soon as it is open: if a later step fails, what was opened is closed
again (in reverse order) and the error propagates, so no process ever half-starts. What comes back
is a :class:`Running`: the services, the live snapshot, the reloader (SIGHUP) and the one ``close``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar, overload
from urllib.parse import urlsplit

import aiohttp

from gateway.audit.checkpoint import CHECKPOINT_DIR, Checkpointer
from gateway.authz.live import LivePolicy
from gateway.authz.sample import DecisionSample
from gateway.authz.store import PolicyStore
from gateway.backup.jobs import job_for
from gateway.backup.schedule import BackupSchedule, run_backups
from gateway.crypto.signing import SigningKeys, follow_compromise
from gateway.errors import GatewayError
from gateway.identity.assertion import AssertionSigner
from gateway.identity.owed import run_owed
from gateway.machine.accounts import ServiceAccounts
from gateway.machine.gateway_tokens import GatewayTokens
from gateway.machine.provider_accounts import LinkedAccounts
from gateway.machine.provider_audit import ProviderAudit
from gateway.machine.provider_introspection import ProviderIntrospection
from gateway.machine.provider_jwt import ProviderJwtTokens
from gateway.machine.verifier import TokenVerifier, Verifiers
from gateway.observe.access import CheckpointEntry, access_observer, audit_listener
from gateway.observe.metrics import Metrics
from gateway.observe.readiness import Component, ReadinessMonitor
from gateway.observe.record import Observer
from gateway.observe.replicas import ReplicaRegistry
from gateway.observe.sinks import SinkHub
from gateway.observe.tracing import Tracer
from gateway.pipeline.snapshot import LiveState, build_snapshot
from gateway.privacy.chores import run_chores
from gateway.privacy.ledger_replay import Replayers, replay, run_ledger
from gateway.privacy.purposes import GEOLOCATION
from gateway.privacy.retention import Retention
from gateway.privacy.service import Privacy
from gateway.response.cases import Cases
from gateway.root.presence import HEARTBEAT_INTERVAL, admin_report, worker_report
from gateway.root.readiness import ProcessReadiness
from gateway.root.reload import HealthChecks, Reloader
from gateway.services import IdentityServices, Services, WorkerServices
from gateway.settings.schema import IdentityProvider, MfaPolicy, Settings
from gateway.store.db import Database, configured_url
from gateway.store.fast import FastState, StateUnavailable, open_configured_state
from gateway.store.migrate import ensure_schema
from gateway.store.private import private_dir
from gateway.threat import IpBlocks, Responder, ThreatDetector, Webhook
from gateway.threat.addresses import use_nat64_prefixes
from gateway.threat.blocks import BlockFeed, BlockStore
from gateway.threat.incidents import IncidentStore
from gateway.threat.lockdown import Lockdown, LockdownStore
from gateway.upstream.http1 import Http1Client
from gateway.version import package_version

__all__ = ["Role", "Running", "start"]

logger = logging.getLogger("gateway")

S = TypeVar("S", bound=Services)

# Seconds between two flushes of a worker's decision sample: what the policy what-if sees of the
# traffic is at most this old, and a busy worker writes a handful of rows per interval.
SAMPLE_FLUSH_INTERVAL = 10.0


class Role(StrEnum):
    """What a process serves, and so what it starts."""

    # The data plane and the /.gateway/ pages: everything.
    WORKER = "worker"
    # The admin API: stores, identity, policy, readiness, metrics and security-event sinks; no
    # upstream clients or health checks, no threat detection, no signing keys, no checkpoints.
    ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class Running(Generic[S]):
    """A started process: its services, the live snapshot, and what keeps and ends them."""

    services: S
    # The same holder as ``services.live``, with the pipeline's full snapshot type.
    live: LiveState
    reloader: Reloader
    _stack: contextlib.AsyncExitStack = field(repr=False)

    async def reload(self) -> bool:
        """Re-read the config file now (what SIGHUP does). Returns whether the new config is live."""
        return await self.reloader.reload()

    async def close(self) -> None:
        """Stop background work and close connections, in reverse order of opening (graceful
        shutdown, after requests drained: detectors and metrics, then the sinks deliver what is
        queued within ``logging.flush_timeout``, then the policy and the connections)."""
        await self._stack.aclose()


@overload
async def start(
    config_path: str | Path,
    settings: Settings,
    *,
    role: Literal[Role.WORKER],
    early_reload: threading.Event | None = None,
) -> Running[WorkerServices]: ...


@overload
async def start(
    config_path: str | Path,
    settings: Settings,
    *,
    role: Literal[Role.ADMIN],
    early_reload: threading.Event | None = None,
) -> Running[Services]: ...


async def start(
    config_path: str | Path,
    settings: Settings,
    *,
    role: Role,
    early_reload: threading.Event | None = None,
) -> Running[WorkerServices] | Running[Services]:
    """Open everything ``role`` runs, in order; on any failure close what was opened and raise.

    Args:
        config_path: The config file (re-read on SIGHUP).
        settings: It, loaded and validated.
        role: What this process serves.
        early_reload: Set by the server when a SIGHUP arrived before the handler was installed here:
            the config may have changed since ``settings`` were loaded, so that reload is honoured.
    """
    path = Path(config_path)
    stack = contextlib.AsyncExitStack()
    # How the threat rules and the blocks read client addresses behind a NAT64 translator (process-wide).
    use_nat64_prefixes(settings.threat.nat64_prefixes)
    try:
        running: Running[WorkerServices] | Running[Services]
        if role is Role.WORKER:
            running = await _open_worker(stack, path, settings)
        else:
            running = await _open_admin(stack, path, settings)
        if running.reloader.listen():
            stack.callback(_stop_listening)
        if early_reload is not None and early_reload.is_set():
            await running.reload()
    except BaseException:
        await stack.aclose()
        raise
    return running


# -- the parts ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Shared:
    """The parts every role opens, and the ones only start-up needs."""

    live: LiveState
    db: Database
    fast: FastState
    identity: IdentityServices
    policy: LivePolicy
    reloader: Reloader
    readiness: ProcessReadiness
    sinks: SinkHub | None
    metrics: Metrics
    replicas: ReplicaRegistry
    privacy: Privacy
    case_events: Webhook | None


def _warn_shared_origin(settings: Settings) -> None:
    """Say so when a route serves an app on the auth host itself: the app's own script then shares the
    portal's origin (its CSRF cookie, the factor API), which a route on a host of its own does not."""
    auth = (urlsplit(settings.public_url).hostname or "").lower().rstrip(".")
    # A wildcard route covers one label: *.example.com covers auth.example.com.
    covering = {auth, f"*.{auth.partition('.')[2]}"}
    for route in settings.routes:
        if route.host.lower().rstrip(".") in covering:
            logger.warning(
                "route %s serves its app on the auth host %s: its pages share the origin of the account "
                "portal and its API, so a script of that app could act for the visitor there. Give an app "
                "you do not trust as much as the gateway a host of its own.",
                route.name,
                auth,
            )


def _warn_tokens_skip_mfa(settings: Settings) -> None:
    """Say so when a route that requires a second factor also takes API tokens: a token is not a
    person's session, so its holder reaches the route with the token alone (an attack run found no
    word of it where an operator would look)."""
    for route in settings.routes:
        required = route.mfa.require if isinstance(route.mfa, MfaPolicy) else route.mfa
        if "bearer" in route.auth and required != "none":
            logger.warning(
                "route %s requires a second factor (mfa: %s) and takes API tokens (auth: bearer): a request "
                "with a token skips the second factor. Give machine clients a route of their own if the "
                "second factor must hold for everything on this one.",
                route.name,
                required,
            )


async def _open_worker(
    stack: contextlib.AsyncExitStack, path: Path, settings: Settings
) -> Running[WorkerServices]:
    _warn_shared_origin(settings)
    _warn_tokens_skip_mfa(settings)
    live = LiveState(build_snapshot(settings, generation=1, source=str(path)))
    await asyncio.to_thread(private_dir, Path(settings.data_dir))
    websockets = _websocket_session(settings)
    stack.push_async_callback(websockets.close)
    upstream = Http1Client(max_connections=settings.limits.max_upstream_connections)
    stack.push_async_callback(upstream.close)
    db, fast, identity = await _open_stores(stack, settings, live)
    signing = SigningKeys(db, identity.keyring, identity.clock, settings.assertion)
    await signing.ensure()
    _background(stack, signing.run_refresh(30.0))
    # A rotation of leaked keys reaches this worker at once; if it cannot reload, it stops signing.
    _background(stack, follow_compromise(fast, signing, keyring=identity.keyring))
    assertions = AssertionSigner(
        signing.current, issuer=live.current.public_url, ttl=settings.assertion.ttl, clock=identity.clock
    )
    health = HealthChecks(websockets)
    shared = await _open_shared(stack, path, settings, live, db, fast, identity, health, Role.WORKER)
    observers: list[Observer] = [shared.metrics.observe_request]
    config = settings.logging
    # With access_log off no observer is registered at all: the load tests measure its cost that way.
    if shared.sinks is not None and config.access_log:
        observers.append(access_observer(shared.sinks))
    ip_blocks = IpBlocks(identity.clock)
    # The blocks are followed whether detection is on or not: the CLI's and the console's apply too.
    feed = BlockFeed(
        ip_blocks,
        BlockStore(fast, identity.clock, db=identity.audit.db),
        lambda: live.current.settings.threat.block_lists,
        lambda: float(live.current.settings.threat.block_list_poll),
    )
    await feed.start()
    stack.push_async_callback(feed.close)
    lockdown = await _open_lockdown(stack, live, fast, identity)
    threats = await _open_threats(stack, live, settings, fast, identity, ip_blocks, db)
    if threats is not None:
        observers.append(threats.observe)
        identity.audit.listeners.append(threats.on_audit)
    _start_checkpoints(stack, settings, db, identity, shared.sinks)
    # Noted by the authorize stage (no I/O), flushed in the background, flushed once more at close.
    sample = DecisionSample(
        db, clock=identity.clock, retention=timedelta(seconds=float(settings.admin.sample_retention))
    )
    _background(stack, sample.run(SAMPLE_FLUSH_INTERVAL))
    # The gateway's own API tokens: cached per worker for a second, revocations heard at once.
    tokens = GatewayTokens(db, identity.audit, fast, identity.clock)
    _background(stack, tokens.run_invalidation_listener())
    stack.push_async_callback(tokens.close)
    bearer = _provider_verifiers(stack, live, db, identity, tokens)
    # Every worker tries each period's retention run; the run's row makes it one across replicas.
    retention = Retention(
        db,
        shared.privacy,
        keyring=identity.keyring,
        audit=identity.audit,
        incidents=IncidentStore(fast),
        settings=lambda: live.current.settings.privacy,
        clock=identity.clock,
    )
    _background(stack, run_chores(shared.privacy, lambda: live.current.settings.privacy, retention))
    await _replay_ledger(stack, settings, db, identity, shared.privacy, signing, fast)
    # The same for backups: every worker tries each period's, the run's row makes it one; each shows
    # the last state it read in its readiness details.
    backups = BackupSchedule(
        db,
        identity.audit,
        job_for(lambda: live.current.settings, identity.keyring, identity.clock),
        lambda: live.current.settings.backup,
        identity.clock,
    )
    shared.readiness.backup = backups.readiness
    _background(stack, run_backups(backups, lambda: live.current.settings.backup.scheduled))
    await health.follow(live.current)
    stack.push_async_callback(health.close)
    services = WorkerServices(
        live=live,
        db=db,
        fast=fast,
        identity=identity,
        policy=shared.policy,
        metrics=shared.metrics,
        sinks=shared.sinks,
        signing=signing,
        assertions=assertions,
        ip_blocks=ip_blocks,
        lockdown=lockdown,
        threats=threats,
        observers=observers,
        upstream=upstream,
        websockets=websockets,
        readiness=shared.readiness.report,
        replicas=shared.replicas,
        privacy=shared.privacy,
        case_events=shared.case_events,
        sample=sample,
        bearer=bearer,
        tracer=_open_tracing(stack, settings),
    )
    return Running(services, live, shared.reloader, stack)


async def _replay_ledger(
    stack: contextlib.AsyncExitStack,
    settings: Settings,
    db: Database,
    identity: IdentityServices,
    privacy: Privacy,
    signing: SigningKeys,
    fast: FastState,
) -> None:
    """Make again, before serving, the changes a restored database lacks (deletions, erasures, disables,
    passwords, factors, roles, revoked tokens, leaked keys, withdrawn consents, objections); then keep this node's ledger file in step
    with the table (``gateway.privacy.ledger_replay``)."""
    ledger = identity.accounts.ledger
    if ledger is None:
        return
    tokens = ServiceAccounts(
        db, identity.audit, fast, identity.clock,
        max_lifetime=float(settings.tokens.max_lifetime), keyring=identity.keyring, ledger=ledger,
    )  # fmt: skip
    by = Replayers(
        ledger,
        identity.accounts,
        privacy.eraser,
        identity.audit,
        db,
        tokens,
        signing,
        fast,
        identity.consents,
    )
    try:
        await replay(by)
    except OSError as exc:
        # Fail closed: serving a restored database without its ledger could bring erased people back.
        raise GatewayError(
            f"cannot read the account ledger {ledger.path} ({exc.strerror or exc}): give the gateway's user "
            "read and write access to it (backup.ledger), or move a damaged file aside after checking that "
            "the database was not restored from a backup"
        ) from exc
    _background(stack, run_ledger(by))


def _provider_verifiers(
    stack: contextlib.AsyncExitStack,
    live: LiveState,
    db: Database,
    identity: IdentityServices,
    tokens: GatewayTokens,
) -> Verifiers:
    """The bearer chain: the gateway's own tokens, then identity providers' JWTs, then introspection.

    The providers are read from the live configuration on every use (a reload applies), through the
    sign-in code's per-worker provider clients (one discovery and JWKS cache per provider).
    """
    audit = ProviderAudit(identity.audit, identity.clock)
    stack.push_async_callback(audit.close)
    accounts = LinkedAccounts(db, identity.clock, optout_of=identity.consents.optout_of)

    def providers() -> tuple[IdentityProvider, ...]:
        return live.current.settings.identity_providers

    chain: list[TokenVerifier] = [
        tokens,
        ProviderJwtTokens(providers, identity.oidc.client, accounts, audit, identity.clock),
        ProviderIntrospection(
            providers, identity.oidc.client, accounts, audit, identity.clock, asking=identity.attempts
        ),
    ]
    return Verifiers(chain)


async def _open_admin(stack: contextlib.AsyncExitStack, path: Path, settings: Settings) -> Running[Services]:
    live = LiveState(build_snapshot(settings, generation=1, source=str(path)))
    await asyncio.to_thread(private_dir, Path(settings.data_dir))
    db, fast, identity = await _open_stores(stack, settings, live)
    shared = await _open_shared(stack, path, settings, live, db, fast, identity, None, Role.ADMIN)
    services = Services(
        live=live,
        db=db,
        fast=fast,
        identity=identity,
        policy=shared.policy,
        metrics=shared.metrics,
        sinks=shared.sinks,
        replicas=shared.replicas,
        privacy=shared.privacy,
        case_events=shared.case_events,
    )
    return Running(services, live, shared.reloader, stack)


async def _open_stores(
    stack: contextlib.AsyncExitStack, settings: Settings, live: LiveState
) -> tuple[Database, FastState, IdentityServices]:
    url = configured_url(settings)
    await ensure_schema(url, auto=url.startswith("sqlite"))
    db = Database.open(url, pool_size=settings.storage.pool_size, echo=settings.storage.echo)
    stack.push_async_callback(db.close)
    # Redis, or the node's shared file in data_dir: every worker, the admin listener and the CLI see
    # the same sessions, counters, blocks and broadcasts.
    fast = open_configured_state(settings)
    stack.push_async_callback(fast.close)
    # The privacy purposes and regulation limits of the configuration in force: a reload applies.
    identity = IdentityServices.build(
        settings,
        db,
        fast,
        purposes=lambda: live.current.settings.privacy.purposes,
        regulation=lambda: live.current.settings.regulation,
    )
    _background(stack, identity.sessions.run_invalidation_listener())
    # Sessions owed an end (the store did not answer when their account changed): refused from the
    # next round and ended once it answers; in the admin listener too (a re-attack run: a disabled
    # admin's session, refused by the workers, re-enabled the account through the console).
    _background(stack, run_owed(db, identity.sessions))
    return db, fast, identity


async def _open_shared(
    stack: contextlib.AsyncExitStack,
    path: Path,
    settings: Settings,
    live: LiveState,
    db: Database,
    fast: FastState,
    identity: IdentityServices,
    health: HealthChecks | None,
    role: Role,
) -> _Shared:
    policy = LivePolicy(PolicyStore(db, fast, identity.audit, identity.clock), settings.policy)
    await policy.start()
    stack.push_async_callback(policy.close)
    reloader = Reloader(
        path,
        live,
        audit=identity.audit,
        health=health,
        policy_note=policy.file_differs,
        # What keeps part of the configuration outside the live snapshot: the session store's lifetimes
        # (read on every request's look-up) and providers' mappings, the NAT64 prefixes (process-wide,
        # as at start). The other
        # services read the live configuration through a callable.
        appliers=(
            lambda new: identity.sessions.use(new.session),
            lambda new: identity.sessions.use_providers(new.identity_providers),
            lambda new: use_nat64_prefixes(new.threat.nat64_prefixes),
        ),
    )
    # Probes the database and the fast state for /.gateway/ready and the component gauges.
    monitor = ReadinessMonitor({Component.STORAGE: db.ping, Component.STATE: fast.ping})
    await monitor.start()
    stack.push_async_callback(monitor.close)
    readiness = ProcessReadiness(monitor, live, reloader, policy)
    sinks = await _open_sinks(stack, settings, role)
    metrics = Metrics()
    metrics.watch_decision_cache(policy.authorizer.cache)
    metrics.watch_policy_version(lambda: policy.version)
    if sinks is not None:
        metrics.watch_sinks(sinks.stats)
    metrics.watch_readiness(readiness.gauges)
    identity.audit.listeners.append(metrics.observe_audit)
    metrics.start()
    stack.push_async_callback(metrics.close)
    if sinks is not None and settings.logging.security_events:
        identity.audit.listeners.append(audit_listener(sinks))
    # This process in the deployment's list; a clean close removes its row (the task's last step).
    replicas = ReplicaRegistry(db, role=role.value, version=package_version(), clock=identity.clock)
    if role is Role.WORKER:
        report = worker_report(readiness.report, policy, live)
    else:
        report = admin_report(policy, live)
    # Listed before the process serves; the background beats follow an interval apart.
    await replicas.announce(report)
    _background(stack, replicas.run(report, HEARTBEAT_INTERVAL, beat_first=False))
    privacy = identity.privacy(db, fast)
    return _Shared(
        live, db, fast, identity, policy, reloader, readiness, sinks, metrics, replicas, privacy,
        # Only the admin listener changes incident records (the console); workers hold no queue.
        _open_case_events(stack, settings) if role is Role.ADMIN else None,
    )  # fmt: skip


def _open_case_events(stack: contextlib.AsyncExitStack, settings: Settings) -> Webhook | None:
    """The queue incident-record changes go to ``threat.webhook_url`` from (gateway.response.webhook)."""
    threat = settings.threat
    if threat.webhook_url is None:
        return None
    events = Webhook(
        threat.webhook_url, queue_size=threat.webhook_queue, timeout=float(threat.webhook_timeout)
    )
    events.start()
    stack.push_async_callback(events.close)
    return events


async def _open_sinks(stack: contextlib.AsyncExitStack, settings: Settings, role: Role) -> SinkHub | None:
    """The access-log and security-event sinks (``logging.sinks``), if this process writes to any.

    The admin listener serves no data-plane request: it writes security events only.
    """
    config = settings.logging
    wanted = config.security_events or (role is Role.WORKER and config.access_log)
    if not config.sinks or not wanted:
        return None
    hub = SinkHub.from_settings(config)
    await hub.start()
    stack.push_async_callback(hub.close)
    return hub


async def _open_lockdown(
    stack: contextlib.AsyncExitStack, live: LiveState, fast: FastState, identity: IdentityServices
) -> Lockdown:
    """The worker's lockdown switch: read before the first request, then kept current in the background."""
    lockdown = Lockdown()
    store = LockdownStore(fast, identity.clock, db=identity.audit.db)
    try:
        # A worker starting during a lockdown must not serve its first requests as if there were none.
        await store.refresh(lockdown)
    except StateUnavailable as exc:
        # No session can be read either while the fast state is down; the listener retries.
        logger.error("lockdown state unreadable at start (%s); assuming off until it can be read", exc)
    interval = float(live.current.settings.lockdown.refresh_interval)
    _background(stack, store.run_listener(lockdown, refresh_every=interval))
    return lockdown


async def _open_threats(
    stack: contextlib.AsyncExitStack,
    live: LiveState,
    settings: Settings,
    fast: FastState,
    identity: IdentityServices,
    ip_blocks: IpBlocks,
    db: Database,
) -> ThreatDetector | None:
    threat = settings.threat
    if not threat.enabled:
        return None
    webhook = None
    if threat.webhook_url is not None:
        webhook = Webhook(
            threat.webhook_url, queue_size=threat.webhook_queue, timeout=float(threat.webhook_timeout)
        )
    responder = Responder(
        state=fast,
        audit=identity.audit,
        accounts=identity.accounts,
        sessions=identity.sessions,
        clock=identity.clock,
        # Alerts reach the sinks as the ``threat.<rule>`` security event (the audit listener).
        emit=None,
        webhook=webhook,
    )
    # Every detection becomes (or joins) a durable incident record that walks the five phases.
    cases = Cases(db, identity.audit, identity.clock)
    responder.listeners.append(cases.from_detection)
    detector = ThreatDetector(
        settings=lambda: live.current.settings.threat,
        state=fast,
        responder=responder,
        blocks=ip_blocks,
        clock=identity.clock,
        # Impossible travel geolocates a sign-in only for a person who has not opted out of it.
        may_locate=lambda username: identity.consents.allows(username, GEOLOCATION),
    )
    await detector.start()
    stack.push_async_callback(detector.close)
    return detector


def _start_checkpoints(
    stack: contextlib.AsyncExitStack,
    settings: Settings,
    db: Database,
    identity: IdentityServices,
    sinks: SinkHub | None,
) -> None:
    """Sign a checkpoint of the audit chain every interval and send it out of the database."""
    checkpointer = Checkpointer(db, identity.keyring, directory=Path(settings.data_dir) / CHECKPOINT_DIR)
    clock = identity.clock

    def emit(checkpoint: dict[str, Any]) -> None:
        if sinks is not None:
            sinks.publish(CheckpointEntry(checkpoint, clock.time()))

    _background(stack, checkpointer.run_checkpoints(emit, float(settings.audit.checkpoint_interval)))


def _websocket_session(settings: Settings) -> aiohttp.ClientSession:
    """aiohttp for upstream WebSockets and the health checks."""
    connector = aiohttp.TCPConnector(
        limit=settings.limits.max_upstream_connections,
        limit_per_host=0,
        keepalive_timeout=60,
        ttl_dns_cache=30,
    )
    # The session never stores cookies: upstream Set-Cookie headers belong to the browser.
    return aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        # Never let aiohttp invent headers the client did not send: the upstream sees the client's request.
        skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
    )


def _open_tracing(stack: contextlib.AsyncExitStack, settings: Settings) -> Tracer | None:
    """The worker's tracer, or None when tracing is off (then the OpenTelemetry SDK is never imported)."""
    if not settings.tracing.enabled:
        return None
    from gateway.observe.tracing_export import OtlpExport

    tracer = Tracer(
        OtlpExport(settings.tracing, version=package_version()),
        sample_ratio=settings.tracing.sample_ratio,
        parent_sampling=settings.tracing.parent_sampling,
    )
    # At shutdown the spans still queued are sent (bounded by tracing.timeout), off the event loop.
    stack.push_async_callback(asyncio.to_thread, tracer.close)
    return tracer


def _background(stack: contextlib.AsyncExitStack, work: Coroutine[Any, Any, None]) -> None:
    """Run ``work`` as a task until the process closes."""
    task = asyncio.ensure_future(work)

    async def cancel() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task

    stack.push_async_callback(cancel)


def _stop_listening() -> None:
    with contextlib.suppress(NotImplementedError, RuntimeError):
        asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
