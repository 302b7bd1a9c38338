"""The CLI's argument types: an IP address is one the trail could have written, without a zone."""

from __future__ import annotations

import argparse

import pytest

from gateway.cli.arguments import ip_address


@pytest.mark.parametrize(("typed", "kept"), [(" 192.0.2.7", "192.0.2.7"), ("2001:DB8::0:7", "2001:db8::7")])
def test_an_address_is_written_back_in_its_usual_form(typed: str, kept: str) -> None:
    assert ip_address(typed) == kept


@pytest.mark.parametrize("typed", ["::1%not-an-ip", "fe80::1%eth0", "not-an-ip", "192.0.2.0/24"])
def test_what_is_not_an_address_or_carries_a_zone_is_refused(typed: str) -> None:
    """A re-attack run recorded '::1%not-an-ip' as an incident's address: the zone is text str() gives
    back as typed."""
    with pytest.raises(argparse.ArgumentTypeError, match="expected an IP address"):
        ip_address(typed)
