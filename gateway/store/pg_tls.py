"""TLS to PostgreSQL: libpq's ``sslmode``, ``sslrootcert``, ``sslcert``, ``sslkey`` and ``sslcrl`` in ``storage.url``.

Operators paste libpq URLs, so the gateway reads libpq's parameters (parsed and checked by
:mod:`gateway.settings.store_tls`) and hands asyncpg the ``ssl`` argument they mean; they never reach
the driver as raw options. Every PostgreSQL connection the gateway makes goes through
:func:`gateway.store.db.create_engine` and so through here: the workers, the admin listener,
migrations, CLI commands and the backup drill.

``verify-full`` checks the chain against ``sslrootcert`` and the URL's host against the certificate;
``verify-ca`` the chain only; ``require`` encrypts without checking (with ``sslrootcert``, like libpq,
it checks the chain); ``prefer`` (the default, as in libpq) and ``allow`` try TLS and fall back to
plaintext; ``disable`` never uses it. TLS 1.2 is the minimum. ``sslcrl`` (with a verified chain only)
refuses a server certificate its revocation list names; like libpq, the file is read again for every
new connection, so a CRL replaced before its ``nextUpdate`` applies without a restart, and one left to
expire fails connections (OpenSSL: "CRL has expired") instead of being ignored. The ``PGSSL*`` environment variables and
``~/.postgresql/`` are not read: what the URL says is what every process does.

To a host off this machine without verification, the gateway logs a warning once per process (it does
not refuse: a private network without TLS is a deployment decision, but it must be a visible one).
"""

from __future__ import annotations

import logging
import ssl
from typing import Final

from sqlalchemy.engine import URL

from gateway.errors import ConfigError
from gateway.settings.store_tls import SYSTEM_ROOTS, PgTls, is_loopback, parse_pg_tls

__all__ = ["TLS_PARAMETERS", "split_tls", "ssl_argument", "warn_unverified"]

TLS_PARAMETERS: Final = ("sslmode", "sslrootcert", "sslcert", "sslkey", "sslcrl")

logger = logging.getLogger("gateway.store")
_warned: set[tuple[str, str]] = set()


def split_tls(url: URL) -> tuple[URL, PgTls]:
    """The URL without its TLS parameters, and what they ask for.

    Raises:
        ConfigError: The TLS parameters are invalid (the message names the parameter, never the URL,
            which may carry a password).
    """
    query = {name: (value,) if isinstance(value, str) else tuple(value) for name, value in url.query.items()}
    try:
        tls = parse_pg_tls(query)
    except ValueError as exc:
        raise ConfigError(f"storage.url: {exc}") from None
    return url.difference_update_query(TLS_PARAMETERS), tls


def ssl_argument(tls: PgTls) -> ssl.SSLContext | str | bool:
    """asyncpg's ``ssl`` argument for ``tls``: a context for ``require`` and stronger, else the mode.

    Raises:
        ConfigError: A file cannot be loaded (missing, unreadable, not PEM, key not matching).
    """
    if tls.mode == "disable":
        return False
    if tls.mode in ("allow", "prefer"):
        # No files are allowed with these modes (the parser refuses them), so asyncpg's own context
        # for the mode, which verifies nothing, is exactly what the mode promises.
        return tls.mode
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        if tls.verifies:
            if tls.root_cert == SYSTEM_ROOTS:
                context.load_default_certs(ssl.Purpose.SERVER_AUTH)
            else:
                context.load_verify_locations(cafile=tls.root_cert)
            context.verify_mode = ssl.CERT_REQUIRED
            context.check_hostname = tls.checks_host
        else:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if tls.crl is not None:
            # OpenSSL's PEM lookup loads CRLs like certificates; the flag makes the leaf's issuer's
            # list required (a missing or expired one fails the handshake: fail closed).
            context.load_verify_locations(cafile=tls.crl)
            context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
        if tls.cert is not None:
            context.load_cert_chain(tls.cert, tls.key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"storage.url: cannot load the TLS files ({type(exc).__name__}: {exc})") from None
    return context


def warn_unverified(url: URL, tls: PgTls) -> None:
    """Log once per process and host when the server off this machine is not verified."""
    host = url.host or ""
    if tls.verifies or is_loopback(url.host) or (host, tls.mode) in _warned:
        return
    _warned.add((host, tls.mode))
    how = "may be unencrypted and" if tls.mode in ("disable", "allow", "prefer") else "is encrypted but"
    logger.warning(
        "storage.url: the connection to PostgreSQL at %s %s its server is not verified (sslmode=%s), so"
        " anyone on the network path can read or change the gateway's data; add"
        " ?sslmode=verify-full&sslrootcert=/path/to/ca.pem",
        host,
        how,
        tls.mode,
    )
