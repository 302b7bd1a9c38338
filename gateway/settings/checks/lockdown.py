"""Checks for ``lockdown``: the break-glass group's name, the times, and the maintenance page's text."""

from __future__ import annotations

import re
from typing import Final

from gateway.settings.checks.values import require_positive
from gateway.settings.report import Report
from gateway.settings.schema import Settings

__all__ = ["check_lockdown"]

# A role name, or an identity provider's group as sessions keep it (``<provider>:<group>``, the
# provider checked against identity_providers): no spaces, no principal prefix (``group:ops`` would
# never match: see gateway/threat/lockdown.py).
_GROUP: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@/-]{0,127}")
# Retry-After beyond a day tells every client and crawler to give up; an emergency is shorter.
_MAX_RETRY_AFTER: Final = 86400.0
_MAX_TEXT: Final = 1000


def check_lockdown(settings: Settings, report: Report) -> None:
    """Positive times, a usable group name, and a page text a person can read."""
    lockdown = settings.lockdown
    require_positive(
        [
            (("lockdown", "max_factor_age"), lockdown.max_factor_age),
            (("lockdown", "retry_after"), lockdown.retry_after),
            (("lockdown", "refresh_interval"), lockdown.refresh_interval),
        ],
        report,
    )
    if lockdown.retry_after > _MAX_RETRY_AFTER:
        report.add(("lockdown", "retry_after"), "must be at most 1d (clients would stop retrying)")
    group = lockdown.break_glass_group
    if group is not None:
        provider, _, name = group.rpartition(":")
        if not _GROUP.fullmatch(name):
            report.add(
                ("lockdown", "break_glass_group"),
                "must be a role name or <provider>:<group> (letters, digits, _ . @ / -; no spaces and no "
                "'group:' prefix), e.g. break-glass or corp:sre-oncall",
            )
        elif provider and provider not in {idp.name for idp in settings.identity_providers}:
            report.add(
                ("lockdown", "break_glass_group"),
                f"names the group of provider {provider!r}, which identity_providers does not configure: "
                "nobody would pass",
            )
    for key, text in (("title", lockdown.title), ("message", lockdown.message)):
        if not text.strip():
            report.add(("lockdown", key), "must not be empty: it is what everyone sees during a lockdown")
        elif len(text) > _MAX_TEXT:
            report.add(("lockdown", key), f"must be at most {_MAX_TEXT} characters")
