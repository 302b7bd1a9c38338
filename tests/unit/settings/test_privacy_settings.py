"""The ``privacy`` section's export limit: its defaults, and what the checks refuse."""

from __future__ import annotations

import textwrap

import pytest

from gateway.errors import ConfigError
from gateway.settings.loader import parse_settings


def test_five_own_exports_an_hour_by_default_and_zero_turns_the_limit_off() -> None:
    privacy = parse_settings("public_url: https://auth.example.com\n").privacy
    assert (privacy.export_limit, float(privacy.export_window)) == (5, 3600.0)
    off = parse_settings("public_url: https://auth.example.com\nprivacy: {export_limit: 0}\n").privacy
    assert off.export_limit == 0


def test_a_negative_limit_and_an_empty_window_are_refused() -> None:
    with pytest.raises(ConfigError) as info:
        parse_settings(
            textwrap.dedent("""\
            public_url: https://auth.example.com
            privacy:
              export_limit: -1
              export_window: 0s
            """)
        )
    message = str(info.value)
    assert "privacy.export_limit: is negative" in message
    assert "privacy.export_window" in message


def test_one_laws_due_time_keeps_the_others_defaults() -> None:
    """A first-day run: `privacy: {due: {gdpr: 20d}}` was refused for lacking ccpa and dpdp, where
    privacy.retention merges a partial override with its defaults."""
    due = parse_settings("public_url: https://auth.example.com\nprivacy: {due: {gdpr: 20d}}\n").privacy.due
    assert [float(due.of(law)) / 86400 for law in ("gdpr", "ccpa", "dpdp")] == [20, 45, 30]


@pytest.mark.parametrize(
    ("due", "message"),
    [
        ("{hipaa: 30d}", 'privacy.due: unknown key "hipaa"'),
        ("{ccpa: 0s}", "privacy.due.ccpa: must be greater than 0"),
    ],
)
def test_an_unknown_law_or_an_empty_due_time_is_refused(due: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_settings(f"public_url: https://auth.example.com\nprivacy: {{due: {due}}}\n")
