"""Checks for where the gateway keeps its data: data_dir, ``storage`` (durable) and ``state`` (fast)."""

from __future__ import annotations

import os
import re
import ssl
from collections.abc import Callable
from typing import Final, Literal

from gateway.settings.checks.values import require_positive
from gateway.settings.database_url import DATABASE_DRIVERS
from gateway.settings.report import Report, quote
from gateway.settings.schema import Settings
from gateway.settings.store_tls import SYSTEM_ROOTS, parse_pg_tls, parse_redis_tls, query_of

__all__ = ["check_pool", "check_stores"]

# Every scheme gateway/store/fast/url.py opens (the TLS forms of Sentinel and Cluster included).
_REDIS_SCHEMES: Final = (
    "redis",
    "rediss",
    "redis+sentinel",
    "rediss+sentinel",
    "redis+cluster",
    "rediss+cluster",
    "unix",
)


def _readable_url(url: str) -> bool:
    """Whether SQLAlchemy reads ``url`` as written: a password with a bare ``@`` or ``:`` either fails
    to parse (and the driver's error quotes it, in a traceback) or moves into the host name."""
    from sqlalchemy.engine import make_url

    authority = url.partition("://")[2].partition("/")[0]
    if authority.count("@") > 1:
        return False
    try:
        make_url(url)
    except (ValueError, TypeError):
        return False
    return True


def check_stores(settings: Settings, report: Report) -> None:
    """The data directory, the database and Redis URLs, and the embedded state's mode."""
    if not settings.data_dir.strip():
        report.add(
            ("data_dir",), "must not be empty; set a directory the gateway may write, e.g. /var/lib/gateway"
        )
    elif os.path.exists(settings.data_dir) and not os.path.isdir(settings.data_dir):
        report.add(("data_dir",), f"{settings.data_dir} exists and is not a directory")
    # Only the scheme is ever printed: these URLs routinely embed a password.
    url = settings.storage.url
    scheme = "" if url is None else url.partition("://")[0]
    if url is not None and scheme not in DATABASE_DRIVERS:
        report.bad(
            ("storage", "url"),
            f"unsupported database URL scheme {quote(scheme)}; use sqlite+aiosqlite:///path"
            " or postgresql+asyncpg://user@host/db",
        )
    elif url is not None and not _readable_url(url):
        # Never the value: it is where the password is.
        report.add(
            ("storage", "url"),
            "cannot be read as a URL (not shown: it may hold a password); percent-encode @, :, / and ? in"
            " the user name and password (%40, %3A, %2F, %3F), also in a ${file:...} or ${env:...} value",
        )
    elif url is not None and DATABASE_DRIVERS[scheme].startswith("postgresql"):
        pg_url = url
        _check_tls(report, ("storage", "url"), lambda: _pg_files(pg_url))
    if not re.fullmatch(r"[A-Za-z0-9_.:-]{1,32}", settings.state.namespace):
        report.add(("state", "namespace"), "use 1-32 letters, digits, '_', '.', ':' or '-', e.g. prod-gw:")
    url = settings.state.redis_url
    if url is not None and url.partition("://")[0] not in _REDIS_SCHEMES:
        report.bad(
            ("state", "redis_url"),
            f"unsupported Redis URL scheme {quote(url.partition('://')[0])}; use one of "
            + ", ".join(f"{scheme}://" for scheme in _REDIS_SCHEMES)
            + " or null for the embedded state in data_dir",
        )
    elif url is not None:
        redis_url = url
        _check_tls(report, ("state", "redis_url"), lambda: _redis_files(redis_url))
    _check_embedded_state(settings, report)


def check_pool(settings: Settings, report: Report) -> None:
    """The database connection pool has room for at least one connection."""
    require_positive([(("storage", "pool_size"), settings.storage.pool_size)], report)


def _check_embedded_state(settings: Settings, report: Report) -> None:
    if settings.state.embedded == "file":
        return
    path = ("state", "embedded")
    if settings.state.redis_url is not None:
        report.add(path, "applies only without state.redis_url; remove one of them")
    # Memory state lives inside one process: another worker, or the admin listener (its own process),
    # would not know this worker's sessions and would refuse them (or accept revoked ones).
    if settings.server.workers > 1:
        report.add(
            path,
            "memory keeps sessions and counters inside one process, so several workers would not share"
            " them; use file (the default) or server.workers: 1",
        )
    if settings.admin.listen is not None:
        report.add(
            path,
            "memory keeps sessions inside the gateway process, so the admin listener (its own process)"
            " could not see them; use file (the default) or admin.listen: null",
        )


# What a TLS file named in a store URL must hold: a CA bundle, a revocation list, a CA bundle with its
# CA's revocation list (Redis with the CRL check), or anything readable (a certificate or key).
_FileKind = Literal["ca", "crl", "ca+crl", "file"]


def _pg_files(url: str) -> list[tuple[str, str, _FileKind]]:
    tls = parse_pg_tls(query_of(url))
    files: list[tuple[str, str | None, _FileKind]] = [
        ("sslrootcert", None if tls.root_cert == SYSTEM_ROOTS else tls.root_cert, "ca"),
        ("sslcert", tls.cert, "file"),
        ("sslkey", tls.key, "file"),
        ("sslcrl", tls.crl, "crl"),
    ]
    return [(name, file, kind) for name, file, kind in files if file]


def _redis_files(url: str) -> list[tuple[str, str, _FileKind]]:
    scheme = url.partition("://")[0].lower()
    tls = parse_redis_tls(query_of(url), tls=scheme.startswith("rediss"))
    files: list[tuple[str, str | None, _FileKind]] = [
        ("ssl_ca_certs", tls.ca_file, "ca+crl" if tls.crl_check else "ca"),
        ("ssl_certfile", tls.cert_file, "file"),
        ("ssl_keyfile", tls.key_file, "file"),
    ]
    return [(name, file, kind) for name, file, kind in files if file]


def _check_tls(
    report: Report, path: tuple[str, str], files: Callable[[], list[tuple[str, str, _FileKind]]]
) -> None:
    """The URL's TLS options (``settings/store_tls.py``) and that their files load.

    Messages name the option and the file, never the URL: it may carry a password.
    """
    try:
        named = files()
    except ValueError as exc:
        report.add(path, str(exc))
        return
    for name, file, kind in named:
        try:
            if kind == "file":
                with open(file, "rb"):
                    pass
            elif kind == "ca":
                ssl.create_default_context(cafile=file)
            else:
                context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                context.load_verify_locations(cafile=file)
                if not context.cert_store_stats()["crl"]:
                    report.add(
                        path, f"{name}: {file} holds no revocation list (PEM, -----BEGIN X509 CRL-----)"
                    )
        except FileNotFoundError:
            report.add(path, f"{name}: file not found: {file}")
        except PermissionError:
            report.add(path, f"{name}: {file} is not readable by this user")
        except (OSError, ssl.SSLError) as exc:
            what = "certificate" if kind in ("ca", "file") else "certificate or revocation list"
            report.add(path, f"{name}: {file} holds no usable PEM {what} ({type(exc).__name__})")
