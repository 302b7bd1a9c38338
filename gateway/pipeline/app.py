"""The data plane: one ASGI callable that runs every request through one stage sequence.

receive → canonical → route → lockdown → identify → mfa → authorize → proxy (docs/architecture.md), each
stage in its own module of this package, in that order (lockdown only while one covers the route;
bearer instead of identify and mfa when the route takes tokens and the request brings one). Every entry runs the same sequence: an HTTP request, a
proxy's forward-auth sub-request (``/.gateway/auth``: the stages decide the original request it
describes) and a WebSocket handshake; they differ only in their last stage and in how they answer a
refusal (:mod:`gateway.pipeline.entries`). It is deliberately not a framework route handler: the
per-request work is a handful of function calls on precompiled data from the live snapshot. Other
requests under ``/.gateway/`` go to the control-plane Litestar app instead.
"""

from __future__ import annotations

import logging
import time

from gateway.errors import GatewayError, NoRoute
from gateway.observe.record import AccessDecision, AuthKind, RequestKind, notify
from gateway.observe.tracing import RequestTrace, Stage
from gateway.pipeline.asgi import ASGIApp, Receive, Scope, Send
from gateway.pipeline.authorize import authorize, authorize_client
from gateway.pipeline.bearer import authenticate_bearer, bearer_token, brings_token
from gateway.pipeline.canonical import canonicalize, refuse_unless_canonical
from gateway.pipeline.context import RequestContext
from gateway.pipeline.control import hand_to_control
from gateway.pipeline.entries import FORWARD_AUTH, HTTP, WEBSOCKET, Entry
from gateway.pipeline.forward_auth import is_forward_auth, retarget
from gateway.pipeline.identify import identify
from gateway.pipeline.lockdown import enforce_lockdown
from gateway.pipeline.mfa import require_mfa
from gateway.pipeline.origins import check_own_origin, check_websocket_handshake
from gateway.pipeline.page_hosts import check_page_host
from gateway.pipeline.preflight import let_preflight_through
from gateway.pipeline.proxy import ClientDisconnected
from gateway.pipeline.receive import BrokenBody, receive_request
from gateway.pipeline.refusal import note_refusal
from gateway.pipeline.route import is_control, route_request
from gateway.pipeline.sizes import counting
from gateway.pipeline.snapshot import LiveState, Snapshot
from gateway.pipeline.watch import Rechecks
from gateway.services import WorkerServices

__all__ = ["DataPlane"]

logger = logging.getLogger("gateway.pipeline")

_NO_IDENTITY: tuple[tuple[bytes, bytes], ...] = ()


