"""The trusted proxies (``trusted_proxies``), compiled once per configuration for per-request look-ups.

Only a peer in one of these networks may say who the client is (``X-Forwarded-*``, ``Forwarded``) or
see operational details (addresses, errors) in the gateway's own answers. The data plane, the pages
and the admin listener all ask the same object, held by the live configuration.

An IPv4 client of a dual-stack listener (``listen: "[::]:8443"``) arrives as an IPv4-mapped IPv6
address (``::ffff:10.0.0.5``): it is read as the IPv4 address it maps (:func:`peer_address`), in
every trust check and wherever the peer's address is used, so ``trusted_proxies: ["10.0.0.0/8"]``
means the same on either listener and blocks, limits and logs key on one spelling of each client.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from functools import lru_cache

__all__ = ["TrustedProxies", "as_ipv4", "may_see_internals", "peer_address"]

# Any address family's text, parsed once per distinct peer (bounded: IPv6 clients choose them freely).
_MAX_REMEMBERED_PEERS = 4096
_IPV4_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
_Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def as_ipv4(addr: _Address) -> _Address:
    """The IPv4 address an IPv4-mapped IPv6 one (``::ffff:a.b.c.d``) stands for; any other, as given."""
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


@lru_cache(maxsize=_MAX_REMEMBERED_PEERS)
def peer_address(ip: str) -> str:
    """A connection's peer address as the gateway reads it everywhere: an IPv4-mapped IPv6 address
    (``::ffff:127.0.0.1``, how a dual-stack listener sees an IPv4 client) as its IPv4 address, and an
    IPv6 address in its canonical form without a zone (``fe80::1%eth0``: the zone names an interface
    of this host, no part of who the client is). Text that is no address is returned as given.

    For the data plane's hot path, callers may skip it for text without ``:`` (IPv4 as servers give it).
    """
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    addr = as_ipv4(addr)
    if isinstance(addr, ipaddress.IPv6Address) and addr.scope_id is not None:
        return str(ipaddress.IPv6Address(int(addr)))
    return str(addr)


def _network(cidr: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """A configured network; an IPv4-mapped one (``::ffff:10.0.0.0/104``) as the IPv4 network it maps,
    since mapped peers are compared as IPv4 addresses."""
    net = ipaddress.ip_network(cidr, strict=False)
    if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96 and net.subnet_of(_IPV4_MAPPED):
        return ipaddress.IPv4Network((int(net.network_address) & 0xFFFFFFFF, net.prefixlen - 96))
    return net


class TrustedProxies:
    """The networks whose ``X-Forwarded-*`` / ``Forwarded`` headers the gateway believes."""

    __slots__ = ("_networks", "is_trusted")

    def __init__(self, cidrs: Iterable[str]) -> None:
        self._networks = tuple(_network(c) for c in cidrs)

        @lru_cache(maxsize=_MAX_REMEMBERED_PEERS)
        def is_trusted(ip: str) -> bool:
            # An IPv4-mapped address is checked as the IPv4 address it maps: a dual-stack listener sees
            # an IPv4 load balancer as ::ffff:10.0.0.5, which no IPv4 network contains (an attack run).
            try:
                addr = as_ipv4(ipaddress.ip_address(ip))
            except ValueError:
                return False
            return any(addr in net for net in self._networks)

        self.is_trusted = is_trusted

    def __bool__(self) -> bool:
        return bool(self._networks)


def may_see_internals(trusted: TrustedProxies, peer_ip: str) -> bool:
    """Loopback and trusted proxies may see operational details (addresses, errors)."""
    ip = peer_address(peer_ip) if ":" in peer_ip else peer_ip
    return ip in ("127.0.0.1", "::1") or trusted.is_trusted(ip)
