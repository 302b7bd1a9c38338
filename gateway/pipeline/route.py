"""Route matching: (host, canonical path) → the most specific route.

Hosts compare case-insensitively with the port and a trailing dot removed; an exact host beats a
wildcard (``*.example.com`` matches exactly one extra label, like a TLS certificate). Within a host
the longest path prefix wins, and a prefix only matches on a segment boundary: ``/admin`` covers
``/admin`` and ``/admin/x`` but never ``/administrator`` (a classic policy bypass in prefix routers).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from gateway.errors import BadHeaders
from gateway.settings.schema import Route

__all__ = ["MatchedRoute", "Router", "normalize_host"]

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
