"""Which pages may open a route's WebSockets (``routes[].websocket_origins``).

A browser sends the visitor's cookies with a WebSocket handshake from any page of the same site, and
the handshake is not subject to CORS: a script on a sibling application's host (``*.example.com``) could
open this application's socket as the visitor and read what it answers (cross-site WebSocket
hijacking; an attack run drove one with ``Origin: http://evil.test``). So a handshake that names an
``Origin`` is let through only from the route's own host or an origin the route lists; one without
``Origin`` (not a browser: no visitor's cookie is at stake) passes, as in Django Channels' and Spring's
checks.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

from gateway.errors import Forbidden, NoRoute

__all__ = [
    "CrossOriginRefused",
    "WebSocketOriginRefused",
    "check_own_origin",
    "check_websocket_handshake",
    "check_websocket_origin",
    "normal_origin",
]

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


class WebSocketOriginRefused(Forbidden):
    """403: a page of another origin opened the WebSocket."""

    reason = "websocket-origin"


class CrossOriginRefused(Forbidden):
    """403: a page of another origin sent a change to the gateway's own pages."""

    reason = "cross-origin-refused"
    title = "Cross-origin request refused"


_UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_OTHER_SITES = frozenset({b"cross-site", b"same-site"})


def normal_origin(origin: str) -> str | None:
    """``scheme://host:port`` in lower case with the port made explicit, or None for a value that is
    not an origin (``null``, a path, no host)."""
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname or parts.path not in ("", "/") or parts.query:
        return None
    host = parts.hostname.rstrip(".")
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port or _DEFAULT_PORTS[scheme]}"


def check_websocket_handshake(
    headers: Iterable[tuple[bytes, bytes]],
    *,
    asked: bool = False,
    enabled: bool,
    host: bytes,
    proto: str,
    allowed: frozenset[str] | None,
) -> None:
    """Refuse a WebSocket handshake on a route without WebSockets (404) or from another origin (403).

    ``asked``: a proxy's question (forward-auth) about a request that may be a handshake; checked only
    when it is one (it carries ``Sec-WebSocket-Key``: nginx drops ``Upgrade`` from the question but
    passes that on). Without it, a proxy in front let any origin's handshake through (re-attack run).
    """
    headers = list(headers)
    if asked and not any(name.lower() == b"sec-websocket-key" for name, _ in headers):
        return
    if not enabled:
        if asked:  # a proxy turns a 404 into a 500: its question gets a refusal
            raise WebSocketOriginRefused("WebSockets are disabled on this route.")
        raise NoRoute("WebSockets are disabled on this route.")
    check_websocket_origin(headers, host=host, proto=proto, allowed=allowed)


def check_websocket_origin(
    headers: Iterable[tuple[bytes, bytes]], *, host: bytes, proto: str, allowed: frozenset[str] | None
) -> None:
    """Refuse a handshake whose ``Origin`` is neither the route's host nor one it allows.

    Args:
        headers: The handshake's headers.
        host: Its ``Host`` (the route's host as the browser named it).
        proto: ``http`` or ``https``, as the client reached the gateway.
        allowed: The route's other origins (normalised); None allows any.

    Raises:
        WebSocketOriginRefused: (403) another origin, an unreadable one, or more than one.
    """
    origins = [value for name, value in headers if name.lower() == b"origin"]
    if not origins or allowed is None:
        return
    if len(origins) > 1:
        raise WebSocketOriginRefused("A WebSocket handshake names one origin.")
    origin = normal_origin(origins[0].decode("latin-1"))
    own = normal_origin(f"{proto}://{host.decode('latin-1')}")
    if origin is None or (origin != own and origin not in allowed):
        raise WebSocketOriginRefused("This application's WebSockets do not accept pages of another origin.")


def check_own_origin(headers: Iterable[tuple[bytes, bytes]], *, method: str, host: bytes) -> None:
    """Refuse a change to the gateway's own pages (``/.gateway/``) that a page of another origin sent.

    Every form and script of these pages posts to its own origin. The CSRF token is a double-submit
    cookie, which a page of the same *site* can plant (another port of the host, an app served on the
    auth host): an attack run set ``gateway_csrf`` from ``http://localhost:18710`` and closed a
    person's account, changed their name and took new recovery codes through forms posted to
    ``localhost:18701``. So a browser's ``Sec-Fetch-Site`` must not say another site or another origin
    of the site, and an ``Origin`` must be this request's host (its port read with the origin's own
    scheme, so a TLS proxy in front does not matter). ``Origin: null`` passes only where a
    ``Sec-Fetch-Site`` of ``same-origin`` speaks for it: browsers send no Fetch Metadata to a plain-HTTP
    host other than localhost, and a page of another port sending ``null`` (its own ``Referrer-Policy:
    no-referrer``) took a person's recovery codes and removed a factor there (an attack run). These
    pages have ``Referrer-Policy: same-origin``, so their own posts carry their real origin. Requests
    without either header (scripts, the identity provider's back-channel logout) are no browser's and
    pass to the CSRF check as before.

    Raises:
        CrossOriginRefused: (403) another origin, an unreadable one, or more than one.
    """
    if method not in _UNSAFE:
        return
    origins: list[bytes] = []
    same_origin = False
    for name, value in headers:
        lname = name.lower()
        if lname == b"sec-fetch-site":
            site = value.strip().lower()
            if site in _OTHER_SITES:
                raise CrossOriginRefused("Changes here come only from the gateway's own pages.")
            same_origin = site == b"same-origin"
        if lname == b"origin":
            origins.append(value)
    if len(origins) > 1:
        raise CrossOriginRefused("A request names one origin.")
    if not origins:
        return
    if origins[0].strip().lower() == b"null":
        # An older page of ours (no-referrer) in a browser that says where the post came from passes;
        # without Fetch Metadata "null" is anyone's.
        if same_origin:
            return
        raise CrossOriginRefused(
            "Changes here come only from the gateway's own pages; reload the page and try again."
        )
    origin = normal_origin(origins[0].decode("latin-1"))
    if origin is None:
        raise CrossOriginRefused("A request names its origin as a scheme, a host and a port.")
    scheme = origin.partition(":")[0]
    if origin != normal_origin(f"{scheme}://{host.decode('latin-1')}"):
        raise CrossOriginRefused("Changes here come only from the gateway's own pages.")
