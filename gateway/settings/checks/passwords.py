"""Checks for ``passwords``: the argon2id cost and the length rule stay at or above the published floors."""

from __future__ import annotations

from gateway.settings.checks.values import require_positive
from gateway.settings.report import Report
from gateway.settings.schema import Settings

__all__ = ["check_costs", "check_strength"]


def check_costs(settings: Settings, report: Report) -> None:
    """Hashing cost and concurrency are positive."""
    require_positive(
        [
            (("passwords", "time_cost"), settings.passwords.time_cost),
            (("passwords", "parallelism"), settings.passwords.parallelism),
            (("passwords", "max_concurrent_hashes"), settings.passwords.max_concurrent_hashes),
        ],
        report,
    )


def check_strength(settings: Settings, report: Report) -> None:
    """Memory cost (OWASP) and minimum length (NIST) are not below their floors."""
    if settings.passwords.memory_kib < 19456:
        report.add(
            ("passwords", "memory_kib"),
            f"{settings.passwords.memory_kib} is below OWASP's minimum for argon2id; use at least 19456 (19 MiB)",
        )
    if settings.passwords.min_length < 8:
        report.add(("passwords", "min_length"), "must be at least 8 (NIST SP 800-63B)")
