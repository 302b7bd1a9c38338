"""Checks for ``regulation``: how many failed sign-ins lock an account, and for how long."""

from __future__ import annotations

from gateway.settings.checks.values import require_positive
from gateway.settings.report import Report
from gateway.settings.schema import Settings

__all__ = ["check_allowance", "check_counts"]


def check_counts(settings: Settings, report: Report) -> None:
    """The failure limit and the lock time are positive."""
    require_positive(
        [
            (("regulation", "max_failures"), settings.regulation.max_failures),
            (("regulation", "lock_time"), settings.regulation.lock_time),
            (("regulation", "address_window"), settings.regulation.address_window),
        ],
        report,
    )
    for name in ("address_failures", "address_challenges", "address_introspections"):
        if getattr(settings.regulation, name) < 0:
            report.add(("regulation", name), "must be 0 (no limit) or more")


def check_allowance(settings: Settings, report: Report) -> None:
    """Free attempts come before the limit, and the limit stays within NIST's bound."""
    if not 0 <= settings.regulation.free_attempts < settings.regulation.max_failures:
        report.add(("regulation", "free_attempts"), "must be at least 0 and below regulation.max_failures")
    if settings.regulation.max_failures > 100:
        report.add(("regulation", "max_failures"), "must not exceed 100 (NIST SP 800-63B §5.2.2)")
