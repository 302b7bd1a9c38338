"""TLS to a route's upstreams: the client certificate the gateway presents and how it checks the app.

Built once per snapshot (:meth:`UpstreamPool.from_route`), so the hot path only hands a ready
:class:`ssl.SSLContext` to the connection; a reload builds a new one from the files as they are then, so
a renewed certificate is used by every connection opened after the reload. A revocation list
(``crl_file``) is the exception: it expires on its own schedule, so :class:`TlsClient` builds the
context again when that file changes.

The pin is checked inside the TLS handshake, not after it: :class:`_PinnedObject` is the context's
``sslobject_class``, which asyncio and uvloop both use for every connection, so a wrong certificate
fails the handshake before the first byte of the request (identity headers, the signed assertion)
leaves the gateway. The same context therefore serves the proxy's own client, the WebSocket client and
the health checks (all on asyncio transports).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import ssl
import time
from typing import Final

from gateway.settings.checks.upstream_tls import PIN_SHAPE
from gateway.settings.schema import UpstreamTls

__all__ = ["CRL_CHECK_INTERVAL", "TlsClient", "describe_tls_error", "normalise_pin", "tls_client"]

_VERSIONS: Final = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
# How often, at most, a route's crl_file is looked at for a replacement (seconds).
CRL_CHECK_INTERVAL: Final = 1.0

logger = logging.getLogger("gateway.upstream")


def normalise_pin(pin: str) -> bytes:
    """The 32 bytes a pin names. Raises ValueError unless it has :data:`PIN_SHAPE`."""
    pin = pin.strip()
    if not PIN_SHAPE.fullmatch(pin):
        raise ValueError("pin_sha256 must be 64 hex digits (colons between bytes allowed)")
    return bytes.fromhex(pin.replace(":", ""))


class _PinnedObject(ssl.SSLObject):
    """An SSL object that fails its handshake unless the peer's leaf certificate has the pinned hash."""

    def do_handshake(self) -> None:
        super().do_handshake()  # raises SSLWantReadError until the handshake is done
        pin = getattr(self.context, "pin", None)
        if pin is None:
            return
        der = self.getpeercert(binary_form=True)
        if der is None or not hmac.compare_digest(hashlib.sha256(der).digest(), pin):
            error = ssl.SSLCertVerificationError("the application's certificate does not match pin_sha256")
            # As OpenSSL's own verification errors carry them, so callers describe both the same way.
            error.reason = "CERTIFICATE_PIN_MISMATCH"
            error.verify_message = "the application's certificate does not match pin_sha256"
            raise error


class _PinningContext(ssl.SSLContext):
    sslobject_class = _PinnedObject
    pin: bytes | None = None


class TlsClient:
    """A route's upstream TLS, ready to connect with.

    Compared and hashed by identity, so the keep-alive pool keys a connection by the snapshot's TLS
    settings and a connection made with an old certificate is never reused after a reload.

    With ``crl_file`` the context is built again when that file changes (looked at, at most once a
    second, when a connection is opened): a revocation list is replaced before its ``nextUpdate``,
    and a context holding the old one would refuse every new connection once it expired. A new list
    that cannot be read leaves the last good context in place and is logged.

    Attributes:
        server_name: SNI and the name checked against the certificate; ``None`` means the URL's host.
    """

    __slots__ = ("_checked", "_context", "_crl_seen", "_follow", "server_name")

    def __init__(
        self, context: ssl.SSLContext, server_name: str | None, settings: UpstreamTls | None = None
    ) -> None:
        self._context = context
        self.server_name = server_name
        # The settings to build from again and the revocation list to watch; None without a list
        # (then the property's one test is all a connection pays).
        crl = None if settings is None else settings.crl_file
        self._follow = None if settings is None or crl is None else (settings, crl)
        self._crl_seen = None if crl is None else _file_state(crl)
        self._checked = time.monotonic()

    @property
    def context(self) -> ssl.SSLContext:
        """The client context (certificate, CA or pin, revocation list, minimum version)."""
        if self._follow is not None:
            self._follow_crl(*self._follow)
        return self._context

    def _follow_crl(self, settings: UpstreamTls, crl: str) -> None:
        now = time.monotonic()
        if now - self._checked < CRL_CHECK_INTERVAL:
            return
        self._checked = now
        seen = _file_state(crl)
        if seen == self._crl_seen:
            return
        self._crl_seen = seen
        try:
            self._context = _context_for(settings)
        except ValueError as exc:
            logger.warning(
                "upstream_tls.crl_file %s changed but cannot be used; keeping the last one: %s", crl, exc
            )


def _file_state(path: str) -> tuple[int, int, int] | None:
    """What tells a replaced file from the one read before (rename, copy or rewrite in place)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def tls_client(settings: UpstreamTls | None) -> TlsClient | None:
    """Build the context for a route's ``upstream_tls``; ``None`` when the route has none.

    Raises:
        ValueError: A file cannot be read or does not hold what it should (the settings checks catch
            this first; the message names the setting, never the key's content).
    """
    if settings is None:
        return None
    return TlsClient(_context_for(settings), settings.server_name, settings)


def _context_for(settings: UpstreamTls) -> ssl.SSLContext:
    context = _PinningContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = _VERSIONS[settings.min_version]
    if settings.pin_sha256 is not None:
        context.pin = normalise_pin(settings.pin_sha256)
    try:
        if settings.ca_file is not None:
            context.load_verify_locations(cafile=settings.ca_file)
        elif context.pin is not None:
            # The pin is the whole check: the app may be self-signed, under any name.
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        else:
            context.load_default_certs()
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"upstream_tls.ca_file: cannot load it ({_reason(exc)})") from exc
    if settings.crl_file is not None:
        try:
            # OpenSSL's PEM lookup loads CRLs like certificates; the flag makes the list of the
            # leaf's issuer required (missing or expired: the handshake fails, closed).
            context.load_verify_locations(cafile=settings.crl_file)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"upstream_tls.crl_file: cannot load it ({_reason(exc)})") from exc
        context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    if settings.certificate is not None and settings.key is not None:
        try:
            context.load_cert_chain(settings.certificate, settings.key, password=_no_password)
        except (OSError, ssl.SSLError, _Encrypted) as exc:
            raise ValueError(f"upstream_tls.certificate/key: cannot load them ({_reason(exc)})") from exc
    return context


class _Encrypted(Exception):
    def __str__(self) -> str:
        return "the key is encrypted"


def describe_tls_error(exc: ssl.SSLError) -> str:
    """A short reason for a failed handshake, e.g. ``certificate verify failed: unable to get local
    issuer certificate``; it names no file and holds nothing secret."""
    verify = getattr(exc, "verify_message", None)
    reason = getattr(exc, "reason", None)
    if verify:
        return f"certificate verify failed: {verify}"
    if reason:
        return str(reason).lower().replace("_", " ")
    return type(exc).__name__


def _no_password() -> bytes:
    # An encrypted key fails to load instead of prompting on the terminal of a server process.
    raise _Encrypted


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or exc.strerror or type(exc).__name__
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return str(exc)
