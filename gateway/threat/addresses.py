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

__all__ = ["counted_as"]

# RFC 6052's well-known NAT64 prefix: an IPv4 client seen through a translator is its IPv4 address, not
# a /64 it shares with every other client of that translator (the re-attack run blocked bystanders).
_NAT64: Final = ipaddress.ip_network("64:ff9b::/96")


def counted_as(ip: str) -> str:
    """The address or network the rules count ``ip`` under: IPv4 as it is (an IPv4-mapped or NAT64
    IPv6 address as its IPv4), IPv6 as its /64 in CIDR form; anything unreadable as given."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        if address in _NAT64:
            return str(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)
