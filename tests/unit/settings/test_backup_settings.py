"""The ``backup`` section: defaults, targets and retention counts, checked with the line they are on."""

from __future__ import annotations

import textwrap

import pytest

from gateway.backup.sets import backup_directory
from gateway.errors import ConfigError
from gateway.settings.loader import parse_settings


def _errors(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_settings(textwrap.dedent(text))
    return str(info.value)


def test_defaults() -> None:
    settings = parse_settings("public_url: https://auth.example.com\ndata_dir: /srv/gw\n")
    b = settings.backup
    assert (b.directory, b.targets, b.keep_daily, b.keep_weekly) == (None, (), 7, 4)
    assert float(b.interval) == 86400.0
    assert str(backup_directory(settings)) == "/srv/gw/backups"


def test_targets_and_directory() -> None:
    settings = parse_settings(
        textwrap.dedent("""\
        public_url: https://auth.example.com
        backup:
          directory: /var/backups/gw
          targets: [/mnt/nas/gw, "rclone:offsite:buckets/gw"]
          keep_daily: 3
          keep_weekly: 0
          interval: 12h
        """)
    )
    assert settings.backup.targets == ("/mnt/nas/gw", "rclone:offsite:buckets/gw")
    assert str(backup_directory(settings)) == "/var/backups/gw"
    assert float(settings.backup.interval) == 43200.0


def test_bad_values_are_reported_with_their_lines() -> None:
    report = _errors("""\
        public_url: https://auth.example.com
        backup:
          targets: ["rclone:no-path"]
          keep_daily: 0
          keep_weekly: -1
          interval: 0s
        """)
    assert "<config>:3: backup.targets[0]: an rclone target is written rclone:<remote>:<path>" in report
    assert "<config>:4: backup.keep_daily: must be at least 1; got 0" in report
    assert "<config>:5: backup.keep_weekly: must be 0 or more; got -1" in report
    assert "<config>:6: backup.interval: must be greater than 0" in report
