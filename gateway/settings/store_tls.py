"""TLS options of the store URLs as the operator writes them: libpq's ``sslmode`` family in
``storage.url`` and redis-py's ``ssl_*`` names in ``state.redis_url``.

Both live in the URL, not in separate keys, because every process and command that connects (workers,
admin listener, ``gateway migrate``, the CLI, the backup drill, the session counter) opens the store
from its URL alone: an option beside the URL is one a caller can forget, and then that caller would
connect without verification. Parsing is pure (no file is read, nothing connects), so the config check
(``settings/checks/storage.py``) and the store (``store/pg_tls.py``, ``store/fast/url.py``) apply the
same rules: unknown ``ssl*`` options are refused rather than passed on to a driver that might read
them as "do not verify", and files are absolute paths (a relative one would depend on the working
directory of whichever process opens the store).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal
from urllib.parse import parse_qs

__all__ = [
    "PG_SSL_MODES",
    "PgTls",
    "RedisTls",
    "is_loopback",
    "parse_pg_tls",
    "parse_redis_tls",
    "query_of",
]

PgSslMode = Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]
# libpq's order, weakest first.
PG_SSL_MODES: Final[tuple[PgSslMode, ...]] = (
    "disable",
    "allow",
    "prefer",
    "require",
    "verify-ca",
    "verify-full",
)
_PG_FILES: Final = ("sslrootcert", "sslcert", "sslkey")
_PG_DEFAULT_MODE: Final[PgSslMode] = "prefer"  # libpq's default
# libpq's spelling for "the operating system's trusted CAs".
SYSTEM_ROOTS: Final = "system"

_REDIS_FILES: Final = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")
# redis-py's option for extra verification flags, and the one value taken: the server's certificate
# checked against the revocation list the CA bundle holds.
_REDIS_FLAGS: Final = "ssl_include_verify_flags"
_REDIS_CRL_FLAG: Final = "VERIFY_CRL_CHECK_LEAF"


@dataclass(frozen=True, slots=True)
class PgTls:
    """TLS to PostgreSQL, from ``sslmode``, ``sslrootcert``, ``sslcert``, ``sslkey`` and ``sslcrl``.

    ``root_cert`` is a file, :data:`SYSTEM_ROOTS`, or None (no CA given: ``require`` then encrypts
    without verifying, as in libpq).
    """

    mode: PgSslMode = _PG_DEFAULT_MODE
    root_cert: str | None = None
    cert: str | None = None
    key: str | None = None
    # Revocation lists (PEM, one file): a server certificate listed there is refused.
    crl: str | None = None

    @property
    def verifies(self) -> bool:
        """Whether the server's certificate is checked against a CA (libpq: ``require`` with a root
        certificate behaves as ``verify-ca``)."""
        return self.mode in ("verify-ca", "verify-full") or (
            self.mode == "require" and self.root_cert is not None
        )

    @property
    def checks_host(self) -> bool:
        """Whether the certificate must also name the host of the URL."""
        return self.mode == "verify-full"


@dataclass(frozen=True, slots=True)
class RedisTls:
    """Files for ``rediss://``: the CA bundle (None: the system's trusted CAs) and a client certificate;
    ``crl_check``: the server's certificate is checked against the revocation list in the CA bundle."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    crl_check: bool = False


def query_of(url: str) -> dict[str, list[str]]:
    """The query parameters of a store URL, every value of each (blank ones kept).

    The query is taken after the last ``@``, so a password holding ``?`` cannot be mistaken for it.
    """
    rest = url.partition("://")[2]
    query = rest.rpartition("@")[2].partition("?")[2]
    return parse_qs(query, keep_blank_values=True)


def _one(query: Mapping[str, Sequence[str]], name: str) -> str | None:
    values = query.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise ValueError(f"{name} is given {len(values)} times; give it once")
    return values[0]


def _absolute_file(name: str, value: str) -> str:
    if not value:
        raise ValueError(f"{name} is empty; give the absolute path of a PEM file")
    if not os.path.isabs(value):
        raise ValueError(f"{name}={value} is not an absolute path; give the absolute path of a PEM file")
    return value


