"""Checks for ``tls``: the certificate and key can be read when the listener starts."""

from __future__ import annotations

from gateway.settings.report import Report
from gateway.settings.schema import Settings

__all__ = ["check_tls"]


def check_tls(settings: Settings, report: Report) -> None:
    """The certificate and key files exist and are readable (a bad file is a config error, not a crash)."""
    tls = settings.tls
    if tls is None:
        return
    for key, file in (("certificate", tls.certificate), ("key", tls.key)):
        path = ("tls", key)
        try:
            with open(file, "rb"):
                pass
        except FileNotFoundError:
            report.add(
                path,
                f"file not found: {report.show(path, file)}; relative paths start at the config's directory",
            )
        except OSError as exc:
            report.add(path, f"cannot read {report.show(path, file)} ({exc.strerror or type(exc).__name__})")
