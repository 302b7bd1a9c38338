"""Which return URLs (``rd``) the sign-in and sign-out flows may follow.

An open redirect on the sign-in page turns the gateway into a phishing tool and, with hand-off codes,
into a code-leaking one. The rule is an allow-list, checked on the raw string without "fixing" it:

* a same-origin absolute path: ``/`` then anything but a second ``/`` or ``\\``; or
* an ``https`` URL (``http`` only if allowed) whose host is the auth host or a route host (exact, or
  one label under a ``*.`` wildcard), on the default port or the auth host's port, with no userinfo.

Everything else, including anything with control characters, whitespace, backslashes or non-ASCII
characters (browsers "repair" those in ways that move the host: ``/\\evil``, ``/\\t/evil``,
``good\\u3002com``), falls back. Every percent-decoding of the string (up to three levels, for targets that
decode again) must also pass the control-character, backslash and ``//`` checks.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from urllib.parse import unquote, urlsplit

__all__ = ["MAX_REDIRECT_LENGTH", "safe_redirect"]

MAX_REDIRECT_LENGTH = 4096
_DECODE_LEVELS = 3
# Printable ASCII except space, backslash, DEL. Checked on the raw input, before any parsing.
_RAW_OK = re.compile(r"[\x21-\x5b\x5d-\x7e]+")
# Control characters (C0, DEL, C1) and backslash: never acceptable in any decoded form either.
_DECODED_BAD = re.compile(r"[\x00-\x1f\x7f-\x9f\\]")
_ABSOLUTE = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://"
    r"(?P<host>[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])"
    r"(?::(?P<port>[0-9]{1,5}))?"
    r"(?P<rest>[/?#].*)?",
    re.DOTALL,
)
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_DEFAULT_PORTS = {"https": 443, "http": 80}


def _decoded_forms(text: str) -> list[str] | None:
    """The string and its successive percent-decodings; None if one is not valid UTF-8."""
    forms = [text]
    for _ in range(_DECODE_LEVELS):
        if "%" not in text:
            break
        try:
            text = unquote(text, errors="strict")
        except UnicodeDecodeError:
            return None
        forms.append(text)
    return forms


def _safe_path(path: str) -> bool:
    """A path-and-query that stays on its origin however often it is decoded."""
    forms = _decoded_forms(path)
    if forms is None:
        return False
    for form in forms:
        if _DECODED_BAD.search(form):
            return False
        # NFKC folds the full-width solidus (U+FF0F) and friends to "/", as some URL parsers do.
        for variant in (form, unicodedata.normalize("NFKC", form)):
            if variant.startswith("//") or variant.startswith("/\\") or "\\" in variant:
                return False
    return True


def _normalise_host(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):
        return host
    return host.partition(":")[0].rstrip(".")


def _host_allowed(host: str, allowed: Iterable[str]) -> bool:
    for pattern in allowed:
        if pattern.startswith("*."):
            suffix = pattern[1:]
            label = host[: -len(suffix)]
            if host.endswith(suffix) and _LABEL.fullmatch(label):
                return True
        elif host == pattern:
            return True
    return False


def _public_origin(public_url: str) -> tuple[str, int]:
    parts = urlsplit(public_url)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower().rstrip(".")
    if parts.netloc.startswith("[") or ":" in host:
        host = f"[{host}]"
    port = parts.port or _DEFAULT_PORTS.get(scheme, 443)
    return host, port


def safe_redirect(
    rd: str | None,
    *,
    public_url: str,
    route_hosts: Iterable[str],
    allow_http: bool,
    fallback: str,
) -> str:
    """``rd`` if it is a safe place to send the browser after sign-in/out, else ``fallback``.

    Args:
        rd: The requested return URL (query parameter or form field), untrusted.
        public_url: The gateway's auth origin, e.g. ``https://auth.example.com``.
        route_hosts: Hosts of the configured routes; ``*.example.com`` matches one label.
        allow_http: Also accept ``http`` URLs (plain-HTTP development only).
        fallback: Where to go instead (a fixed, trusted path).

    Returns:
        ``rd`` unchanged, or ``fallback``.
    """
    if not rd or len(rd) > MAX_REDIRECT_LENGTH or not _RAW_OK.fullmatch(rd):
        return fallback
    if rd.startswith("/"):
        return rd if _safe_path(rd) else fallback
    match = _ABSOLUTE.fullmatch(rd)
    if match is None:
        return fallback
    scheme = match["scheme"].lower()
    if scheme != "https" and not (scheme == "http" and allow_http):
        return fallback
    public_host, public_port = _public_origin(public_url)
    host = _normalise_host(match["host"])
    port = int(match["port"]) if match["port"] else _DEFAULT_PORTS[scheme]
    # The auth host's own port is allowed for route hosts too: in development, every host is served
    # by the one listener. Other ports on a trusted name are not trusted (another service).
    if port not in (_DEFAULT_PORTS[scheme], public_port):
        return fallback
    allowed = [
        public_host,
        *(_normalise_host(h) if not h.startswith("*.") else h.lower() for h in route_hosts),
    ]
    if not host or not _host_allowed(host, allowed):
        return fallback
    rest = match["rest"] or ""
    if rest and not _safe_path(rest if rest.startswith("/") else "/" + rest):
        return fallback
    return rd
