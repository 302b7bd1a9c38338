"""Which hosts the gateway's own pages answer on: the auth host and the routes' hosts, no other.

The sign-in, MFA, enrollment, portal and OIDC pages under ``/.gateway/`` answer only where a browser
is meant to see them: the auth host (the host of ``public_url``) and the hosts of the configured
routes (``*.example.com`` covering one label, as in routing). A page that answers on any ``Host``
hands anyone who points a name of theirs at the gateway (or sends ``Host: evil.test``) the genuine
sign-in page under that name: a phishing page with real content, session cookies set for a host the
operator never chose, and a sign-in that comes back to it. Any other host gets the same 404 as a
request for an application that is not configured.

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

__all__ = ["HOST_INDEPENDENT", "PageHosts", "check_page_host", "page_hosts"]

HOST_INDEPENDENT = frozenset({"/.gateway/health", "/.gateway/ready", "/.gateway/jwks.json"})


@dataclass(frozen=True, slots=True)
class PageHosts:
    """The normalised hosts the pages answer on (built once per configuration snapshot)."""

    exact: frozenset[str]
    wildcard_parents: frozenset[str]

    def serves(self, host: str) -> bool:
        """Whether the pages answer on this normalised host (lower-case, no port, no trailing dot)."""
        if host in self.exact:
            return True
        # One label under a wildcard, like a route and a TLS certificate: "a.b.example.com" is not
        # covered by "*.example.com".
        label, dot, parent = host.partition(".")
        return bool(label and dot and parent in self.wildcard_parents)


def _build(snapshot: Snapshot) -> PageHosts:
    exact = {normalize_host(urlsplit(snapshot.public_url).netloc)}
    wildcard_parents: set[str] = set()
    for route in snapshot.settings.routes:
        host = route.host.lower().rstrip(".")
        if host.startswith("*."):
            wildcard_parents.add(host[2:])
        else:
            exact.add(host)
    return PageHosts(frozenset(exact), frozenset(wildcard_parents))


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


def check_page_host(snapshot: Snapshot, host_header: str, path: str) -> None:
    """Refuse a request for a page under ``/.gateway/`` on a host the pages do not answer on.

    Args:
        snapshot: The live configuration.
        host_header: The request's ``Host`` (exactly one, checked by the receive stage).
        path: The canonical path, under ``/.gateway``.

    Raises:
        NoRoute: the host is neither the auth host nor a route's host (404, as for no route).
        BadHeaders: the ``Host`` is malformed (400).
    """
    if path in HOST_INDEPENDENT:
        return
    if not page_hosts(snapshot).serves(normalize_host(host_header)):
        raise NoRoute("No application is configured for this address.")
