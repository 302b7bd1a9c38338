"""Which hosts the gateway's own pages answer on: the auth host and the routes' hosts, no other.

The sign-in, MFA, enrollment, portal and OIDC pages under ``/.gateway/`` answer only where a browser
is meant to see them: the auth host (the host of ``public_url``) and the hosts of the configured
routes (``*.example.com`` covering one label, as in routing). A page that answers on any ``Host``
hands anyone who points a name of theirs at the gateway (or sends ``Host: evil.test``) the genuine
sign-in page under that name: a phishing page with real content, session cookies set for a host the
operator never chose, and a sign-in that comes back to it. Any other host gets the same 404 as a
request for an application that is not configured.

On a route's host (not the auth host) only what a browser needs there answers (:data:`APP_HOST_PAGES`):
the hand-off that brings the session there, sign-out and the pages' style sheets. The portal, the
factor and session API and the sign-in steps are the auth host's alone: an application's own script
runs on its host's origin, so on that host it could read the CSRF cookie and drive the portal as the
visitor (an attack run registered its own passkey and took new recovery codes that way). A browser that
asks for one of them there is sent to the auth host's page; anything else gets a 404.

What load balancers and proxies probe, often by IP address, answers on every host: liveness,
readiness and the JWKS (:data:`HOST_INDEPENDENT`). Forward-auth is decided before this check, on the
host of the original request it is asked about.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from gateway.errors import NoRoute
from gateway.pipeline.route import normalize_host
from gateway.pipeline.snapshot import Snapshot

__all__ = ["APP_HOST_PAGES", "HOST_INDEPENDENT", "PageHosts", "check_page_host", "page_hosts"]

HOST_INDEPENDENT = frozenset({"/.gateway/health", "/.gateway/ready", "/.gateway/jwks.json"})
# What answers on a route's host besides those: redeeming a hand-off code, signing out.
APP_HOST_PAGES = frozenset({"/.gateway/handoff", "/.gateway/logout"})
_STATIC = "/.gateway/static/"


@dataclass(frozen=True, slots=True)
class PageHosts:
    """The normalised hosts the pages answer on (built once per configuration snapshot)."""

    exact: frozenset[str]
    wildcard_parents: frozenset[str]
    # The host of public_url: every page answers there.
    auth: str = ""

    def serves(self, host: str) -> bool:
        """Whether the pages answer on this normalised host (lower-case, no port, no trailing dot)."""
        if host in self.exact:
            return True
        # One label under a wildcard, like a route and a TLS certificate: "a.b.example.com" is not
        # covered by "*.example.com".
        label, dot, parent = host.partition(".")
        return bool(label and dot and parent in self.wildcard_parents)


def _build(snapshot: Snapshot) -> PageHosts:
    auth = normalize_host(urlsplit(snapshot.public_url).netloc)
    exact = {auth}
    wildcard_parents: set[str] = set()
    for route in snapshot.settings.routes:
        host = route.host.lower().rstrip(".")
        if host.startswith("*."):
            wildcard_parents.add(host[2:])
        else:
            exact.add(host)
    return PageHosts(frozenset(exact), frozenset(wildcard_parents), auth)


# The last snapshot's hosts: snapshots are immutable and replaced whole on reload, so identity is
# enough to know when to rebuild (a reload rebuilds once; a race only rebuilds twice).
_last: tuple[Snapshot, PageHosts] | None = None


def page_hosts(snapshot: Snapshot) -> PageHosts:
    """The hosts the pages answer on under this snapshot."""
    global _last
    last = _last
    if last is not None and last[0] is snapshot:
        return last[1]
    hosts = _build(snapshot)
    _last = (snapshot, hosts)
    return hosts


def check_page_host(snapshot: Snapshot, host_header: str, path: str, query: bytes = b"") -> None:
    """Refuse a request for a page under ``/.gateway/`` on a host the pages do not answer on.

    Args:
        snapshot: The live configuration.
        host_header: The request's ``Host`` (exactly one, checked by the receive stage).
        path: The canonical path, under ``/.gateway``.
        query: The query string, kept when a browser is sent to the auth host's page.

    Raises:
        NoRoute: the host is neither the auth host nor a route's host (404, as for no route); or it is
            a route's host and the page is the auth host's (404; a browser is sent there).
        BadHeaders: the ``Host`` is malformed (400).
    """
    if path in HOST_INDEPENDENT:
        return
    hosts = page_hosts(snapshot)
    host = normalize_host(host_header)
    if host == hosts.auth:
        return
    if not hosts.serves(host):
        raise NoRoute("No application is configured for this address.")
    if path not in APP_HOST_PAGES and not path.startswith(_STATIC):
        raise NoRoute(
            "This page is on the sign-in host, not on an application's.",
            location=f"{snapshot.public_url}{path}" + (f"?{query.decode('latin-1')}" if query else ""),
        )
