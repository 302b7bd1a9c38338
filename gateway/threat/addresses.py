"""Which addresses the threat rules count together: an IPv4 address alone, an IPv6 address by its /64.

One IPv6 subscriber (a home line, a cloud instance) gets a /64 and may use any of its 2^64 addresses, so
counting and blocking the exact address let an attacker rotate through fresh ones: an attack run sprayed
forty accounts from eight addresses of one /64 without raising anything, where one address was blocked
after eight. A /64 is what one subscriber holds (RFC 6177), so counting by it catches the rotation
without lumping unrelated people together.

Some IPv6 addresses stand for an IPv4 client and are counted and blocked as that IPv4 address:

* **IPv4-mapped** (``::ffff:203.0.113.7``) and **NAT64** (RFC 6052/8215, ``threat.nat64_prefixes``):
  the /64 is the translator's, shared by every IPv4 client behind it.
* **Teredo** (``2001::/32``, RFC 4380): bits 32-63 are the Teredo *server's* IPv4 address, so the /64 is
  every client of one public Teredo server, and one attacker behind it got all of them counted and
  blocked. The client is the (inverted) IPv4 address in the last 32 bits: its NAT's public address,
  the one a relay sends its traffic to. Counting it as that IPv4 address rather than the exact /128
  is safe: a connection from a Teredo address completes only if the client receives at that IPv4
  address, so it cannot name somebody else's, no more than a native IPv4 source can; and the /128
  would let it rotate through fresh addresses (its NAT's port, its server) and dodge a block of its
  own IPv4 address.
* **6to4** (``2002::/16``, RFC 3056): a site's whole ``2002:V4ADDR::/48`` derives from one IPv4 address
  (its router's), so by /64 one site could rotate through 65,536 of them; it is that IPv4 address.

A *network* of Teredo or 6to4 addresses is not read as IPv4 (unlike a NAT64 one): block-list feeds
name such ranges to shut out the mechanism or its bogons (``2001::/32``, ``2002:0a00::/24``), and read
as IPv4 the latter would block ``10.0.0.0/8``, native clients included. The matcher checks a Teredo
or 6to4 address as its IPv4 client and as itself (:func:`tunnelled`). A manual block refuses a range
of Teredo addresses: it spans the clients of a Teredo server, and one of them is blocked by its
address (:func:`spans_teredo_clients`).
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
    "spans_teredo_clients",
    "stands_for",
    "tunnelled",
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
# RFC 4380 (the client's IPv4 address, inverted, in bits 96-127) and RFC 3056 (the site's IPv4 address in
# bits 16-47): see the module docstring.
_TEREDO: Final = ipaddress.IPv6Network("2001::/32")
_SIX_TO_FOUR: Final = ipaddress.IPv6Network("2002::/16")


def use_nat64_prefixes(prefixes: tuple[str, ...]) -> None:
    """The network-specific NAT64/SIIT prefixes (``threat.nat64_prefixes``, each a /96) this
    deployment's clients may come through."""
    global _configured
    _configured = tuple(ipaddress.IPv6Network(p) for p in prefixes)


def ipv4_behind(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 client an IPv6 address stands for: IPv4-mapped, behind a NAT64 translator (RFC 6052,
    the /96 embedding), a Teredo client (RFC 4380) or a 6to4 site (RFC 3056); None for a native IPv6
    address."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if any(address in net for net in _NAT64) or any(address in net for net in _configured):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    teredo = address.teredo
    if teredo is not None:
        return teredo[1]  # (server, client): the server's address is shared by all of its clients
    return address.sixtofour


def tunnelled(address: ipaddress.IPv6Address) -> bool:
    """Whether ``address`` is a Teredo or 6to4 one: matched as its IPv4 client and, for a network of
    them kept in IPv6 form (a feed's ``2002::/16``), as itself."""
    return address in _TEREDO or address in _SIX_TO_FOUR


def spans_teredo_clients(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    """Whether ``network`` holds Teredo addresses of more than one client: all of Teredo, or the /64
    of a Teredo server, which is everyone behind that server (see the module docstring)."""
    return (
        isinstance(network, ipaddress.IPv6Network)
        and network.prefixlen < network.max_prefixlen
        and network.overlaps(_TEREDO)
    )


def stands_for(text: str) -> str:
    """What a Teredo or 6to4 address in ``text`` is counted and blocked as, in words for whoever asked
    to block it; "" for any other text (a network, a native or NAT64 address, nothing readable)."""
    try:
        network = ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        return ""
    address = network.network_address
    if not isinstance(address, ipaddress.IPv6Address) or network.prefixlen != 128:
        return ""
    teredo = address.teredo
    if teredo is not None:
        return f"a Teredo address is its client's IPv4 address {teredo[1]}, not its server's /64"
    site = address.sixtofour
    if site is not None:
        whole = ipaddress.IPv6Network((int(address) >> 80 << 80, 48))
        return f"a 6to4 address is its site's IPv4 address {site}, all of {whole}"
    return ""


class TranslatorRange(ValueError):
    """A network of NAT64 addresses that names no IPv4 network (:func:`ipv4_network_behind`)."""


def ipv4_network_behind(network: ipaddress.IPv6Network) -> ipaddress.IPv4Network | None:
    """The IPv4 clients a network of NAT64 addresses stands for (``64:ff9b::cb00:7100/120`` is
    ``203.0.113.0/24``): the addresses :func:`ipv4_behind` reads as IPv4 clients are matched by their
    IPv4 address, so a block of their IPv6 form must be one of IPv4 to match anything. A single Teredo
    or 6to4 address is its IPv4 client's ``/32``. None for a network outside the translator prefixes,
    a network of Teredo or 6to4 addresses (matched in IPv6 form: see the module docstring), and
    IPv4-mapped networks (the caller's).

    Raises:
        TranslatorRange: a network of translated addresses naming no IPv4 network: a translator's
            whole /96 (it would be ``0.0.0.0/0``, every IPv4 client, native ones too) or wider.
    """
    ranges = (*_NAT64, *_configured)
    if not any(network.subnet_of(r) for r in ranges):
        inner = ipv4_behind(network.network_address)
        if network.prefixlen == network.max_prefixlen and inner is not None:
            return ipaddress.IPv4Network(inner)
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
    """The address or network the rules count ``ip`` under: IPv4 as it is (an IPv4-mapped, NAT64,
    Teredo or 6to4 IPv6 address as its IPv4), IPv6 as its /64 in CIDR form; anything unreadable as
    given."""
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
    length ``prefix``; an IPv4 client's (also one an IPv6 address stands for: mapped, NAT64, Teredo,
    6to4) of length ``prefix_v4``. None for an IPv4 client without ``prefix_v4``, or anything
    unreadable."""
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
