"""``gateway backup …``: the deployment's backups: the embedded (SQLite) database's own, encrypted and
signed; on PostgreSQL, pgBackRest's.

    gateway backup create [--to DIR] [--type full|diff|incr] [--no-replicate]
    gateway backup list
    gateway backup verify [ID|PATH] [--target TARGET]
    gateway backup restore ID|PATH --data-dir DIR [--force]
    gateway backup prune [--dry-run]

**Embedded (SQLite).** ``create`` snapshots the live database online (gateways keep serving), encrypts
it, the audit checkpoints and the sealed incident evidence (``<data_dir>/incidents/``) under the
keyring, writes a signed manifest and copies the backup to every ``backup.targets``. ``verify`` checks
a backup end to end (newest without an argument): signature, hashes, decryption, a restore into a
scratch directory, the schema revision, the audit chain and the evidence files against their seals.
``restore`` puts a backup into a new data directory (an existing database only with ``--force``,
never one a running gateway holds open). ``prune`` keeps ``backup.keep_daily`` daily and
``backup.keep_weekly`` weekly backups of the whole ones, hashing each it keeps against its manifest; a
broken one (a part missing, a symbolic link, of another size or, among those it would keep, of other
content than its manifest says) is named, kept for inspection and not counted, and prune exits 1.
``list`` marks the backups this keyring does not vouch for (not signed by it, or signed under a key
marked compromised since) and the broken ones by a stat of each part (``verify`` hashes the contents);
``verify`` without an argument names the newer ones it passed over. Symbolic links in the backup
directory are named and skipped: never listed, counted or deleted through. Create, verify and restore are recorded in the audit trail (``backup.created``,
``backup.verified``, ``backup.verify_failed``, ``backup.restored``).

**PostgreSQL** (``backup.pgbackrest``): ``create`` runs ``pgbackrest backup`` (``--type``, by default
full on ``backup.full_on`` and incremental otherwise), then, with ``backup.targets``, verifies the
repository and copies it to each target; ``list`` is ``pgbackrest info``; ``verify`` checks the whole
repository (or, with ``--target``, its copy at one of ``backup.targets``): every file of every backup
and every WAL segment against its checksum, and the WAL each backup needs; a failure names the backup
label and the file. They record ``backup.pg.created`` and ``backup.pg.verified``. Restores are
``gateway pgbackrest restore`` (to a point in time), and pgBackRest's ``retention_full`` prunes.

Exit codes: 0 done, 1 the backup or a check failed (the failing part is named), 2 invalid input or
configuration. Every action takes ``--config FILE``.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.cli.harness import (
    EXIT_FAILURE,
    EXIT_OK,
    Failed,
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
    record_backup_run,
    record_event,
    run,
    security_sinks,
    storage_url,
)
from gateway.cli.terminal import one_line

if TYPE_CHECKING:
    from gateway.backup.verify import Verified
    from gateway.crypto.keyring import Keyring
    from gateway.identity.ledger import Lineage
    from gateway.settings.schema import PgBackRestSettings, Settings
    from gateway.store.db import Database

__all__ = ["register"]


def _database(settings: Settings) -> Path:
    from gateway.backup.snapshot import sqlite_path

    try:
        return sqlite_path(storage_url(settings))
    except ValueError:
        raise UserError(
            "storage.url is PostgreSQL: its backups are made by pgBackRest (backup.pgbackrest), not by "
            "gateway backup create"
        ) from None


def _postgres(settings: Settings) -> PgBackRestSettings | None:
    """The pgBackRest settings of a PostgreSQL deployment; ``None`` on the embedded database.

    Raises:
        UserError: PostgreSQL without ``backup.pgbackrest``.
    """
    if storage_url(settings).startswith("sqlite"):
        return None
    pg = settings.backup.pgbackrest
    if pg is None:
        raise UserError(
            "storage.url is PostgreSQL: its backups are made by pgBackRest, and backup.pgbackrest is not "
            "configured (the README: Backups of the PostgreSQL database)"
        )
    return pg


def _progress(line: str) -> None:
    # pgBackRest's progress goes to stderr: stdout stays the command's own result.
    print(line, file=sys.stderr, flush=True)


def _directory(settings: Settings) -> Path:
    from gateway.backup.sets import backup_directory

    return backup_directory(settings)


def _create(args: argparse.Namespace) -> int:
    from gateway.backup.jobs import sqlite_backup
    from gateway.backup.manifest import BackupError
    from gateway.backup.schedule import record_manual
    from gateway.clock import SYSTEM_CLOCK

    settings = load_config(args)
    pg = _postgres(settings)
    if pg is not None:
        return _create_pg(args, settings, pg)
    if args.type is not None:
        raise UserError(
            "--type is for PostgreSQL (pgBackRest); an embedded backup is always a whole snapshot"
        )
    _database(settings)

    async def work() -> int:
        async with open_store(settings, keyring=True) as store:
            assert store.keyring is not None  # opened with keyring=True
            try:
                made = await sqlite_backup(
                    settings, store.keyring, SYSTEM_CLOCK, verify=False, replicate=not args.no_replicate,
                    prune_old=False, to=args.to, progress=lambda line: print(line, flush=True),
                )  # fmt: skip
            except BackupError as exc:
                raise Failed(f"backup FAILED: {exc.detail}") from None
            print(f"backup {made.backup_id} written to {(args.to or _directory(settings)) / made.backup_id}")
            await store.audit().record(
                "backup.created",
                actor=operator(),
                outcome="success" if made.problem is None else "partial",
                details=made.details,
            )
            # Every replica's readiness details see it: a manual backup counts as the deployment's.
            await record_manual(store.db, made, SYSTEM_CLOCK.now())
            print(made.backup_id)
            return EXIT_OK if made.problem is None else EXIT_FAILURE

    return run(work())


def _create_pg(args: argparse.Namespace, settings: Settings, pg: PgBackRestSettings) -> int:
    from gateway.backup.jobs import pgbackrest_backup, scheduled_type
    from gateway.backup.manifest import BackupError

    if args.to is not None:
        raise UserError("--to is for the embedded database; pgBackRest writes to backup.pgbackrest.repo_path")
    now = datetime.now(UTC)
    kind = args.type or scheduled_type(settings.backup.full_on, now)
    targets = () if args.no_replicate else settings.backup.targets
    facts: dict[str, object] = {"stanza": pg.stanza, "type": kind}
    try:
        made = pgbackrest_backup(pg, kind, now, _progress, targets=targets, verify=False)
    except BackupError as exc:
        record_event(
            settings,
            "backup.pg.created",
            outcome="failure",
            subject=pg.stanza,
            details={**facts, "error": exc.detail},
        )
        raise Failed(f"backup FAILED: {exc.detail}") from None
    record_event(
        settings,
        "backup.pg.created",
        outcome="success" if made.problem is None else "partial",
        subject=pg.stanza,
        details={**facts, **made.details},
    )
    record_backup_run(settings, made)
    print(f"backup {made.backup_id}: {kind} backup of stanza {pg.stanza} by pgBackRest in {pg.repo_path}")
    replicated = made.details.get("replicated")
    for location in replicated if isinstance(replicated, list) else []:
        print(f"replicated to {location} (checked)")
    if made.problem is not None:
        print(f"backup {made.backup_id} made, but: {made.problem}")
    print(made.backup_id)
    return EXIT_OK if made.problem is None else EXIT_FAILURE


def _list(args: argparse.Namespace) -> int:
    from gateway.backup.sets import list_backups

    settings = load_config(args)
    pg = _postgres(settings)
    if pg is not None:
        return _list_pg(pg)
    directory = _directory(settings)
    _say_links(directory)
    if not list_backups(directory):
        print(f"no backups in {directory}")
        return EXIT_OK
    # Each checked against this keyring: a forged or another deployment's backup listed as ours was
    # one an operator could pick to restore (an attack run).
    keyring = load_keyring(settings, may_create=False)
    for b in list_backups(directory, signed_with=keyring, unsigned=True):
        # One line each, whatever an unsigned manifest or a directory name holds: a newline in them
        # printed lines of their own (a re-attack run forged a clean listing line).
        line = (
            f"{one_line(b.backup_id)}  {b.created_at:%Y-%m-%d %H:%M:%S}Z  {b.parts} part(s)  "
            f"{b.size} bytes  {one_line(str(b.path))}"
        )
        if b.untrusted is not None:
            line += f"  NOT TRUSTED: {b.untrusted}"
        if b.broken is not None:
            line += f"  BROKEN: {one_line(b.broken)}"
        print(line)
    return EXIT_OK


def _say_links(directory: Path) -> None:
    """Name, once, the symbolic links in ``directory`` that listing and pruning pass over."""
    from gateway.backup.sets import linked_entries

    for name in linked_entries(directory):
        print(
            f"skipped {one_line(name)} in {one_line(str(directory))}: a symbolic link, not a backup "
            "(never listed, counted or deleted through)"
        )


def _list_pg(pg: PgBackRestSettings) -> int:
    from gateway.backup.pgbackrest import PgBackRestError
    from gateway.backup.pgbackrest import run as run_pgbackrest

    try:
        result = run_pgbackrest(pg, "info")
    except PgBackRestError as exc:
        raise Failed(f"error: {exc}") from None
    print("\n".join(result.output))
    return EXIT_OK


def _verify_pg(args: argparse.Namespace, settings: Settings, pg: PgBackRestSettings) -> int:
    from gateway.backup.manifest import BackupError
    from gateway.backup.pg_repo import verified_details, verify_repository

    if args.backup is not None:
        raise UserError(
            "pgBackRest verifies the whole repository (every backup and the WAL they need): leave out the "
            "backup id; --target TARGET checks a copy"
        )
    if args.target is not None and args.target not in settings.backup.targets:
        shown = ", ".join(settings.backup.targets) or "none configured"
        raise UserError(f"--target {args.target!r} is not one of backup.targets ({shown})")
    where = f"the copy at {args.target}" if args.target is not None else f"repository {pg.repo_path}"
    try:
        checked = verify_repository(pg, target=args.target, on_line=_progress)
    except BackupError as exc:
        print(f"{where} FAILED verification: {exc.detail}")
        print(f"  failing part: {exc.part}")
        details = verified_details(pg.stanza, "backup verify", args.target, failure=exc)
        record_event(settings, "backup.pg.verified", outcome="failure", subject=pg.stanza, details=details)
        return EXIT_FAILURE
    print(f"{where} OK: pgbackrest verify passed (every file of every backup and of the WAL archive)")
    print(f"  backups: {', '.join(checked.backups) or 'none'}")
    print(f"  WAL they need: {checked.wal_segments} segment(s), each in the archive")
    details = verified_details(pg.stanza, "backup verify", args.target, checked)
    record_event(settings, "backup.pg.verified", subject=pg.stanza, details=details)
    return EXIT_OK


def _verify(args: argparse.Namespace) -> int:
    from gateway.backup.manifest import BackupError
    from gateway.backup.verify import verify_backup

    settings = load_config(args)
    pg = _postgres(settings)
    if pg is not None:
        return _verify_pg(args, settings, pg)
    if args.target is not None:
        raise UserError(
            "--target is for PostgreSQL's repository copies; an embedded backup's copy is verified by its "
            "path: gateway backup verify PATH"
        )
    path, keyring = backup_and_keyring(settings, _directory(settings), args.backup)
    if args.backup is None:
        _skipped_for(path, _directory(settings), keyring)

    async def work() -> int:
        try:
            verified = await verify_backup(path, keyring)
        except BackupError as exc:
            print(f"backup {one_line(path.name)} FAILED verification: {one_line(exc.detail)}")
            async with open_store(settings, keyring=True) as store:
                await store.audit().record(
                    "backup.verify_failed",
                    actor=operator(),
                    outcome="failure",
                    details={"backup": path.name, "part": exc.part, "problem": exc.detail},
                )
            return EXIT_FAILURE
        m = verified.manifest
        print(f"backup {m.backup_id} OK: signature, {len(m.parts)} part(s) hashed and decrypted, restored")
        print(f"  created {m.created_at}, gateway {m.gateway_version}, schema {m.schema_revision}")
        print(f"  audit chain verified: {verified.audit_records} record(s), head seq {m.audit_head_seq}")
        print("  rows per table:")
        for table, count in sorted(verified.row_counts.items()):
            print(f"    {table}: {count}")
        _print_evidence(verified)
        async with open_store(settings, keyring=True) as store:
            await store.audit().record(
                "backup.verified",
                actor=operator(),
                details={**m.summary(), "rows": sum(verified.row_counts.values())},
            )
        return EXIT_OK

    return run(work())


def _skipped_for(newest: Path, directory: Path, keyring: Keyring) -> None:
    """Name the backups newer than ``newest`` (the newest this keyring signed) that were passed over,
    and why: an attack run's planted backups were skipped without a word."""
    from gateway.backup.sets import list_backups

    listed = list_backups(directory, signed_with=keyring, unsigned=True)
    chosen = next((b for b in listed if b.path == newest), None)
    for b in listed:
        if b.untrusted is not None and (chosen is None or b.created_at > chosen.created_at):
            print(f"skipped {one_line(b.backup_id)} ({one_line(str(b.path))}), dated later: {b.untrusted}")


