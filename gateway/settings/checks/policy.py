"""Checks for ``policy``: the decision cache, how policy changes are picked up, and the seed file."""

from __future__ import annotations

import os

from gateway.settings.checks.values import require_positive
from gateway.settings.report import Report
from gateway.settings.schema import Settings

__all__ = ["check_cache", "check_file"]


def check_cache(settings: Settings, report: Report) -> None:
    """Cache size, poll interval and staleness bound are positive."""
    require_positive(
        [
            (("policy", "cache_size"), settings.policy.cache_size),
            (("policy", "poll_interval"), settings.policy.poll_interval),
            (("policy", "max_staleness"), settings.policy.max_staleness),
        ],
        report,
    )


def check_file(settings: Settings, report: Report) -> None:
    """A policy file, when named, exists (already made absolute against the config's directory)."""
    if settings.policy.file is not None and not os.path.isfile(settings.policy.file):
        report.add(
            ("policy", "file"),
            f"file not found: {settings.policy.file}; relative paths start at the config's directory",
        )
