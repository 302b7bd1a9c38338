"""Overview: is this deployment healthy, and what is its policy? (``/`` and ``GET /api/overview``).

One function, :func:`overview`, computes everything the page shows; the page renders it and the API
returns it, so the two never diverge. Each part is read on its own and fails on its own: with the
database away the replicas, proposals and audit status say "unavailable" while the stores tile says
why, and the page still renders.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final, TypeVar

import msgspec
from litestar import Request, get
from litestar.response import Template

from admin.console.render import PAGE_OPT, page
from admin.deps import AdminServices, Policy
from gateway.audit.status import chain_status
from gateway.authz.proposals import Proposals
from gateway.errors import GatewayError
from gateway.identity.session_count import count_sessions
from gateway.threat.incidents import IncidentStore

__all__ = ["HANDLERS", "Overview", "overview"]

T = TypeVar("T")

# The overview counts the open incidents among this many of the newest (each is one fast-state read);
# older open ones are on the incidents page.
INCIDENTS_SCANNED: Final = 200
# Open proposals counted at most (the policies page lists them all).
PROPOSALS_COUNTED: Final = 100


class ComponentView(msgspec.Struct, kw_only=True):
    name: str
    ok: bool
    detail: str = ""


class SinkView(msgspec.Struct, kw_only=True):
    name: str
    sent: int
    dropped: int
    failures: int
    pending: int


class PolicySummary(msgspec.Struct, kw_only=True):
    version: int
    rules: int
    changed_at: datetime | None
    changed_by: str
    reason: str
    # Seconds since this process last confirmed the version is current.
    staleness: float


class ReplicaView(msgspec.Struct, kw_only=True):
    """One serving process of the deployment, as it last reported itself."""

    id: str
    host: str
    pid: int
    role: str
    version: str
    ready: bool
    policy_version: int
    config_generation: int
    started_at: datetime
    seen_at: datetime
    # Not heard from for 30 s: stopped without leaving, crashed or cut off.
    gone: bool
    # On the node this admin listener runs on / this admin listener itself.
    this_node: bool
    this_process: bool


class ReplicasView(msgspec.Struct, kw_only=True):
    available: bool
    detail: str = ""
    items: list[ReplicaView] = msgspec.field(default_factory=list)


class CountView(msgspec.Struct, kw_only=True):
    """A number with a link to where its items are; ``count`` is None when it could not be read."""

    count: int | None
    detail: str = ""
    href: str = ""


class AuditChainView(msgspec.Struct, kw_only=True):
    """The newest signed checkpoint of this node's audit chain, and whether it still holds."""

    available: bool
    checkpointed: bool = False
    ok: bool = False
    at: datetime | None = None
    head_seq: int = 0
    records: int = 0
    detail: str = ""


class Overview(msgspec.Struct, kw_only=True):
    policy: PolicySummary
    components: list[ComponentView]
    sinks: list[SinkView]
    replicas: ReplicasView
    # Sessions stored in the fast state (also idle ones until their expiry).
    sessions: CountView
    # Open incidents among the newest INCIDENTS_SCANNED.
    incidents: CountView
    # Pending, unexpired policy proposals (two-person approval).
    proposals: CountView
    audit: AuditChainView


async def overview(live_policy: Policy, services: AdminServices) -> Overview:
    """What the overview shows; the page and ``GET /api/overview`` both answer with it."""
    async with asyncio.TaskGroup() as group:
        summary = group.create_task(_policy(live_policy))
        database = group.create_task(_probe("database", services.db.ping))
        fast = group.create_task(_probe("fast state", services.fast.ping))
        replicas = group.create_task(_replicas(services))
        sessions = group.create_task(_sessions(services))
        incidents = group.create_task(_incidents(services))
        proposals = group.create_task(_proposals(live_policy, services))
        audit = group.create_task(_audit(services))
    sinks = [
        SinkView(name=name, sent=s.sent, dropped=s.dropped, failures=s.failures, pending=s.pending)
        for name, s in sorted((services.sinks.stats() if services.sinks is not None else {}).items())
    ]
    return Overview(
        policy=summary.result(),
        components=[database.result(), fast.result()],
        sinks=sinks,
        replicas=replicas.result(),
        sessions=sessions.result(),
        incidents=incidents.result(),
        proposals=proposals.result(),
        audit=audit.result(),
    )


async def _policy(live_policy: Policy) -> PolicySummary:
    version = live_policy.version
    summary = PolicySummary(
        version=version, rules=len(live_policy.authorizer.index.rules), changed_at=None, changed_by="", reason="",
        staleness=round(live_policy.staleness(), 1),
    )  # fmt: skip
    if version:
        try:
            info = await live_policy.store.describe(version)
        except GatewayError:
            pass  # the database is away: the components tile says so
        else:
            summary.changed_at, summary.changed_by, summary.reason = info.created_at, info.actor, info.reason
    return summary


