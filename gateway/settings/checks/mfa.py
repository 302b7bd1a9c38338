"""Checks for ``mfa``: recovery codes and how recent a second factor must be to change account security.

A route's own ``mfa`` requirement is checked with the route (:mod:`gateway.settings.checks.routes`).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from gateway.settings.checks.values import require_at_most, require_positive
from gateway.settings.report import Report, quote
from gateway.settings.schema import Settings

__all__ = ["check_mfa"]


def check_mfa(settings: Settings, report: Report) -> None:
    """The number of recovery codes and the re-authentication age are positive, and passkeys are bound
    to a relying-party id the browsers accept for the public_url (checked at start-up before, where a
    wrong one made every worker fail with a traceback: a fuzzing run)."""
    require_positive(
        [
            (("mfa", "recovery_codes"), settings.mfa.recovery_codes),
            (("mfa", "reauth_max_age"), settings.mfa.reauth_max_age),
        ],
        report,
    )
    require_at_most([(("mfa", "recovery_codes"), settings.mfa.recovery_codes, 100, "a sheet")], report)
    rp_id = settings.mfa.webauthn.rp_id
    host = (urlsplit(settings.public_url).hostname or "").lower()
    if rp_id is not None and host and host != rp_id.lower() and not host.endswith("." + rp_id.lower()):
        report.add(
            ("mfa", "webauthn", "rp_id"),
            f"{quote(rp_id)} is neither the public_url host {quote(host)} nor a parent domain of it; "
            "passkeys are bound to it, so leave it out (the host) or name a parent such as example.com",
        )
