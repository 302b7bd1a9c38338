"""Route matching: (host, canonical path) → the most specific route.

Hosts compare case-insensitively with the port and a trailing dot removed; an exact host beats a
wildcard (``*.example.com`` matches exactly one extra label, like a TLS certificate). Within a host
the longest path prefix wins, and a prefix only matches on a segment boundary: ``/admin`` covers
``/admin`` and ``/admin/x`` but never ``/administrator`` (a classic policy bypass in prefix routers).

The route stage (:func:`route_request`) runs this on the canonical path; ``/.gateway/`` belongs to
the gateway on every host and never matches a route.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

from gateway.errors import BadHeaders, BadPath, GatewayError
from gateway.pipeline.canonical import CanonicalPath, fold_case, without_path_params
from gateway.settings.schema import Route

if TYPE_CHECKING:  # the snapshot holds a Router: imported for types only
    from gateway.pipeline.context import RequestContext
    from gateway.pipeline.snapshot import Snapshot

__all__ = ["CONTROL_PREFIX", "MatchedRoute", "Router", "is_control", "normalize_host", "route_request"]

CONTROL_PREFIX = "/.gateway"

# A host header: a DNS name or IPv4 (letters, digits, '-', '.') or a bracketed IPv6 literal, then an
# optional port. Anything else ('@', '/', spaces, userinfo) is refused: it is either garbage or an
# attempt to make two components disagree about where the request goes.
_HOST_RE = re.compile(r"^(?:\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,252}))(?::[0-9]{1,5})?$")


@lru_cache(maxsize=1024)
def normalize_host(raw: str) -> str:
    """Return the canonical host for matching: lower-case, no port, no trailing dot.

    Every request carries one of a handful of Host values, so answers are remembered (a bounded
    number, since the client chooses them; refusals are exceptions and never remembered).

    Raises:
        BadHeaders: the value is not a syntactically valid host.
    """
    if not raw or not _HOST_RE.match(raw):
        raise BadHeaders("The Host header is missing or malformed.")
    host = raw[: raw.index("]") + 1] if raw.startswith("[") else raw.split(":", 1)[0]
    host = host.lower().rstrip(".")
    if not host:
        raise BadHeaders("The Host header is missing or malformed.")
    return host


def is_control(path: str) -> bool:
    """Whether a canonical path is one of the gateway's own (``/.gateway`` and below)."""
    # Reserved on every host and never proxied, so an app cannot shadow the gateway's own endpoints.
    return path == CONTROL_PREFIX or path.startswith(CONTROL_PREFIX + "/")


@dataclass(frozen=True, slots=True)
class _Entry:
    prefix: str
    route: Route
    public: tuple[re.Pattern[str], ...]


@dataclass(frozen=True, slots=True)
class MatchedRoute:
    route: Route
    is_public: bool


def _compile_public(pattern: str) -> re.Pattern[str]:
    # '*' matches any run of characters (across segments); paths are canonical by now, so no
    # '..' or encoded slash can smuggle a request past the pattern.
    return re.compile(
        "".join(".*" if part == "*" else re.escape(part) for part in re.split(r"(\*)", pattern))
    )


def _prefix_matches(prefix: str, path: str) -> bool:
    if prefix == "/":
        return True
    return path == prefix or (path.startswith(prefix) and path[len(prefix)] == "/")


class Router:
    """An immutable lookup structure built once per config snapshot."""

    __slots__ = ("_exact", "_wildcard")

    def __init__(self, routes: Iterable[Route]) -> None:
        exact: dict[str, list[_Entry]] = {}
        wildcard: dict[str, list[_Entry]] = {}
        for route in routes:
            prefix = route.path.rstrip("/") or "/"
            entry = _Entry(prefix, route, tuple(_compile_public(p) for p in route.public_paths))
            host = route.host.lower().rstrip(".")
            if host.startswith("*."):
                wildcard.setdefault(host[2:], []).append(entry)
            else:
                exact.setdefault(host, []).append(entry)
        # Longest prefix first, so the first hit is the most specific.
        self._exact = {h: tuple(sorted(es, key=lambda e: -len(e.prefix))) for h, es in exact.items()}
        self._wildcard = {h: tuple(sorted(es, key=lambda e: -len(e.prefix))) for h, es in wildcard.items()}

    def match(self, host: str, path: str) -> MatchedRoute | None:
        """Find the route for a normalised host and a canonical path, or None (→ 404)."""
        entries = self._exact.get(host)
        hit = self._first(entries, path) if entries else None
        if hit is None:
            _, dot, parent = host.partition(".")
            if dot:
                entries = self._wildcard.get(parent)
                hit = self._first(entries, path) if entries else None
        return hit

    @staticmethod
    def _first(entries: tuple[_Entry, ...], path: str) -> MatchedRoute | None:
        for entry in entries:
            if _prefix_matches(entry.prefix, path):
                public = any(p.fullmatch(path) for p in entry.public)
                return MatchedRoute(entry.route, public)
        return None


