"""Checks for ``identity_headers``: names an app can read, that no client and no route can forge.

A configured name takes the place of ``X-Gateway-User`` (…) in what the upstream receives, and is
stripped from every client request in every spelling. So it must be a header name (an HTTP token),
the three must differ, and none may be a header with a meaning of its own: stripping ``Cookie`` or
``Authorization`` from every request would break the apps, and a hop-by-hop or forwarding header
would be dropped or rewritten on the way. ``routes[].request_headers`` may not set a configured name
either (``checks/routes.py`` refuses ``X-Gateway-*`` the same way). A route's own
``routes[].identity_headers`` are checked the same way, with the global names filling its gaps.
"""

from __future__ import annotations

from typing import Final

from gateway.settings.checks.values import TOKEN
from gateway.settings.report import KeyPath, Report, quote
from gateway.settings.schema import IdentityHeaderNames, Route, Settings

__all__ = ["check_identity_headers", "identity_names"]

# Compared lower-cased with "_" read as "-", as the pipeline compares names.
_RESERVED: Final = frozenset(
    {
        "host", "cookie", "authorization", "connection", "keep-alive", "te", "trailer", "upgrade",
        "transfer-encoding", "content-length", "content-type", "content-encoding", "expect", "origin",
        "referer", "user-agent", "forwarded", "x-real-ip", "x-client-ip", "x-request-id", "traceparent",
        "tracestate", "x-gateway-assertion", "x-gateway-auth",
        # The forwarding family the gateway rewrites (pipeline/headers.py); X-Forwarded-User and
        # X-Forwarded-Email are not in it, and are what oauth2-proxy's apps read.
        "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-forwarded-port", "x-forwarded-prefix",
        "x-forwarded-method", "x-forwarded-uri", "x-forwarded-server", "x-forwarded-ssl",
        "x-forwarded-scheme", "x-original-forwarded-for", "x-original-url", "x-original-uri",
        "x-rewrite-url", "x-http-method-override", "x-http-method", "x-method-override",
    }
)  # fmt: skip
_RESERVED_PREFIXES: Final = ("proxy-", "sec-", "accept", "if-", "content-")


def _normal(name: str) -> str:
    return name.lower().replace("_", "-")


def _names(names: IdentityHeaderNames) -> frozenset[str]:
    return frozenset(_normal(name) for name in (names.user, names.email, names.roles))


def identity_names(settings: Settings, route: Route | None = None) -> frozenset[str]:
    """The identity header names, normalized: the global ones and, given a route, that route's own
    (for the route header check)."""
    names = _names(settings.identity_headers)
    if route is not None and route.identity_headers is not None:
        names |= _names(route.identity_headers.over(settings.identity_headers))
    return names


def check_identity_headers(settings: Settings, report: Report) -> None:
    """Each name a token, not reserved, and the three distinct: the global names and every route's."""
    _check_names(settings.identity_headers, ("identity_headers",), report)
    for index, route in enumerate(settings.routes):
        if route.identity_headers is not None:
            _check_names(
                route.identity_headers.over(settings.identity_headers),
                ("routes", index, "identity_headers"),
                report,
            )


def _check_names(names: IdentityHeaderNames, at: KeyPath, report: Report) -> None:
    seen: dict[str, str] = {}
    for field in ("user", "email", "roles"):
        path = (*at, field)
        name = getattr(names, field)
        normal = _normal(name)
        if not TOKEN.fullmatch(name):
            report.add(path, f"{quote(name)} is not a valid header name")
        elif normal in _RESERVED or normal.startswith(_RESERVED_PREFIXES):
            report.add(
                path,
                f"{name} has a meaning of its own in HTTP or to the gateway; choose a name such as"
                " X-Forwarded-User or Remote-User",
            )
        elif normal in seen:
            report.add(path, f"{name} is already the {seen[normal]} header; give each its own name")
        else:
            seen[normal] = field