async def _probe(name: str, ping: Callable[[], Awaitable[None]]) -> ComponentView:
    try:
        await ping()
    except GatewayError as err:
        return ComponentView(name=name, ok=False, detail=err.public_detail)
    return ComponentView(name=name, ok=True)


async def _read(read: Awaitable[T]) -> tuple[T | None, str]:
    """``read``'s answer, or None and what the admin should know (a store outage is not a page error)."""
    try:
        return await read, ""
    except GatewayError as err:
        return None, err.public_detail


async def _replicas(services: AdminServices) -> ReplicasView:
    registry = services.replicas
    found, detail = await _read(registry.replicas())
    if found is None:
        return ReplicasView(available=False, detail=detail)
    items = [
        ReplicaView(
            id=r.id,
            host=r.host,
            pid=r.pid,
            role=r.role,
            version=r.version,
            ready=r.ready and not r.gone,
            policy_version=r.policy_version,
            config_generation=r.config_generation,
            started_at=r.started_at,
            seen_at=r.seen_at,
            gone=r.gone,
            this_node=r.host == registry.host,
            this_process=r.id == registry.id,
        )
        for r in found
    ]
    # This node first (admin listener, then its workers), then the others by host; gone ones last.
    items.sort(key=lambda r: (r.gone, not r.this_node, r.host, r.role != "admin", r.pid))
    return ReplicasView(available=True, items=items)


async def _sessions(services: AdminServices) -> CountView:
    redis_url = services.live.current.settings.state.redis_url
    counted = await count_sessions(services.fast, redis_url=redis_url, clock=services.identity.clock)
    return CountView(count=counted.count, detail=counted.detail)


async def _incidents(services: AdminServices) -> CountView:
    latest, detail = await _read(IncidentStore(services.fast).latest(INCIDENTS_SCANNED))
    if latest is None:
        return CountView(count=None, detail=detail, href="/incidents")
    open_ = sum(1 for incident in latest if incident.status == "open")
    note = f"among the newest {INCIDENTS_SCANNED}" if len(latest) >= INCIDENTS_SCANNED else ""
    return CountView(count=open_, detail=note, href="/incidents")


async def _proposals(live_policy: Policy, services: AdminServices) -> CountView:
    identity = services.identity
    proposals = Proposals(services.db, live_policy.store, identity.audit, identity.clock)
    pending, detail = await _read(proposals.list(open_only=True, limit=PROPOSALS_COUNTED))
    if pending is None:
        return CountView(count=None, detail=detail, href="/policies")
    note = f"at least {PROPOSALS_COUNTED}" if len(pending) >= PROPOSALS_COUNTED else ""
    return CountView(count=len(pending), detail=note, href="/policies")


async def _audit(services: AdminServices) -> AuditChainView:
    data_dir = Path(services.live.current.settings.data_dir)
    try:
        status, detail = await _read(chain_status(services.db, services.identity.keyring, data_dir))
    except OSError as exc:
        return AuditChainView(available=False, detail=f"the checkpoint file cannot be read ({exc.strerror})")
    if status is None:
        if detail:
            return AuditChainView(available=False, detail=detail)
        return AuditChainView(
            available=True,
            detail="No checkpoint signed yet: a worker signs one every audit.checkpoint_interval.",
        )
    if status.signature_problem is not None:
        problem = f"The newest checkpoint does not verify: {status.signature_problem}."
    elif not status.chain_reaches:
        problem = f"The stored chain no longer holds record {status.head_seq} as checkpointed: run gateway audit verify."
    else:
        problem = ""
    return AuditChainView(
        available=True, checkpointed=True, ok=status.ok, at=status.at, head_seq=status.head_seq,
        records=status.count, detail=problem,
    )  # fmt: skip


def age(moment: datetime | None, now: datetime) -> str:
    """``moment`` as a short age (``12 s``, ``5 min``, ``3 h``, ``2 d``) for the page."""
    if moment is None:
        return "—"
    seconds = max(0.0, (now - moment) / timedelta(seconds=1))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit}"
    return f"{int(seconds)} s"


@get("/api/overview", cache=False, tags=["overview"])
async def overview_json(live_policy: Policy, services: AdminServices) -> Overview:
    """This deployment at a glance: every replica and its readiness, the live policy's version and age,
    the stores, active sessions, open incidents and policy proposals, the audit chain's newest
    checkpoint, the sinks and their drops."""
    return await overview(live_policy, services)


@get("/", cache=False, opt=PAGE_OPT, include_in_schema=False)
async def overview_page(
    request: Request[Any, Any, Any], live_policy: Policy, services: AdminServices
) -> Template:
    view = await overview(live_policy, services)
    now = services.identity.clock.now()
    return page(request, "overview.html", title="Overview", section="overview", view=view, now=now, age=age)


HANDLERS = (overview_json, overview_page)
