"""One upstream origin of a route, and the parsing of its configured URL.

A :class:`Target` is mutable on purpose: the pool that owns it updates the in-flight count and the
health state in place on every request, so there is no per-request allocation. All of that happens
on one event loop (one pool per worker), so no locking is needed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit

from gateway.upstream.tls import TlsClient

__all__ = ["Target"]

_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(eq=False, slots=True)
class Target:
    """One upstream origin and its live state.

    ``eq=False`` keeps identity semantics (and identity hashing): two targets with the same URL in
    different pools are different things with different health.

    Attributes:
        url: Normalised origin, ``scheme://host:port`` with an explicit port and no trailing slash;
            IPv6 hosts are bracketed.
        scheme: ``"http"`` or ``"https"``.
        host: Host name or IP address, lower-cased, without IPv6 brackets.
        port: TCP port (the scheme's default when the configured URL had none).
        base_path: Path of the configured URL (``""`` or ``"/prefix"``, never a trailing slash),
            prepended to every forwarded path.
        outstanding: Requests currently in flight to this target.
        healthy: The active health check's verdict. ``True`` until checks say otherwise, and always
            ``True`` when the route has no active check.
        ejected_until: Monotonic deadline of a passive ejection; ``0`` when not ejected.
        ejections: How many times it was ejected; names the current ejection (see
            :meth:`UpstreamPool.readmit <gateway.upstream.pool.UpstreamPool.readmit>`).
        consecutive_failures: Passive failures (connect error or timeout, reset, response timeout,
            broken response) in a row.
        probation: Back from an ejection and no response head seen since: the pool gives it at
            most one request at a time.
        tls: The route's ``upstream_tls`` (https targets only), or ``None`` for the client's defaults.
        authority: The ``Host`` the target expects (its name, with the port unless it is the
            scheme's default), as bytes: sent on every request, so computed once.
    """

    url: str
    scheme: str
    host: str
    port: int
    base_path: str
    outstanding: int = 0
    healthy: bool = True
    ejected_until: float = 0.0
    ejections: int = 0
    consecutive_failures: int = 0
    probation: bool = False
    tls: TlsClient | None = None
    authority: bytes = field(init=False, repr=False, default=b"")

    def __post_init__(self) -> None:
        name = _bracketed(self.host)
        if self.port != _DEFAULT_PORTS.get(self.scheme):
            name = f"{name}:{self.port}"
        self.authority = name.encode("latin-1")

    @classmethod
    def from_url(cls, raw: str) -> Target:
        """Parse a configured upstream URL such as ``http://10.0.0.5:8080`` or ``https://app/base/``.

        Args:
            raw: The URL as written in the configuration.

        Returns:
            A fresh, healthy, non-ejected target.

        Raises:
            ValueError: The URL is not an absolute ``http``/``https`` URL with a host, or carries
                credentials, a query, a fragment or an invalid port. These are rejected rather than
                ignored because silently dropping them would forward to something other than what
                the operator wrote.
        """
        try:
            parts = urlsplit(raw.strip())
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"invalid upstream URL {raw!r}: {exc}") from exc
        scheme = parts.scheme.lower()
        if scheme not in _DEFAULT_PORTS:
            raise ValueError(f"invalid upstream URL {raw!r}: scheme must be http or https")
        host = parts.hostname
        if not host:
            raise ValueError(f"invalid upstream URL {raw!r}: no host")
        if parts.username is not None or parts.password is not None:
            # Credentials in the URL would end up in logs and metrics labels.
            raise ValueError(f"invalid upstream URL {raw!r}: credentials are not allowed")
        if parts.query or parts.fragment or "?" in raw or "#" in raw:
            raise ValueError(f"invalid upstream URL {raw!r}: query and fragment are not allowed")
        if port is None:
            port = _DEFAULT_PORTS[scheme]
        elif port == 0:
            raise ValueError(f"invalid upstream URL {raw!r}: port 0")
        base_path = parts.path.rstrip("/")
        return cls(
            url=f"{scheme}://{_bracketed(host)}:{port}",
            scheme=scheme,
            host=host,
            port=port,
            base_path=base_path,
        )

    def available(self, now: float) -> bool:
        """Whether this target may receive a request at monotonic time ``now``.

        Args:
            now: The pool clock's current reading.

        Returns:
            ``True`` if the active check holds it healthy and no passive ejection is in force.
        """
        return self.healthy and now >= self.ejected_until

    def ejected(self, now: float) -> bool:
        """Whether a passive ejection is in force at monotonic time ``now``."""
        return now < self.ejected_until


def _bracketed(host: str) -> str:
    """The host as a URL or ``Host`` header writes it: an IPv6 address in brackets (RFC 3986 §3.2.2)."""
    return f"[{host}]" if ":" in host else host
