"""``gateway pgbackrest …``: backups of a PostgreSQL deployment with pgBackRest, and point-in-time recovery.

    gateway pgbackrest config [--write] [--output FILE]
    gateway pgbackrest stanza-create
    gateway pgbackrest check
    gateway pgbackrest backup [--type full|diff|incr] [--no-replicate]
    gateway pgbackrest info [--json]
    gateway pgbackrest verify [--target TARGET]
    gateway pgbackrest restore --pg-path DIR [--backup LABEL] [--target-time ISO] [--repo-path DIR] [--force]

``config`` prints the ``pgbackrest.conf`` written from ``backup.pgbackrest`` (the passphrase redacted)
and the ``postgresql.conf`` lines that archive the WAL into it; ``--write`` writes the file (mode 0600).
The other actions run the pgBackRest command of the same name, showing its output as it comes.
``backup`` then verifies the repository and copies it to every ``backup.targets`` (when there are
any). ``verify`` checks every backup's files and the WAL each needs (``--target``: the copy at one of
``backup.targets``); a failure names the backup label and the file. ``restore`` restores into a NEW
data directory (``--type=time --target-action=promote`` with ``--target-time``; ``--backup`` alone: that
backup as it was when it finished; ``--repo-path``: from a copy of the repository), and refuses a
running cluster's, the live one's or a non-empty directory without ``--force``. ``backup``, ``verify``
and ``restore`` are recorded in the audit trail (``backup.pg.created``, ``backup.pg.verified``,
``backup.pg.restored``; a failure too) when the gateway's database is reachable.

Exit codes: 0 done, 1 pgBackRest failed (its ``ERROR`` line is printed), 2 invalid input or
configuration (also: ``backup.pgbackrest`` is not configured). Every action takes ``--config FILE``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.cli.harness import (
    EXIT_OK,
    Failed,
    SubParsers,
    UserError,
    command_group,
    config_arg,
    load_config,
    record_backup_run,
    record_event,
)

if TYPE_CHECKING:
    from gateway.backup.pgbackrest import Result
    from gateway.settings.schema import PgBackRestSettings, Settings

__all__ = ["parse_time", "register"]

logger = logging.getLogger(__name__)


def parse_time(text: str) -> datetime:
    """``--target-time``: an ISO 8601 date and time; without a zone it is UTC.

    Raises:
        UserError: Not an ISO 8601 date and time.
    """
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise UserError(
            f"--target-time {text[:40]!r} is not an ISO 8601 time (like 2027-06-01T12:00:00+00:00)"
        ) from None
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at


def _settings(args: argparse.Namespace) -> tuple[Settings, PgBackRestSettings]:
    settings = load_config(args)
    pg = settings.backup.pgbackrest
    if pg is None:
        raise UserError(
            "backup.pgbackrest is not configured; add it to the configuration (the README: Backups of the PostgreSQL database)"
        )
    return settings, pg


def _show(line: str) -> None:
    # pgBackRest's progress and messages go to stderr, so stdout stays the command's own result.
    print(line, file=sys.stderr, flush=True)


def _record(settings: Settings, kind: str, *, outcome: str, details: dict[str, object]) -> None:
    """Record the event in the gateway's audit trail; an unreachable database only prints a warning."""
    record_event(settings, kind, outcome=outcome, subject=str(details.get("stanza", "")), details=details)


def _pgbackrest(
    settings: Settings,
    pg: PgBackRestSettings,
    command: str,
    *options: str,
    event: str | None = None,
    details: dict[str, object] | None = None,
) -> Result:
    """Run one pgBackRest command; record ``event`` (success or failure) when given.

    Raises:
        Failed: pgBackRest failed (its message names why).
    """
    from gateway.backup.pgbackrest import PgBackRestError
    from gateway.backup.pgbackrest import run as run_pgbackrest

    facts: dict[str, object] = {"stanza": pg.stanza, "command": command, **(details or {})}
    try:
        result = run_pgbackrest(pg, command, *options, on_line=_show)
    except PgBackRestError as exc:
        if event is not None:
            _record(settings, event, outcome="failure", details={**facts, "error": str(exc)})
        raise Failed(f"error: {exc}") from None
    if event is not None:
        _record(settings, event, outcome="success", details=facts)
    return result


def _config(args: argparse.Namespace) -> int:
    from gateway.backup.pgbackrest import config_text, postgresql_lines, write_config

    _, pg = _settings(args)
    if args.write:
        try:
            path = write_config(pg, args.output)
        except OSError as exc:
            where = args.output or pg.config_path
            raise UserError(
                f"cannot write {where}: {exc.strerror} (a symbolic link is never followed)"
            ) from exc
        print(f"wrote {path} (mode 0600)")
    else:
        print(f"# {args.output or pg.config_path}")
        print(config_text(pg, redact=True))
    print("# postgresql.conf (then restart PostgreSQL)")
    print(postgresql_lines(pg), end="")
    return EXIT_OK


