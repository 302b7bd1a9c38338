"""Relative filesystem paths in the settings, made absolute against the config file's directory.

So the same file works from any working directory, and every consumer reads a path it can open as is.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import msgspec

from gateway.settings.schema import Settings, UpstreamTls

__all__ = ["resolve_paths"]


def resolve_paths(settings: Settings, base_dir: Path) -> Settings:
    """Return ``settings`` with relative filesystem paths made absolute against ``base_dir``.

    Covers ``data_dir``, the TLS certificate and key, the routes' ``upstream_tls`` files, the CA files
    of ``tracing`` and ``notify.smtp``, ``backup.directory`` and its directory ``targets``, and a
    relative ``sqlite+aiosqlite:///`` URL.
    Idempotent: absolute paths are only normalised, so resolving twice changes nothing.

    Args:
        settings: Settings as validated.
        base_dir: The config file's directory.

    Returns:
        The same settings with absolute paths.
    """
    base = os.path.abspath(base_dir)

    def absolute(value: str) -> str:
        # An empty (or blank) value stays as written so the semantic check can name it instead of
        # silently meaning base.
        return os.path.normpath(os.path.join(base, value)) if value.strip() else value

    def maybe(value: str | None) -> str | None:
        return absolute(value) if value is not None else None

    tls = settings.tls
    if tls is not None:
        tls = msgspec.structs.replace(tls, certificate=absolute(tls.certificate), key=absolute(tls.key))
    storage = settings.storage
    if storage.url is not None:
        storage = msgspec.structs.replace(storage, url=_absolute_sqlite_url(storage.url, absolute))
    policy = settings.policy
    if policy.file is not None:
        policy = msgspec.structs.replace(policy, file=absolute(policy.file))
    sinks = tuple(
        msgspec.structs.replace(
            sink,
            path=absolute(sink.path) if sink.path is not None else None,
            ca_file=absolute(sink.ca_file) if sink.ca_file is not None else None,
        )
        for sink in settings.logging.sinks
    )
    routes = tuple(
        msgspec.structs.replace(route, upstream_tls=_absolute_upstream_tls(route.upstream_tls, maybe))
        if route.upstream_tls is not None
        else route
        for route in settings.routes
    )
    smtp = settings.notify.smtp
    if smtp is not None:
        smtp = msgspec.structs.replace(smtp, ca_file=maybe(smtp.ca_file))
    backup = msgspec.structs.replace(
        settings.backup,
        directory=maybe(settings.backup.directory),
        # rclone:<remote>:<path> names a remote, not a file here.
        targets=tuple(t if t.startswith("rclone:") else absolute(t) for t in settings.backup.targets),
    )
    return msgspec.structs.replace(
        settings,
        data_dir=absolute(settings.data_dir),
        tls=tls,
        routes=routes,
        storage=storage,
        policy=policy,
        logging=msgspec.structs.replace(settings.logging, sinks=sinks),
        tracing=msgspec.structs.replace(settings.tracing, ca_file=maybe(settings.tracing.ca_file)),
        notify=msgspec.structs.replace(settings.notify, smtp=smtp),
        backup=backup,
        threat=msgspec.structs.replace(
            settings.threat,
            block_lists=tuple(absolute(f) for f in settings.threat.block_lists),
            geoip_database=(
                absolute(settings.threat.geoip_database)
                if settings.threat.geoip_database is not None
                else None
            ),
        ),
    )


def _absolute_upstream_tls(tls: UpstreamTls, maybe: Callable[[str | None], str | None]) -> UpstreamTls:
    return msgspec.structs.replace(
        tls,
        certificate=maybe(tls.certificate),
        key=maybe(tls.key),
        ca_file=maybe(tls.ca_file),
        crl_file=maybe(tls.crl_file),
    )


def _absolute_sqlite_url(url: str, absolute: Callable[[str], str]) -> str:
    prefix = "sqlite+aiosqlite:///"
    if not url.startswith(prefix):
        return url
    file, mark, query = url[len(prefix) :].partition("?")
    # "sqlite+aiosqlite:////abs" is already absolute; ":memory:" and "" are in-memory databases.
    if not file or file.startswith("/") or file == ":memory:":
        return url
    return f"{prefix}{absolute(file)}{mark}{query}"
