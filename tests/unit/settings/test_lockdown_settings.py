"""The ``lockdown:`` block of the config file: defaults, durations, and errors that name the key."""

from __future__ import annotations

import pytest

from gateway.errors import ConfigError
from gateway.settings.loader import parse_settings

BASE = "public_url: https://auth.example.com\n"


def test_defaults() -> None:
    lockdown = parse_settings(BASE).lockdown
    assert lockdown.break_glass_group is None
    assert (float(lockdown.max_factor_age), float(lockdown.retry_after)) == (12 * 3600.0, 300.0)
    assert lockdown.message
    assert lockdown.title


def test_values_and_a_threat_rule_that_locks_down() -> None:
    text = BASE + (
        "lockdown: {break_glass_group: break-glass, max_factor_age: 1h, retry_after: 10m,"
        " message: 'Closed for an incident.'}\n"
        "threat: {spraying: {responses: [alert, lockdown]}}\n"
    )
    settings = parse_settings(text)
    assert settings.lockdown.break_glass_group == "break-glass"
    assert (float(settings.lockdown.max_factor_age), float(settings.lockdown.retry_after)) == (3600.0, 600.0)
    assert settings.threat.spraying.responses == ("alert", "lockdown")


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ("lockdown: {break_glass_group: 'group:ops'}", "lockdown.break_glass_group"),
        # A provider's group names a configured provider (here none is): else nobody would pass.
        ("lockdown: {break_glass_group: 'corp:ops'}", "identity_providers does not configure"),
        ("lockdown: {break_glass_group: 'two words'}", "lockdown.break_glass_group"),
        ("lockdown: {retry_after: 0}", "lockdown.retry_after"),
        ("lockdown: {retry_after: 2d}", "lockdown.retry_after"),
        ("lockdown: {max_factor_age: 0}", "lockdown.max_factor_age"),
        ("lockdown: {message: '  '}", "lockdown.message"),
        ("lockdown: {breakglass_group: ops}", "breakglass_group"),
    ],
)
def test_errors_name_the_key(block: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_settings(BASE + block + "\n")
    assert message in str(info.value)


def test_a_providers_group_passes_when_the_provider_is_configured() -> None:
    text = BASE + (
        "identity_providers: [{name: corp, issuer: 'https://idp.example.com', client_id: gw,"
        " client_secret: s}]\n"
        "lockdown: {break_glass_group: 'corp:sre-oncall'}\n"
    )
    assert parse_settings(text).lockdown.break_glass_group == "corp:sre-oncall"
