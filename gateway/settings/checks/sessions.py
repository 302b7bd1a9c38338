"""Checks for ``session``: how long a session lives and what its cookie is called."""

from __future__ import annotations

from gateway.settings.checks.values import TOKEN, require_positive
from gateway.settings.report import Report, quote
from gateway.settings.schema import Settings

__all__ = ["check_cookie", "check_durations", "check_idle_within_lifetime", "check_insecure_cookies"]


def check_durations(settings: Settings, report: Report) -> None:
    """Both timeouts are positive."""
    require_positive(
        [
            (("session", "idle_timeout"), settings.session.idle_timeout),
            (("session", "lifetime"), settings.session.lifetime),
        ],
        report,
    )


def check_idle_within_lifetime(settings: Settings, report: Report) -> None:
    """An idle timeout longer than the lifetime could never end a session: surely a mistake."""
    if settings.session.idle_timeout > settings.session.lifetime:
        report.add(
            ("session", "idle_timeout"),
            f"is longer than session.lifetime ({settings.session.lifetime:g}s), so it would never apply;"
            " make it shorter",
        )


def check_cookie(settings: Settings, report: Report) -> None:
    """The cookie name is an HTTP token, or browsers would drop or split the cookie."""
    cookie = settings.session.cookie_name
    if not TOKEN.fullmatch(cookie):
        report.add(("session", "cookie_name"), f"{quote(cookie)} is not a valid cookie name")


def check_insecure_cookies(settings: Settings, report: Report) -> None:
    """``insecure_cookies`` is for plain-HTTP trials on one machine: with TLS or an https public URL it
    would send the session cookie without ``Secure`` and without the ``__Host-`` prefix for nothing."""
    if settings.session.insecure_cookies and settings.served_over_https:
        report.add(
            ("session", "insecure_cookies"),
            "is true while the gateway is served over HTTPS (tls or an https public_url): the session "
            "cookie would lose Secure and its __Host- prefix; remove it (it is for plain-HTTP trials only)",
        )