def _simple(command: str) -> Callable[[argparse.Namespace], int]:
    def action(args: argparse.Namespace) -> int:
        settings, pg = _settings(args)
        _pgbackrest(settings, pg, command)
        print(f"pgbackrest {command}: OK (stanza {pg.stanza})")
        return EXIT_OK

    return action


def _backup(args: argparse.Namespace) -> int:
    from gateway.backup.jobs import pgbackrest_backup
    from gateway.backup.manifest import BackupError

    settings, pg = _settings(args)
    targets = () if args.no_replicate else settings.backup.targets
    facts: dict[str, object] = {"stanza": pg.stanza, "command": "backup", "type": args.type}
    try:
        made = pgbackrest_backup(pg, args.type, datetime.now(UTC), _show, targets=targets, verify=False)
    except BackupError as exc:
        _record(settings, "backup.pg.created", outcome="failure", details={**facts, "error": exc.detail})
        raise Failed(f"error: {exc.detail}") from None
    _record(
        settings,
        "backup.pg.created",
        outcome="success" if made.problem is None else "partial",
        details={**facts, **made.details},
    )
    # As `gateway backup create` does: readiness and the missed-backup alert count this backup too.
    record_backup_run(settings, made)
    print(f"pgbackrest backup: {args.type} backup of stanza {pg.stanza} done ({made.backup_id})")
    replicated = made.details.get("replicated")
    for location in replicated if isinstance(replicated, list) else []:
        print(f"copied to {location} (checked)")
    if made.problem is not None:
        raise Failed(f"error: {made.problem}")
    return EXIT_OK


def _verify(args: argparse.Namespace) -> int:
    from gateway.backup.manifest import BackupError
    from gateway.backup.pg_repo import verified_details, verify_repository

    settings, pg = _settings(args)
    if args.target is not None:
        _known_target(settings, args.target)
    try:
        checked = verify_repository(pg, target=args.target, on_line=_show)
    except BackupError as exc:
        details = verified_details(pg.stanza, "pgbackrest verify", args.target, failure=exc)
        _record(settings, "backup.pg.verified", outcome="failure", details=details)
        raise Failed(f"error: {exc.detail}") from None
    details = verified_details(pg.stanza, "pgbackrest verify", args.target, checked)
    _record(settings, "backup.pg.verified", outcome="success", details=details)
    where = f" (the copy at {args.target})" if args.target is not None else ""
    print(
        f"pgbackrest verify: OK (stanza {pg.stanza}){where}: {len(checked.backups)} backup(s), "
        f"{checked.wal_segments} WAL segment(s) they need in the archive"
    )
    return EXIT_OK


def _known_target(settings: Settings, target: str) -> None:
    if target not in settings.backup.targets:
        shown = ", ".join(settings.backup.targets) or "none configured"
        raise UserError(f"--target {target!r} is not one of backup.targets ({shown})")


def _info(args: argparse.Namespace) -> int:
    from gateway.backup.pgbackrest import PgBackRestError
    from gateway.backup.pgbackrest import run as run_pgbackrest

    _, pg = _settings(args)
    options = ["--output=json"] if args.json else []
    try:
        result = run_pgbackrest(pg, "info", *options)
    except PgBackRestError as exc:
        raise Failed(f"error: {exc}") from None
    print("\n".join(result.output))
    return EXIT_OK


def _restore(args: argparse.Namespace) -> int:
    from gateway.backup.pgbackrest import LABEL, live_cluster, restore_args

    settings, pg = _settings(args)
    target: Path = args.pg_path
    at = parse_time(args.target_time) if args.target_time else None
    label: str | None = args.backup
    if label is not None and not LABEL.fullmatch(label):
        raise UserError(
            f"--backup {label[:40]!r} is not a pgBackRest backup label (`gateway pgbackrest info`)"
        )
    repo: Path | None = args.repo_path
    if repo is not None and not (repo / "backup" / pg.stanza).is_dir():
        raise UserError(
            f"--repo-path {repo}: no repository of stanza {pg.stanza} there (backup/{pg.stanza}/)"
        )
    reason = live_cluster(target, pg)
    if reason is not None and not args.force:
        raise UserError(f"{reason}; restore into a new directory, or add --force to overwrite it")
    _prepare(target, pg.os_user)
    options = restore_args(target, target_time=at, backup=label, repo_path=repo)
    if args.force:
        # Overwrites what is there, keeping files whose checksum already matches.
        options.append("--delta")
    details: dict[str, object] = {"pg_path": str(target)}
    if at is not None:
        details["target_time"] = at.isoformat()
    if label is not None:
        details["backup"] = label
    if repo is not None:
        details["repo_path"] = str(repo)
    _pgbackrest(settings, pg, "restore", *options, event="backup.pg.restored", details=details)
    if at is not None:
        to = f" to {at.isoformat()}"
    elif label is not None:
        to = f" to the end of backup {label}"
    else:
        to = " (to the end of the archived WAL)"
    source = f" from the copy at {repo}" if repo is not None else ""
    print(
        f"restored stanza {pg.stanza}{source} into {target}{to}; start PostgreSQL on it to finish the recovery"
    )
    print(
        "then, before a gateway runs on it: `gateway privacy hold carry --config RESTORED.yaml --from-config "
        "LIVE.yaml` (RESTORED.yaml: this config with storage.url pointing at the restored cluster) places "
        "the legal holds made since the target again; its retention run would otherwise delete what they keep"
    )
    return EXIT_OK