class DataPlane:
    """The gateway's ASGI application for requests; the composition root owns its lifespan.

    Built once the worker's services have started (:mod:`gateway.root`), so every part it uses is
    there: the parts each request needs are bound to slots once, not looked up per request.
    """

    __slots__ = (
        "_bearer",
        "_checks",
        "_clock",
        "_control_app",
        "_ip_blocks",
        "_live",
        "_lockdown",
        "_observers",
        "_policy",
        "_sample",
        "_services",
        "_sessions",
        "_signer",
        "_tracer",
    )

    def __init__(self, services: WorkerServices, live: LiveState, control: ASGIApp) -> None:
        """Wire the data plane.

        Args:
            services: The worker's started services.
            live: The snapshot holder (the same object as ``services.live``, with the pipeline's
                full type: router, proxy table, trusted proxies).
            control: The control-plane app for ``/.gateway/`` (the pages and their API).
        """
        self._services = services
        self._live = live
        self._control_app = control
        self._ip_blocks = services.ip_blocks
        self._sessions = services.identity.sessions
        self._clock = services.identity.clock
        self._policy = services.policy
        self._signer = services.assertions
        self._sample = services.sample
        self._bearer = services.bearer
        # The worker's in-memory lockdown switch, kept current by its listener (no I/O to read it).
        self._lockdown = services.lockdown
        # The list itself: observers registered later (tests) are seen too.
        self._observers = services.observers
        # None while tracing is off: then no request does any tracing work beyond `is not None`.
        self._tracer = services.tracer
        # What a WebSocket or a streamed answer is checked with again while it lasts (pipeline.watch).
        self._checks = Rechecks(
            live=live,
            blocks=services.ip_blocks,
            lockdown=services.lockdown,
            sessions=services.identity.sessions,
            policy=services.policy,
            bearer=services.bearer,
            clock=services.identity.clock,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._run(HTTP, scope["method"], scope, receive, send)
        elif kind == "websocket":
            # A WebSocket handshake is a GET (RFC 6455 §4.1): the policy sees it as one.
            await self._run(WEBSOCKET, "GET", scope, receive, send)

    # -- the stage sequence ------------------------------------------------------------------------

    async def _run(self, entry: Entry, method: str, scope: Scope, receive: Receive, send: Send) -> None:
        """Run one request through the stages in order; every stage refuses by raising GatewayError."""
        started = time.perf_counter()
        snap = self._live.current
        ctx = RequestContext(entry.kind, method)
        rec = ctx.rec
        tracer = self._tracer
        trace = ctx.trace = None if tracer is None else tracer.begin(scope, snap.trusted, rec)
        try:
            # receive, canonical: the request as the client sent it; one canonical path from here on
            # (invariant 1: the path the policy sees is the path the upstream gets).
            canon = canonicalize(receive_request(scope, snap, ctx, self._ip_blocks))
            rec.path = canon.path
            if is_control(canon.path):
                if entry is not HTTP or not is_forward_auth(canon.path):
                    await self._control(entry, scope, receive, send, snap, canon.path, ctx)
                    return
                # A proxy asks about another request: the stages decide that one, and the answer
                # replaces the proxy stage. Refusals from here on are forward-auth answers.
                entry = FORWARD_AUTH
                rec.kind = entry.kind
                original = retarget(scope, ctx)
                # The proxy sends the app the path as the client wrote it, never the one decided here:
                # a path with dot segments or empty ones is refused, not resolved (an attack run: the
                # gateway allowed /admin/../docs/x as /docs/x, and nginx and Caddy sent it whole to
                # apps that do not resolve dot segments, which served it from their /admin handler).
                refuse_unless_canonical(original)
                canon = canonicalize(original)
            # route
            public = route_request(ctx, snap, canon, no_route=entry.no_route)
            rt = ctx.rt
            assert rt is not None
            # The route stage's path: the canonical one, or its lower case on a case-insensitive route.
            path = ctx.path
            rec.method, rec.path, rec.route = ctx.method, path, rt.route.name
            if entry.checks_handshakes:
                check_websocket_handshake(
                    scope["headers"],
                    asked=not entry.needs_websockets,
                    enabled=rt.route.websockets,
                    host=ctx.host_raw,
                    proto=ctx.proto,
                    allowed=rt.websocket_origins,
                )
            # lockdown: one attribute read while none is on; public paths of a locked route too.
            lock = self._lockdown.state
            if lock.on and lock.covers(rt.route.name):
                await enforce_lockdown(
                    cookie_name=snap.cookie_name,
                    sessions=self._sessions,
                    policy=self._policy,
                    settings=snap.settings.lockdown,
                    now=self._clock.time(),
                    public_url=snap.public_url,
                    request=ctx,
                    by_token=rt.bearer_auth and (not rt.session_auth or brings_token(scope["headers"])),
                )
            identity = _NO_IDENTITY
            # A public path, or a browser's CORS preflight on a route that lets them through (the
            # method first: on such a route every other request pays one comparison, not a call).
            if public or (
                rt.cors_preflight and ctx.method == "OPTIONS" and let_preflight_through(scope, ctx)
            ):
                rec.decision = AccessDecision.PUBLIC
            elif rt.bearer_auth and (
                (token := bearer_token(scope["headers"])) is not None or not rt.session_auth
            ):
                # bearer, authorize: the token alone decides, whatever cookie came with it.
                fwd = ctx.fwd
                assert fwd is not None  # set by receive
                if token is not None:
                    rec.auth = AuthKind.BEARER
                    ctx.token = token
                if trace is not None:
                    trace.enter(Stage.BEARER)
                client = await authenticate_bearer(
                    token, verifiers=self._bearer, route=rt.route.name, ip=fwd.client_ip
                )
                rec.user = client.actor
                identity = authorize_client(
                    client=client,
                    route=rt.route.name,
                    method=ctx.method,
                    path=path,
                    policy=self._policy,
                    signer=self._signer,
                    request=ctx,
                    sample=self._sample,
                    names=rt.identity_names,
                )
                rec.decision = AccessDecision.ALLOW
            else:
                # identify, mfa, authorize
                session = await identify(
                    cookie_name=snap.cookie_name,
                    sessions=self._sessions,
                    public_url=snap.public_url,
                    request=ctx,
                )
                require_mfa(
                    session=session,
                    policy=rt.mfa_policy,
                    now=self._clock.time(),
                    public_url=snap.public_url,
                    request=ctx,
                )
                rec.user, rec.session = session.username, session.id_hash[:16]
                rec.auth = AuthKind.SESSION
                identity = authorize(
                    session=session,
                    route=rt.route.name,
                    method=ctx.method,
                    path=path,
                    policy=self._policy,
                    signer=self._signer,
                    request=ctx,
                    sample=self._sample,
                    names=rt.identity_names,
                )
                rec.decision = AccessDecision.ALLOW
            # proxy (or the forward-auth answer); the upstream stage span starts with its traceparent.
            if trace is not None:
                trace.leave()
            ctx.checks = self._checks
            await entry.finish(ctx, scope, receive, send, snap, identity, self._services)
        except GatewayError as err:
            note_refusal(rec, err)
            await entry.refuse(ctx, scope, counting(send, ctx.outcome), err)
        except ClientDisconnected:
            await self._client_left(entry, ctx, scope, send)
        finally:
            self._observe(ctx, started)

    async def _client_left(self, entry: Entry, ctx: RequestContext, scope: Scope, send: Send) -> None:
        """The client went away while its body was being forwarded (or sent a broken one)."""
        rec = ctx.rec
        if ctx.outcome.status:
            rec.status = 499  # nginx's code for "the client closed the connection"
            return
        # granian reports a malformed chunked body (bad or overflowing size, bare LF) exactly as a
        # client that left: an http.disconnect. Either way the body is incomplete (RFC 9112 §8):
        # a 400 that closes the connection, so nothing after it is read as a request of its own.
        broken = BrokenBody("The request body is malformed or ended early.")
        note_refusal(rec, broken)
        await entry.refuse(ctx, scope, counting(send, ctx.outcome), broken)

    async def _control(
        self,
        entry: Entry,
        scope: Scope,
        receive: Receive,
        send: Send,
        snap: Snapshot,
        path: str,
        ctx: RequestContext,
    ) -> None:
        """A request for the gateway's own pages: no route, identity or policy stage of its own here."""
        if entry is not HTTP:
            raise NoRoute("The gateway's own endpoints do not speak WebSocket.")
        ctx.rec.kind, ctx.rec.decision = RequestKind.CONTROL, AccessDecision.PUBLIC
        check_page_host(snap, ctx.host_raw.decode("latin-1"), path, scope["query_string"])
        check_own_origin(scope["headers"], method=ctx.method, host=ctx.host_raw)
        await hand_to_control(
            self._control_app, scope, receive, send, path, ctx, float(snap.settings.limits.body_timeout)
        )

    def _end_trace(self, ctx: RequestContext, trace: RequestTrace) -> None:
        """Close the request's trace; the exporter only enqueues, and its failure never reaches the client."""
        assert self._tracer is not None
        try:
            self._tracer.end(
                trace,
                ctx.rec,
                status=ctx.outcome.status or ctx.rec.status,
                request_id=ctx.fwd.request_id if ctx.fwd else "",
                target=ctx.outcome.target,
                retried=ctx.outcome.retried,
            )
        except Exception:
            logger.exception("tracing failed")

    def _observe(self, ctx: RequestContext, started: float) -> None:
        """Complete the request's record and hand it to the observers (they only enqueue)."""
        if ctx.trace is not None:
            self._end_trace(ctx, ctx.trace)
        observers = self._observers
        if not observers:
            return
        rec, fwd, outcome = ctx.rec, ctx.fwd, ctx.outcome
        if fwd is not None:
            rec.request_id, rec.client_ip = fwd.request_id, fwd.client_ip
        rec.host = ctx.host_raw.decode("latin-1")
        rec.user_agent = ctx.user_agent.decode("latin-1")
        _, _, rec.query = ctx.path_and_query.partition("?")
        if outcome.status:
            rec.status = outcome.status
        rec.bytes_in, rec.bytes_out = outcome.bytes_in, outcome.bytes_out
        rec.upstream, rec.upstream_seconds = outcome.target, outcome.upstream_seconds
        rec.total_seconds = time.perf_counter() - started
        notify(observers, rec)
