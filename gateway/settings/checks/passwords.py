"""Checks for ``passwords``: the argon2id cost and the length rule stay at or above the published floors."""

from __future__ import annotations

from gateway.settings.checks.values import require_at_most, require_positive
from gateway.settings.report import Report
from gateway.settings.schema import Settings

__all__ = ["check_costs", "check_strength"]


def check_costs(settings: Settings, report: Report) -> None:
    """Hashing cost and concurrency are positive, and not past what a sign-in can pay: argon2 refused
    10**30 with a traceback at every sign-in, and 4 TiB of memory as an allocation failure (a fuzzing
    run; check-config had said OK)."""
    passwords = settings.passwords
    require_positive(
        [
            (("passwords", "time_cost"), passwords.time_cost),
            (("passwords", "parallelism"), passwords.parallelism),
            (("passwords", "max_concurrent_hashes"), passwords.max_concurrent_hashes),
        ],
        report,
    )
    require_at_most(
        [
            (("passwords", "memory_kib"), passwords.memory_kib, 4 * 2**20, "4 GiB per hash"),
            (("passwords", "time_cost"), passwords.time_cost, 100, "passes over that memory"),
            (("passwords", "parallelism"), passwords.parallelism, 64, "threads per hash"),
            (("passwords", "max_concurrent_hashes"), passwords.max_concurrent_hashes, 1024, "per worker"),
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
