"""The live snapshot: everything a request needs, built from one config, swapped atomically.

It belongs to the data plane (the router and the proxy table are compiled into it); the pages and the
admin API read it through :class:`gateway.settings.current.CurrentConfig`, which it implements.

A request takes ``live.current`` once when it starts and uses that object to the end, so a reload
never mixes two configs inside one request, and requests in flight finish on the snapshot they began
with. Building a snapshot does all the parsing and compiling up front (routes, header bytes, pools),
so the hot path only reads.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

from gateway.identity.cookies import own_cookie_names, session_cookie_name
from gateway.pipeline.headers import DEFAULT_IDENTITY_NAMES, IdentityNames
from gateway.pipeline.origins import normal_origin
from gateway.pipeline.route import Router
from gateway.settings.schema import IdentityHeaderNames, MfaPolicy, Route, Settings
from gateway.settings.trusted import TrustedProxies
from gateway.upstream import UpstreamPool

__all__ = ["LiveState", "RouteRuntime", "Snapshot", "build_snapshot"]


def _names(configured: IdentityHeaderNames) -> IdentityNames:
    return IdentityNames.of(configured.user, configured.email, configured.roles)


def _header_pairs(mapping: Mapping[str, str]) -> tuple[tuple[bytes, bytes], ...]:
    return tuple((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in mapping.items())


@dataclass(frozen=True, slots=True)
class RouteRuntime:
    """A route with everything the proxy needs precomputed."""

    route: Route
    pool: UpstreamPool
    request_headers: tuple[tuple[bytes, bytes], ...]
    response_headers: tuple[tuple[bytes, bytes], ...]
    max_body_size: int
    # limits.body_timeout: the longest wait for the next piece of the request body.
    body_timeout: float
    # nginx's proxy_connect_timeout and proxy_read_timeout: the response one runs from the end of the
    # request body to the response head, and again for every wait between body reads.
    connect_timeout: float
    read_timeout: float
    mfa_policy: MfaPolicy
    # The route's auth methods (``auth: [session, bearer]``), as two flags read on every request.
    session_auth: bool = True
    bearer_auth: bool = False
    # routes[].cors_preflight: a browser's CORS preflight goes to the app without sign-in.
    cors_preflight: bool = False
    # What the identity is sent under on this route (identity_headers, or the route's own names).
    identity_names: IdentityNames = DEFAULT_IDENTITY_NAMES
    # The gateway's cookie names, lower-case: an app's Set-Cookie for one of them is dropped.
    own_set_cookies: frozenset[bytes] = frozenset()
    # routes[].case_insensitive_paths: the path is routed, decided and forwarded in lower case.
    fold_case: bool = False
    # routes[].websocket_origins, normalised (scheme://host:port); None: any origin ("*").
    websocket_origins: frozenset[str] | None = frozenset()


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One immutable view of the configuration and what was compiled from it."""

    settings: Settings
    router: Router
    routes: Mapping[str, RouteRuntime]
    trusted: TrustedProxies
    generation: int
    loaded_at: float
    source: str
    cookie_name: str
    public_url: str
    own_cookies: frozenset[bytes]
    # The client headers dropped for the identity: every name any route sends it under, on every
    # route (a header that is one app's identity is dropped on the way to all of them).
    strip_identity: frozenset[bytes] = frozenset()
    # The same, and the client's Authorization, for a request a bearer token authenticated: the token
    # is for the gateway only (an application that logs or leaks it must not hand it out), while an
    # Authorization the route itself sets (request_headers) still reaches the application.
    strip_bearer: frozenset[bytes] = frozenset({b"authorization"})
    # (issuer, audience) of every provider whose access tokens the gateway accepts: a client's
    # Authorization carrying such a token is the gateway's credential, dropped on its way to any app.
    token_audiences: frozenset[tuple[str, str]] = frozenset()

    @property
    def pools(self) -> list[UpstreamPool]:
        return [rt.pool for rt in self.routes.values()]


def build_snapshot(settings: Settings, *, generation: int, source: str) -> Snapshot:
    """Compile settings into a snapshot. Raises ValueError on values the loader could not catch."""
    runtimes: dict[str, RouteRuntime] = {}
    # Every spelling the gateway may have set, so none of them reaches an upstream (nor comes back).
    cookie_name = session_cookie_name(settings.session)
    own_cookies = frozenset(n.encode() for n in own_cookie_names(settings.session))
    own_set_cookies = frozenset(n.lower() for n in own_cookies)
    default_names = _names(settings.identity_headers)
    strip = default_names.to_strip()
    for route in settings.routes:
        t = route.timeouts
        names = default_names
        if route.identity_headers is not None:
            names = _names(route.identity_headers.over(settings.identity_headers))
            strip |= names.to_strip()
        runtimes[route.name] = RouteRuntime(
            route=route,
            pool=UpstreamPool.from_route(route),
            request_headers=_header_pairs(route.request_headers),
            response_headers=_header_pairs(route.response_headers),
            max_body_size=int(route.max_body_size or settings.limits.max_body_size),
            body_timeout=float(settings.limits.body_timeout),
            connect_timeout=t.connect,
            read_timeout=t.response,
            mfa_policy=route.mfa_policy,
            session_auth="session" in route.auth,
            bearer_auth="bearer" in route.auth,
            cors_preflight=route.cors_preflight,
            identity_names=names,
            own_set_cookies=own_set_cookies,
            fold_case=route.case_insensitive_paths,
            websocket_origins=(
                None
                if "*" in route.websocket_origins
                else frozenset(filter(None, map(normal_origin, route.websocket_origins)))
            ),
        )
    return Snapshot(
        settings=settings,
        router=Router(settings.routes),
        routes=runtimes,
        trusted=TrustedProxies(settings.trusted_proxies),
        generation=generation,
        loaded_at=time.time(),
        source=source,
        cookie_name=cookie_name,
        own_cookies=own_cookies,
        public_url=settings.public_url.rstrip("/"),
        strip_identity=strip,
        strip_bearer=strip | {b"authorization"},
        token_audiences=frozenset(
            (p.issuer, p.access_tokens.audience)
            for p in settings.identity_providers
            if p.access_tokens is not None
        ),
    )


class LiveState:
    """Holds the current snapshot. Assignment of one attribute is atomic under the GIL/event loop."""

    __slots__ = ("current",)

    def __init__(self, snapshot: Snapshot) -> None:
        self.current = snapshot

    def swap(self, snapshot: Snapshot) -> Snapshot:
        """Install a new snapshot and return the old one (whose health checks the caller stops)."""
        old, self.current = self.current, snapshot
        return old
