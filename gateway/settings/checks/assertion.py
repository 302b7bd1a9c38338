"""Checks for ``assertion``: the signed identity token upstreams accept as a bearer token."""

from __future__ import annotations

from gateway.settings.checks.values import require_positive
from gateway.settings.report import Report
from gateway.settings.schema import Settings

__all__ = ["check_key_rotation", "check_ttl"]


def check_ttl(settings: Settings, report: Report) -> None:
    """An assertion lives for a positive time."""
    require_positive([(("assertion", "ttl"), settings.assertion.ttl)], report)


def check_key_rotation(settings: Settings, report: Report) -> None:
    """The lifetime is short, and a replaced signing key stays published for as long as its tokens live."""
    if settings.assertion.ttl > 300:
        report.add(
            ("assertion", "ttl"), "must be at most 5m: an assertion is a bearer token upstreams accept"
        )
    if settings.assertion.grace < settings.assertion.ttl or settings.assertion.publish_ahead < 0:
        report.add(
            ("assertion", "grace"),
            "must be at least assertion.ttl (tokens signed by a replaced key must still verify),"
            " and publish_ahead must not be negative",
        )
