"""Prometheus metrics: counted in every process, exposed by the admin listener at ``GET /metrics``.

The data plane runs as several granian worker processes and the admin listener is another process,
so no single process holds the numbers. prometheus_client's multiprocess mode solves exactly this:
every process writes its counters and histograms to memory-mapped files in one directory
(``<data_dir>/metrics/<listen>``, :func:`prepare_multiprocess`), and the admin process sums them at scrape
time. Counters are never reset by a respawned worker (its old files stay and keep counting towards
the totals); only ``gateway serve`` wipes the directory, when it starts. Alternatives were worse: a
push to the admin process costs a message per request, and a Redis counter a round trip per request.
The directory must be set in the environment before prometheus_client is first imported in a worker,
which is why ``gateway serve`` sets it before granian forks (:func:`_ensure_multiprocess_values`
repairs a process that imported it too early).

Who may scrape: ``GET /metrics`` needs no session, but answers only the loopback and the trusted
proxies (the direct peer, as for the gateway's other internals); anyone else gets 403. A bearer token
would need a new config key and a secret to rotate; a scraper on the host or behind the trusted
proxy needs neither.

Metrics (all prefixed ``gateway_``):

====================================== ===================================================================
``requests_total``                     requests by ``kind``, ``route``, ``status`` (class: ``2xx`` …),
                                       ``code`` (the exact status, ``100``-``599``, else ``other``: at
                                       most 501 values) and ``decision`` (see
                                       :class:`~gateway.observe.record.RequestRecord`)
``requests_by_auth_total``             requests by ``route``, ``auth`` (``session``, ``bearer`` for an
                                       API token, ``none``) and ``decision``: people and machines apart
``request_duration_seconds``           total time per request, by ``route`` (histogram)
``upstream_duration_seconds``          time spent waiting for the upstream, by ``route`` (histogram)
``authz_duration_seconds``             time spent deciding (cache or index), histogram, µs buckets
``authz_cache_lookups_total``          decision-cache lookups by ``result`` (``hit`` / ``miss``)
``signins_total``                      sign-ins by ``method`` (password, oidc, passkey) and ``outcome``
``mfa_total``                          second-factor checks by ``factor`` (totp, recovery, webauthn)
                                       and ``outcome``
``account_locks_total``                accounts locked by the failed-attempt limit
``threats_total``                      threat detections by ``rule`` (``threat.<rule>`` events)
``blocks_total``                       automatic blocks by ``kind`` (``ip``, ``account``): the
                                       successful ``block_ip`` / ``lock_account`` actions of detections
``audit_events_total``                 every stored security event by ``kind`` and ``outcome``
``sink_queue_depth``                   events waiting per log ``sink`` (summed over live processes)
``sink_events_total``                  events per ``sink`` and ``result`` (queued, sent, dropped,
                                       dropped_security, failed, truncated), from ``SinkHub.stats()``
                                       every second
``log_unencodable_events_total``       events the sinks got as a stand-in tagged ``unencodable``
                                       (the event could not be encoded; its details are in no log)
``policy_version``                     the oldest policy version a live process decides with; equal
                                       to the stored version once every worker has swapped
``sessions_active``                    sessions alive in the fast state (Redis only), counted by the
                                       admin process at most every 15 s
``ready``                              1 when every live worker answers ``/.gateway/ready`` with 200
                                       (the minimum over the workers), else 0
``component_up``                       by ``component`` (``config``, ``storage``, ``state``,
                                       ``policy``): 1 when every live worker can use it, else 0; a
                                       database outage shows here as ``storage`` 0 while ``ready``
                                       stays 1 (see :mod:`gateway.observe.readiness`)
====================================== ===================================================================

Per request the observer only adds to plain in-process tallies (one dict lookup, a bisect per
histogram); :meth:`Metrics.flush` writes them to the shared files once a second (and when the process
stops). Writing every request straight to the memory-mapped files cost 5-7 µs per request, most of
it prometheus_client calling ``getpid()`` on every increment (py-spy, signed-in hot path: 7% of the
worker's time); the price is that a scrape sees a worker's requests up to a second late, and a worker
killed with SIGKILL loses at most its last second of counts.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import glob
import json
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    values,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

from gateway.audit.trail import SecurityEvent
from gateway.observe.access import unencodable_events
from gateway.observe.record import RequestRecord
from gateway.settings.schema import Settings
from gateway.store.private import private_dir

__all__ = [
    "AUTHZ_BUCKETS",
    "CONTENT_TYPE",
    "LATENCY_BUCKETS",
    "MULTIPROC_ENV",
    "Metrics",
    "Scraper",
    "SessionCounter",
    "SinkStats",
    "exposition",
    "multiprocess_dir",
    "prepare_multiprocess",
]

logger = logging.getLogger("gateway.observe")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_LATEST

# Totals and upstream waits: from a cached static answer (~1 ms) to a slow upstream (tens of seconds).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Authorization: a cache hit is a few µs, an index decision tens of µs; above 1 ms is a problem.
AUTHZ_BUCKETS = (0.000005, 0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.01)

_STATUS_CLASSES = ("0xx", "1xx", "2xx", "3xx", "4xx", "5xx")
_NO_ROUTE = "-"
# The sampler's period: tallies reach the shared files, sinks and caches are polled.
_SAMPLE_INTERVAL = 1.0
# ``dropped_security``: the security events and checkpoints among the dropped (a SIEM alerts on these;
# access entries make way for them in a full queue, see gateway.observe.sinks.base).
_SINK_RESULTS = (
    ("queued", "queued"),
    ("sent", "sent"),
    ("dropped", "dropped"),
    ("dropped_security", "dropped_security"),
    ("failed", "failures"),
    ("truncated", "truncated"),  # sent cut down to fit the transport (UDP syslog): also in "sent"
)
# A detection's action kinds that block something, and the ``kind`` label they count under.
_BLOCKING_ACTIONS = {"block_ip": "ip", "lock_account": "account"}


def multiprocess_dir(settings: Settings) -> Path:
    """Where the processes of one gateway keep their metric files: ``<data_dir>/metrics/<listen>``.

    One directory per listen address, because replicas on one host may share a data_dir (and the
    address is the one thing two running gateways on a host cannot share).
    """
    return Path(settings.data_dir) / "metrics" / re.sub(r"[^A-Za-z0-9.-]", "_", settings.listen)


def prepare_multiprocess(settings: Settings, *, wipe: bool) -> Path:
    """Point prometheus_client's multiprocess mode at :func:`multiprocess_dir` for this process and its children.

    Call it before any worker starts. ``wipe`` (``gateway serve`` only) deletes the files of a previous
    run, so counters start from zero with the gateway; a standalone admin listener must not wipe the
    files of a running gateway.
    """
    path = multiprocess_dir(settings).resolve()
    private_dir(path)
    if wipe:
        for stale in path.glob("*.db"):
            stale.unlink(missing_ok=True)
    os.environ[MULTIPROC_ENV] = str(path)
    return path


def _ensure_multiprocess_values() -> None:
    # prometheus_client picks its value storage when first imported. A process that imported it before
    # the directory was set would count in private memory the admin never sees: switch it now, before
    # the first metric exists (get_value_class is the library's own selection, re-run).
    if os.environ.get(MULTIPROC_ENV) and values.ValueClass is values.MutexValue:
        values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]


class SinkStats(Protocol):
    """What a sink hub reports per sink name: the totals ``queued`` (accepted), ``sent``, ``dropped``
    and ``failures``, and ``pending`` (waiting now).

    Each entry may be a mapping or an object with those attributes; missing fields count as 0.
    """

    def __call__(self) -> Mapping[str, Any]: ...


def _field(entry: Any, name: str) -> int:
    value = entry.get(name, 0) if isinstance(entry, Mapping) else getattr(entry, name, 0)
    return int(value or 0)


def _blocks_of(details: str) -> list[str]:
    # The details of a ``threat.<rule>`` event are the incident document (gateway.threat.responder).
    try:
        actions = json.loads(details).get("actions", [])
    except (ValueError, AttributeError):
        return []
    return [
        _BLOCKING_ACTIONS[a["kind"]]
        for a in actions
        if isinstance(a, dict) and a.get("ok") and a.get("kind") in _BLOCKING_ACTIONS
    ]


class _Series(NamedTuple):
    requests: Any  # the resolved Counter child
    by_auth: Any  # Counter child
    total: Any  # Histogram child
    upstream: Any  # Histogram child


class _Tally:
    """Observations of one histogram since the last flush: per-bucket counts and the sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, amount: float) -> None:
        # Prometheus buckets are "less than or equal": bisect_left finds the first bound >= amount.
        self.counts[bisect.bisect_left(self.bounds, amount)] += 1
        self.sum += amount

    def flush_into(self, histogram: Any) -> None:
        """Add the tally to a prometheus_client Histogram child and start again from zero.

        prometheus_client has no bulk observe: its own ``observe`` adds the amount to ``_sum`` and 1 to
        the first bucket that fits (multiprocess histograms store per-bucket, not cumulative, counts),
        which is exactly what adding the tallied counts does. The unit tests read the result back
        through the exposition, so a change in those internals fails them.
        """
        if not any(self.counts):
            return
        histogram._sum.inc(self.sum)
        for bucket, count in zip(histogram._buckets, self.counts, strict=True):
            if count:
                bucket.inc(count)
        self.counts = [0] * len(self.counts)
        self.sum = 0.0


