"""``gateway dr drill``: a disaster-recovery drill, on the embedded (SQLite) database or on PostgreSQL.

    gateway dr drill [--backup ID|PATH] [--port N] [--keep] [--json]

Takes the newest backup in ``backup.directory`` (or the one given), verifies it, restores it into a
fresh temporary data directory, starts a gateway on it (loopback, a free port, no admin listener),
waits for readiness, signs a temporary drill account in over HTTP and verifies the restored audit
chain. With PostgreSQL, pgBackRest's newest backup and the archived WAL are restored into a fresh
cluster started on a free loopback port (``gateway.backup.drill_pg``), and the gateway runs on it. Reports RPO (the backup's age) and RTO (restore start to ready). The result is recorded in the
live audit trail as ``dr.drill``. Exit codes: 0 every check passed, 1 a check failed (named), 2
invalid input or configuration. See docs/disaster-recovery.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.cli.arguments import whole_number
from gateway.cli.harness import (
    EXIT_FAILURE,
    EXIT_OK,
    SubParsers,
    UserError,
    backup_and_keyring,
    command_group,
    config_arg,
    load_config,
    load_keyring,
    node_lineage,
    open_store,
    operator,
    run,
    storage_url,
)

if TYPE_CHECKING:
    from gateway.backup.drill import DrillReport

__all__ = ["register"]


def _print(report: DrillReport) -> None:
    print(
        f"DR drill {'PASSED' if report.passed else 'FAILED'}: backup {report.backup_id} ({report.backup_path})"
    )
    for c in report.checks:
        print(f"  [{'ok' if c.passed else 'FAILED'}] {c.name}: {c.detail}")
    print(
        f"  RPO: {_seconds(report.rpo_seconds)} (backup age); newest restored audit record "
        f"{_seconds(report.newest_record_age_seconds)} old"
    )
    print(f"  RTO: {_seconds(report.rto_seconds)} (restore start to ready)")
    if report.failed:
        print(f"  failed: {', '.join(report.failed)}")


def _seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} s"


def _drill(args: argparse.Namespace) -> int:
    from gateway.backup.drill import run_drill
    from gateway.backup.drill_pg import run_pg_drill
    from gateway.backup.sets import backup_directory
    from gateway.crypto.keyring import keyring_path
    from gateway.identity.ledger import ledger_path

    settings = load_config(args)
    url = storage_url(settings)
    pg = settings.backup.pgbackrest
    embedded = url.startswith("sqlite")
    if not embedded and pg is None:
        raise UserError(
            "storage.url is PostgreSQL and backup.pgbackrest is not configured: there is no backup to "
            "drill (the README: Backups of the PostgreSQL database)"
        )
    if not embedded and args.backup is not None:
        raise UserError(
            "--backup is for the embedded database; a PostgreSQL drill restores pgBackRest's newest"
        )
    path: Path | None = None
    if embedded:
        path, keyring = backup_and_keyring(settings, backup_directory(settings), args.backup)
    else:
        keyring = load_keyring(settings, may_create=False)
    progress = (lambda _line: None) if args.json else (lambda line: print(line, flush=True))
    # The deployment's lineage: the copy reads its history (the backup may carry an older one).
    node = run(node_lineage(settings))
    live = (Path(args.config), keyring_path(settings).resolve(), keyring)
    ledger = ledger_path(settings)
    if path is not None:
        report = run_drill(
            path, *live, port=args.port, keep=args.keep, progress=progress, live_ledger=ledger, node=node
        )
    else:
        assert pg is not None
        report = run_pg_drill(
            pg, url, *live, port=args.port, keep=args.keep, progress=progress, live_ledger=ledger, node=node
        )
    doc = report.as_dict()

    async def record() -> None:
        async with open_store(settings, keyring=True) as store:
            await store.audit().record(
                "dr.drill",
                actor=operator(),
                outcome=str(doc["outcome"]),
                details={k: v for k, v in doc.items() if k not in ("outcome", "checks")},
            )

    run(record())
    if args.keep:
        doc["node_dir"] = report.node_dir
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        _print(report)
        if args.keep:
            print(f"  node kept in {report.node_dir}")
    return EXIT_OK if report.passed else EXIT_FAILURE


def register(sub: SubParsers[argparse.ArgumentParser]) -> None:
    """Add ``gateway dr …`` to the ``gateway`` command's sub-commands."""
    actions = command_group(
        sub,
        "dr",
        help="disaster-recovery drills",
        description="Prove that a backup brings the service back: restore it into a fresh node and use it.",
    )
    p = actions.add_parser(
        "drill",
        help="restore the newest backup into a fresh node and check it works",
        description="Verify the backup, restore it into a temporary data directory (PostgreSQL: pgBackRest's "
        "newest backup and the archived WAL into a fresh cluster on a free port), start a gateway on a "
        "free loopback port, wait until it is ready, sign a temporary drill account in over HTTP and "
        "verify the audit chain. Reports RPO and RTO and records dr.drill in the audit trail. Exit 1 "
        "naming the failed check.",
    )
    config_arg(p)
    p.add_argument("--backup", metavar="ID|PATH", help="the backup (default: the newest; SQLite only)")
    p.add_argument(
        "--port", type=whole_number(1, 65535), metavar="N", help="the fresh node's port (default: a free one)"
    )
    p.add_argument("--keep", action="store_true", help="keep the fresh node's directory for inspection")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_drill)
