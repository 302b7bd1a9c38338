"""Checks for ``routes[].upstream_tls``: readable files, a key that matches its certificate, a pin of the
right shape, a valid server name, and TLS settings only where the upstreams speak TLS.

The files are loaded the way the gateway will load them (Python's ``ssl``), so what passes here also
connects; messages name the setting and the file, never the key's content.
"""

from __future__ import annotations

import re
import ssl
from typing import Final

from gateway.settings.checks.values import host_problem
from gateway.settings.report import KeyPath, Report
from gateway.settings.schema import Route, Settings, UpstreamTls

__all__ = ["PIN_SHAPE", "check_upstream_tls"]

# 32 bytes in hex, as `openssl x509 -fingerprint -sha256` prints them (colons) or without colons.
PIN_SHAPE: Final = re.compile(r"(?:[0-9a-fA-F]{2}:){31}[0-9a-fA-F]{2}|[0-9a-fA-F]{64}")


def check_upstream_tls(settings: Settings, report: Report) -> None:
    """Every route's ``upstream_tls`` on its own and against the route's upstreams."""
    for index, route in enumerate(settings.routes):
        if route.upstream_tls is not None:
            _check(route, route.upstream_tls, ("routes", index, "upstream_tls"), report)


def _check(route: Route, tls: UpstreamTls, at: KeyPath, report: Report) -> None:
    for index, upstream in enumerate(route.upstreams):
        if not upstream.strip().lower().startswith("https://"):
            # The settings would silently do nothing there, and a client certificate suggests the
            # operator believes the hop is protected.
            report.add(
                ("routes", at[1], "upstreams", index),
                "upstream_tls applies to https:// upstreams only; use https:// or remove upstream_tls",
            )
    if (tls.certificate is None) != (tls.key is None):
        missing = "key" if tls.key is None else "certificate"
        report.add((*at, missing), "certificate and key go together; give both or neither")
    # Both checked (a list, not a short-circuiting generator): every missing file is named at once.
    readable = all([_readable(report, (*at, name), getattr(tls, name)) for name in ("certificate", "key")])
    if tls.certificate is not None and tls.key is not None and readable:
        problem = _pair_problem(tls.certificate, tls.key)
        if problem:
            report.add((*at, "key"), problem)
    if _readable(report, (*at, "ca_file"), tls.ca_file) and tls.ca_file is not None:
        try:
            ssl.create_default_context(cafile=tls.ca_file)
        except ssl.SSLError as exc:
            report.add((*at, "ca_file"), f"holds no usable PEM certificate ({exc.reason or exc})")
    _check_crl(tls, at, report)
    if tls.pin_sha256 is not None and not PIN_SHAPE.fullmatch(tls.pin_sha256.strip()):
        report.bad(
            (*at, "pin_sha256"),
            "is not a SHA-256 fingerprint",
            "expected 64 hex digits, colons between bytes allowed"
            " (`openssl x509 -in app.pem -noout -fingerprint -sha256`)",
        )
    if tls.server_name is not None:
        problem = host_problem(tls.server_name)
        if problem or "*" in tls.server_name:
            report.bad(
                (*at, "server_name"),
                f"{report.show((*at, 'server_name'), tls.server_name)} {problem or 'must not be a wildcard'}",
                "expected the name in the app's certificate, such as wiki.internal",
            )


def _check_crl(tls: UpstreamTls, at: KeyPath, report: Report) -> None:
    if tls.crl_file is None:
        return
    if tls.pin_sha256 is not None and tls.ca_file is None:
        # A pin alone checks no chain, so no list would ever be consulted.
        report.add((*at, "crl_file"), "a revocation list needs the chain checked; give ca_file with the pin")
        return
    if _readable(report, (*at, "crl_file"), tls.crl_file):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        try:
            context.load_verify_locations(cafile=tls.crl_file)
        except ssl.SSLError as exc:
            report.add((*at, "crl_file"), f"holds no usable PEM revocation list ({exc.reason or exc})")
            return
        if not context.cert_store_stats()["crl"]:
            report.add((*at, "crl_file"), "holds no revocation list (PEM, -----BEGIN X509 CRL-----)")


def _readable(report: Report, path: KeyPath, file: str | None) -> bool:
    """Whether ``file`` (if set) can be opened; records the problem if not."""
    if file is None:
        return True
    try:
        with open(file, "rb"):
            pass
    except FileNotFoundError:
        report.add(
            path, f"file not found: {report.show(path, file)}; relative paths start at the config's directory"
        )
        return False
    except OSError as exc:
        report.add(path, f"cannot read {report.show(path, file)} ({exc.strerror or type(exc).__name__})")
        return False
    return True


def _pair_problem(certificate: str, key: str) -> str | None:
    """Why the certificate and key cannot be used together, or None. Never shows the key."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_cert_chain(certificate, key, password=_refuse_password)
    except _Encrypted:
        return "the key is encrypted; give the gateway an unencrypted key file readable only by it"
    except ssl.SSLError as exc:
        reason = exc.reason or ""
        if "KEY_VALUES_MISMATCH" in reason:
            return "does not belong to the certificate (their public keys differ)"
        return f"cannot be loaded with the certificate ({reason or 'not PEM'})"
    return None


class _Encrypted(Exception):
    pass


def _refuse_password() -> bytes:
    # Never prompt: a server process has no terminal, and an encrypted key cannot be used unattended.
    raise _Encrypted
