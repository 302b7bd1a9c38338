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
        ("not an address", "not an address"),
    ],
)
def test_ipv4_alone_ipv6_by_its_64_translated_ones_as_ipv4(ip: str, counted: str) -> None:
    assert counted_as(ip) == counted
