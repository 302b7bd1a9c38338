"""Where the gateway may send a browser that asked to go somewhere (``rd``): the one validator.

Every URL the gateway builds from user input goes through this module: the ``rd`` of the sign-in,
MFA, enrollment, password, hand-off, sign-out and OIDC pages, the links those pages show and every
``Location`` they answer with. An open redirect on the sign-in page turns the gateway into a phishing
tool and, with hand-off codes, into a code-leaking one.

The string is read the way a browser's URL parser reads it (the WHATWG URL Standard's basic URL
parser, which Chromium, Firefox and Safari follow), and anything the browser would read differently
from the text is refused, never "repaired":

1. **Clean-up.** The parser strips leading and trailing C0 controls and spaces and deletes every ASCII
   tab and newline anywhere: ``/<TAB>/evil.test`` *is* ``//evil.test`` to a browser. For ``http(s)``
   it reads ``\\`` as ``/`` (``/\\evil.test``), and it maps non-ASCII hosts through IDNA (``good。com``
   is ``good.com``). So: any control character, space, backslash or non-ASCII character → refused.
2. **Kind.** ``//…`` is scheme-relative (another host) → refused. ``/…`` is a path on the page's own
   origin. ``scheme:…`` is absolute. Anything else is relative to the current page's directory, which
   differs from page to page → refused.
3. **Absolute URLs** must be exactly ``https://host[:port][/?#…]`` (``http`` only if allowed). The
   parser reads ``https:evil.test`` relative to the page but ``https:/evil.test`` and
   ``https:///evil.test`` as the host ``evil.test`` (it skips any run of slashes): anything but two
   slashes → refused. No userinfo (``good@evil``); the host is the auth host or a route host (exact, or
   one label under a ``*.`` wildcard), on the default port or the auth host's port.
4. **Decoding.** The path-and-query must stay on its origin however often a target decodes it: every
   percent-decoding (three levels; one that still decodes after them is refused) must also pass the
   control-character, backslash and ``//`` checks (``/%2F%2Fevil.test``, ``/%09/evil.test`` as a link
   that an application decodes again), and have no ``.``/``..`` segment (the parser removes them:
   ``/a/..//evil.test``).

The browser tests (``tests/e2e/test_redirect_corpus.py``) render the pages with the whole rd corpus
in Chromium and read the resolved ``href`` and every redirect's final URL, so this reading is checked
against a real browser, not only against itself.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from enum import Enum
from urllib.parse import unquote, urlsplit

__all__ = ["MAX_REDIRECT_LENGTH", "admin_origin", "safe_local_redirect", "safe_redirect"]

MAX_REDIRECT_LENGTH = 4096
_DECODE_LEVELS = 3
# What the URL parser strips from both ends (WHATWG URL: "C0 control or space") and deletes anywhere.
_C0_CONTROL_OR_SPACE = "".join(chr(c) for c in range(0x21))
_TAB_OR_NEWLINE = re.compile(r"[\t\n\r]")
# Printable ASCII except space and backslash: the only characters a browser reads as written.
_AS_WRITTEN = re.compile(r"[\x21-\x5b\x5d-\x7e]+")
# Control characters (C0, DEL, C1) and backslash: never acceptable in any decoded form either.
_DECODED_BAD = re.compile(r"[\x00-\x1f\x7f-\x9f\\]")
_PATH_END = re.compile(r"[?#]")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")
_ABSOLUTE = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://"
    r"(?P<host>[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])"
    r"(?::(?P<port>[0-9]{1,5}))?"
    r"(?P<rest>[/?#].*)?",
    re.DOTALL,
)
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_DEFAULT_PORTS = {"https": 443, "http": 80}


class _Kind(Enum):
    """How the URL parser reads a (cleaned-up) string relative to the page it appears on."""

    PATH = "path"  # "/x": a path on the page's own origin
    SCHEME_RELATIVE = "scheme-relative"  # "//host/x": another host, same scheme
    ABSOLUTE = "absolute"  # "scheme:..."
    RELATIVE = "relative"  # "x", "./x", "?x", "#x": depends on the page's own path


def _browser_reads_as_written(rd: str) -> bool:
    """Whether the URL parser reads ``rd`` exactly as written (its clean-up steps change nothing).

    The first check is the parser's own pre-processing; the second refuses what it would rewrite
    later (backslashes in special URLs, IDNA on non-ASCII hosts, percent-encoding of spaces).
    """
    cleaned = _TAB_OR_NEWLINE.sub("", rd.strip(_C0_CONTROL_OR_SPACE))
    return cleaned == rd and _AS_WRITTEN.fullmatch(rd) is not None


def _kind(rd: str) -> _Kind:
    if rd.startswith("//"):
        return _Kind.SCHEME_RELATIVE
    if rd.startswith("/"):
        return _Kind.PATH
    if _SCHEME.match(rd):
        return _Kind.ABSOLUTE
    return _Kind.RELATIVE


def _readable(rd: str | None) -> str | None:
    """``rd`` if a browser reads it as written and it is not too long, else None."""
    if not rd or len(rd) > MAX_REDIRECT_LENGTH or not _browser_reads_as_written(rd):
        return None
    return rd


def _decoded_forms(text: str) -> list[str] | None:
    """The string and its successive percent-decodings; None if one is not valid UTF-8, or if it still
    decodes to something else after ``_DECODE_LEVELS`` (no honest link is encoded four times over, and
    a target that decodes once more would see a form nobody checked)."""
    forms = [text]
    for _ in range(_DECODE_LEVELS + 1):
        if "%" not in text:
            return forms
        try:
            decoded = unquote(text, errors="strict")
        except UnicodeDecodeError:
            return None
        if decoded == text:
            return forms
        if len(forms) > _DECODE_LEVELS:
            return None
        text = decoded
        forms.append(text)
    return forms


def _has_dot_segment(path_and_query: str) -> bool:
    """Whether the path has a ``.`` or ``..`` segment (the parser also reads ``%2e`` as ``.``).

    The parser removes them (``/a/..//evil.test`` is the path ``//evil.test``): the browser would go
    to another path than the text says, and an application that redirects to its own path would
    then send ``//evil.test``. The gateway's own return URLs are canonical and never have them.
    """
    path = _PATH_END.split(path_and_query, maxsplit=1)[0]
    return any(seg.lower().replace("%2e", ".") in (".", "..") for seg in path.split("/"))


def _safe_path(path: str) -> bool:
    """A path-and-query that stays on its origin however often it is decoded."""
    forms = _decoded_forms(path)
    if forms is None:
        return False
    for form in forms:
        if _DECODED_BAD.search(form) or _has_dot_segment(form):
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


def admin_origin(public_url: str, admin_listen: str) -> str:
    """The origin browsers send for pages of the admin listener.

    The admin app is served on the public host name (so the session cookie reaches it) on the admin
    port, with the public URL's scheme. Default ports are omitted, as browsers omit them in ``Origin``.

    Args:
        public_url: ``settings.public_url`` (``https://gw.example.com``).
        admin_listen: ``settings.admin.listen`` (``0.0.0.0:9090``); only the port is used.
    """
    parts = urlsplit(public_url)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    port = int(admin_listen.rpartition(":")[2])
    if _DEFAULT_PORTS.get(scheme) == port:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def _safe_absolute(
    rd: str,
    *,
    public_url: str,
    route_hosts: Iterable[str],
    allow_http: bool,
    extra_origins: Iterable[str] = (),
) -> bool:
    """An absolute URL on the auth host or a route host (or exactly one of ``extra_origins``), with
    nothing a browser reads differently."""
    match = _ABSOLUTE.fullmatch(rd)
    if match is None:
        # "https:evil", "https:/evil", "https:///evil", userinfo ("good@evil"), empty port, ...
        return False
    scheme = match["scheme"].lower()
    if scheme != "https" and not (scheme == "http" and allow_http):
        return False
    public_host, public_port = _public_origin(public_url)
    host = _normalise_host(match["host"])
    port = int(match["port"]) if match["port"] else _DEFAULT_PORTS[scheme]
    rest = match["rest"] or ""
    origin = f"{scheme}://{host}" + ("" if port == _DEFAULT_PORTS[scheme] else f":{port}")
    if host and origin in set(extra_origins):
        # The admin console's own origin (its port is no route's): back there after a step-up.
        return not rest or _safe_path(rest if rest.startswith("/") else "/" + rest)
    # Every host is served on the public URL's port (one listener, or the front that forwards to it);
    # the other scheme only as the public one's twin on both default ports (http:// beside
    # https://, where plain HTTP is allowed). Any other port on a trusted name is another service, the
    # scheme's default port too when the gateway is not on it: the hand-off sends its codes to the
    # return URL's origin, and a service on app.example.com:443 beside a gateway on :8443 caught them
    # and signed its own browser in as the person (an attack run).
    public_scheme = urlsplit(public_url).scheme.lower()
    if scheme == public_scheme:
        if port != public_port:
            return False
    elif port != _DEFAULT_PORTS[scheme] or public_port != _DEFAULT_PORTS.get(public_scheme):
        return False
    allowed = [
        public_host,
        *(_normalise_host(h) if not h.startswith("*.") else h.lower() for h in route_hosts),
    ]
    if not host or not _host_allowed(host, allowed):
        return False
    return not rest or _safe_path(rest if rest.startswith("/") else "/" + rest)


def safe_redirect(
    rd: str | None,
    *,
    public_url: str,
    route_hosts: Iterable[str],
    allow_http: bool,
    fallback: str,
    extra_origins: Iterable[str] = (),
) -> str:
    """``rd`` if it is a safe place to send the browser after sign-in/out, else ``fallback``.

    Args:
        rd: The requested return URL (query parameter or form field), untrusted.
        public_url: The gateway's auth origin, e.g. ``https://auth.example.com``.
        route_hosts: Hosts of the configured routes; ``*.example.com`` matches one label.
        allow_http: Also accept ``http`` URLs (plain-HTTP development only).
        fallback: Where to go instead (a fixed, trusted path).
        extra_origins: Origins also allowed, exactly (``scheme://host[:port]``, default port left
            out): the admin console's (:func:`admin_origin`).

    Returns:
        ``rd`` unchanged, or ``fallback``.
    """
    readable = _readable(rd)
    if readable is None:
        return fallback
    kind = _kind(readable)
    if kind is _Kind.PATH:
        return readable if _safe_path(readable) else fallback
    if kind is _Kind.ABSOLUTE and _safe_absolute(
        readable,
        public_url=public_url,
        route_hosts=route_hosts,
        allow_http=allow_http,
        extra_origins=extra_origins,
    ):
        return readable
    return fallback


def safe_local_redirect(rd: str | None, *, fallback: str) -> str:
    """``rd`` if it is a path on the current origin (by the same reading as :func:`safe_redirect`).

    For places that must never leave the host they are on, whatever hosts are configured: the
    hand-off page follows only a path on the host that has just received the session.

    Args:
        rd: The requested path, untrusted.
        fallback: Where to go instead (a fixed, trusted path).

    Returns:
        ``rd`` unchanged, or ``fallback``.
    """
    readable = _readable(rd)
    if readable is None or _kind(readable) is not _Kind.PATH or not _safe_path(readable):
        return fallback
    return readable
