"""The control-plane app: everything under ``/.gateway/``, on every host, never proxied.

For now: liveness and readiness. Sign-in pages, the portal, JWKS and forward-auth join later.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from litestar import Litestar, MediaType, Request, get
from litestar.exceptions import HTTPException
from litestar.response import Response

if TYPE_CHECKING:
    from gateway.runtime import Runtime

__all__ = ["create_control_app"]


def create_control_app(runtime: Runtime) -> Litestar:
    """Build the Litestar app for ``/.gateway/``, bound to one worker's runtime."""

    @get("/.gateway/health", media_type=MediaType.JSON, cache=False)
    async def health() -> dict[str, Any]:
        """Alive: the process answers. Load balancers restart on failure."""
        return {"status": "ok"}

    @get("/.gateway/ready", media_type=MediaType.JSON, cache=False)
    async def ready(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
        """Ready: config loaded, storage and fast state reachable. Load balancers route on success.

        The details (upstream addresses, store errors) describe the internal network, so only
        loopback and the trusted proxies (the load balancers that probe this) see them.
        """
        report = await runtime.readiness()
        status = 200 if report["ready"] else 503
        peer = request.client.host if request.client else ""
        if not runtime.may_see_internals(peer):
            report = {"ready": report["ready"]}
        return Response(report, status_code=status)

    def not_found(_: Request[Any, Any, Any], exc: HTTPException) -> Response[dict[str, Any]]:
        return Response(
            {"error": "not-found" if exc.status_code == 404 else "error", "message": exc.detail},
            status_code=exc.status_code,
        )

    return Litestar(
        route_handlers=[health, ready],
        exception_handlers={HTTPException: not_found},
        openapi_config=None,
        debug=False,
    )
