"""The data plane: one ASGI callable that runs every request through the pipeline in order.

receive → route → identify → mfa → authorize → proxy (see DESIGN.md). It is deliberately not a
framework route handler: the per-request work is a handful of function calls on precompiled data
from the live snapshot. Requests under ``/.gateway/`` go to the control-plane Litestar app instead.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable, MutableMapping
from typing import Any, cast

from gateway.errors import (
    AuthenticationRequired,
    BadHeaders,
    BadPath,
    Forbidden,
    GatewayError,
    HeadersTooLarge,
    NoRoute,
    ServiceUnavailable,
    UpstreamError,
)
from gateway.identity.sessions import Session
from gateway.observe.record import RequestRecord, notify
from gateway.pipeline.asgi import ASGIApp, Receive, Scope, Send
from gateway.pipeline.authorize import denial, principals_of
from gateway.pipeline.canonical import CanonicalPath, canonicalize
from gateway.pipeline.forward_auth import FORWARD_AUTH_PATH, forwarded_request
from gateway.pipeline.headers import Forwarding, forwarding_for, normalize_name, upstream_request_headers
from gateway.pipeline.identify import identify
from gateway.pipeline.page_hosts import check_page_host
from gateway.pipeline.pages import error_response, wants_html
from gateway.pipeline.proxy import NO_BODY, BodyFraming, ClientDisconnected, ProxyOutcome, forward_http
from gateway.pipeline.route import normalize_host
from gateway.pipeline.websocket import forward_websocket
from gateway.runtime import Runtime
from gateway.state import RouteRuntime, Snapshot
from gateway.threat.blocks import IpBlocked

__all__ = ["DataPlane", "create_data_plane"]

logger = logging.getLogger("gateway.pipeline")

_CONTROL_PREFIX = "/.gateway"
_GC_YOUNG_THRESHOLD = 35_000


def identity_headers(
    session: Session, roles: tuple[str, ...], assertion: str
) -> tuple[tuple[bytes, bytes], ...]:
    """What the upstream learns about the user (only the gateway sets these; see headers.py)."""
    return (
        (b"x-gateway-user", session.username.encode()),
        (b"x-gateway-email", session.email.encode()),
        (b"x-gateway-roles", ",".join(roles).encode()),
        (b"x-gateway-assertion", assertion.encode()),
    )


class BadFraming(BadHeaders):
    """The request's body framing is ambiguous (RFC 9112 §6): answered with 400, then the connection closes."""

    reason = "bad-framing"
    title = "Ambiguous request framing"


class BrokenBody(BadFraming):
    """The chunked body is malformed, or the body ended before its framing said it would."""

    reason = "bad-body"
    title = "Malformed request body"


class _ControlBody:
    """The control app's ``receive``: a broken request body becomes :class:`BrokenBody` (a 400).

    granian reports a malformed chunked body as ``http.disconnect`` (see ``_http``); Litestar would
    answer that with a 500. Raised from ``receive``, the gateway's own error handler answers it.
    """

    __slots__ = ("_receive", "broken", "complete")

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self.broken = False
        self.complete = False

    async def receive(self) -> MutableMapping[str, Any]:
        message = await self._receive()
        if message["type"] == "http.request":
            self.complete = not message.get("more_body", False)
        elif message["type"] == "http.disconnect" and not self.complete:
            self.broken = True
            raise BrokenBody("The request body is malformed or ended early.")
        return message


def _framing(lengths: list[bytes], codings: list[bytes]) -> BodyFraming:
    # Request smuggling lives in disagreements about where a body ends (RFC 9112 §6.3): refuse both
    # framings at once, several different lengths, and anything that is not a plain decimal.
    if codings:
        if lengths:
            raise BadFraming("The request has both Content-Length and Transfer-Encoding.")
        # The only coding accepted is one `chunked` alone (§6.1: it is final, applied once; names are
        # case-insensitive). granian frames `identity, chunked`, `gzip, chunked` or two fields as
        # chunked, but a proxy in front may read them otherwise and see a different end of body,
        # and the upstream would get a gzip body labelled as plain: refuse rather than guess.
        if len(codings) != 1 or codings[0].strip().lower() != b"chunked":
            raise BadFraming("The request's Transfer-Encoding must be exactly 'chunked'.")
        return BodyFraming(chunked=True)
    values = {v.strip() for v in lengths}
    if len(values) != 1 or not next(iter(values)).isdigit() or len(next(iter(values))) > 18:
        raise BadFraming("The request's Content-Length is malformed.")
    return BodyFraming(content_length=int(next(iter(values))))


