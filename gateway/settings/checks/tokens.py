"""Checks for ``tokens``: the longest lifetime an API token may be given."""

from __future__ import annotations

from typing import Final

from gateway.settings.checks.values import require_positive
from gateway.settings.report import Report
from gateway.settings.schema import Settings

__all__ = ["check_tokens"]

# A token that outlives five years outlives the people who know it exists: nobody rotates it.
_LONGEST: Final = 5 * 365 * 86400.0


def check_tokens(settings: Settings, report: Report) -> None:
    """A positive maximum lifetime, at most five years."""
    lifetime = settings.tokens.max_lifetime
    require_positive([(("tokens", "max_lifetime"), lifetime)], report)
    if lifetime > _LONGEST:
        report.add(("tokens", "max_lifetime"), f"must be at most 5 years (1825d); got {lifetime / 86400:g}d")
