"""The control-plane app: everything under ``/.gateway/``, on every host, never proxied.

Liveness and readiness, the sign-in pages, the account portal and the JSON API they use (OpenAPI at
``/.gateway/api/schema``). Every unsafe request is CSRF-checked (double-submit cookie); the tokens are
keyed by the keyring, so every replica accepts every other replica's tokens, across key rotations.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from litestar import Litestar, MediaType, Request, get
from litestar.di import Provide
from litestar.exceptions import HTTPException
from litestar.openapi.config import OpenAPIConfig
from litestar.openapi.plugins import YamlRenderPlugin
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Redirect, Response
from litestar.static_files import create_static_files_router
from litestar.template.config import TemplateConfig

from gateway.errors import BadRequest, GatewayError
from gateway.identity.invitations import Invitations
from gateway.observe.redact import redact_path
from gateway.services import WorkerServices
from gateway.settings.current import CurrentConfig
from gateway.settings.trusted import may_see_internals
from gateway.threat.lockdown import NewPasskeys
from gateway.web import (
    account,
    account_privacy,
    account_privacy_api,
    api,
    consent,
    invite,
    oidc,
    pages,
    privacy_page,
)
from gateway.web.api_reference import ReferencePage
from gateway.web.csrf import csrf_middleware
from gateway.web.deps import Config, Readiness, Signing, constant
from gateway.web.error_pages import FrameworkRefusal, error_response, wants_html
from gateway.web.gate import PUBLIC_RESOURCE, step_guard
from gateway.web.hardening import SecurityHeaders
from gateway.web.requests import GatewayRequest

__all__ = ["create_control_app", "dependencies"]

# (The module docstring is the API's OpenAPI description.) Handlers are module-level functions that
# declare what they use as typed parameters (web/deps.py: ``config``, ``identity``, ``signing``,
# ``readiness``), provided once for the whole app by Litestar's dependency injection (dependencies()
# below). A new page declares the ones it needs and goes into its module's ``HANDLERS``.

_HERE = Path(__file__).parent
#: The largest request body the gateway's own pages and APIs read (a 413 beyond it).
MAX_PAGE_BODY: Final = 64 * 1024
logger = logging.getLogger("gateway.web")


@get("/.gateway/health", media_type=MediaType.JSON, cache=False, opt=PUBLIC_RESOURCE)
async def health() -> dict[str, Any]:
    """Alive: the process answers. Load balancers restart on failure."""
    return {"status": "ok"}


@get("/.gateway/ready", media_type=MediaType.JSON, cache=False, opt=PUBLIC_RESOURCE)
async def ready(
    request: Request[Any, Any, Any], config: Config, readiness: Readiness
) -> Response[dict[str, Any]]:
    """Ready: this replica can serve its traffic (config and policy loaded and current, the
    session store reachable when routes need sessions). Load balancers route on success.

    A database outage is not a reason to leave the pool (signed-in traffic does not use it):
    it is reported under ``degraded``, as are the other parts that do not work here. The rules
    are in :mod:`gateway.observe.readiness`. The details (upstream addresses, store errors)
    describe the internal network, so only loopback and the trusted proxies (the load
    balancers that probe this) see them.
    """
    report = await readiness()
    status = 200 if report["ready"] else 503
    peer = request.client.host if request.client else ""
    if not may_see_internals(config.trusted, peer):
        report = {"ready": report["ready"]}
    return Response(report, status_code=status)


@get("/.gateway/jwks.json", media_type=MediaType.JSON, cache=False, opt=PUBLIC_RESOURCE)
async def jwks(signing: Signing) -> Response[bytes]:
    """The public keys that verify ``X-Gateway-Assertion`` (an RFC 7517 JWK Set; docs/assertion.md).

    Read from the database at most every 5 s per worker, so a `gateway keys rotate` shows here at
    once; if the database cannot answer, the last loaded keys are served.
    """
    try:
        await signing.refresh(if_older_than=5.0)
    except Exception:
        logger.warning("could not reload the signing keys; serving the loaded ones", exc_info=True)
    return Response(
        json.dumps(signing.jwks(), separators=(",", ":")).encode(),
        media_type=MediaType.JSON,
        headers={"Cache-Control": "public, max-age=60"},
    )


_OWN: Final = (health, ready, jwks)


_CSRF_FAILED: Final = (
    "The form has expired or did not come from this page. Go back, reload the page and try again."
)


def _http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    # A framework 5xx may carry an exception's text too: the log has it, the client a plain line.
    message = exc.detail if exc.status_code < 500 else GatewayError.public_message
    if exc.status_code == 413:
        message = f"The request body is larger than the gateway's pages take ({MAX_PAGE_BODY // 1024} KiB)."
    accept = request.headers.get("accept", "").encode("latin-1")
    if wants_html(accept) and exc.status_code < 500:
        if exc.status_code == 403 and "csrf" in message.lower():
            message = _CSRF_FAILED
        return _gateway_error(request, FrameworkRefusal(exc.status_code, message))
    body = {"error": FrameworkRefusal.REASONS.get(exc.status_code, "error"), "message": message}
    return Response(body, status_code=exc.status_code)


def _gateway_error(request: Request[Any, Any, Any], exc: GatewayError) -> Response[Any]:
    accept = request.headers.get("accept", "").encode("latin-1")
    if exc.status >= 500:
        # The detail (driver errors, addresses) goes to the log only; the page shows a plain line
        # and the request id that leads here.
        logger.warning(
            "%s %s: %s (request id %s)",
            request.method,
            redact_path(request.url.path),
            exc,
            request.headers.get("x-request-id", ""),
        )
    if exc.location and wants_html(accept):
        # A browser is sent where it can fix this (the pending sign-in step), as the data plane does.
        return Redirect(exc.location, status_code=303)
    status, headers, body = error_response(
        exc, request_id=request.headers.get("x-request-id", ""), html_page=wants_html(accept)
    )
    return Response(body, status_code=status, headers={k.decode(): v.decode() for k, v in headers})


def _too_deep(request: Request[Any, Any, Any], exc: RecursionError) -> Response[Any]:
    # The JSON decoder recurses once per level: a body of 100,000 brackets is a malformed request
    # (400, nothing changed), not a server failure.
    logger.warning("recursion limit in %s %s: %s", request.method, redact_path(request.url.path), exc)
    return _gateway_error(request, BadRequest("The request body is nested too deeply; nothing was changed."))


def _internal_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    # Fail closed with a clear 500 and the request id; the traceback goes to the log only.
    # The path may hold a credential (an invitation token): redacted as in the access log.
    logger.exception("unhandled error in %s %s", request.method, redact_path(request.url.path), exc_info=exc)
    return _gateway_error(request, GatewayError("An internal error occurred."))


def dependencies(services: WorkerServices) -> Mapping[str, Provide]:
    """What the control app's handlers may declare as parameters, by name."""
    live = services.live

    def config() -> CurrentConfig:
        # Per request: a reload between two requests is seen by the second.
        return live.current

    return {
        "config": Provide(config, sync_to_thread=False),
        "identity": constant(services.identity),
        "signing": constant(services.signing),
        "readiness": constant(services.readiness),
        "privacy": constant(services.privacy),
        "invitations": constant(Invitations(services.fast, services.identity.clock)),
        "passkeys": constant(NewPasskeys(services.lockdown)),
    }


