"""What the threat rules count an address as."""

from __future__ import annotations

import pytest

from gateway.threat.addresses import counted_as, network_of


@pytest.mark.parametrize(
    ("ip", "counted"),
    [
        ("203.0.113.7", "203.0.113.7"),
        ("2001:db8:7:9::1", "2001:db8:7:9::/64"),
        ("2001:db8:7:9:ffff:ffff:ffff:ffff", "2001:db8:7:9::/64"),
        ("::ffff:203.0.113.7", "203.0.113.7"),
        ("64:ff9b::c633:64c8", "198.51.100.200"),  # a NAT64 translator's client is its IPv4 address
        ("64:ff9b:1::cb00:710a", "203.0.113.10"),  # RFC 8215's local-use range too
        ("2001:db8:46::cb00:710a", "2001:db8:46::/64"),  # a network-specific prefix not configured
        ("not an address", "not an address"),
    ],
)
def test_ipv4_alone_ipv6_by_its_64_translated_ones_as_ipv4(ip: str, counted: str) -> None:
    assert counted_as(ip) == counted


def test_a_configured_translator_prefix_counts_each_ipv4_client_alone() -> None:
    """The re-attack run: behind a network-specific prefix, one sprayer's /64 block shut out every IPv4
    client of the translator."""
    from gateway.threat.addresses import use_nat64_prefixes

    use_nat64_prefixes(("2001:db8:46::/96",))
    try:
        assert counted_as("2001:db8:46::cb00:710a") == "203.0.113.10"
        assert counted_as("2001:db8:46::cb00:710b") == "203.0.113.11"
        assert counted_as("2001:db8:47::1") == "2001:db8:47::/64"
    finally:
        use_nat64_prefixes(())


# Two clients (192.0.2.45, 192.0.2.46) behind one Teredo server (65.54.227.120): one /64, two clients.
TEREDO_A = "2001:0:4136:e378:8000:63bf:3fff:fdd2"
TEREDO_B = "2001:0:4136:e378:8000:63bf:3fff:fdd1"


def test_a_teredo_address_counts_as_its_client_not_its_servers_64() -> None:
    """The /64 of a Teredo address is its server's: by it, one attacker behind a public Teredo server
    got everyone behind it counted (and blocked) together."""
    assert counted_as(TEREDO_A) == "192.0.2.45"
    assert counted_as(TEREDO_B) == "192.0.2.46"
    # The same client through another server and NAT port, and natively: one client.
    assert counted_as("2001:0:5ef5:79fb:0:5efe:3fff:fdd2") == "192.0.2.45"
    assert counted_as("192.0.2.45") == counted_as(TEREDO_A)


def test_a_6to4_address_counts_as_its_sites_ipv4_address() -> None:
    """A 6to4 site's /48 derives from one IPv4 address: by /64 it could rotate through 65,536 of them."""
    assert counted_as("2002:cb00:710a:5::1") == "203.0.113.10"
    assert counted_as("2002:cb00:710a:7::9") == "203.0.113.10"
    assert counted_as("2002:cb00:710b::1") == "203.0.113.11"  # the next site


def test_a_wider_rule_counts_teredo_and_6to4_clients_in_their_ipv4_network() -> None:
    assert network_of(TEREDO_A, 48, 24) == "192.0.2.0/24"
    assert network_of("2002:cb00:710a:5::1", 48, 24) == "203.0.113.0/24"
    assert network_of(TEREDO_A, 48) is None  # as for any IPv4 client without prefix_v4
