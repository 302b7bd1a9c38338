"""The trusted proxies (``trusted_proxies``), compiled once per configuration for per-request look-ups.

Only a peer in one of these networks may say who the client is (``X-Forwarded-*``, ``Forwarded``) or
see operational details (addresses, errors) in the gateway's own answers. The data plane, the pages
and the admin listener all ask the same object, held by the live configuration.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from functools import lru_cache

__all__ = ["TrustedProxies", "may_see_internals"]


class TrustedProxies:
    """The networks whose ``X-Forwarded-*`` / ``Forwarded`` headers the gateway believes."""

    __slots__ = ("_networks", "is_trusted")

    def __init__(self, cidrs: Iterable[str]) -> None:
        self._networks = tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)

        @lru_cache(maxsize=4096)
        def is_trusted(ip: str) -> bool:
            try:
                addr = ipaddress.ip_address(ip)
            except ValueError:
                return False
            return any(addr in net for net in self._networks)

        self.is_trusted = is_trusted

    def __bool__(self) -> bool:
        return bool(self._networks)


def may_see_internals(trusted: TrustedProxies, peer_ip: str) -> bool:
    """Loopback and trusted proxies may see operational details (addresses, errors)."""
    return peer_ip in ("127.0.0.1", "::1") or trusted.is_trusted(peer_ip)
