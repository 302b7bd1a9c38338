"""The Lockdown page (``/lockdown``, in the console's Response section): the emergency switch's state and
the forms that flip it.

The page renders :func:`admin.lockdown.lockdown_view`, what ``GET /api/lockdown`` answers; its two forms
are sent by ``console.js`` to ``POST /api/lockdown`` (on for the chosen routes or every route, or off),
which asks for a reason and a second factor from the last few minutes and audits every attempt. The
page also says who still gets through (``lockdown.break_glass_group`` with a WebAuthn factor used within
``lockdown.max_factor_age``), read from the configuration in force.
"""

from __future__ import annotations

from typing import Any, Final

from litestar import Request, get
from litestar.response import Template

from admin.console.render import PAGE_OPT, page
from admin.deps import AdminServices
from admin.lockdown import lockdown_view
from gateway.web.deps import Config

__all__ = ["HANDLERS"]


@get("/lockdown", cache=False, opt=PAGE_OPT, include_in_schema=False)
async def lockdown_page(request: Request[Any, Any, Any], services: AdminServices, config: Config) -> Template:
    settings = config.settings
    return page(
        request, "lockdown.html", title="Lockdown", section="response", view=await lockdown_view(services),
        routes=[r.name for r in settings.routes], break_glass=settings.lockdown.break_glass_group,
        factor_age=int(settings.lockdown.max_factor_age),
    )  # fmt: skip


HANDLERS: Final = (lockdown_page,)
