"""Checks for ``audit``: how often the audit trail is sealed by a signed checkpoint."""

from __future__ import annotations

from gateway.settings.checks.values import require_positive
from gateway.settings.report import Report
from gateway.settings.schema import Settings

__all__ = ["check_checkpoints"]


def check_checkpoints(settings: Settings, report: Report) -> None:
    """The checkpoint interval is positive."""
    require_positive([(("audit", "checkpoint_interval"), settings.audit.checkpoint_interval)], report)
