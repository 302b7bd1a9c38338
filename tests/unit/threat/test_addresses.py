"""What the threat rules count an address as."""

from __future__ import annotations

import pytest

from gateway.threat.addresses import counted_as


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