def _print_evidence(verified: Verified) -> None:
    print(
        f"  incident evidence: {verified.evidence_files} file(s) restored and hashed, "
        f"{verified.evidence_sealed} matching a seal in the audit chain"
    )
    for digest in verified.sealed_missing:
        print(
            f"  warning: the evidence bundle sealed with sha256 {digest} is not in this backup "
            "(it was gone from <data_dir>/incidents when the backup was made)"
        )


def _restore(args: argparse.Namespace) -> int:
    from gateway.backup.manifest import BackupError
    from gateway.backup.restore import refuse_live_target
    from gateway.backup.verify import restore_backup, restored_trail
    from gateway.cli.carried import carry_emergency, carry_privacy, node_emergency, node_privacy
    from gateway.observe.access import audit_listener

    settings = load_config(args)
    if _postgres(settings) is not None:
        raise UserError(
            "on PostgreSQL, restore with `gateway pgbackrest restore --pg-path DIR [--backup LABEL] "
            "[--target-time ISO]` (pgBackRest, into a new data directory)"
        )
    path, keyring = backup_and_keyring(settings, _directory(settings), args.backup)
    data_dir: Path = args.data_dir
    elsewhere = data_dir.resolve() != Path(settings.data_dir).resolve()
    try:
        refuse_live_target(data_dir, force=args.force)
    except BackupError as exc:
        raise UserError(exc.detail) from None

    async def work() -> int:
        # The node's lineage, read before its database is replaced (or from the one left in place), its
        # lockdown and address blocks, which the restored node takes over, and its legal holds, which
        # the restored database keeps.
        lineage = await node_lineage(settings)
        emergency = await node_emergency(settings)
        privacy = await node_privacy(settings, path)
        try:
            verified = await restore_backup(path, keyring, data_dir, force=args.force)
        except BackupError as exc:
            raise Failed(f"restore FAILED: {exc.detail}") from None
        # The restored trail records its own restore: the first thing the new node's chain says; and
        # the security-event sinks hear of it (the rewound trail no longer holds what came after).
        sinks = await security_sinks(settings)
        listeners = [audit_listener(sinks)] if sinks is not None else []
        m = verified.manifest
        try:
            async with restored_trail(
                verified, keyring, actor=operator(), forced=bool(args.force), listeners=listeners
            ) as (db, audit):
                carried = await carry_emergency(settings, data_dir, db, audit, emergency, m.backup_id)
                held, lost = await carry_privacy(db, audit, keyring, privacy, m)
                lacking = await _carry_ledger(
                    settings, data_dir, db, keyring, elsewhere=elsewhere, node=lineage
                )
        finally:
            if sinks is not None:
                await sinks.close()
        print(
            f"backup {m.backup_id} restored into {data_dir} (audit chain verified, {verified.audit_records} records)"
        )
        _print_evidence(verified)
        print(
            f"  account ledger: {lacking} change(s) made after this backup (deletions, erasures, disables, "
            "restrictions, closures, passwords set or ordered changed, email addresses changed, factors "
            "reset or removed, recovery codes spent or replaced, roles set, API tokens revoked, leaked "
            "signing keys deleted, consents withdrawn, objections made); a gateway started on it makes "
            "them again before it serves (a password set since is cleared: send those people an "
            "invitation; an address changed since is removed: set it again). Start one before marking "
            "a keyring key compromised: the mark is refused until then, as it would leave them unread"
        )
        for line in carried + held:
            print(f"  {line}")
        requests = f": {', '.join(lost)}" if lost else ""
        print(
            "  NOT made again (the restored database predates them): service accounts deleted (their "
            "tokens stay revoked), policy versions imported after this backup, privacy requests opened "
            f"after it{requests}. Find them in the old trail or the sinks and make them again.",
            file=sys.stderr,
        )
        print(f"start a gateway with data_dir: {data_dir} and the same keyring; sessions start empty")
        return EXIT_OK

    return run(work())