def create_control_app(services: WorkerServices) -> Litestar:
    """Build the Litestar app for ``/.gateway/`` on one worker's started services."""
    insecure = services.live.current.settings.session.insecure_cookies
    return Litestar(
        request_class=GatewayRequest,
        # The process's logging is the CLI's (one format for the master, workers and admin child);
        # Litestar's default would reconfigure the root logger in every worker with its own format.
        logging_config=None,
        route_handlers=[
            *_OWN,
            *pages.HANDLERS,
            *oidc.HANDLERS,
            *account.HANDLERS,
            *account_privacy.HANDLERS,
            *account_privacy_api.HANDLERS,
            *consent.HANDLERS,
            *invite.HANDLERS,
            *privacy_page.HANDLERS,
            *api.HANDLERS,
            create_static_files_router(
                path="/.gateway/static", directories=[_HERE / "static"], opt=PUBLIC_RESOURCE
            ),
        ],
        dependencies=dict(dependencies(services)),
        template_config=TemplateConfig(directory=_HERE / "templates", engine=JinjaTemplateEngine),
        # Litestar's CSRF check with tokens keyed by the keyring (csrf.py): a token made under any key
        # the keyring holds verifies on every worker and replica, and a page view replaces a cookie
        # that verifies under none of them. Not csrf_config: that would add Litestar's own middleware.
        middleware=[csrf_middleware(services.identity.keyring, insecure_cookies=insecure)],
        # One guard for every handler: a session with a sign-in step pending reaches only that step.
        guards=[step_guard(services.identity, services.live)],
        # Every body these pages take is a form or a WebAuthn ceremony (a few KB; an attestation with
        # its certificates under 16 KB): Litestar's default 10 MB let an anonymous client post 8 MB of
        # JSON to the passkey sign-in, decoded and encoded again on the event loop (an attack run:
        # health checks 3 s late, a worker near 1 GB).
        request_max_body_size=MAX_PAGE_BODY,
        exception_handlers={
            HTTPException: _http_error,
            GatewayError: _gateway_error,
            RecursionError: _too_deep,
            Exception: _internal_error,
        },
        openapi_config=OpenAPIConfig(
            title="Access gateway API",
            version="1",
            path="/.gateway/api/schema",
            description=__doc__,
            # Rendered on the server: works offline and under the CSP (see api_reference.py);
            # openapi.json is added by Litestar.
            render_plugins=[ReferencePage(path="/"), YamlRenderPlugin()],
        ),
        # Security headers on every answer, error answers and static files included (hardening.py).
        before_send=[SecurityHeaders(services.live)],
        debug=False,
    )
