"""Rendering a console page: the layout's navigation, the admin, the request id, strict headers.

Every page extends ``console/base.html``; :func:`page` fills what the layout needs. The console's
Content-Security-Policy allows only this origin's own script, styles and ``fetch`` (``console.js``
sends the forms to the JSON API), never inline code, other origins or framing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from litestar import Request
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Redirect, Response, Template
from litestar.router import Router
from litestar.static_files import create_static_files_router
from litestar.template.config import TemplateConfig

from gateway.errors import GatewayError

__all__ = [
    "CONSOLE_CSP",
    "NAV",
    "PAGE_OPT",
    "PAGE_OPT_KEY",
    "PUBLIC_URL_KEY",
    "NavItem",
    "error_page",
    "page",
    "static_router",
    "template_config",
]

_ADMIN_DIR = Path(__file__).resolve().parent.parent
_GATEWAY_STATIC = _ADMIN_DIR.parent / "gateway" / "web" / "static"

#: Handler opt marking an HTML page: its errors are pages, sign-in and step-up become redirects.
PAGE_OPT_KEY = "page"
PAGE_OPT = {PAGE_OPT_KEY: True}

#: Scope state key of the gateway's public URL (set per request by the admin app's middleware): the
#: layout links the gateway's privacy notice there, since this listener does not serve it.
PUBLIC_URL_KEY = "public_url"

CONSOLE_CSP = (
    b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    b"form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)


@dataclass(frozen=True, slots=True)
class NavItem:
    section: str
    title: str
    href: str


NAV = (
    NavItem("overview", "Overview", "/"),
    NavItem("users", "Users", "/users"),
    NavItem("policies", "Policies", "/policies"),
    NavItem("audit", "Audit", "/audit"),
    NavItem("incidents", "Incidents", "/incidents"),
    NavItem("response", "Response", "/incident-cases"),
    NavItem("privacy", "Privacy", "/privacy"),
    NavItem("machine", "Machine clients", "/machine-clients"),
    NavItem("keys", "Keys", "/keys"),
    NavItem("settings", "Settings", "/settings"),
)


def page(
    request: Request[Any, Any, Any],
    template: str,
    *,
    title: str,
    section: str,
    status_code: int = 200,
    headers: dict[str, str] | None = None,
    **context: Any,
) -> Template:
    """Render ``console/<template>`` inside the layout."""
    state = request.scope.get("state", {})
    admin = state.get("admin")
    return Template(
        template_name=f"console/{template}",
        context={
            "title": title,
            "section": section,
            "nav": NAV,
            "admin": admin.session.username if admin is not None else "",
            "request_id": state.get("request_id", ""),
            "privacy_url": f"{state.get(PUBLIC_URL_KEY, '')}/.gateway/privacy",
            **context,
        },
        status_code=status_code,
        headers=headers,
    )


def template_config() -> TemplateConfig[JinjaTemplateEngine]:
    return TemplateConfig(directory=_ADMIN_DIR / "templates", engine=JinjaTemplateEngine)


def static_router() -> Router:
    """``/static/``: the console's script and styles, and the gateway pages' stylesheet it builds on."""
    return create_static_files_router(
        path="/static",
        directories=[_ADMIN_DIR / "static", _GATEWAY_STATIC],
        opt={"public": True},
        include_in_schema=False,
        cache_control=None,
    )


def error_page(
    request: Request[Any, Any, Any], err: GatewayError, request_id: str, headers: dict[str, str]
) -> Response[Any]:
    """A page's error: to the page that fixes it (sign-in, step-up), else a page that says what to do."""
    if err.location and err.status in (401, 403):
        return Redirect(err.location, status_code=303, headers=headers)
    request.scope.setdefault("state", {}).setdefault("request_id", request_id)
    return page(
        request, "error.html", title=err.title, section="", status_code=err.status, headers=headers,
        error=err, message=err.public_detail,
    )  # fmt: skip
