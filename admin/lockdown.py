"""The admin API's lockdown switch: ``GET /api/lockdown`` and ``POST /api/lockdown``.

The switch is the same one ``gateway lockdown`` flips (:class:`gateway.threat.lockdown.LockdownStore`):
stored in the fast state, broadcast to every worker and replica, audited as ``lockdown.on`` /
``lockdown.off`` with the admin as the actor. Flipping it either way is destructive (it shuts everyone
out, or lets everyone back in during an incident), so it needs a reason and a second factor used within
``admin.destructive_reauth_max_age``; every attempt, also a refused one, is ``admin.lockdown``.

The console's Lockdown page (:mod:`admin.console.lockdown`) renders :func:`lockdown_view`, what
``GET /api/lockdown`` answers, and switches through ``POST /api/lockdown``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Final

import msgspec
from litestar import Request, get, post
from litestar.params import JSONBody

from admin.access import Admin
from admin.actions import audited, client_ip, confirm_destructive
from admin.deps import AdminServices
from gateway.reasons import REASON_PATTERN
from gateway.services import Services
from gateway.threat.lockdown import MAX_REASON, LockdownState, LockdownStore, check_request
from gateway.web.deps import Config

__all__ = ["HANDLERS", "LockdownRequest", "LockdownView", "lockdown_view"]

_ROUTE_NAME = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]


class LockdownRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Switch the lockdown on (for ``routes``, or every route when empty) or off."""

    on: bool
    routes: Annotated[
        list[_ROUTE_NAME],
        msgspec.Meta(max_length=256, description="Route names to lock; empty: every route. Ignored for off."),
    ] = msgspec.field(default_factory=list)
    reason: Annotated[
        str,
        msgspec.Meta(
            min_length=1,
            pattern=REASON_PATTERN,
            max_length=MAX_REASON,
            description="Why: kept in the audit trail and the status.",
        ),
    ]


class LockdownView(msgspec.Struct, kw_only=True):
    """The switch as every gateway worker applies it."""

    on: bool
    # True when every route is locked (``routes`` is then empty).
    all_routes: bool
    routes: list[str]
    # When it was last switched (on or off); None if never.
    since: datetime | None
    actor: str
    reason: str
    # The incident whose threat rule switched it on ("" when a person did).
    incident: str
    message: str = ""


def _store(services: Services) -> LockdownStore:
    return LockdownStore(services.fast, services.identity.clock, services.identity.audit, db=services.db)


def _view(state: LockdownState, message: str = "") -> LockdownView:
    return LockdownView(
        on=state.on,
        all_routes=state.on and state.routes is None,
        routes=list(state.routes or ()),
        since=datetime.fromtimestamp(state.since, UTC) if state.since else None,
        actor=state.actor,
        reason=state.reason,
        incident=state.incident,
        message=message,
    )


async def lockdown_view(services: Services) -> LockdownView:
    """The switch as the workers apply it; the page and ``GET /api/lockdown`` both answer with it."""
    return _view(await _store(services).read())


@get("/api/lockdown", cache=False, tags=["lockdown"])
async def lockdown_status(services: AdminServices) -> LockdownView:
    """Whether a lockdown is on, for which routes, since when, by whom and why."""
    return await lockdown_view(services)


@post("/api/lockdown", status_code=200, tags=["lockdown"])
async def switch_lockdown(
    request: Request[Any, Any, Any], services: AdminServices, config: Config, data: JSONBody[LockdownRequest]
) -> LockdownView:
    """Switch the lockdown on (every route, or the named ``routes``) or off, on every worker and replica.

    Destructive: a recent second factor (403 ``step-up-required``). 400 ``lockdown-refused`` for a route
    name no configured route has or an empty reason; nothing is changed then. ``on`` replaces an earlier
    selection of routes.
    """

    async def work(admin: Admin) -> LockdownView:
        confirm_destructive(admin, config, services.identity.clock)
        routes = check_request(
            routes=data.routes if data.on else (),
            known=[r.name for r in config.settings.routes],
            reason=data.reason,
        )
        store, ip = _store(services), client_ip(request)
        if data.on:
            state = await store.switch_on(routes, actor=admin.actor, reason=data.reason.strip(), ip=ip)
            scope = "every route" if routes is None else ", ".join(routes)
            return _view(state, f"Lockdown is on for {scope}.")
        state = await store.switch_off(actor=admin.actor, reason=data.reason.strip(), ip=ip)
        return _view(state, "Lockdown is off: every route is open again.")

    details = {"on": data.on, "routes": data.routes or "all", "reason": data.reason}
    return await audited(
        request, services.identity, "admin.lockdown", subject="lockdown", details=details, work=work
    )


#: The lockdown calls, registered by :mod:`admin.app`.
HANDLERS: Final = (lockdown_status, switch_lockdown)