def _refused(rec: RequestRecord, err: GatewayError) -> None:
    """Note why a request was refused: who refused it (the decision) and the reason id."""
    rec.reason = err.reason
    if isinstance(err, AuthenticationRequired):
        rec.decision = "unauthenticated"
    elif isinstance(err, Forbidden):
        rec.decision = "deny"
    elif err.status < 500:
        rec.decision = "invalid"
    else:
        rec.decision = "error"


def _is_control(path: str) -> bool:
    # Reserved on every host and never proxied, so an app cannot shadow the gateway's own endpoints.
    return path == _CONTROL_PREFIX or path.startswith(_CONTROL_PREFIX + "/")


class _Request:
    """What the receive and route stages learned about a request."""

    __slots__ = ("accept", "framing", "fwd", "host_raw", "path_and_query", "rec", "rt", "user_agent")

    def __init__(self, kind: str, method: str) -> None:
        self.rec = RequestRecord(at=time.time(), kind=kind, method=method)
        self.user_agent = b""
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
        codings: list[bytes] = []
        for name, value in headers:
            size += len(name) + len(value) + 4
            if name == b"host":
                req.host_raw = value
                hosts += 1
            elif name == b"accept":
                req.accept = value
            elif name == b"user-agent":
                req.user_agent = value
            elif name == b"content-length":
                lengths.append(value)
            elif name == b"transfer-encoding":
                codings.append(value)
        client = scope.get("client")
        req.fwd = forwarding_for(
            peer_ip=client[0] if client else "",
            scheme=scope.get("scheme", "http").replace("ws", "http"),
            host=req.host_raw.decode("latin-1"),
            headers=headers,
            trusted=snap.trusted,
        )
        # One in-process look-up (empty set: one check); the threat detector keeps it current.
        if req.fwd.client_ip in self.runtime.ip_blocks:
            raise IpBlocked("Access from your address is blocked.")
        if size > snap.settings.limits.max_header_bytes:
            raise HeadersTooLarge(f"Request headers exceed {snap.settings.limits.max_header_bytes} bytes.")
        if hosts != 1:
            # Zero or several Host headers: components could disagree about the target (smuggling).
            raise BadHeaders("The request must carry exactly one Host header.")
        if lengths or codings:
            req.framing = _framing(lengths, codings)
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

    def _authorize_stage(
        self, session: Session, rt: RouteRuntime, method: str, path: str, rec: RequestRecord
    ) -> tuple[tuple[bytes, bytes], ...]:
        """Raise AccessDenied unless the policy explicitly allows this request (invariant 2).

        Returns the identity headers for the upstream: only an allowed request gets them.
        """
        policy, signer = self.runtime.policy, self.runtime.assertions
        if policy is None or signer is None:  # pragma: no cover - start() builds them; fail closed regardless
            raise ServiceUnavailable("The access policy is not loaded.")
        principals = principals_of(session)
        started = time.perf_counter()
        decision = policy.authorizer.decide(principals, rt.route.name, method, path)
        rec.authz_seconds = time.perf_counter() - started
        rec.policy_version = decision.version
        rec.reason = decision.reason
        if not decision.allowed:
            raise denial(decision)
        roles = policy.roles_for(principals)
        return identity_headers(
            session, roles, signer.assertion_for(session, rt.route.name, session.email, roles)
        )

    async def _identify_stage(
        self, scope: Scope, snap: Snapshot, req: _Request, rt: RouteRuntime, proto: str = ""
    ) -> Session:
        identity = self.runtime.identity
        if identity is None:  # pragma: no cover - start() always builds it; fail closed regardless
            raise AuthenticationRequired("Sign-in is not available.")
        fwd = req.fwd
        assert fwd is not None
        return await identify(
            headers=scope["headers"],
            cookie_name=snap.cookie_name,
            sessions=identity.sessions,
            policy=rt.mfa_policy,
            public_url=snap.public_url,
            original_url=lambda: (
                f"{proto or fwd.proto}://{req.host_raw.decode('latin-1')}{req.path_and_query}"
            ),
            now=identity.clock.time(),
        )

    # -- http --------------------------------------------------------------------------------------

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        snap = self.runtime.live.current
        req = _Request("http", scope["method"])
        rec = req.rec
        outcome = ProxyOutcome()
        try:
            canon = self._receive_stage(scope, snap, req)
            rec.path = canon.path
            if canon.path == FORWARD_AUTH_PATH:
                rec.kind = "forward-auth"
                await self._forward_auth(scope, send, snap, req)
                return
            if _is_control(canon.path):
                rec.kind, rec.decision = "control", "public"
                check_page_host(snap, req.host_raw.decode("latin-1"), canon.path)
                await self._control(scope, receive, send, canon.path, req)
                return
            rt, public = self._route_stage(scope, snap, req, canon)
            rec.route = rt.route.name
            identity: tuple[tuple[bytes, bytes], ...] = ()
            if public:
                rec.decision = "public"
            else:
                session = await self._identify_stage(scope, snap, req, rt)
                rec.user, rec.session = session.username, session.id_hash[:16]
                identity = self._authorize_stage(session, rt, scope["method"], canon.path, rec)
                rec.decision = "allow"
            assert req.fwd is not None
            headers = upstream_request_headers(
                scope["headers"],
                fwd=req.fwd,
                extra=rt.request_headers,
                identity=identity,
                own_cookies=snap.own_cookies,
            )
            await forward_http(
                method=scope["method"],
                path_and_query=req.path_and_query,
                headers=headers,
                receive=receive,
                send=send,
                rt=rt,
                client=self.runtime.upstream,  # type: ignore[arg-type]
                request_id=req.fwd.request_id,
                outcome=outcome,
                body_framing=req.framing,
            )
        except GatewayError as err:
            _refused(rec, err)
            if outcome.status:
                raise  # the response already started: only closing the connection is left
            if err.status >= 500:
                # The page shows a plain message and the request id; the detail is here, under that id.
                request_id = req.fwd.request_id if req.fwd else ""
                logger.warning(
                    "%s %s: %s (request id %s)", scope["method"], scope.get("path"), err.detail, request_id
                )
            rec.status = 302 if err.location and wants_html(req.accept) else err.status
            await self._error(send, err, req)
        except ClientDisconnected:
            if outcome.status:
                rec.status = 499  # nginx's code for "the client closed the connection"
                return
            # granian reports a malformed chunked body (bad or overflowing size, bare LF) exactly as a
            # client that left: an http.disconnect. Either way the body is incomplete (RFC 9112 §8):
            # a 400 that closes the connection, so nothing after it is read as a request of its own.
            broken = BrokenBody("The request body is malformed or ended early.")
            _refused(rec, broken)
            rec.status = broken.status
            await self._error(send, broken, req)
        finally:
            self._observe(req, outcome, started)

    def _observe(self, req: _Request, outcome: ProxyOutcome, started: float) -> None:
        """Complete the request's record and hand it to the observers (they only enqueue)."""
        observers = self.runtime.observers
        if not observers:
            return
        rec = req.rec
        if req.fwd is not None:
            rec.request_id, rec.client_ip = req.fwd.request_id, req.fwd.client_ip
        rec.host = req.host_raw.decode("latin-1")
        rec.user_agent = req.user_agent.decode("latin-1")
        _, _, rec.query = req.path_and_query.partition("?")
        if outcome.status:
            rec.status = outcome.status
        rec.bytes_in, rec.bytes_out = outcome.bytes_in, outcome.bytes_out
        rec.upstream, rec.upstream_seconds = outcome.target, outcome.upstream_seconds
        rec.total_seconds = time.perf_counter() - started
        notify(observers, rec)

    # -- forward-auth ------------------------------------------------------------------------------

    async def _forward_auth(self, scope: Scope, send: Send, snap: Snapshot, req: _Request) -> None:
        """Decide a proxy's sub-request with the same stages; 200 only on an explicit allow."""
        assert req.fwd is not None
        status = 200
        headers: list[tuple[bytes, bytes]] = [(b"cache-control", b"no-store"), (b"content-length", b"0")]
        try:
            original = forwarded_request(scope["headers"], peer_trusted=req.fwd.peer_trusted)
            canon = canonicalize(original.raw_path)
            req.host_raw = original.host
            host = normalize_host(original.host.decode("latin-1"))
            match = None if _is_control(canon.path) else snap.router.match(host, canon.path)
            if match is None:
                raise Forbidden("No application is configured for this address.", reason="no-route")
            if canon.has_path_params and not match.route.allow_path_params:
                raise BadPath("Path parameters (';') are not allowed on this route.")
            rt = snap.routes[match.route.name]
            req.path_and_query = canon.path + (
                "?" + original.query.decode("latin-1") if original.query else ""
            )
            rec = req.rec
            rec.method, rec.path, rec.route, rec.decision = (
                original.method,
                canon.path,
                rt.route.name,
                "public",
            )
            if not match.is_public:
                session = await self._identify_stage(scope, snap, req, rt, proto=original.proto)
                rec.user, rec.session = session.username, session.id_hash[:16]
                headers.extend(self._authorize_stage(session, rt, original.method, canon.path, rec))
                rec.decision = "allow"
        except GatewayError as err:
            _refused(req.rec, err)
            status, headers = self._forward_auth_refusal(scope, err, req)
        req.rec.status = status
        headers.append((b"x-request-id", req.fwd.request_id.encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    @staticmethod
    def _forward_auth_refusal(
        scope: Scope, err: GatewayError, req: _Request
    ) -> tuple[int, list[tuple[bytes, bytes]]]:
        # Proxies understand 2xx, 401 and 403 (nginx turns anything else into a 500): a missing
        # route is a 403, a sign-in or MFA page is a 401 with Location. ``?redirect=1`` (Caddy,
        # Traefik, which pass the answer on to the client) makes it a 302 for browsers instead.
        headers = [(b"cache-control", b"no-store"), (b"content-length", b"0")]
        headers.append((b"x-gateway-reason", err.reason.encode()))
        if err.location:
            headers.append((b"location", err.location.encode("latin-1")))
            redirect = b"redirect=1" in scope.get("query_string", b"").split(b"&")
            return (302 if redirect and wants_html(req.accept) else 401), headers
        if err.status in (400, 401, 403) or err.status >= 500:
            return err.status, headers
        return 403, headers

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
        if isinstance(err, BadFraming):
            # The server and a proxy in front may disagree on where this body ends: no byte after
            # it on this connection may be read as another request (smuggling).
            headers.append((b"connection", b"close"))
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
        rec = req.rec
        body = _ControlBody(receive)

        async def send_and_note(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                rec.status = int(message["status"])
                if body.broken:  # see _error: nothing after a broken body may count as a request
                    message["headers"] = [*message.get("headers", ()), (b"connection", b"close")]
                    rec.decision, rec.reason = "invalid", BrokenBody.reason
            await send(message)

        await self.control(inner, body.receive if req.framing.has_body else receive, send_and_note)

    # -- websocket ---------------------------------------------------------------------------------

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        snap = self.runtime.live.current
        req = _Request("websocket", "GET")
        rec = req.rec
        outcome = ProxyOutcome()
        try:
            canon = self._receive_stage(scope, snap, req)
            if _is_control(canon.path):
                raise NoRoute("The gateway's own endpoints do not speak WebSocket.")
            rec.path = canon.path
            rt, public = self._route_stage(scope, snap, req, canon)
            rec.route = rt.route.name
            if not rt.route.websockets:
                raise NoRoute("WebSockets are disabled on this route.")
            identity: tuple[tuple[bytes, bytes], ...] = ()
            rec.decision = "public"
            if not public:
                session = await self._identify_stage(scope, snap, req, rt)
                rec.user, rec.session = session.username, session.id_hash[:16]
                # A WebSocket handshake is a GET (RFC 6455 §4.1): the policy sees it as one.
                identity = self._authorize_stage(session, rt, "GET", canon.path, rec)
                rec.decision = "allow"
            rec.status = 101
            assert req.fwd is not None
            headers = upstream_request_headers(
                scope["headers"],
                fwd=req.fwd,
                extra=rt.request_headers,
                identity=identity,
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
            _refused(rec, err)
            rec.status = err.status
            logger.warning("websocket %s: %s", scope.get("path"), err.detail)
        except GatewayError as err:
            # Refuse the handshake; the ASGI server answers it with 403.
            _refused(rec, err)
            rec.status = 403
            logger.info("websocket refused (%s): %s", err.reason, err.detail)
            await send({"type": "websocket.close", "code": 1008})
        finally:
            self._observe(req, outcome, started)

    # -- lifespan ----------------------------------------------------------------------------------

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.runtime.start()
                    self.control = self._control_factory(self.runtime)
                except GatewayError as exc:
                    logger.error("gateway worker failed to start: %s", exc)
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                except Exception as exc:
                    logger.exception("gateway worker failed to start")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                # Everything built so far (modules, settings, the app) lives as long as the worker:
                # move it out of the collector's sight, so full collections stop walking ~10^5
                # long-lived objects in the middle of requests (measured: tail-latency spikes).
                gc.collect()
                gc.freeze()
                # Young collections still ran every 700 allocations, i.e. every few requests: 7% of
                # the worker's time under load (py-spy --native). Almost everything a request
                # allocates dies by reference counting, so collecting 50x less often finds the same
                # few cycles while walking far fewer objects in total.
                gc.set_threshold(_GC_YOUNG_THRESHOLD, 20, 20)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.runtime.close()
                await send({"type": "lifespan.shutdown.complete"})
                return


def create_data_plane(runtime: Runtime) -> DataPlane:
    """Wire the data plane with its control-plane app."""
    from gateway.web.app import create_control_app

    return DataPlane(runtime, lambda rt: cast(ASGIApp, create_control_app(rt)))