def _prepare(target: Path, os_user: str | None) -> None:
    """Create the new data directory (mode 0700, as PostgreSQL requires), owned by ``os_user``.

    Opened without following a symbolic link, then changed through that descriptor: ``os_user`` may
    own the directory above, and a link planted at the path made root hand the link's target (a
    root-owned directory on the PATH, say) to ``os_user`` (an attack run).
    """
    import os

    from gateway.backup.pgbackrest import owner_ids

    target.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:
        raise UserError(
            f"--pg-path {target} is a symbolic link or not a directory; give the real path of the new data directory"
        ) from exc
    try:
        os.fchmod(fd, 0o700)
        if (ids := owner_ids(os_user)) is not None:
            os.fchown(fd, *ids)
    finally:
        os.close(fd)


def register(sub: SubParsers[argparse.ArgumentParser]) -> None:
    """Add ``gateway pgbackrest …``."""
    group = command_group(
        sub,
        "pgbackrest",
        help="back up and restore a PostgreSQL database with pgBackRest (PITR)",
        description="Back up and restore a PostgreSQL deployment with pgBackRest: full, differential and "
        "incremental backups, WAL archiving into an encrypted repository, its verification, copies of it at "
        "backup.targets, point-in-time recovery (also from a copy).",
    )
    p = group.add_parser("config", help="print (or write) pgbackrest.conf and the postgresql.conf lines")
    config_arg(p)
    p.add_argument("--write", action="store_true", help="write the file (mode 0600) instead of printing it")
    p.add_argument("--output", "-o", type=Path, metavar="FILE", help="where to write (default: config_path)")
    p.set_defaults(func=_config)
    for name, text in (
        ("stanza-create", "create the stanza in the repository (once, after config)"),
        ("check", "check the configuration and that WAL reaches the repository"),
    ):
        p = group.add_parser(name, help=text)
        config_arg(p)
        p.set_defaults(func=_simple(name))
    p = group.add_parser(
        "verify",
        help="verify every backup and WAL file in the repository (or a copy of it)",
        description="Run pgbackrest verify (every file of every backup and every archived WAL segment "
        "against its checksum) and check that the archive holds the WAL each backup needs. Exit 1 naming "
        "the backup label and the damaged or missing file.",
    )
    config_arg(p)
    p.add_argument(
        "--target",
        metavar="TARGET",
        help="verify the copy at this one of backup.targets instead (an rclone remote's is fetched first)",
    )
    p.set_defaults(func=_verify)
    p = group.add_parser(
        "backup",
        help="make a full, differential or incremental backup",
        description="Run pgbackrest backup; with backup.targets, then verify the repository and copy it to "
        "each target (rclone sync, then rclone check). Exit 1 when the backup, the verification or a copy "
        "failed.",
    )
    config_arg(p)
    p.add_argument("--type", choices=["full", "diff", "incr"], default="incr", help="default: incr")
    p.add_argument("--no-replicate", action="store_true", help="do not copy the repository to backup.targets")
    p.set_defaults(func=_backup)
    p = group.add_parser("info", help="list the backups and the archived WAL")
    config_arg(p)
    p.add_argument("--json", action="store_true", help="pgBackRest's JSON output")
    p.set_defaults(func=_info)
    p = group.add_parser("restore", help="restore into a new data directory, to a point in time")
    config_arg(p)
    p.add_argument("--pg-path", type=Path, required=True, metavar="DIR", help="the new data directory")
    p.add_argument("--target-time", metavar="ISO", help="recover to this time (default: all archived WAL)")
    p.add_argument(
        "--backup",
        metavar="LABEL",
        help="restore this backup; alone: as it was when it finished (no later WAL replayed)",
    )
    p.add_argument(
        "--repo-path",
        type=Path,
        metavar="DIR",
        help="restore from this copy of the repository (e.g. <target>/pgbackrest of a directory target)",
    )
    p.add_argument("--force", action="store_true", help="restore into a non-empty or live directory")
    p.set_defaults(func=_restore)