class _Pending:
    """What one request series gathered since the last flush."""

    __slots__ = ("requests", "total", "upstream")

    def __init__(self) -> None:
        self.requests = 0
        self.total = _Tally(LATENCY_BUCKETS)
        self.upstream = _Tally(LATENCY_BUCKETS)


class _DecisionCacheCounts(Protocol):
    hits: int
    misses: int


class Metrics:
    """The metrics of one process, and the observer and audit listener that feed them.

    Build one per process (start-up does, :mod:`gateway.root.start`). Without ``PROMETHEUS_MULTIPROC_DIR``
    (unit tests, a single process) the values live in ``registry``; with it they go to the shared files.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        _ensure_multiprocess_values()
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "gateway_requests",
            "Requests handled.",
            ["kind", "route", "status", "code", "decision"],
            registry=r,
        )
        self.requests_by_auth = Counter(
            "gateway_requests_by_auth",
            "Requests by how they authenticated: a session, a bearer token, or nothing.",
            ["route", "auth", "decision"],
            registry=r,
        )
        self.request_duration = Histogram(
            "gateway_request_duration_seconds",
            "Total time per request, from the first byte received to the last byte sent.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_duration = Histogram(
            "gateway_upstream_duration_seconds",
            "Time waiting for the upstream (request sent to response headers).",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.authz_duration = Histogram(
            "gateway_authz_duration_seconds",
            "Time spent on the authorization decision (decision cache or policy index).",
            buckets=AUTHZ_BUCKETS,
            registry=r,
        )
        self.cache_lookups = Counter(
            "gateway_authz_cache_lookups", "Decision-cache lookups.", ["result"], registry=r
        )
        self.signins = Counter(
            "gateway_signins", "Sign-in attempts (first factor).", ["method", "outcome"], registry=r
        )
        self.mfa = Counter("gateway_mfa", "Second-factor checks.", ["factor", "outcome"], registry=r)
        self.account_locks = Counter(
            "gateway_account_locks", "Accounts locked after too many failed attempts.", registry=r
        )
        self.threats = Counter("gateway_threats", "Threats detected.", ["rule"], registry=r)
        # Fed from the detections' audit events (observe_audit): whoever blocks must not count again.
        self.blocks = Counter("gateway_blocks", "Addresses or accounts blocked.", ["kind"], registry=r)
        self.audit_events = Counter(
            "gateway_audit_events", "Security events stored.", ["kind", "outcome"], registry=r
        )
        self.sink_queue = Gauge(
            "gateway_sink_queue_depth",
            "Events waiting to be written, per sink.",
            ["sink"],
            multiprocess_mode="livesum",
            registry=r,
        )
        self.sink_events = Counter(
            "gateway_sink_events", "Events per sink by result.", ["sink", "result"], registry=r
        )
        self.unencodable_events = Counter(
            "gateway_log_unencodable_events",
            "Events the log sinks got as a minimal stand-in tagged 'unencodable' (the event could not "
            "be encoded: its details are in no log).",
            registry=r,
        )
        self.policy_version = Gauge(
            "gateway_policy_version",
            "Oldest policy version any live gateway process decides with.",
            multiprocess_mode="livemin",
            registry=r,
        )
        # "livemin": the worst view among the live workers of this listener, so one worker that
        # cannot reach a service is not hidden by the others.
        self.ready = Gauge(
            "gateway_ready",
            "1 when every live worker is ready (answers /.gateway/ready with 200).",
            multiprocess_mode="livemin",
            registry=r,
        )
        self.component_up = Gauge(
            "gateway_component_up",
            "1 when every live worker can use this component (config, storage, state, policy).",
            ["component"],
            multiprocess_mode="livemin",
            registry=r,
        )
        self._readiness: Callable[[], tuple[bool, Mapping[str, bool]]] | None = None
        self._series: dict[tuple[str, str, int, str, str], _Series] = {}
        self._pending: dict[tuple[str, str, int, str, str], _Pending] = {}
        self._authz = _Tally(AUTHZ_BUCKETS)
        self._cache: _DecisionCacheCounts | None = None
        self._hit = self.cache_lookups.labels(result="hit")
        self._miss = self.cache_lookups.labels(result="miss")
        self._hits = 0
        self._misses = 0
        self._version = -1
        self._version_of: Callable[[], int] | None = None
        self._sinks: list[SinkStats] = []
        self._sink_seen: dict[tuple[str, str], int] = {}
        self._unencodable_seen = unencodable_events()
        self._sampler: asyncio.Task[None] | None = None

    # -- wiring ---------------------------------------------------------------------------------------

    def watch_decision_cache(self, cache: _DecisionCacheCounts) -> None:
        """Count this cache's hits and misses (read after each request and by the sampler)."""
        self._cache = cache
        self._hits, self._misses = cache.hits, cache.misses

    def watch_policy_version(self, version: Callable[[], int]) -> None:
        """Report ``version()`` as this process's policy version."""
        self._version_of = version
        self._set_version(version())

    def watch_sinks(self, stats: SinkStats) -> None:
        """Poll ``stats`` (e.g. ``SinkHub.stats``) every few seconds for queue depth and results."""
        self._sinks.append(stats)

    def watch_readiness(self, read: Callable[[], tuple[bool, Mapping[str, bool]]]) -> None:
        """Report ``read()`` (the verdict, and per component whether it is up) every second.

        ``read`` must not do I/O: it is called on the sampler's tick (the runtime hands over the
        readiness monitor's last probe results).
        """
        self._readiness = read
        self._sample_readiness(read)

    def start(self) -> None:
        """Start the sampler that polls sinks, the decision cache and the policy version."""
        if self._sampler is None:
            self._sampler = asyncio.ensure_future(self._run_sampler())

    async def close(self) -> None:
        """Stop the sampler and write what is still tallied."""
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler
            self._sampler = None
        self.flush()

    # -- per request ----------------------------------------------------------------------------------

    def observe_request(self, record: RequestRecord) -> None:
        """The request observer: tally the request and its timings (written out by :meth:`flush`)."""
        key = (record.kind, record.route, record.status, record.decision, record.auth)
        pending = self._pending.get(key)
        if pending is None:
            pending = self._pending[key] = _Pending()
        pending.requests += 1
        pending.total.observe(record.total_seconds)
        if record.upstream_seconds is not None:
            pending.upstream.observe(record.upstream_seconds)
        if record.authz_seconds is not None:
            self._authz.observe(record.authz_seconds)
        if record.policy_version != self._version and record.policy_version:
            self._set_version(record.policy_version)

    def flush(self) -> None:
        """Write the tallied requests and the decision cache's counts to the metric values."""
        for key, pending in self._pending.items():
            if not pending.requests:
                continue
            series = self._series.get(key) or self._resolve(key)
            series.requests.inc(pending.requests)
            series.by_auth.inc(pending.requests)
            pending.requests = 0
            pending.total.flush_into(series.total)
            pending.upstream.flush_into(series.upstream)
        self._authz.flush_into(self.authz_duration)
        if self._cache is not None:
            self._sample_cache(self._cache)

    def _resolve(self, key: tuple[str, str, int, str, str]) -> _Series:
        kind, route, status, decision, auth = key
        route = route or _NO_ROUTE
        status_class = _STATUS_CLASSES[status // 100] if 0 <= status < 600 else "other"
        # The exact code, as Prometheus users query it (code="503"); bounded to HTTP's range so no
        # value can grow the label set without limit.
        code = str(status) if 100 <= status <= 599 else "other"
        series = _Series(
            self.requests.labels(
                kind=kind, route=route, status=status_class, code=code, decision=decision or "-"
            ),
            self.requests_by_auth.labels(route=route, auth=auth or "none", decision=decision or "-"),
            self.request_duration.labels(route=route),
            self.upstream_duration.labels(route=route),
        )
        self._series[key] = series
        return series

    def _sample_cache(self, cache: _DecisionCacheCounts) -> None:
        hits, misses = cache.hits, cache.misses
        if hits != self._hits:
            if hits > self._hits:
                self._hit.inc(hits - self._hits)
            self._hits = hits
        if misses != self._misses:
            if misses > self._misses:
                self._miss.inc(misses - self._misses)
            self._misses = misses

    def _sample_readiness(self, read: Callable[[], tuple[bool, Mapping[str, bool]]]) -> None:
        ready, components = read()
        self.ready.set(1 if ready else 0)
        for component, up in components.items():
            self.component_up.labels(component=component).set(1 if up else 0)

    def _set_version(self, version: int) -> None:
        self._version = version
        self.policy_version.set(version)

    # -- security events ------------------------------------------------------------------------------

    def observe_audit(self, event: SecurityEvent) -> None:
        """The audit listener: sign-ins, second factors and locks, by the kinds the code records.

        ``signin.<method>`` and ``mfa.<factor>`` count as ``success`` or ``failure`` (any outcome other
        than success, e.g. ``refused``); ``account.locked`` counts a lock; ``threat.<rule>`` a
        detection, and each of its successful blocking actions a block.
        """
        outcome = "success" if event.outcome == "success" else "failure"
        self.audit_events.labels(kind=event.kind, outcome=event.outcome).inc()
        family, _, detail = event.kind.partition(".")
        if family == "signin" and detail:
            self.signins.labels(method=detail, outcome=outcome).inc()
        elif family == "mfa" and detail:
            self.mfa.labels(factor=detail, outcome=outcome).inc()
        elif event.kind == "account.locked":
            self.account_locks.inc()
        elif family == "threat" and detail:
            self.threats.labels(rule=detail).inc()
            for kind in _blocks_of(event.details):
                self.blocks.labels(kind=kind).inc()

    # -- sampler --------------------------------------------------------------------------------------

    def sample(self) -> None:
        """Flush the tallies; poll the sinks, the decision cache, the policy version and readiness once."""
        self.flush()
        if self._readiness is not None:
            self._sample_readiness(self._readiness)
        if self._version_of is not None:
            version = self._version_of()
            if version != self._version:
                self._set_version(version)
        for stats in self._sinks:
            for sink, entry in stats().items():
                self.sink_queue.labels(sink=sink).set(_field(entry, "pending"))
                for result, name in _SINK_RESULTS:
                    now = _field(entry, name)
                    seen = self._sink_seen.get((sink, result), 0)
                    if now > seen:
                        self.sink_events.labels(sink=sink, result=result).inc(now - seen)
                    self._sink_seen[(sink, result)] = now
        unencodable = unencodable_events()
        if unencodable > self._unencodable_seen:
            self.unencodable_events.inc(unencodable - self._unencodable_seen)
            self._unencodable_seen = unencodable

    async def _run_sampler(self) -> None:
        while True:
            try:
                self.sample()
            except Exception:
                logger.exception("metrics sampler failed")
            await asyncio.sleep(_SAMPLE_INTERVAL)


# -- active sessions (admin process) ------------------------------------------------------------------


class SessionCounter(Collector):
    """``gateway_sessions_active``: the sessions stored in the fast state, counted with SCAN.

    ``count`` scans the session keys (``<namespace>sess:*``, see :mod:`gateway.identity.sessions`); it
    is cheap for Redis (a cursor walk) but not free, so :meth:`refresh` runs it at most every
    ``min_interval`` seconds and keeps the last count when it fails or takes longer than 5 s. Every
    stored session counts, also one idle until its TTL ends it: Redis removes it then.
    """

    def __init__(self, count: Callable[[], Awaitable[int]], *, min_interval: float = 15.0) -> None:
        self._count = count
        self._min_interval = min_interval
        self._at = -min_interval
        self.value: int | None = None

    async def refresh(self) -> None:
        now = time.monotonic()
        if now - self._at < self._min_interval:
            return
        self._at = now
        try:
            async with asyncio.timeout(5):
                self.value = await self._count()
        except Exception as exc:  # noqa: BLE001 - a failed count keeps the last one; scrapes never fail
            logger.warning("metrics: cannot count sessions: %s", exc)

    def collect(self) -> list[Metric]:
        if self.value is None:
            return []
        family = GaugeMetricFamily(
            "gateway_sessions_active", "Sessions stored in the fast state (alive until their TTL)."
        )
        family.add_metric([], self.value)
        return [family]


def redis_session_count(redis_url: str, namespace: str) -> Callable[[], Awaitable[int]]:
    """A counter of ``<namespace>sess:*`` keys on the Redis at ``redis_url``.

    It connects for each count and closes again: a count runs at most every few seconds, and the
    admin process then holds no connection it would have to close at shutdown.
    """
    from gateway.store.fast.url import build_client, parse_redis_url

    target = parse_redis_url(redis_url)
    pattern = f"{namespace}sess:*"

    async def count() -> int:
        client, sentinel = build_client(target, op_timeout=5.0)
        try:
            total = 0
            async for _key in client.scan_iter(match=pattern, count=1000):
                total += 1
            return total
        finally:
            await client.aclose()
            if sentinel is not None:
                await sentinel.aclose()

    return count


# -- exposition ---------------------------------------------------------------------------------------


def _forget_dead_processes(path: str) -> None:
    # "live" gauges (queue depth, policy version) must not keep a dead worker's last value. granian
    # respawns workers without telling anyone, so the admin process checks the pids of those files.
    for file in glob.glob(os.path.join(path, "gauge_live*_*.db")):
        pid_text = file.rsplit("_", 1)[-1].removesuffix(".db")
        if not pid_text.isdigit():
            continue
        pid = int(pid_text)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            mark_process_dead(pid, path)  # type: ignore[no-untyped-call]
        except PermissionError:
            continue


class _Forward(Collector):
    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> list[Metric]:
        return list(self._registry.collect())


def exposition(*, local: CollectorRegistry | None = None, extra: tuple[Collector, ...] = ()) -> bytes:
    """The Prometheus text of every process (multiprocess mode) or of ``local`` (one process)."""
    path = os.environ.get(MULTIPROC_ENV)
    registry = CollectorRegistry()
    if path:
        _forget_dead_processes(path)
        MultiProcessCollector(registry, path)  # type: ignore[no-untyped-call]
    elif local is not None:
        registry.register(_Forward(local))
    for collector in extra:
        registry.register(collector)
    return generate_latest(registry)


class Scraper:
    """What ``GET /metrics`` on the admin listener answers: every process's metrics, and the sessions.

    The admin process builds one; the session counter (Redis only) is created on the first scrape.
    """

    def __init__(self) -> None:
        self._sessions: SessionCounter | None = None
        self._ready = False

    async def render(self, *, settings: Settings, local: Metrics | None) -> bytes:
        """The Prometheus text format (``CONTENT_TYPE``)."""
        if not self._ready:
            self._ready = True
            if settings.state.redis_url:
                self._sessions = SessionCounter(
                    redis_session_count(settings.state.redis_url, settings.state.namespace)
                )
        extra: tuple[Collector, ...] = ()
        if self._sessions is not None:
            await self._sessions.refresh()
            extra = (self._sessions,)
        return exposition(local=local.registry if local is not None else None, extra=extra)
