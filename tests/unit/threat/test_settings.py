"""The ``threat:`` block of the config file: defaults, relative paths, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.errors import ConfigError
from gateway.settings.loader import parse_settings

BASE = "public_url: https://auth.example.com\n"


def test_defaults() -> None:
    threat = parse_settings(BASE).threat
    assert threat.enabled
    assert (threat.brute_force.count, float(threat.brute_force.window)) == (10, 300.0)
    assert threat.spraying.responses == ("alert", "block_ip")
    # The network-wide rule alerts and never blocks unless asked: a site's /48 holds many people.
    wide = threat.spraying_network
    assert (wide.count, wide.prefix, wide.prefix_v4, wide.responses) == (40, 48, 24, ("alert",))
    assert threat.geoip_database is None


def test_rules_paths_and_durations(tmp_path: Path) -> None:
    (tmp_path / "feed.txt").write_text("192.0.2.0/24\n")
    text = BASE + (
        "threat:\n"
        "  spraying: {count: 20, window: 15m, responses: [alert, block_ip, webhook], block_for: 2h}\n"
        "  block_lists: [feed.txt]\n"
        "  webhook_url: https://hooks.example.com/gw\n"
    )
    threat = parse_settings(text, base_dir=tmp_path).threat
    assert threat.spraying.count == 20
    assert (float(threat.spraying.window), float(threat.spraying.block_for)) == (900.0, 7200.0)
    assert threat.block_lists == (str(tmp_path / "feed.txt"),)


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ("threat: {brute_force: {count: 0}}", "threat.brute_force.count"),
        ("threat: {spraying: {responses: [alert, webhook]}}", "threat.webhook_url is not set"),
        ("threat: {spraying: {responses: [alert, shout]}}", "threat.spraying.responses"),
        ("threat: {block_lists: [missing.txt]}", "threat.block_lists[0]"),
        ("threat: {geoip_database: missing.mmdb}", "threat.geoip_database"),
        ("threat: {webhook_url: 'ftp://x'}", "threat.webhook_url"),
        ("threat: {brute_forse: {}}", "brute_forse"),
        ("threat: {nat64_prefixes: ['2001:db8:46::/64']}", "threat.nat64_prefixes[0]: is not an IPv6 /96"),
        ("threat: {nat64_prefixes: ['192.0.2.0/24']}", "threat.nat64_prefixes[0]"),
        ("threat: {spraying_network: {prefix: 64}}", "threat.spraying_network.prefix: is 64"),
        ("threat: {spraying_network: {prefix: 16}}", "threat.spraying_network.prefix: is 16"),
        ("threat: {spraying_network: {prefix_v4: 32}}", "threat.spraying_network.prefix_v4: is 32"),
        ("threat: {spraying_network: {prefix_v4: 8}}", "threat.spraying_network.prefix_v4: is 8"),
        ("threat: {spraying_network: {count: 0}}", "threat.spraying_network.count"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, block: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_settings(BASE + block + "\n", base_dir=tmp_path)
    assert message in str(info.value)


def test_the_network_rule_may_count_ipv6_networks_only() -> None:
    wide = parse_settings(BASE + "threat: {spraying_network: {prefix_v4: null}}\n").threat.spraying_network
    assert (wide.prefix, wide.prefix_v4) == (48, None)
