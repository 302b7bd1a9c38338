"""Checks for ``threat``: detection rules, their responses, and the files and webhook they use."""

from __future__ import annotations

import ipaddress
import os

from gateway.settings.checks.values import require_positive, url_problem
from gateway.settings.report import KeyPath, Report
from gateway.settings.schema import NetworkRule, Settings, ThreatRule

__all__ = ["check_threat"]


def check_threat(settings: Settings, report: Report) -> None:
    """Every rule counts over a positive window, and whatever a response needs is configured."""
    threat = settings.threat
    rules: tuple[tuple[str, ThreatRule], ...] = (
        ("brute_force", threat.brute_force),
        ("spraying", threat.spraying),
        ("spraying_network", threat.spraying_network),
        ("mfa_failures", threat.mfa_failures),
        ("reconnaissance", threat.reconnaissance),
        ("token_guessing", threat.token_guessing),
        ("session_hijack", threat.session_hijack),
        ("impossible_travel", threat.impossible_travel),
    )
    for name, rule in rules:
        at: KeyPath = ("threat", name)
        require_positive(
            [
                ((*at, "count"), rule.count),
                ((*at, "window"), rule.window),
                ((*at, "block_for"), rule.block_for),
            ],
            report,
        )
        if "webhook" in rule.responses and threat.webhook_url is None:
            report.add((*at, "responses"), "has 'webhook' but threat.webhook_url is not set")
    require_positive(
        [
            (("threat", "block_list_poll"), threat.block_list_poll),
            (("threat", "webhook_queue"), threat.webhook_queue),
            (("threat", "webhook_timeout"), threat.webhook_timeout),
            (("threat", "impossible_travel", "max_speed_kmh"), threat.impossible_travel.max_speed_kmh),
        ],
        report,
    )
    if threat.webhook_url is not None:
        problem = url_problem(threat.webhook_url, allow_path=True)
        if problem:
            report.bad(("threat", "webhook_url"), problem, "expected an absolute http(s) URL")
    _check_network_rule(threat.spraying_network, report)
    for index, prefix in enumerate(threat.nat64_prefixes):
        try:
            network = ipaddress.IPv6Network(prefix)
        except ValueError:
            network = None
        if network is None or network.prefixlen != 96:
            report.bad(
                ("threat", "nat64_prefixes", index),
                "is not an IPv6 /96 network",
                "e.g. 2001:db8:46::/96 (the translator's prefix; the IPv4 address is its last 32 bits)",
            )
    for index, file in enumerate(threat.block_lists):
        if not os.path.isfile(file):
            report.add(
                ("threat", "block_lists", index),
                f"file not found: {file}; relative paths start at the config's directory",
            )
    if threat.geoip_database is not None and not os.path.isfile(threat.geoip_database):
        report.add(
            ("threat", "geoip_database"),
            f"file not found: {threat.geoip_database}; relative paths start at the config's directory",
        )


def _check_network_rule(rule: NetworkRule, report: Report) -> None:
    """Each prefix is wider than what the per-address rule counts (a /64, one IPv4 address)."""
    if not 32 <= rule.prefix <= 63:
        report.bad(
            ("threat", "spraying_network", "prefix"),
            f"is {rule.prefix}, not an IPv6 prefix length from 32 to 63",
            "48 (a site) or 56 (a home line); a /64 is the spraying rule's own",
        )
    if rule.prefix_v4 is not None and not 16 <= rule.prefix_v4 <= 31:
        report.bad(
            ("threat", "spraying_network", "prefix_v4"),
            f"is {rule.prefix_v4}, not an IPv4 prefix length from 16 to 31",
            "24 (a hosting provider's block), or null to count IPv6 networks only",
        )