async def _carry_ledger(
    settings: Settings,
    data_dir: Path,
    db: Database,
    keyring: Keyring,
    *,
    elsewhere: bool,
    node: Lineage | None,
) -> int:
    """Set up the restored database's account ledger (:meth:`AccountLedger.restored`): the node's
    ledger file taken along into a new data directory (a configured ``backup.ledger`` stays where it
    is), ``elsewhere`` (not the configured data directory) a copy; return how many of the ledger's
    entries the restored database lacks."""
    from gateway.clock import SYSTEM_CLOCK
    from gateway.identity.ledger import OPENING, AccountLedger, ledger_path, merge, newer, read_lines

    target = ledger_path(settings) if settings.backup.ledger else data_dir / "account-ledger.jsonl"
    ledger = AccountLedger(db, keyring, target, SYSTEM_CLOCK)
    try:
        source = None if settings.backup.ledger else ledger_path(settings)
        lineage = await ledger.restored(node, source, copy=elsewhere)
        file = merge(ledger.verified(read_lines(target), lineage))
    except OSError as exc:
        raise Failed(
            f"restored, but cannot take the account ledger along into {target} ({exc.strerror or exc}): copy "
            f"{ledger_path(settings)} there before starting a gateway on it, or erased people come back"
        ) from None
    if elsewhere and settings.backup.ledger:
        print(
            f"  backup.ledger is {target}, the live deployment's ledger: give a gateway on {data_dir} its "
            f"own (backup.ledger: {data_dir / 'account-ledger.jsonl'}, after copying {target} there); "
            "each copy reads only its own lines and its origin's",
            file=sys.stderr,
        )
    table = await ledger.table()
    return len([entry for entry in newer(file, table) if entry.state not in OPENING])