def parse_pg_tls(query: Mapping[str, Sequence[str]]) -> PgTls:
    """The TLS options of a PostgreSQL URL's query.

    Args:
        query: Parameter name to its values (:func:`query_of`, or SQLAlchemy's ``URL.query`` with each
            value as a sequence).

    Raises:
        ValueError: An unknown ``ssl*`` parameter (asyncpg's ``ssl=`` included: it would bypass these
            rules), a repeated one, an unknown mode, a relative or empty path, a certificate without
            its key, verification without a CA, or files under a mode that would not use them.
    """
    known = ("sslmode", *_PG_FILES, "sslcrl")
    unknown = sorted(name for name in query if name.startswith("ssl") and name not in known)
    if unknown:
        raise ValueError(
            f"unsupported TLS parameter(s) {', '.join(unknown)}; use sslmode, sslrootcert, sslcert, sslkey"
            " and sslcrl"
        )
    mode_text = _one(query, "sslmode")
    if mode_text is None:
        mode: PgSslMode = _PG_DEFAULT_MODE
    elif mode_text in PG_SSL_MODES:
        mode = mode_text
    else:
        raise ValueError(f"sslmode={mode_text} is not one of {', '.join(PG_SSL_MODES)}")
    root = _one(query, "sslrootcert")
    cert = _one(query, "sslcert")
    key = _one(query, "sslkey")
    if root is not None and root != SYSTEM_ROOTS:
        root = _absolute_file("sslrootcert", root)
    cert = None if cert is None else _absolute_file("sslcert", cert)
    key = None if key is None else _absolute_file("sslkey", key)
    if (cert is None) != (key is None):
        raise ValueError("sslcert and sslkey go together; give both or neither")
    given = [name for name, value in zip(_PG_FILES, (root, cert, key), strict=True) if value is not None]
    if given and mode in ("disable", "allow", "prefer"):
        # libpq would accept them and still fall back to plaintext, or not verify: the very trap an
        # operator who names a CA is trying to avoid.
        raise ValueError(
            f"{', '.join(given)} need sslmode=verify-full (or verify-ca, require); sslmode={mode}"
            " may connect without TLS"
        )
    if mode in ("verify-ca", "verify-full") and root is None:
        raise ValueError(
            f"sslmode={mode} needs sslrootcert=/path/to/ca.pem (the CA that issued the server's"
            " certificate) or sslrootcert=system (the system's trusted CAs)"
        )
    if root == SYSTEM_ROOTS and mode != "verify-full":
        # As libpq 16: public CAs issue certificates for any name, so only the host check binds them.
        raise ValueError("sslrootcert=system needs sslmode=verify-full")
    crl = _one(query, "sslcrl")
    if crl is not None:
        crl = _absolute_file("sslcrl", crl)
        if mode in ("disable", "allow", "prefer") or root is None:
            # Revocation is part of checking the chain: without the check, a list would promise what
            # nothing enforces.
            raise ValueError(
                "sslcrl needs a verified chain: sslmode=verify-full (or verify-ca) and sslrootcert"
            )
    return PgTls(mode, root, cert, key, crl)


def parse_redis_tls(query: Mapping[str, Sequence[str]], *, tls: bool) -> RedisTls:
    """The TLS options of a Redis URL's query (``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``).

    Args:
        query: Parameter name to its values.
        tls: Whether the scheme is a ``rediss`` one.

    Raises:
        ValueError: Another ``ssl_*`` option (``ssl_cert_reqs``, ``ssl_check_hostname``… would turn
            verification off), a repeated one, a relative or empty path, a certificate without its
            key, or any of them on a plain ``redis://`` URL.
    """
    known = (*_REDIS_FILES, _REDIS_FLAGS)
    unknown = sorted(name for name in query if name.startswith("ssl") and name not in known)
    if unknown:
        raise ValueError(
            f"unsupported TLS option(s) {', '.join(unknown)}; the server's certificate and host name are"
            " always verified, and only ssl_ca_certs, ssl_certfile, ssl_keyfile and"
            f" {_REDIS_FLAGS}={_REDIS_CRL_FLAG} can be given"
        )
    crl_check = _redis_crl_check(query)
    files = {name: _one(query, name) for name in _REDIS_FILES}
    given = [name for name, value in files.items() if value is not None]
    if crl_check:
        given.append(_REDIS_FLAGS)
    if given and not tls:
        raise ValueError(f"{', '.join(given)} need a rediss:// URL (TLS)")
    ca, cert, key = (None if value is None else _absolute_file(name, value) for name, value in files.items())
    if (cert is None) != (key is None):
        raise ValueError("ssl_certfile and ssl_keyfile go together; give both or neither")
    if crl_check and ca is None:
        raise ValueError(
            f"{_REDIS_FLAGS}={_REDIS_CRL_FLAG} needs ssl_ca_certs: the CA bundle that also holds the CA's"
            " revocation list (cat ca.pem ca.crl > bundle.pem)"
        )
    return RedisTls(ca, cert, key, crl_check)


def _redis_crl_check(query: Mapping[str, Sequence[str]]) -> bool:
    """Whether the URL asks for the revocation check: redis-py's own option, with the one value that
    only tightens verification (the others would loosen it: a partial chain, proxy certificates)."""
    value = _one(query, _REDIS_FLAGS)
    if value is None:
        return False
    if value.strip("[] ") != _REDIS_CRL_FLAG:
        raise ValueError(f"{_REDIS_FLAGS} takes {_REDIS_CRL_FLAG} only; got {value}")
    return True


def is_loopback(host: str | None) -> bool:
    """Whether ``host`` stays on this machine: none (a Unix socket), ``localhost``, a loopback IP or a
    socket directory."""
    if not host or host.startswith("/") or host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
