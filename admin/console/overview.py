"""Overview: is this deployment healthy, and what is its policy? (``/`` and ``GET /api/overview``)."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

import msgspec
from litestar import Request, get
from litestar.response import Template

from admin.console.render import PAGE_OPT, page
from admin.deps import AdminServices, Policy
from gateway.errors import GatewayError

__all__ = ["HANDLERS", "Overview", "overview"]


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


class Overview(msgspec.Struct, kw_only=True):
    policy: PolicySummary
    components: list[ComponentView]
    sinks: list[SinkView]


async def overview(policy: Policy, services: AdminServices) -> Overview:
    """What the overview shows; the page and ``GET /api/overview`` both answer with it."""
    version = policy.version
    summary = PolicySummary(
        version=version, rules=len(policy.authorizer.index.rules), changed_at=None, changed_by="", reason="",
        staleness=round(policy.staleness(), 1),
    )  # fmt: skip
    if version:
        try:
            info = await policy.store.describe(version)
        except GatewayError:
            pass  # the database is away: the components below say so
        else:
            summary.changed_at, summary.changed_by, summary.reason = info.created_at, info.actor, info.reason
    components = list(
        await asyncio.gather(_probe("database", services.db.ping), _probe("fast state", services.fast.ping))
    )
    sinks = [
        SinkView(name=name, sent=s.sent, dropped=s.dropped, failures=s.failures, pending=s.pending)
        for name, s in sorted((services.sinks.stats() if services.sinks is not None else {}).items())
    ]
    return Overview(policy=summary, components=components, sinks=sinks)


async def _probe(name: str, ping: Any) -> ComponentView:
    try:
        await ping()
    except GatewayError as err:
        return ComponentView(name=name, ok=False, detail=err.public_detail)
    return ComponentView(name=name, ok=True)


@get("/api/overview", cache=False, tags=["overview"])
async def overview_json(policy: Policy, services: AdminServices) -> Overview:
    """This deployment at a glance: policy version and age, stores, sinks."""
    return await overview(policy, services)


@get("/", cache=False, opt=PAGE_OPT, include_in_schema=False)
async def overview_page(request: Request[Any, Any, Any], policy: Policy, services: AdminServices) -> Template:
    return page(
        request, "overview.html", title="Overview", section="overview", view=await overview(policy, services)
    )


HANDLERS = (overview_json, overview_page)
