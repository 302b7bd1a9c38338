"""What an admin may block by hand: one rule for ``gateway incident block-ip`` and the console.

A block made by hand names an address or a network and how long it lasts. Both are checked here, once,
so the CLI and the admin API refuse the same things with the same words:

* **Not too broad.** A manual block is a quick, temporary answer to one attacker. An IPv4 network wider
  than ``/16`` or an IPv6 network wider than ``/32`` (an ISP's allocation) would shut out whole
  populations with one typo (``0.0.0.0/0`` shuts out everyone); such ranges belong in a block-list
  file (``threat.block_lists``), where they are reviewed and versioned like any other configuration.
* **Not for ever.** At most ``MAX_BLOCK`` (90 days), for the same reason: a permanent block is a
  block-list entry.
* **A bare IPv6 address is its subscriber's /64**, as the threat rules count and block it
  (:mod:`gateway.threat.addresses`): a block of the one address was left by the attacker's next
  address of the same /64 (an attack run). A prefix typed (``2001:db8:9::7/128``) is kept as typed.
* **A Teredo or 6to4 address is the IPv4 address it stands for** (its client's, its site's), as the
  rules count and block it; a range of Teredo addresses is refused: it spans a Teredo server's clients.

Unblocking takes any address or network (a block made before these limits must stay liftable), so it
only needs :func:`parse_network`, which reads a bare IPv6 address the same way: the text that blocked
it unblocks it.
"""

from __future__ import annotations

import ipaddress
from typing import Final

from gateway.errors import BadRequest
from gateway.settings.units import parse_duration
from gateway.threat.addresses import (
    SUBSCRIBER_PREFIX,
    TranslatorRange,
    holds_a_translator,
    ipv4_behind,
    spans_teredo_clients,
    stands_for,
    tunnelled,
)
from gateway.threat.blocks import Network, normalize_network

__all__ = [
    "MAX_BLOCK",
    "MIN_BLOCK",
    "MIN_PREFIX",
    "BlockRefused",
    "block_note",
    "block_seconds",
    "covers",
    "manual_network",
    "parse_network",
]

#: The widest network a manual block may name, per IP version (its shortest prefix length).
MIN_PREFIX: Final = {4: 16, 6: 32}
#: The longest a manual block may last, in seconds.
MAX_BLOCK: Final = 90 * 86400.0
#: The shortest, in seconds: workers apply a block within a second, and one ending before that is none.
MIN_BLOCK: Final = 60.0


class BlockRefused(BadRequest):
    """A manual block or unblock that cannot be done as asked: nothing was changed."""

    reason = "block-refused"
    title = "Block refused"


def parse_network(text: str) -> Network:
    """The address or network in ``text`` (host bits allowed; IPv4-mapped and NAT64 IPv6 become IPv4;
    a bare native IPv6 address becomes its /64, see the module docstring).

    Raises:
        BlockRefused: not an address or network, or a NAT64 translator's whole prefix.
    """
    try:
        network = normalize_network(text)
    except TranslatorRange as exc:
        raise BlockRefused(str(exc)) from exc
    except ValueError as exc:
        raise BlockRefused(f"{text!r} is not an IP address or CIDR network") from exc
    if _subscriber_wide(text, network):
        return ipaddress.IPv6Network((network.network_address, SUBSCRIBER_PREFIX), strict=False)
    return network


def _subscriber_wide(text: str, network: Network) -> bool:
    """Whether ``text`` is a bare native IPv6 address (no prefix typed), read as its /64."""
    return network.version == 6 and network.prefixlen == network.max_prefixlen and "/" not in text


def block_note(text: str) -> str:
    """What to tell whoever asked to block ``text`` beyond the network blocked: for a bare IPv6
    address, that its /64 was blocked and how to block the one address; for a Teredo or 6to4 address,
    the IPv4 address blocked for it; "" otherwise (also for unreadable text: the block is refused
    anyway)."""
    try:
        network = normalize_network(text)
    except ValueError:
        return ""
    if said := stands_for(text):
        return said
    if not _subscriber_wide(text, network):
        return ""
    return f"the subscriber's /{SUBSCRIBER_PREFIX}; type /128 for this address only"


def manual_network(text: str) -> Network:
    """The network an admin asked to block, if it is narrow enough (see the module docstring).

    Raises:
        BlockRefused: not an address or network, or wider than :data:`MIN_PREFIX` allows.
    """
    network = parse_network(text)
    shortest = MIN_PREFIX[network.version]
    if network.prefixlen < shortest:
        raise BlockRefused(
            f"{network} is too broad to block by hand (at most /{shortest} for IPv{network.version}); "
            "put wide ranges in a block-list file (threat.block_lists)"
        )
    if holds_a_translator(network):
        # A re-attack run's /95 around a translator's /96 was listed as blocked and passed every
        # client behind the translator.
        raise BlockRefused(
            f"{network} contains a whole NAT64 translator prefix: the clients behind it are matched by "
            "their IPv4 addresses, which this block cannot name; block the IPv4 networks of the clients "
            "you mean, or IPv6 networks beside the translator's"
        )
    if spans_teredo_clients(network):
        # A Teredo /64 is a server's, shared by everyone behind it, not one subscriber's.
        raise BlockRefused(
            f"{network} spans the clients of a Teredo server (2001::/32, RFC 4380): each is matched by "
            "the IPv4 address its Teredo address carries; block one client's Teredo address, which "
            "blocks its IPv4 address, or that IPv4 address"
        )
    return network


def block_seconds(value: str) -> float:
    """How long a manual block lasts: a duration such as ``30m``, ``1h`` or ``7d``, up to 90 days.

    Raises:
        BlockRefused: not a duration, shorter than :data:`MIN_BLOCK` or longer than :data:`MAX_BLOCK`.
    """
    try:
        seconds = float(parse_duration(value))
    except (ValueError, TypeError) as exc:
        raise BlockRefused("expected a duration such as 30m, 1h or 7d") from exc
    if seconds < MIN_BLOCK:
        # A block that has ended before any worker applied it is no block, only an incident saying so.
        raise BlockRefused("must be at least 1m")
    if seconds > MAX_BLOCK:
        raise BlockRefused("must be at most 90d; a longer block belongs in a block-list file")
    return seconds


def covers(network: Network, address: str) -> bool:
    """Whether ``address`` (any spelling, IPv4-mapped, NAT64, Teredo and 6to4 included: read as the
    block list reads it) is inside ``network``; False if unreadable. A re-attack run's admin on a NAT64
    address blocked the IPv4 address behind it, and so themselves, past a check that read only
    IPv4-mapped ones."""
    try:
        addr: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(address.strip())
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address):
        inner = ipv4_behind(addr)
        if inner is not None and tunnelled(addr) and _inside(addr, network):
            return True  # a network of Teredo or 6to4 addresses is matched in IPv6 form too
        addr = inner or addr
    return _inside(addr, network)


def _inside(addr: ipaddress.IPv4Address | ipaddress.IPv6Address, network: Network) -> bool:
    return addr.version == network.version and addr in network
