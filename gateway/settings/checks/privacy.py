"""Checks for ``privacy``: the grievance contact, the purposes and their notices, request due times
and retention periods."""

from __future__ import annotations

import re
from typing import Final

from gateway.settings.checks.values import NAME_RULE, require_positive
from gateway.settings.report import Report
from gateway.settings.schema import PRIVACY_LAWS, Settings

__all__ = ["LAWS", "check_privacy"]

LAWS: Final = PRIVACY_LAWS

_NAME: Final = re.compile(r"[a-z0-9][a-z0-9_-]*")
# Deliberately loose: one @, no spaces; the address is shown, never sent to.
_EMAIL: Final = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


def check_privacy(settings: Settings, report: Report) -> None:
    """Purposes are uniquely named with a title, a notice and a version of at least 1; only
    legitimate-interest purposes can be objected to; every law has a positive due time; retention
    periods are positive; the contact's email looks like one."""
    privacy = settings.privacy
    contact = privacy.contact
    if contact.email and not _EMAIL.fullmatch(contact.email):
        report.bad(("privacy", "contact", "email"), "is not an email address", "e.g. privacy@example.com")
    _check_purposes(settings, report)
    if privacy.export_limit < 0:
        report.bad(
            ("privacy", "export_limit"), "is negative", "0 for no limit, else exports per export_window"
        )
    require_positive(
        [(("privacy", "due", law), privacy.due.of(law)) for law in LAWS]
        + [
            (("privacy", "contact", "response_time"), contact.response_time),
            (("privacy", "overdue_check"), privacy.overdue_check),
            (("privacy", "export_window"), privacy.export_window),
        ]
        + [
            (("privacy", "retention", field), getattr(privacy.retention, field))
            for field in privacy.retention.__struct_fields__
        ],
        report,
    )


def _check_purposes(settings: Settings, report: Report) -> None:
    seen: set[str] = set()
    for i, purpose in enumerate(settings.privacy.purposes):
        at = ("privacy", "purposes", i)
        if not _NAME.fullmatch(purpose.name):
            report.bad((*at, "name"), "is not a valid purpose name", NAME_RULE)
        elif purpose.name in seen:
            report.add((*at, "name"), f"purpose {purpose.name!r} is defined twice")
        seen.add(purpose.name)
        if not purpose.title.strip():
            report.add((*at, "title"), "must not be empty: it is what the person sees")
        if not purpose.notice.strip():
            report.add((*at, "notice"), "must not be empty: a purpose needs its notice")
        if purpose.version < 1:
            report.add((*at, "version"), f"must be 1 or more; got {purpose.version}")
        if purpose.objectable and purpose.basis != "legitimate_interest":
            report.add(
                (*at, "objectable"),
                f"only legitimate_interest purposes can be objected to (this one is {purpose.basis}; "
                "consent purposes are withdrawn instead)",
            )