def _prune(args: argparse.Namespace) -> int:
    from gateway.backup.sets import prune

    settings = load_config(args)
    if _postgres(settings) is not None:
        raise UserError(
            "on PostgreSQL, pgBackRest expires old backups itself after each backup "
            "(backup.pgbackrest.retention_full, retention_diff); the copies at backup.targets follow"
        )
    b = settings.backup
    keyring = load_keyring(settings, may_create=False)
    _say_links(_directory(settings))
    keep, drop = prune(
        _directory(settings),
        keyring,
        keep_daily=b.keep_daily,
        keep_weekly=b.keep_weekly,
        dry_run=args.dry_run,
    )
    broken = [s for s in keep if s.broken is not None]
    for s in keep:
        if s.broken is None:
            print(f"keep    {one_line(s.backup_id)}")
    for s in broken:
        name = one_line(s.backup_id)
        print(
            f"broken  {name}: {one_line(s.broken or '')}; kept for inspection and not counted as one of the "
            f"backups kept: check it (gateway backup verify {name}), then delete {one_line(str(s.path))} "
            "by hand"
        )
    for s in drop:
        print(f"{'would delete' if args.dry_run else 'deleted'} {one_line(s.backup_id)}")
    if drop and not args.dry_run:

        async def record() -> None:
            async with open_store(settings, keyring=True) as store:
                details: dict[str, object] = {"deleted": [s.backup_id for s in drop]}
                if broken:
                    details["broken"] = [s.backup_id for s in broken]
                await store.audit().record("backup.pruned", actor=operator(), details=details)

        run(record())
    # A broken backup is a failed check: a job running prune must notice it.
    return EXIT_FAILURE if broken else EXIT_OK


