"""``trusted_proxies`` and who may see the gateway's internals, for IPv4 peers of a dual-stack listener.

On ``listen: "[::]:8443"`` Linux shows an IPv4 peer as ``::ffff:a.b.c.d``: an attack run found the
IPv4 networks of ``trusted_proxies`` never matched it, and ``/.gateway/ready`` hid its details from
the loopback. An IPv4-mapped address is read as the IPv4 address it maps, everywhere.
"""

from __future__ import annotations

import pytest

from gateway.settings.trusted import TrustedProxies, may_see_internals, peer_address

PROXIES = TrustedProxies(["127.0.0.1", "10.0.0.0/8", "::1"])


@pytest.mark.parametrize(
    ("peer", "trusted"),
    [
        ("::ffff:127.0.0.1", True),
        ("::ffff:10.20.30.40", True),
        ("::FFFF:a14:1e28", True),
        ("0:0:0:0:0:ffff:a14:1e28", True),
        ("::ffff:203.0.113.9", False),
        ("127.0.0.1", True),
        ("::1", True),
        ("203.0.113.9", False),
        ("not an address", False),
    ],
)
def test_a_mapped_peer_is_checked_as_its_ipv4_address(peer: str, trusted: bool) -> None:
    assert PROXIES.is_trusted(peer) is trusted


def test_an_ipv6_network_does_not_trust_ipv4_peers_by_their_mapped_spelling() -> None:
    """``::/0`` means every IPv6 client; an IPv4 one is not among them on either kind of listener."""
    assert not TrustedProxies(["::/0"]).is_trusted("::ffff:203.0.113.9")


@pytest.mark.parametrize("cidr", ["::ffff:10.0.0.0/104", "::ffff:a00:0/104", "::ffff:10.1.2.3"])
def test_a_mapped_network_in_the_configuration_means_its_ipv4_network(cidr: str) -> None:
    trusted = TrustedProxies([cidr])
    assert trusted.is_trusted("10.1.2.3")
    assert trusted.is_trusted("::ffff:10.1.2.3")
    assert not trusted.is_trusted("11.1.2.3")


@pytest.mark.parametrize("peer", ["::ffff:127.0.0.1", "::ffff:10.0.0.5"])
def test_loopback_and_trusted_proxies_see_internals_on_a_dual_stack_listener(peer: str) -> None:
    assert may_see_internals(PROXIES, peer)


def test_the_loopback_sees_internals_without_trusted_proxies_on_a_dual_stack_listener() -> None:
    assert may_see_internals(TrustedProxies([]), "::ffff:127.0.0.1")
    assert not may_see_internals(TrustedProxies([]), "::ffff:203.0.113.9")


@pytest.mark.parametrize(
    ("peer", "read"),
    [
        ("::ffff:127.0.0.1", "127.0.0.1"),
        ("::FFFF:7F00:1", "127.0.0.1"),
        ("2001:DB8::1", "2001:db8::1"),
        ("fe80::1%eth0", "fe80::1"),
        ('::1%x";for=6.6.6.6', "::1"),
        ("203.0.113.9", "203.0.113.9"),
        ("", ""),
        ("unix:/run/gateway.sock", "unix:/run/gateway.sock"),
    ],
)
def test_peer_address(peer: str, read: str) -> None:
    assert peer_address(peer) == read
