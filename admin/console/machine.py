"""The Machine clients page (``/machine-clients``): service accounts and their API tokens.

What ``gateway service-account list`` and ``gateway token list`` show, read through the same calls as
``GET /api/service-accounts`` and ``GET /api/tokens`` (:mod:`admin.machine`); its forms are sent by
``console.js`` to those endpoints' ``POST``/``DELETE`` twins, so the page can do nothing the API could
not. A token is shown once, in the answer to the form that issued it, never in a list; revoking a
token and deleting an account ask for a recent second factor, as the API does.
"""

from __future__ import annotations

from typing import Any, Final

from litestar import Request, get
from litestar.response import Template

from admin.console.render import PAGE_OPT, page
from admin.deps import AdminServices
from admin.machine import accounts_of
from gateway.web.deps import Config

__all__ = ["HANDLERS"]


@get("/machine-clients", cache=False, opt=PAGE_OPT, include_in_schema=False)
async def machine_clients_page(
    request: Request[Any, Any, Any], services: AdminServices, config: Config
) -> Template:
    machine = accounts_of(services, config)
    settings = config.settings
    return page(
        request, "machine_clients.html", title="Machine clients", section="machine",
        accounts=await machine.list_accounts(), tokens=await machine.list_tokens(None),
        # Every route may be named (a route may take tokens later); the page says which take them now.
        routes=[(r.name, "bearer" in r.auth) for r in settings.routes],
        max_lifetime_days=int(float(settings.tokens.max_lifetime) // 86400),
    )  # fmt: skip


HANDLERS: Final = (machine_clients_page,)
