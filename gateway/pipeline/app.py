"""The data plane: one ASGI callable that runs every request through the pipeline in order.

receive → route → identify → mfa → authorize → proxy (see DESIGN.md). It is deliberately not a
framework route handler: the per-request work is a handful of function calls on precompiled data
from the live snapshot. Requests under ``/.gateway/`` go to the control-plane Litestar app instead.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable
from typing import cast

from gateway.errors import (
    AuthenticationRequired,
    BadHeaders,
    BadPath,
    GatewayError,
    HeadersTooLarge,
    NoRoute,
    ServiceUnavailable,
    UpstreamError,
)
from gateway.identity.sessions import Session
from gateway.pipeline.asgi import ASGIApp, Receive, Scope, Send
from gateway.pipeline.canonical import CanonicalPath, canonicalize
from gateway.pipeline.headers import Forwarding, forwarding_for, normalize_name, upstream_request_headers
from gateway.pipeline.identify import identify
from gateway.pipeline.pages import error_response, wants_html
from gateway.pipeline.proxy import NO_BODY, BodyFraming, ClientDisconnected, ProxyOutcome, forward_http
from gateway.pipeline.route import normalize_host
from gateway.pipeline.websocket import forward_websocket
from gateway.runtime import Runtime
from gateway.state import RouteRuntime, Snapshot

__all__ = ["DataPlane", "create_data_plane"]

logger = logging.getLogger("gateway.pipeline")

_CONTROL_PREFIX = "/.gateway"


def identity_headers(session: Session | None) -> tuple[tuple[bytes, bytes], ...]:
    """What the upstream learns about the user (only the gateway sets these; see headers.py)."""
    if session is None:
        return ()
    return (
        (b"x-gateway-user", session.username.encode()),
        (b"x-gateway-roles", ",".join(session.roles).encode()),
    )


def _framing(lengths: list[bytes], chunked: bool) -> BodyFraming:
    # Request smuggling lives in disagreements about where a body ends (RFC 9112 §6.3): refuse both
    # framings at once, several different lengths, and anything that is not a plain decimal.
    if chunked and lengths:
        raise BadHeaders("The request has both Content-Length and Transfer-Encoding.")
    if chunked:
        return BodyFraming(chunked=True)
    values = {v.strip() for v in lengths}
    if len(values) != 1 or not next(iter(values)).isdigit() or len(next(iter(values))) > 18:
        raise BadHeaders("The request's Content-Length is malformed.")
    return BodyFraming(content_length=int(next(iter(values))))


def _is_control(path: str) -> bool:
    # Reserved on every host and never proxied, so an app cannot shadow the gateway's own endpoints.
    return path == _CONTROL_PREFIX or path.startswith(_CONTROL_PREFIX + "/")


class _Request:
    """What the receive and route stages learned about a request."""

    __slots__ = ("accept", "framing", "fwd", "host_raw", "path_and_query", "rt")

    def __init__(self) -> None:
        self.framing = NO_BODY
        self.accept = b""
        self.host_raw = b""
        self.fwd: Forwarding | None = None
        self.path_and_query = ""
        self.rt: RouteRuntime | None = None


class DataPlane:
    """The gateway's ASGI application."""

    def __init__(self, runtime: Runtime, control_factory: Callable[[Runtime], ASGIApp]) -> None:
        self.runtime = runtime
        # Built at start-up, once the identity services (and the keyring its CSRF secret derives
        # from) exist, so every worker and replica accepts the same CSRF tokens.
        self._control_factory = control_factory
        self.control: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "websocket":
            await self._websocket(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    # -- receive + route -------------------------------------------------------------------------

    def _receive_stage(self, scope: Scope, snap: Snapshot, req: _Request) -> CanonicalPath:
        """Validate the request line and headers; return the canonical path. Raises GatewayError."""
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        size = 0
        hosts = 0
        lengths: list[bytes] = []
        chunked = False
        for name, value in headers:
            size += len(name) + len(value) + 4
            if name == b"host":
                req.host_raw = value
                hosts += 1
            elif name == b"accept":
                req.accept = value
            elif name == b"content-length":
                lengths.append(value)
            elif name == b"transfer-encoding":
                chunked = True
        client = scope.get("client")
        req.fwd = forwarding_for(
            peer_ip=client[0] if client else "",
            scheme=scope.get("scheme", "http").replace("ws", "http"),
            host=req.host_raw.decode("latin-1"),
            headers=headers,
            trusted=snap.trusted,
        )
        if size > snap.settings.limits.max_header_bytes:
            raise HeadersTooLarge(f"Request headers exceed {snap.settings.limits.max_header_bytes} bytes.")
        if hosts != 1:
            # Zero or several Host headers: components could disagree about the target (smuggling).
            raise BadHeaders("The request must carry exactly one Host header.")
        if lengths or chunked:
            req.framing = _framing(lengths, chunked)
        return canonicalize(scope.get("raw_path") or scope["path"].encode())

    def _route_stage(
        self, scope: Scope, snap: Snapshot, req: _Request, canon: CanonicalPath
    ) -> tuple[RouteRuntime, bool]:
        """Find the route; returns it and whether the path is public."""
        host = normalize_host(req.host_raw.decode("latin-1"))
        match = snap.router.match(host, canon.path)
        if match is None:
            raise NoRoute("No application is configured for this address.")
        route = match.route
        if canon.has_path_params and not route.allow_path_params:
            raise BadPath("Path parameters (';') are not allowed on this route.")
        query: bytes = scope.get("query_string", b"")
        req.path_and_query = canon.path + ("?" + query.decode("latin-1") if query else "")
        return snap.routes[route.name], match.is_public

    async def _identify_stage(self, scope: Scope, snap: Snapshot, req: _Request, rt: RouteRuntime) -> Session:
        identity = self.runtime.identity
        if identity is None:  # pragma: no cover - start() always builds it; fail closed regardless
            raise AuthenticationRequired("Sign-in is not available.")
        assert req.fwd is not None
        return await identify(
            headers=scope["headers"],
            cookie_name=snap.cookie_name,
            sessions=identity.sessions,
            policy=rt.mfa_policy,
            public_url=snap.public_url,
            original_url=f"{req.fwd.proto}://{req.host_raw.decode('latin-1')}{req.path_and_query}",
            now=identity.clock.time(),
        )

    # -- http --------------------------------------------------------------------------------------

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        snap = self.runtime.live.current
        req = _Request()
        outcome = ProxyOutcome()
        try:
            canon = self._receive_stage(scope, snap, req)
            if _is_control(canon.path):
                await self._control(scope, receive, send, canon.path, req)
                return
            rt, public = self._route_stage(scope, snap, req, canon)
            session = None if public else await self._identify_stage(scope, snap, req, rt)
            assert req.fwd is not None
            headers = upstream_request_headers(
                scope["headers"],
                fwd=req.fwd,
                extra=rt.request_headers,
                identity=identity_headers(session),
                own_cookies=snap.own_cookies,
            )
            await forward_http(
                method=scope["method"],
                path_and_query=req.path_and_query,
                headers=headers,
                receive=receive,
                send=send,
                rt=rt,
                session=self.runtime.session,  # type: ignore[arg-type]
                request_id=req.fwd.request_id,
                outcome=outcome,
                body_framing=req.framing,
            )
        except GatewayError as err:
            if outcome.status:
                raise  # the response already started: only closing the connection is left
            if err.status >= 500:
                logger.warning("%s %s: %s", scope["method"], scope.get("path"), err.detail)
            await self._error(send, err, req)
        except ClientDisconnected:
            return

    async def _error(self, send: Send, err: GatewayError, req: _Request) -> None:
        request_id = req.fwd.request_id if req.fwd else ""
        if err.location and wants_html(req.accept):
            # A browser is sent where it can fix this (sign-in, MFA); scripts get the status and reason.
            await send(
                {
                    "type": "http.response.start",
                    "status": 302,
                    "headers": [
                        (b"location", err.location.encode("latin-1")),
                        (b"cache-control", b"no-store"),
                        (b"content-length", b"0"),
                        (b"x-request-id", request_id.encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        status, headers, body = error_response(err, request_id=request_id, html_page=wants_html(req.accept))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    async def _control(self, scope: Scope, receive: Receive, send: Send, path: str, req: _Request) -> None:
        # The control plane sees the canonical path, the real client address (as decided from the
        # trusted proxies) and never a client-supplied identity header.
        headers = [
            (n, v)
            for n, v in scope["headers"]
            if not normalize_name(n).startswith(b"x-gateway-") and n != b"x-request-id"
        ]
        if req.fwd is not None:
            headers.append((b"x-request-id", req.fwd.request_id.encode()))
        inner = dict(scope)
        inner.update(path=path, raw_path=path.encode(), headers=headers, root_path="")
        if req.fwd is not None:
            inner["client"] = (req.fwd.client_ip, 0)
        inner.setdefault("state", {})
        if self.control is None:  # pragma: no cover - lifespan start-up builds it before traffic
            raise ServiceUnavailable("The gateway is starting.")
        await self.control(inner, receive, send)

    # -- websocket ---------------------------------------------------------------------------------

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        snap = self.runtime.live.current
        req = _Request()
        try:
            canon = self._receive_stage(scope, snap, req)
            if _is_control(canon.path):
                raise NoRoute("The gateway's own endpoints do not speak WebSocket.")
            rt, public = self._route_stage(scope, snap, req, canon)
            if not rt.route.websockets:
                raise NoRoute("WebSockets are disabled on this route.")
            session = None if public else await self._identify_stage(scope, snap, req, rt)
            assert req.fwd is not None
            headers = upstream_request_headers(
                scope["headers"],
                fwd=req.fwd,
                extra=rt.request_headers,
                identity=identity_headers(session),
                websocket=True,
                own_cookies=snap.own_cookies,
            )
            await forward_websocket(
                scope=scope,
                path_and_query=req.path_and_query,
                headers=headers,
                receive=receive,
                send=send,
                rt=rt,
                session=self.runtime.session,  # type: ignore[arg-type]
            )
        except UpstreamError as err:
            logger.warning("websocket %s: %s", scope.get("path"), err.detail)
        except GatewayError as err:
            # Refuse the handshake; the ASGI server answers it with 403.
            logger.info("websocket refused (%s): %s", err.reason, err.detail)
            await send({"type": "websocket.close", "code": 1008})

    # -- lifespan ----------------------------------------------------------------------------------

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.runtime.start()
                except GatewayError as exc:
                    logger.error("gateway worker failed to start: %s", exc)
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                except Exception as exc:
                    logger.exception("gateway worker failed to start")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                self.control = self._control_factory(self.runtime)
                # Everything built so far (modules, settings, the app) lives as long as the worker:
                # move it out of the collector's sight, so full collections stop walking ~10^5
                # long-lived objects in the middle of requests (measured: tail-latency spikes).
                gc.collect()
                gc.freeze()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.runtime.close()
                await send({"type": "lifespan.shutdown.complete"})
                return


def create_data_plane(runtime: Runtime) -> DataPlane:
    """Wire the data plane with its control-plane app."""
    from gateway.web.app import create_control_app

    return DataPlane(runtime, lambda rt: cast(ASGIApp, create_control_app(rt)))
