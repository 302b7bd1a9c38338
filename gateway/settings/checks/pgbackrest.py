"""Checks for ``backup.pgbackrest``: names, paths, ports and retention pgBackRest will accept."""

from __future__ import annotations

import re
from typing import Final

from gateway.settings.report import Report
from gateway.settings.schema import PgBackRestSettings, Settings

__all__ = ["STANZA_NAME", "check_pgbackrest"]

# A stanza names a directory in the repository and a section of pgbackrest.conf: keep it to what is
# safe in both (no brackets, slashes or spaces).
STANZA_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# Shorter passphrases are guessable offline by whoever holds a copy of the repository.
MIN_CIPHER_PASS: Final = 20


def check_pgbackrest(settings: Settings, report: Report) -> None:
    """The pgBackRest section, when present, describes a repository and a cluster pgBackRest can use."""
    pg = settings.backup.pgbackrest
    if pg is None:
        return
    base = ("backup", "pgbackrest")
    if STANZA_NAME.fullmatch(pg.stanza) is None:
        report.add(
            (*base, "stanza"), f"must be letters, digits, '_', '.' or '-' (at most 64); got {pg.stanza!r}"
        )
    for key, value in (("repo_path", pg.repo_path), ("pg_path", pg.pg_path), ("config_path", pg.config_path)):
        if not value.startswith("/"):
            report.add((*base, key), f"must be an absolute path; got {value!r}")
    if pg.pg_socket_path is not None and not pg.pg_socket_path.startswith("/"):
        report.add((*base, "pg_socket_path"), f"must be an absolute path; got {pg.pg_socket_path!r}")
    _check_cluster(pg, report)
    _check_repository(pg, report)


def _check_cluster(pg: PgBackRestSettings, report: Report) -> None:
    base = ("backup", "pgbackrest")
    if pg.pg_host is not None and pg.pg_socket_path is not None:
        report.add(
            (*base, "pg_host"), "set pg_host (a remote cluster) or pg_socket_path (a local one), not both"
        )
    if not 1 <= pg.pg_port <= 65535:
        report.add((*base, "pg_port"), f"must be a port between 1 and 65535; got {pg.pg_port}")
    if pg.os_user is not None and not re.fullmatch(r"[a-z_][a-z0-9_-]*\$?", pg.os_user):
        report.add((*base, "os_user"), f"must be an OS user name; got {pg.os_user!r}")


def _check_repository(pg: PgBackRestSettings, report: Report) -> None:
    base = ("backup", "pgbackrest")
    if len(pg.cipher_pass) < MIN_CIPHER_PASS:
        report.add(
            (*base, "cipher_pass"),
            f"must be at least {MIN_CIPHER_PASS} characters (e.g. `openssl rand -base64 48` in a file "
            "read with ${file:…})",
        )
    if any(c in pg.cipher_pass for c in "\r\n"):
        report.add((*base, "cipher_pass"), "must be one line (a secret file's final newline is fine)")
    if pg.retention_full < 1:
        report.add((*base, "retention_full"), f"must be at least 1; got {pg.retention_full}")
    if pg.retention_diff is not None and pg.retention_diff < 1:
        report.add((*base, "retention_diff"), f"must be at least 1 or left out; got {pg.retention_diff}")
