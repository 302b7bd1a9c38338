"""Verifying a backup end to end, and restoring one: the checks both run, in order.

``verify_backup`` checks, stopping at the first failure and naming its part: the manifest's signature,
each part's presence, SHA-256 and decryption (``archive.read_backup``), then restores into a scratch
directory and checks the restored database: SQLite's integrity check, the Alembic revision against
the manifest (and that this gateway knows it), the audit chain (``verify_database`` with the keyring) and its head against the
manifest, and each restored incident evidence file against its plaintext SHA-256. It reports the row
count of every table, and how many evidence files the backup holds and how many of them match a hash
the restored chain says was sealed (``incident.evidence_sealed``); a sealed bundle the backup lacks
(deleted from the node before the backup) is reported, not failed: the backup is sound, the evidence
was already gone.

``restore_backup`` runs the same checks on the real target: it refuses a live one first, then writes
and checks what it wrote. ``restored_trail`` then opens the restored node's database (brought to this
gateway's schema) and records the restore on its trail, as ``gateway backup restore`` and a drill do.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sqlite3
import tempfile
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, closing
from dataclasses import dataclass
from pathlib import Path

from alembic.script import ScriptDirectory

from gateway.audit.chain import RESTORED_KIND, verify_database
from gateway.audit.trail import AuditListener, AuditLog
from gateway.backup.archive import DATABASE_PART, INCIDENTS_DIR, part_path, read_backup
from gateway.backup.manifest import BackupError, Manifest, file_sha256
from gateway.backup.restore import install_parts, refuse_live_target, staging_dir
from gateway.crypto.keyring import Keyring
from gateway.store.db import Database, default_sqlite_url
from gateway.store.migrate import alembic_config, ensure_schema

__all__ = ["Verified", "check_restored", "restore_backup", "restored_trail", "verify_backup"]


def _known_revisions() -> frozenset[str]:
    # A database this gateway's migrations never produced cannot be served by it (a newer gateway
    # made it): the restored node would refuse to start, so the backup is not restorable here.
    script = ScriptDirectory.from_config(alembic_config(quiet=True))
    return frozenset(rev.revision for rev in script.walk_revisions())


@dataclass(frozen=True, slots=True)
class Verified:
    """A backup that passed every check, restored at ``database``."""

    manifest: Manifest
    database: Path
    audit_records: int
    row_counts: dict[str, int]
    # Incident evidence files restored, and how many of them the chain says were sealed (by hash).
    evidence_files: int = 0
    evidence_sealed: int = 0
    # SHA-256 of bundles the restored chain says were sealed that the backup does not hold.
    sealed_missing: tuple[str, ...] = ()


def _tables(conn: sqlite3.Connection) -> dict[str, int]:
    names = [
        row[0]
        for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
        )
    ]
    # Table names come from the file's own catalogue, quoted as identifiers.
    counts = {}
    for n in names:
        quoted = n.replace('"', '""')
        counts[n] = int(conn.execute(f'SELECT count(*) FROM "{quoted}"').fetchone()[0])  # noqa: S608
    return counts


async def check_restored(manifest: Manifest, data_dir: Path, keyring: Keyring) -> Verified:
    """Check a restored database against its manifest.

    Raises:
        BackupError: Not a sound SQLite file, another schema revision, or a broken audit chain.
    """
    db_file = data_dir / DATABASE_PART
    try:
        with closing(sqlite3.connect(f"file:{db_file}?mode=ro", uri=True)) as conn:
            integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
            if integrity != "ok":
                raise BackupError(
                    f"part {DATABASE_PART}: SQLite integrity check: {integrity}", part=DATABASE_PART
                )
            revision = conn.execute("SELECT version_num FROM alembic_version").fetchone()
            counts = _tables(conn)
            sealed = _sealed_hashes(conn)
    except sqlite3.Error as exc:
        raise BackupError(
            f"part {DATABASE_PART}: not a readable database ({exc})", part=DATABASE_PART
        ) from exc
    if revision is None or revision[0] != manifest.schema_revision:
        raise BackupError(
            f"part {DATABASE_PART}: schema revision {revision[0] if revision else None}, "
            f"the manifest says {manifest.schema_revision}",
            part=DATABASE_PART,
        )
    if manifest.schema_revision not in _known_revisions():
        raise BackupError(
            f"part {DATABASE_PART}: schema revision {manifest.schema_revision} is not one this gateway "
            f"knows (made by a newer version? restore with that version)",
            part=DATABASE_PART,
        )
    db = Database.open(default_sqlite_url(data_dir), pool_size=1)
    try:
        # A backup may predate a key's mark: its chain ends where it was made (the manifest says where).
        report = await verify_database(db, keyring=keyring, live=False)
    finally:
        await db.close()
    if report.problem is not None:
        raise BackupError(f"part {DATABASE_PART}: audit chain broken: {report.problem}", part=DATABASE_PART)
    head_seq = report.last.seq if report.last is not None else 0
    head_hash = report.last.record_hash if report.last is not None else ""
    if (head_seq, head_hash) != (manifest.audit_head_seq, manifest.audit_head_hash):
        raise BackupError(
            f"part {DATABASE_PART}: audit chain ends at seq {head_seq}, the manifest says {manifest.audit_head_seq}",
            part=DATABASE_PART,
        )
    evidence = _check_evidence(manifest, data_dir)
    return Verified(
        manifest,
        db_file,
        report.records,
        counts,
        evidence_files=len(evidence),
        evidence_sealed=len(evidence & sealed),
        sealed_missing=tuple(sorted(sealed - evidence)),
    )


def _sealed_hashes(conn: sqlite3.Connection) -> set[str]:
    """The SHA-256 of every evidence bundle the chain records as sealed."""
    if not conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'audit_events'"
    ).fetchone():
        return set()
    found = set()
    for (details,) in conn.execute(
        "SELECT details FROM audit_events WHERE kind = 'incident.evidence_sealed'"
    ):
        try:
            digest = json.loads(details).get("sha256")
        except (ValueError, AttributeError):
            continue
        if isinstance(digest, str):
            found.add(digest)
    return found


def _check_evidence(manifest: Manifest, data_dir: Path) -> set[str]:
    """Each evidence part is in place under ``data_dir`` with its plaintext SHA-256; their hashes.

    Raises:
        BackupError: One is missing or differs (naming it).
    """
    hashes = set()
    for part in manifest.parts:
        if not part.name.startswith(f"{INCIDENTS_DIR}/"):
            continue
        try:
            digest, size = file_sha256(part_path(data_dir, part.name))
        except OSError:
            raise BackupError(f"part {part.name}: not restored", part=part.name) from None
        if (digest, size) != (part.plain_sha256, part.plain_size):
            raise BackupError(
                f"part {part.name}: the restored file does not match its sha256", part=part.name
            )
        hashes.add(digest)
    return hashes


async def verify_backup(path: Path, keyring: Keyring) -> Verified:
    """Every check on the backup at ``path``, restoring it into a scratch directory that is removed after.

    Raises:
        BackupError: The first check that failed, naming the part.
    """
    with tempfile.TemporaryDirectory(prefix="gateway-verify-") as scratch:
        node = Path(scratch)
        staged = staging_dir(node)
        manifest = read_backup(path, keyring, staged)
        install_parts(staged, node)
        return await check_restored(manifest, node, keyring)


async def restore_backup(path: Path, keyring: Keyring, data_dir: Path, *, force: bool = False) -> Verified:
    """Restore the backup at ``path`` into ``data_dir`` and check the result.

    Nothing in ``data_dir`` changes until every part has been checked and decrypted.

    Raises:
        BackupError: The target is live or not empty (without ``force``), or a check failed.
    """
    refuse_live_target(data_dir, force=force)
    staged = staging_dir(data_dir)
    trial = staging_dir(data_dir)
    try:
        manifest = read_backup(path, keyring, staged)
        # The checks of the restored database (integrity, schema revision, audit chain, evidence) run on
        # a copy laid out as a node: a backup that fails one leaves data_dir as it was. Checked after
        # installing, a rejected backup had already replaced the database it was to restore over.
        shutil.copytree(staged, trial / "parts")
        install_parts(trial / "parts", trial / "node")
        verified = await check_restored(manifest, trial / "node", keyring)
        database = install_parts(staged, data_dir)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
        shutil.rmtree(trial, ignore_errors=True)
    return dataclasses.replace(verified, database=database)


@asynccontextmanager
async def restored_trail(
    verified: Verified,
    keyring: Keyring,
    *,
    actor: str,
    forced: bool = False,
    listeners: Sequence[AuditListener] = (),
) -> AsyncIterator[tuple[Database, AuditLog]]:
    """The database :func:`restore_backup` wrote, brought to this gateway's schema, and its audit trail,
    whose first record after the backup's head is now ``backup.restored`` (by ``actor``; ``listeners``
    hear it and what follows).

    That record says where the node came from, and it is what lets the chain of a backup made before
    a key was marked compromised verify on the restored node: keyed under a key the leak did not give
    away, it shows the trail was rewound on purpose, not cut (an attack run's drill of the trusted
    pre-mark backup failed its ``audit_chain`` check, which the restore of the same backup passed).
    """
    # A backup from an older release: brought to this schema first, as a gateway started on it would
    # (a re-attack run's backup from before the account ledger failed the restore's ledger step after
    # the database had been replaced).
    url = default_sqlite_url(verified.database.parent)
    await ensure_schema(url, auto=True)
    db = Database.open(url, pool_size=1)
    try:
        audit = AuditLog(db, keyring=keyring)
        audit.listeners.extend(listeners)
        await audit.record(
            RESTORED_KIND, actor=actor, details={**verified.manifest.summary(), "forced": forced}
        )
        yield db, audit
    finally:
        await db.close()