def register(sub: SubParsers[argparse.ArgumentParser]) -> None:
    """Add ``gateway backup …`` to the ``gateway`` command's sub-commands."""
    actions = command_group(
        sub,
        "backup",
        help="the deployment's backups: encrypted and signed (SQLite), or pgBackRest's (PostgreSQL)",
        description="Make, list, verify, restore and prune backups of the embedded SQLite database; on "
        "PostgreSQL (backup.pgbackrest) make, list and verify pgBackRest's. The keyring decrypts the "
        "embedded backups and is never inside one: keep a copy of it elsewhere.",
    )
    p = actions.add_parser(
        "create",
        help="back up the database now (online)",
        description="SQLite: snapshot the database while gateways keep serving, encrypt it (with the audit "
        "checkpoints and the sealed incident evidence) under the keyring, write a signed manifest and copy "
        "the backup to backup.targets. PostgreSQL: pgbackrest backup, then (with backup.targets) verify the "
        "repository and copy it to each target. Prints the backup id (pgBackRest's label) last.",
    )
    config_arg(p)
    p.add_argument("--to", type=Path, metavar="DIR", help="SQLite: write it here instead of backup.directory")
    p.add_argument(
        "--type",
        choices=["full", "diff", "incr"],
        help="PostgreSQL: the kind of backup (default: full on backup.full_on, else incr)",
    )
    p.add_argument("--no-replicate", action="store_true", help="do not copy it to backup.targets")
    p.set_defaults(func=_create)

    p = actions.add_parser(
        "list",
        help="list the backups",
        description="List the backups in backup.directory, marking those this keyring does not vouch "
        "for (NOT TRUSTED) and those with a part missing, a symbolic link or of the wrong size (BROKEN: a "
        "stat of each part; gateway backup verify ID checks the contents). Symbolic links in the "
        "directory are named and skipped (PostgreSQL: pgbackrest info).",
    )
    config_arg(p)
    p.set_defaults(func=_list)

    p = actions.add_parser(
        "verify",
        help="check a backup end to end",
        description="SQLite: check the manifest signature, each part's hash and decryption, restore into a "
        "scratch directory and check the schema revision, the audit chain and the incident evidence; print "
        "row counts. PostgreSQL: pgbackrest verify over the whole repository (or its copy at --target) and "
        "the WAL each backup needs. Exit 1 naming the failing part (the file, the backup label).",
    )
    config_arg(p)
    p.add_argument("backup", nargs="?", metavar="ID|PATH", help="SQLite: the backup (default: the newest)")
    p.add_argument(
        "--target",
        metavar="TARGET",
        help="PostgreSQL: verify the repository's copy at this one of backup.targets (an rclone remote's is "
        "fetched into a temporary directory first)",
    )
    p.set_defaults(func=_verify)

    p = actions.add_parser(
        "restore",
        help="restore a backup into a new data directory",
        description="Verify the backup and write it into --data-dir. An existing non-empty database is "
        "replaced only with --force; one a running gateway holds open never is. PostgreSQL: gateway "
        "pgbackrest restore.",
    )
    config_arg(p)
    p.add_argument("backup", metavar="ID|PATH", help="the backup")
    p.add_argument(
        "--data-dir", type=Path, required=True, metavar="DIR", help="the new node's data directory"
    )
    p.add_argument("--force", action="store_true", help="replace an existing database (not a running one)")
    p.set_defaults(func=_restore)

    p = actions.add_parser(
        "prune",
        help="delete backups beyond keep_daily and keep_weekly",
        description="Keep the newest backup of each of the backup.keep_daily most recent days and "
        "backup.keep_weekly most recent ISO weeks (and always the newest); delete the rest. Each backup "
        "kept is hashed against its manifest first. A broken backup (a part missing, a symbolic link, "
        "of another size or, among those kept, of other content than its manifest says) is named, kept "
        "for inspection and not counted; prune then exits 1. Symbolic links in the directory are named "
        "and skipped. PostgreSQL: pgBackRest's retention_full does it.",
    )
    config_arg(p)
    p.add_argument("--dry-run", action="store_true", help="only list what would be deleted")
    p.set_defaults(func=_prune)
