"""Security headers on every answer of the control app (``/.gateway/``), set in one place.

One Litestar ``before_send`` hook sees every response the app sends: handlers, templates, static
files, the OpenAPI pages, and the answers of its exception handlers and of its router (404, 405),
which route middleware never sees. It replaces whatever a handler set for the five headers, so no
page can forget them. The data plane's own error answers get the same headers from
``gateway/pipeline/pages.py``; the proxied application's answers are never touched.

The Content-Security-Policy allows scripts, styles, images and ``fetch`` from the page's own origin
only (no inline script or style, no external origin), no framing, no ``<base>``. ``form-action`` is
the one directive with other origins in it, because browsers check it on every redirect that follows
a form submission too: signing in (a POST) ends in a redirect to the hand-off URL on an app's host,
and an email routed to an identity provider (or an RP-initiated sign-out) in a redirect to that
provider. So it lists exactly the origins the return-URL validator (``identity/redirects.py``) may
send a browser to, plus the identity providers' issuer origins.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Final
from urllib.parse import urlsplit

from gateway.identity.redirects import admin_origin
from gateway.settings.current import CurrentConfig, LiveConfig
from gateway.web.error_pages import HARDENING_HEADER_NAMES, hardening_headers

if TYPE_CHECKING:
    from litestar.types import Message, Scope

__all__ = ["STATIC_CACHE", "STATIC_PREFIX", "SecurityHeaders", "control_csp", "form_action_sources"]

STATIC_PREFIX: Final = "/.gateway/static/"
# Stylesheets and the page scripts (CSRF token, WebAuthn, privacy choices): cacheable for an hour, then revalidated, so an upgrade's new
# files reach every browser within the hour. Nothing personal is in them.
STATIC_CACHE: Final = b"public, max-age=3600"
# Only a file's own answer (200, or 304 to a revalidation) is cacheable; any other is no-store. A shared
# cache that kept a missing file's 404 for an hour refused, for that hour, a file a rolling upgrade adds
# (the first replica upgraded links it, an old one answers 404); a 405 or 500 is no file's content either.
_STATIC_CACHEABLE: Final = frozenset({200, 304})
# Answers whose own Cache-Control is kept: public keys that verifiers are meant to cache (new keys
# are published ahead of use, see docs/assertion.md).
_OWN_CACHE: Final = frozenset({"/.gateway/jwks.json"})
_DEFAULT_PORTS: Final = {"https": 443, "http": 80}
# What a CSP host-source may hold; anything else in a configured host is left out, never passed on
# (a ';' or space would end the directive and start another one).
_CSP_HOST = re.compile(r"(\*\.)?[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?")


def _origin(url: str) -> str | None:
    # urlsplit silently drops tabs and line breaks; a URL holding any is refused, not repaired.
    if not url.isprintable() or " " in url:
        return None
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if parts.scheme not in _DEFAULT_PORTS or not _CSP_HOST.fullmatch(host):
        return None
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")


def form_action_sources(
    *,
    public_url: str,
    route_hosts: Iterable[str],
    allow_http: bool,
    issuers: Iterable[str],
    origins: Iterable[str] = (),
) -> tuple[str, ...]:
    """Where a form on a gateway page may submit to, redirects included.

    Args:
        public_url: The auth origin (sign-in on an app's host sends the browser there).
        route_hosts: The routes' hosts (``*.example.com`` allowed): hand-off targets.
        allow_http: Plain-HTTP development (the redirect validator accepts ``http`` then too).
        issuers: The identity providers' issuer URLs.
        origins: Further origins, as they are (the admin console's).

    Returns:
        ``'self'`` and the origins, each once, in a stable order.
    """
    schemes = ("https", "http") if allow_http else ("https",)
    public = urlsplit(public_url)
    public_port = public.port
    sources: dict[str, None] = {"'self'": None}
    hosts = [(public.hostname or "").lower(), *(h.strip().lower().rstrip(".") for h in route_hosts)]
    for host in hosts:
        if not _CSP_HOST.fullmatch(host):
            continue
        for scheme in schemes:
            sources[f"{scheme}://{host}"] = None
            # The validator accepts the auth host's port on every trusted host (one listener).
            if public_port and public_port != _DEFAULT_PORTS[scheme]:
                sources[f"{scheme}://{host}:{public_port}"] = None
    for issuer in issuers:
        origin = _origin(issuer)
        if origin is not None:
            sources[origin] = None
    for origin in origins:
        sources[origin] = None
    return tuple(sources)


def control_csp(config: CurrentConfig) -> bytes:
    """The Content-Security-Policy of the control app's answers under this configuration."""
    settings = config.settings
    form_action = form_action_sources(
        public_url=config.public_url,
        route_hosts=[route.host for route in settings.routes],
        allow_http=settings.session.insecure_cookies or config.public_url.startswith("http://"),
        issuers=[idp.issuer for idp in settings.identity_providers],
        # The admin console's: a sign-in or step-up it asked for redirects back there, and form-action
        # covers a form's redirects too (the redirect validator accepts exactly this origin).
        origins=[admin_origin(config.public_url, settings.admin.listen)] if settings.admin.listen else (),
    )
    return (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
        f"form-action {' '.join(form_action)}; frame-ancestors 'none'; base-uri 'none'"
    ).encode()


#: Strict-Transport-Security on the gateway's own answers when it is served over HTTPS.
HSTS: Final = b"max-age=31536000"


class SecurityHeaders:
    """The control app's ``before_send`` hook: the hardening headers on every response it sends."""

    __slots__ = ("_csp", "_for", "_hsts", "_live")

    def __init__(self, live: LiveConfig) -> None:
        self._live = live
        self._for: CurrentConfig | None = None
        self._csp = b""
        self._hsts = False

    def _policy(self) -> bytes:
        # Built once per configuration (a reload swaps it, and with it routes and providers).
        config = self._live.current
        if config is not self._for:
            self._csp, self._for = control_csp(config), config
            self._hsts = config.settings.served_over_https
        return self._csp

    async def __call__(self, message: Message, scope: Scope) -> None:
        """Replace the five headers on the response's start message; other messages pass unchanged."""
        if message["type"] != "http.response.start":
            return
        path = str(scope.get("path", ""))
        kept = [
            (name, value)
            for name, value in message.get("headers") or ()
            if name.lower() not in HARDENING_HEADER_NAMES
            or (path in _OWN_CACHE and name.lower() == b"cache-control")
        ]
        static = path.startswith(STATIC_PREFIX) and message.get("status") in _STATIC_CACHEABLE
        cache = STATIC_CACHE if static else b"no-store"
        added = hardening_headers(self._policy(), cache_control=cache)
        if path in _OWN_CACHE and any(name.lower() == b"cache-control" for name, _ in kept):
            added = [(n, v) for n, v in added if n != b"cache-control"]
        if self._hsts:
            # Served over HTTPS: browsers keep to it for a year, so no sign-in page is ever fetched over
            # plain HTTP where a network attacker could rewrite it (RFC 6797).
            added.append((b"strict-transport-security", HSTS))
        message["headers"] = [*kept, *added]
