"""The data plane's entries: what each does once the stages allowed a request, and how it refuses one.

Every entry runs the same stage sequence (:meth:`gateway.pipeline.app.DataPlane._run`); they differ
only at the end:

=============  ==========================================  =============================================
entry          allowed: the proxy stage                    refused
=============  ==========================================  =============================================
HTTP           stream the exchange to the upstream         error page / JSON, or 302 to sign-in or MFA
forward-auth   200 with the identity headers               401 (with ``Location``) or 403, never a 2xx
WebSocket      open the upstream socket, pump both ways    the handshake closed (the server answers 403)
=============  ==========================================  =============================================

Entries are module-level singletons with no state: the per-request work is plain method calls.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import ClassVar, Protocol

import aiohttp

from gateway.errors import GatewayError, NoRoute, UpstreamError
from gateway.observe.record import AuthKind, RequestKind
from gateway.observe.redact import redact_path
from gateway.pipeline.asgi import Receive, Scope, Send
from gateway.pipeline.context import RequestContext
from gateway.pipeline.forward_auth import (
    UnknownTarget,
    answer_allowed,
    answer_refused,
    app_cookies,
    refuse_client_headers,
)
from gateway.pipeline.headers import Forwarding, Headers, upstream_request_headers
from gateway.pipeline.lockdown import LockedDown
from gateway.pipeline.preflight import PREFLIGHT, preflight_answer, preflight_request
from gateway.pipeline.proxy import forward_http
from gateway.pipeline.refusal import answer_error
from gateway.pipeline.snapshot import RouteRuntime, Snapshot
from gateway.pipeline.websocket import forward_websocket
from gateway.upstream.http1 import Http1Client
from gateway.web.error_pages import wants_html

__all__ = ["FORWARD_AUTH", "HTTP", "WEBSOCKET", "Clients", "Entry"]

logger = logging.getLogger("gateway.pipeline")

Identity = tuple[tuple[bytes, bytes], ...]


class Clients(Protocol):
    """The upstream clients the proxy stage uses (a worker's services)."""

    @property
    def upstream(self) -> Http1Client: ...

    @property
    def websockets(self) -> aiohttp.ClientSession: ...


def _upstream_headers(
    ctx: RequestContext,
    raw: Headers,
    snap: Snapshot,
    rt: RouteRuntime,
    fwd: Forwarding,
    identity: Identity,
    *,
    websocket: bool,
) -> Headers:
    """The client's headers ``raw`` as the application gets them (HTTP and WebSocket alike), in one pass."""
    # A bearer token authenticated the request: its Authorization is the gateway's, not the app's.
    strip = snap.strip_bearer if ctx.rec.auth is AuthKind.BEARER else snap.strip_identity
    headers = upstream_request_headers(
        raw,
        fwd=fwd,
        extra=rt.request_headers,
        identity=identity,
        websocket=websocket,
        own_cookies=snap.own_cookies,
        strip=strip,
        token_audiences=snap.token_audiences,
    )
    if ctx.trace is not None:
        # The gateway's upstream span becomes the application's parent (the client's is replaced).
        headers = ctx.trace.upstream_headers(headers)
    return headers


def _logged_path(scope: Scope) -> str:
    """The request's path for the application log, redacted as the access log redacts it: a token in a
    path (a WebSocket URL's, a magic link's) must not reach the log through a failed upstream."""
    return redact_path(str(scope.get("path", "")))


class Entry:
    """How one kind of request ends. Subclasses set the class attributes and override both methods."""

    __slots__ = ()

    kind: ClassVar[RequestKind]
    # What the route stage raises when nothing matches.
    no_route: ClassVar[type[GatewayError]] = NoRoute
    # Only routes with `websockets: true` accept this entry.
    needs_websockets: ClassVar[bool] = False
    # A WebSocket handshake is checked (websockets on the route, the page's origin) on this entry: always
    # for a handshake, and for a proxy's question that is about one (forward-auth).
    checks_handshakes: ClassVar[bool] = False

    def finish(
        self,
        ctx: RequestContext,
        scope: Scope,
        receive: Receive,
        send: Send,
        snap: Snapshot,
        identity: Identity,
        clients: Clients,
    ) -> Awaitable[object]:
        """The proxy stage of this entry, for a request the stages let through."""
        raise NotImplementedError

    async def refuse(self, ctx: RequestContext, scope: Scope, send: Send, err: GatewayError) -> None:
        """Answer a refusal (the decision and reason are already noted in ``ctx.rec``)."""
        raise NotImplementedError


class _Http(Entry):
    __slots__ = ()
    kind = RequestKind.HTTP

    def finish(
        self,
        ctx: RequestContext,
        scope: Scope,
        receive: Receive,
        send: Send,
        snap: Snapshot,
        identity: Identity,
        clients: Clients,
    ) -> Awaitable[None]:
        # Not a coroutine itself: the caller awaits forward_http's directly (one frame fewer per request).
        rt, fwd, client = ctx.rt, ctx.fwd, clients.upstream
        # Set by the route and receive stages.
        assert rt is not None
        assert fwd is not None
        raw = scope["headers"]
        if ctx.rec.reason == PREFLIGHT:
            # A preflight let through without sign-in: the app gets a browser's preflight headers only,
            # the browser the app's status and CORS headers, never its body or cookies.
            raw, send = preflight_request(raw), preflight_answer(send, rt.response_headers)
        headers = _upstream_headers(ctx, raw, snap, rt, fwd, identity, websocket=False)
        return forward_http(
            method=scope["method"],
            path_and_query=ctx.path_and_query,
            headers=headers,
            receive=receive,
            send=send,
            rt=rt,
            client=client,
            request_id=fwd.request_id,
            outcome=ctx.outcome,
            body_framing=ctx.framing,
            watch=ctx,
            overrides=ctx.overrides,
        )

    async def refuse(self, ctx: RequestContext, scope: Scope, send: Send, err: GatewayError) -> None:
        if ctx.outcome.status:
            raise err  # the response already started: only closing the connection is left
        if err.status >= 500 and not isinstance(err, LockedDown):
            # The page shows a plain message and the request id; the detail is here, under that id.
            request_id = ctx.fwd.request_id if ctx.fwd else ""
            logger.warning(
                "%s %s: %s (request id %s)", scope["method"], _logged_path(scope), err.detail, request_id
            )
        ctx.rec.status = 302 if err.location and wants_html(ctx.accept) else err.status
        await answer_error(send, err, ctx)


class _ForwardAuth(Entry):
    __slots__ = ()
    kind = RequestKind.FORWARD_AUTH
    checks_handshakes = True
    # A proxy turns anything but 2xx, 401 and 403 into a 500: an unknown target is a 403.
    no_route = UnknownTarget

    def finish(
        self,
        ctx: RequestContext,
        scope: Scope,
        receive: Receive,
        send: Send,
        snap: Snapshot,
        identity: Identity,
        clients: Clients,
    ) -> Awaitable[None]:
        # The proxy forwards the client's request itself: identity headers and path or method
        # overrides the client put in it are refused here, where stripping them is not the gateway's.
        refuse_client_headers(scope["headers"], snap.strip_identity)
        return answer_allowed(send, ctx, identity, app_cookies(scope["headers"], snap.own_cookies))

    async def refuse(self, ctx: RequestContext, scope: Scope, send: Send, err: GatewayError) -> None:
        await answer_refused(send, scope, ctx, err)


class _WebSocket(Entry):
    __slots__ = ()
    kind = RequestKind.WEBSOCKET
    needs_websockets = True
    checks_handshakes = True

    def finish(
        self,
        ctx: RequestContext,
        scope: Scope,
        receive: Receive,
        send: Send,
        snap: Snapshot,
        identity: Identity,
        clients: Clients,
    ) -> Awaitable[str]:
        rt, fwd, session = ctx.rt, ctx.fwd, clients.websockets
        # Set by the route and receive stages.
        assert rt is not None
        assert fwd is not None
        ctx.rec.status = 101
        headers = _upstream_headers(ctx, scope["headers"], snap, rt, fwd, identity, websocket=True)
        return forward_websocket(
            scope=scope,
            path_and_query=ctx.path_and_query,
            headers=headers,
            receive=receive,
            send=send,
            rt=rt,
            session=session,
            watch=ctx,
        )

    async def refuse(self, ctx: RequestContext, scope: Scope, send: Send, err: GatewayError) -> None:
        if isinstance(err, UpstreamError):
            # forward_websocket already closed the client's handshake.
            ctx.rec.status = err.status
            logger.warning("websocket %s: %s", _logged_path(scope), err.detail)
            return
        # Refuse the handshake; the ASGI server answers it with 403.
        ctx.rec.status = 403
        logger.info("websocket refused (%s): %s", err.reason, err.detail)
        await send({"type": "websocket.close", "code": 1008})


HTTP: Entry = _Http()
FORWARD_AUTH: Entry = _ForwardAuth()
WEBSOCKET: Entry = _WebSocket()
