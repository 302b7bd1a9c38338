"""Which addresses the threat rules count together: an IPv4 address alone, an IPv6 address by its /64.

One IPv6 subscriber (a home line, a cloud instance) gets a /64 and may use any of its 2^64 addresses, so
counting and blocking the exact address let an attacker rotate through fresh ones: an attack run sprayed
forty accounts from eight addresses of one /64 without raising anything, where one address was blocked
after eight. A /64 is what one subscriber holds (RFC 6177), so counting by it catches the rotation
without lumping unrelated people together.
"""

from __future__ import annotations

import ipaddress
from typing import Final

__all__ = [
    "SUBSCRIBER_PREFIX",
    "TranslatorRange",
    "counted_as",
    "ipv4_behind",
    "ipv4_network_behind",
    "network_of",
    "use_nat64_prefixes",
]

#: What one IPv6 subscriber holds (RFC 6177): the rules count, and a manual block of a bare address
#: covers, this much.
SUBSCRIBER_PREFIX: Final = 64

# RFC 6052's well-known NAT64 prefix and RFC 8215's local-use range (read with the /96 embedding, the
# one translators use there): an IPv4 client seen through a translator is its IPv4 address, not a /64
# it shares with every other client of that translator (the re-attack run blocked bystanders).
_NAT64: Final = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))
# A deployment's own translator prefixes (threat.nat64_prefixes, /96 each), set by the composition
# root at start and on every reload: one process-wide fact, like the address family of the host.
_configured: tuple[ipaddress.IPv6Network, ...] = ()


def use_nat64_prefixes(prefixes: tuple[str, ...]) -> None:
    """The network-specific NAT64/SIIT prefixes (``threat.nat64_prefixes``, each a /96) this
    deployment's clients may come through."""
    global _configured
    _configured = tuple(ipaddress.IPv6Network(p) for p in prefixes)


def ipv4_behind(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 client an IPv6 address stands for: IPv4-mapped, or behind a NAT64 translator (RFC 6052,
    the /96 embedding); None for a native IPv6 address."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if any(address in net for net in _NAT64) or any(address in net for net in _configured):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


class TranslatorRange(ValueError):
    """A network of NAT64 addresses that names no IPv4 network (:func:`ipv4_network_behind`)."""


def ipv4_network_behind(network: ipaddress.IPv6Network) -> ipaddress.IPv4Network | None:
    """The IPv4 clients a network of NAT64 addresses stands for (``64:ff9b::cb00:7100/120`` is
    ``203.0.113.0/24``): the addresses :func:`ipv4_behind` reads as IPv4 clients are matched by their
    IPv4 address, so a block of their IPv6 form must be one of IPv4 to match anything. None for a
    network outside the translator prefixes (IPv4-mapped networks are the caller's).

    Raises:
        TranslatorRange: a network of translated addresses naming no IPv4 network: a translator's
            whole /96 (it would be ``0.0.0.0/0``, every IPv4 client, native ones too) or wider.
    """
    ranges = (*_NAT64, *_configured)
    if not any(network.subnet_of(r) for r in ranges):
        return None
    if network.prefixlen <= 96:
        raise TranslatorRange(
            f"{network} covers a whole NAT64 translator prefix (/96): its clients are matched by their "
            "IPv4 addresses, and all of them are every IPv4 address; block the IPv4 network of the "
            "clients you mean (64:ff9b::cb00:7100/120 is 203.0.113.0/24)"
        )
    return ipaddress.IPv4Network((int(network.network_address) & 0xFFFFFFFF, network.prefixlen - 96))


def holds_a_translator(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    """Whether ``network`` contains a whole NAT64 translator prefix: the clients behind it are matched
    by their IPv4 addresses, so a block of it passes every one of them."""
    return isinstance(network, ipaddress.IPv6Network) and any(
        r.subnet_of(network) for r in (*_NAT64, *_configured)
    )


def counted_as(ip: str) -> str:
    """The address or network the rules count ``ip`` under: IPv4 as it is (an IPv4-mapped or NAT64
    IPv6 address as its IPv4), IPv6 as its /64 in CIDR form; anything unreadable as given."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(address, ipaddress.IPv6Address):
        inner = ipv4_behind(address)
        if inner is not None:
            return str(inner)
        return str(ipaddress.ip_network(f"{address}/{SUBSCRIBER_PREFIX}", strict=False))
    return str(address)


def network_of(ip: str, prefix: int, prefix_v4: int | None = None) -> str | None:
    """The network a client is counted in by a wider rule, in CIDR form: a native IPv6 address's of
    length ``prefix``; an IPv4 client's (also one an IPv6 address stands for: mapped, NAT64) of length
    ``prefix_v4``. None for an IPv4 client without ``prefix_v4``, or anything unreadable."""
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(ip)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        inner = ipv4_behind(address)
        if inner is None:
            return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))
        address = inner
    if prefix_v4 is None:
        return None
    return str(ipaddress.ip_network(f"{address}/{prefix_v4}", strict=False))
