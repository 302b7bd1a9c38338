"""TLS to a route's upstreams: the client certificate the gateway presents and how it checks the app.

Built once per snapshot (:meth:`UpstreamPool.from_route`), so the hot path only hands a ready
:class:`ssl.SSLContext` to the connection; a reload builds a new one from the files as they are then, so
a renewed certificate is used by every connection opened after the reload.

The pin is checked inside the TLS handshake, not after it: :class:`_PinnedObject` is the context's
``sslobject_class``, which asyncio and uvloop both use for every connection, so a wrong certificate
fails the handshake before the first byte of the request (identity headers, the signed assertion)
leaves the gateway. The same context therefore serves the proxy's own client, the WebSocket client and
the health checks (all on asyncio transports).
"""

from __future__ import annotations

import hashlib
import hmac
import ssl
from dataclasses import dataclass
from typing import Final

from gateway.settings.checks.upstream_tls import PIN_SHAPE
from gateway.settings.schema import UpstreamTls

__all__ = ["TlsClient", "describe_tls_error", "normalise_pin", "tls_client"]

_VERSIONS: Final = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


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


@dataclass(frozen=True, eq=False, slots=True)
class TlsClient:
    """A route's upstream TLS, ready to connect with.

    ``eq=False``: compared and hashed by identity, so the keep-alive pool keys a connection by the
    snapshot's TLS settings and a connection made with an old certificate is never reused after a reload.

    Attributes:
        context: The client context (certificate, CA or pin, minimum version).
        server_name: SNI and the name checked against the certificate; ``None`` means the URL's host.
    """

    context: ssl.SSLContext
    server_name: str | None


def tls_client(settings: UpstreamTls | None) -> TlsClient | None:
    """Build the context for a route's ``upstream_tls``; ``None`` when the route has none.

    Raises:
        ValueError: A file cannot be read or does not hold what it should (the settings checks catch
            this first; the message names the setting, never the key's content).
    """
    if settings is None:
        return None
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
    if settings.certificate is not None and settings.key is not None:
        try:
            context.load_cert_chain(settings.certificate, settings.key, password=_no_password)
        except (OSError, ssl.SSLError, _Encrypted) as exc:
            raise ValueError(f"upstream_tls.certificate/key: cannot load them ({_reason(exc)})") from exc
    return TlsClient(context=context, server_name=settings.server_name)


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