def route_request(
    ctx: RequestContext, snap: Snapshot, canon: CanonicalPath, *, no_route: type[GatewayError]
) -> bool:
    """The route stage: find the route for the request's host and canonical path.

    Sets ``ctx.host`` (the normalised host), ``ctx.rt`` and ``ctx.path_and_query`` (what the upstream is sent: the canonical path, so
    the policy and the application see the same path). A path with ``;`` parameters, where the route
    allows them, is routed and decided without them, as the servlet containers that use them read it
    (:func:`_route_with_params`).

    Args:
        ctx: The request; ``host_raw`` and ``query`` are read.
        snap: The live configuration.
        canon: The canonical path.
        no_route: What to raise when no route matches: :class:`~gateway.errors.NoRoute` (404) for a
            request, a 403 for a proxy's forward-auth question (proxies understand only 401/403).

    Returns:
        Whether the path is public on its route (no identity needed).

    Raises:
        BadHeaders: the ``Host`` is malformed.
        BadPath: the path has ``;`` parameters and the route does not allow them.
    """
    host = ctx.host = normalize_host(ctx.host_raw.decode("latin-1"))
    if canon.has_path_params:
        return _route_with_params(ctx, snap, host, canon, no_route)
    match = None if is_control(canon.path) else snap.router.match(host, canon.path)
    if match is None:
        raise no_route("No application is configured for this address.")
    route = match.route
    rt = snap.routes[route.name]
    if rt.fold_case:
        # The app reads /Admin as /admin: the host's routes are chosen again, the policy decides and
        # the app gets the path in lower case (every route of a host folds, or none does).
        canon = fold_case(canon)
        # `/.GATEWAY/x` folds into the reserved prefix: never an app's path (a re-attack run's note).
        match = None if is_control(canon.path) else snap.router.match(host, canon.path)
        if match is None:
            raise no_route("No application is configured for this address.")
        route = match.route
        rt = snap.routes[route.name]
    path = ctx.path = canon.path
    query = ctx.query
    ctx.path_and_query = path + ("?" + query.decode("latin-1") if query else "")
    ctx.rt = rt
    return match.is_public


def _route_with_params(
    ctx: RequestContext, snap: Snapshot, host: str, canon: CanonicalPath, no_route: type[GatewayError]
) -> bool:
    """:func:`route_request` for a path with ``;`` parameters: routed, made public or not and decided
    by the policy on the path without them (``ctx.path``), sent to the app with them.

    Tomcat, Jetty and Spring cut the parameters off before they map a path: an attack run had
    ``/admin;x/secret`` served as ``/admin/secret`` by Jetty while a deny rule on ``/admin/*`` did not
    match it, and a public pattern like ``/*.css`` would have matched ``/admin/secret;.css``.

    Raises:
        BadPath: the route the path maps to does not allow parameters.
    """
    bare = without_path_params(canon.path)
    match = None if is_control(bare) else snap.router.match(host, bare)
    if match is None:
        raise no_route("No application is configured for this address.")
    rt = snap.routes[match.route.name]
    if rt.fold_case:
        canon = fold_case(canon)
        # Checked again without the parameters: `/admin.;x` is `/admin.` to the app (a re-attack run
        # passed a trailing dot and space that way), which such a route refuses as `/admin`'s spelling.
        bare = fold_case(CanonicalPath(without_path_params(canon.path), False)).path
        match = None if is_control(bare) else snap.router.match(host, bare)
        if match is None:
            raise no_route("No application is configured for this address.")
        rt = snap.routes[match.route.name]
    if not match.route.allow_path_params:
        raise BadPath("Path parameters (';') are not allowed on this route.")
    ctx.path = bare
    ctx.rec.original_path = canon.path
    query = ctx.query
    ctx.path_and_query = canon.path + ("?" + query.decode("latin-1") if query else "")
    ctx.rt = rt
    return match.is_public
