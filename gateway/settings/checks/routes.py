"""Checks for ``routes``: each route's host, path, upstreams, headers, timeouts and health checks.

Route names are unique, and no two routes claim the same host and path prefix.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from gateway.settings.checks.identity_headers import identity_names
from gateway.settings.checks.values import NAME_RULE, TOKEN, host_problem, require_positive, url_problem
from gateway.settings.report import SLUG, KeyPath, Report, quote
from gateway.settings.schema import ActiveHealthCheck, Route, Settings

__all__ = ["check_routes", "origin_problem"]


def origin_problem(origin: str) -> str | None:
    """What is wrong with a WebSocket origin entry, or None."""
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "is not an origin: it needs http:// or https:// and a host"
    if parts.path or parts.query or parts.fragment or parts.username or parts.password:
        return "is not an origin: only scheme, host and port (no path, query or user)"
    try:
        parts.port  # noqa: B018 - raises for a port that is not a number
    except ValueError:
        return "has a port that is not a number"
    return None


def check_routes(settings: Settings, report: Report) -> None:
    """Every route on its own, plus unique names and targets across routes."""
    names: dict[str, int] = {}
    targets: dict[tuple[str, str], tuple[str, int]] = {}
    folding: dict[str, tuple[bool, str]] = {}
    for index, route in enumerate(settings.routes):
        at: KeyPath = ("routes", index)
        if not SLUG.fullmatch(route.name):
            report.bad((*at, "name"), f"{quote(route.name)} is not a valid name", NAME_RULE)
        elif route.name in names:
            report.add(
                (*at, "name"),
                f"duplicate route name (first at line {names[route.name]}); names must be unique",
            )
        else:
            names[route.name] = report.line((*at, "name"))
        # The names the identity is sent under, globally and on this route: the route may not set them.
        _check_route(route, at, report, identity_names(settings, route))
        # Same host and path prefix twice: only one could ever match, and which one would be an accident.
        target = (route.host.lower(), route.path.rstrip("/") or "/")
        if target in targets:
            first, line = targets[target]
            report.add(
                (*at, "path"),
                f"this host and path are already served by route {quote(first)} (line {line});"
                " give each route its own host or path",
            )
        else:
            targets[target] = (route.name, report.line(at))
        # Routing decides between a host's routes on the path: folded for one, it is folded for all.
        host = route.host.lower()
        first_fold = folding.setdefault(host, (route.case_insensitive_paths, route.name))
        if first_fold[0] != route.case_insensitive_paths:
            report.add(
                (*at, "case_insensitive_paths"),
                f"route {quote(first_fold[1])} on the same host says {str(first_fold[0]).lower()};"
                " every route of one host must agree (the routes are chosen by the path)",
            )


def _check_websocket_origins(route: Route, at: KeyPath, report: Report) -> None:
    for n, origin in enumerate(route.websocket_origins):
        problem = None if origin == "*" else origin_problem(origin)
        if problem:
            report.bad(
                (*at, "websocket_origins", n),
                f"{quote(origin)} {problem}",
                'expected an origin such as https://app.example.com (scheme, host, optional port), or "*"',
            )


def _check_route(route: Route, at: KeyPath, report: Report, reserved: frozenset[str]) -> None:
    problem = host_problem(route.host)
    if problem:
        report.bad(
            (*at, "host"),
            f"{quote(route.host)} {problem}",
            "expected a hostname such as wiki.example.com or *.example.com",
        )
    problem = _path_problem(route.path)
    if problem:
        report.bad((*at, "path"), f"{quote(route.path)} {problem}", "expected a path prefix such as /admin")
    if route.case_insensitive_paths:
        _check_folded_paths(route, at, report)
    _check_websocket_origins(route, at, report)
    if not route.upstreams:
        report.add((*at, "upstreams"), "list at least one upstream URL, e.g. [http://10.0.0.5:8080]")
    for index, upstream in enumerate(route.upstreams):
        problem = url_problem(upstream, allow_path=True)
        if problem:
            report.bad((*at, "upstreams", index), problem, "expected a URL such as http://10.0.0.5:8080")
    for index, public in enumerate(route.public_paths):
        if not public.startswith("/"):
            report.bad(
                (*at, "public_paths", index), f"{quote(public)} does not start with /", "e.g. /static/*"
            )
    _check_headers(route, at, report, reserved)
    require_positive(
        [
            ((*at, "timeouts", "connect"), route.timeouts.connect),
            ((*at, "timeouts", "response"), route.timeouts.response),
        ],
        report,
    )
    _check_auth(route, at, report)
    policy = route.mfa_policy
    if policy.max_age is not None and policy.max_age <= 0:
        report.add((*at, "mfa", "max_age"), f"must be greater than 0; got {policy.max_age:g}")
    if route.max_body_size is not None and route.max_body_size <= 0:
        report.add((*at, "max_body_size"), f"must be greater than 0; got {route.max_body_size}")
    _check_health_checks(route, at, report)


def _check_health_checks(route: Route, at: KeyPath, report: Report) -> None:
    if route.health_check is not None:
        _check_health(route.health_check, (*at, "health_check"), report)
    # 0 turns passive ejection off, as the README and the pool have it (a single target, say); the
    # check refused it (a first-day run).
    passive = route.passive_health_check
    for name, value in (
        ("consecutive_failures", float(passive.consecutive_failures)),
        ("ejection_time", float(passive.ejection_time)),
    ):
        if value < 0:
            report.add(
                (*at, "passive_health_check", name),
                f"must not be negative (0 turns ejection off); got {value:g}",
            )


def _check_folded_paths(route: Route, at: KeyPath, report: Report) -> None:
    # The path is compared in lower case: an upper-case prefix would never match.
    if route.path != route.path.lower():
        report.add((*at, "path"), f"write {quote(route.path)} in lower case (case_insensitive_paths)")
    for index, public in enumerate(route.public_paths):
        if public != public.lower():
            report.add(
                (*at, "public_paths", index), f"write {quote(public)} in lower case (case_insensitive_paths)"
            )


def _check_auth(route: Route, at: KeyPath, report: Report) -> None:
    # An empty list would leave no way in at all (every request 401): a typo, never an intention.
    if not route.auth:
        report.add((*at, "auth"), "list at least one method: [session], [bearer] or [session, bearer]")
    elif len(set(route.auth)) != len(route.auth):
        report.add((*at, "auth"), "names a method twice; list each of session and bearer at most once")


def _path_problem(path: str) -> str | None:
    # The router matches canonical paths; a prefix that is not canonical could never match, or would
    # match differently than it reads.
    if not path.startswith("/"):
        return "does not start with /"
    if "//" in path or ".." in path:
        return "contains // or .."
    for char in "%?#":
        if char in path:
            return f"contains {quote(char)}; write the plain, decoded path prefix"
    return None


def _check_headers(route: Route, at: KeyPath, report: Report, reserved: frozenset[str]) -> None:
    for key, headers in (
        ("request_headers", route.request_headers),
        ("response_headers", route.response_headers),
    ):
        for name, value in headers.items():
            _check_header((*at, key, name), name, value, report, reserved)


def _check_header(path: KeyPath, name: str, value: str, report: Report, reserved: frozenset[str]) -> None:
    if not TOKEN.fullmatch(name):
        report.add(path, f"{quote(name)} is not a valid header name")
    elif name.lower().replace("_", "-").startswith("x-gateway-"):
        # Invariant 3: upstreams trust X-Gateway-* as the gateway's word on identity; no config may forge it.
        report.add(path, f"{name} is reserved: only the gateway sets X-Gateway-* identity headers; remove it")
    elif path[2] == "request_headers" and name.lower().replace("_", "-") in reserved:
        report.add(
            path, f"{name} is reserved: identity_headers sends the identity under this name; remove it"
        )
    if any(char in value for char in "\r\n\0"):
        report.add(path, "header value must not contain line breaks or NUL (header injection)")


def _check_health(check: ActiveHealthCheck, at: KeyPath, report: Report) -> None:
    if not check.path.startswith("/"):
        report.bad((*at, "path"), f"{quote(check.path)} does not start with /", "e.g. /healthz")
    require_positive(
        [
            ((*at, "interval"), check.interval),
            ((*at, "timeout"), check.timeout),
            ((*at, "healthy_threshold"), check.healthy_threshold),
            ((*at, "unhealthy_threshold"), check.unhealthy_threshold),
        ],
        report,
    )
    if 0 < check.interval <= check.timeout:
        report.add(
            (*at, "interval"),
            f"must be longer than timeout ({check.timeout:g}s), or checks would overlap;"
            f" got {check.interval:g}s",
        )
    low, high = check.expected_status
    if not 100 <= low <= high <= 599:
        report.add(
            (*at, "expected_status"),
            f"expected [low, high] HTTP statuses with 100 <= low <= high <= 599; got [{low}, {high}]",
        )
