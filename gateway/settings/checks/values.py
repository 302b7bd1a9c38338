"""Rules for values that several subsystems' settings use: URLs, hostnames, listen addresses, names.

Each ``*_problem`` function says why a value is wrong (or returns None); the caller decides the key path
and the hint. None of them echoes a whole URL: URLs routinely carry a password.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Final
from urllib.parse import urlsplit

from gateway.settings.report import KeyPath, Report, quote

__all__ = [
    "NAME_RULE",
    "TOKEN",
    "host_problem",
    "listen_problem",
    "require_at_most",
    "require_positive",
    "url_problem",
]

# An HTTP token (RFC 9110): header and cookie names.
TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")

NAME_RULE: Final = (
    "names must match [a-z0-9][a-z0-9_-]* (lowercase letters, digits, - and _), e.g. wiki;"
    " they appear in URLs, logs and policies"
)

_LABEL: Final = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


def require_positive(values: list[tuple[KeyPath, float]], report: Report) -> None:
    """Record a problem for every value that is not greater than 0, in the order given."""
    for path, value in values:
        if value <= 0:
            report.add(path, f"must be greater than 0; got {value:g}")


def require_at_most(values: list[tuple[KeyPath, float, float, str]], report: Report) -> None:
    """Record a problem for every value past its bound: (path, value, bound, why the bound)."""
    for path, value, bound, why in values:
        if value > bound:
            report.add(path, f"must be at most {_number(bound)} ({why}); got {_number(value)}")


def _number(value: float) -> str:
    # Whole numbers as written (4194304, not 4.1943e+06); durations and the like as %g.
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def url_problem(url: str, *, allow_path: bool) -> str | None:
    """Why ``url`` is not an absolute http(s) URL with a host, or None. Never echoes the whole URL."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "is not a valid URL (bad port or brackets)"
    if parts.scheme not in ("http", "https"):
        return (
            f"scheme must be http or https, not {quote(parts.scheme)}"
            if parts.scheme
            else "is not an absolute URL (it needs http:// or https://)"
        )
    if not parts.hostname:
        return "has no host"
    if parts.username is not None or parts.password is not None:
        # Credentials in a URL end up in logs; the value is deliberately not echoed here.
        return "must not contain user:password@; pass credentials another way"
    if port == 0:
        return "port must be 1-65535"
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        return "must not have a query (?…) or fragment (#…)"
    if not allow_path and parts.path not in ("", "/"):
        return f"must not have a path (got {quote(parts.path)}); the gateway's pages live under /.gateway/"
    return None


def listen_problem(listen: str) -> str | None:
    """Why ``listen`` is not ``host:port`` (IPv6 in brackets), or None."""
    if listen.startswith("["):
        host, _, rest = listen[1:].partition("]")
        if not rest.startswith(":"):
            return f"got {quote(listen)}"
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return f"{quote(host)} is not an IPv6 address"
        port = rest[1:]
    else:
        host, sep, port = listen.rpartition(":")
        if not sep or not host:
            return f"got {quote(listen)}"
        if ":" in host:
            return f"got {quote(listen)}; write IPv6 addresses in brackets"
        if host_problem(host):
            return f"{quote(host)} is not a hostname or IP address"
    if not port.isascii() or not port.isdigit() or not 1 <= int(port) <= 65535:
        return f"port must be 1-65535, got {quote(port)}"
    return None


def host_problem(host: str) -> str | None:
    """Why ``host`` is not a hostname (``*.`` allowed as the whole leftmost label), or None."""
    if "://" in host:
        return "has a scheme; write only the hostname"
    if ":" in host or "/" in host:
        return "has a port or path; write only the hostname"
    name = host.lower()
    if name.startswith("*."):
        name = name[2:]
    if not name or len(name) > 253:
        return "is not a valid hostname"
    for label in name.split("."):
        if label == "*":
            return "uses * other than as the whole leftmost label"
        if not _LABEL.fullmatch(label):
            return "is not a valid hostname (letters, digits and - between dots; IDNs in punycode)"
    return None
