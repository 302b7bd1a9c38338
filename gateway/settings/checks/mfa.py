"""Checks for ``mfa``: recovery codes and how recent a second factor must be to change account security.

A route's own ``mfa`` requirement is checked with the route (:mod:`gateway.settings.checks.routes`).
"""

from __future__ import annotations

from gateway.settings.checks.values import require_positive
from gateway.settings.report import Report
from gateway.settings.schema import Settings

__all__ = ["check_mfa"]


def check_mfa(settings: Settings, report: Report) -> None:
    """The number of recovery codes and the re-authentication age are positive."""
    require_positive(
        [
            (("mfa", "recovery_codes"), settings.mfa.recovery_codes),
            (("mfa", "reauth_max_age"), settings.mfa.reauth_max_age),
        ],
        report,
    )
