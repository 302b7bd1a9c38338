"""``gateway backup …`` as an operator runs it: real subprocesses on the embedded (SQLite) database.

Checked: a backup made while another process keeps appending audit records restores to the state
it captured (every table equal up to the snapshot's chain head); replication to a directory and to a
real rclone remote; verify naming the failing part with exit 1; restore refusing an existing
database (exit 2) unless --force; prune; and the audit records of each, with no key material in them.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest

from tests.integration.harness import ROOT, run_cli

PASSWORD = "amber quarry lantern voyage 42"

_WRITER = """\
import asyncio, sys
from gateway.audit.trail import AuditLog
from gateway.crypto.keyring import Keyring
from gateway.store.db import Database

async def main(url, keyring_path):
    db = Database.open(url, pool_size=2)
    log = AuditLog(db, keyring=Keyring.load(keyring_path))
    i = 0
    try:
        while True:
            await log.record("test.background", actor="writer", details={"i": i})
            i += 1
            if i == 10:
                print("writing", flush=True)
            await asyncio.sleep(0.002)
    finally:
        await db.close()

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


def _rows(database: Path) -> dict[str, list[tuple[object, ...]]]:
    with closing(sqlite3.connect(database)) as conn:
        names = [
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        return {n: sorted(conn.execute(f'SELECT * FROM "{n}"').fetchall(), key=repr) for n in names}


def _audit(database: Path, kind: str) -> list[dict[str, object]]:
    with closing(sqlite3.connect(database)) as conn:
        return [
            {"actor": a, "outcome": o, **json.loads(d)}
            for a, o, d in conn.execute(
                "SELECT actor, outcome, details FROM audit_events WHERE kind = ? ORDER BY seq", (kind,)
            )
        ]


@pytest.mark.peer  # the real rclone binary (scripts/ensure-test-deps installs it)
def test_backup_cli_end_to_end(tmp_path: Path) -> None:
    data = tmp_path / "data"
    config = tmp_path / "gateway.yaml"
    remote = tmp_path / "remote"
    config.write_text(
        "public_url: http://127.0.0.1:8080\n"
        f"data_dir: {data}\n"
        "backup:\n"
        f"  targets: [{tmp_path / 'nas'}, 'rclone:testremote:{remote}/gw']\n"
        "  keep_daily: 1\n"
        "  keep_weekly: 0\n"
        f"logging: {{sinks: [{{type: file, path: {tmp_path / 'security.jsonl'}}}]}}\n"
    )
    env = {"RCLONE_CONFIG_TESTREMOTE_TYPE": "local", "RCLONE_CONFIG": str(tmp_path / "none.conf")}
    c = ("--config", str(config))

    def gateway(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        if stdin is None:
            return run_cli(*args, env=env)
        return subprocess.run(
            [sys.executable, "-m", "gateway", *args],
            cwd=ROOT,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            env={**os.environ, **env},
        )

    proc = gateway("user", "add", "alice", "--password-stdin", *c, stdin=PASSWORD + "\n")
    assert proc.returncode == 0, proc.stderr
    database = data / "gateway.db"
    keyring = data / "keys" / "keyring.json"

    # A backup while another process keeps writing audit records, as a serving gateway does.
    writer = subprocess.Popen(
        [sys.executable, "-c", _WRITER, f"sqlite+aiosqlite:///{database}", str(keyring)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout is not None
        assert writer.stdout.readline() == "writing\n"
        proc = gateway("backup", "create", *c)
    finally:
        writer.terminate()
        writer.wait(timeout=30)
        if writer.stdout is not None:
            writer.stdout.close()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    backup_id = lines[-1]
    assert lines[0].startswith("part gateway.db: ")
    assert f"backup {backup_id} written to {data / 'backups' / backup_id}" in lines
    assert f"replicated to {tmp_path / 'nas' / backup_id} (checked)" in lines
    assert f"replicated to testremote:{remote}/gw/{backup_id} (checked)" in lines
    assert "Traceback" not in proc.stderr
    backup = data / "backups" / backup_id
    manifest = json.loads((backup / "manifest.json").read_text())
    assert manifest["audit_head_seq"] > 10
    assert keyring.read_bytes() not in b"".join(p.read_bytes() for p in backup.iterdir())

    proc = gateway("backup", "list", *c)
    assert proc.returncode == 0
    assert backup_id in proc.stdout

    # Each copy verifies on its own (by path).
    for copy in (backup, tmp_path / "nas" / backup_id, remote / "gw" / backup_id):
        proc = gateway("backup", "verify", str(copy), *c)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert f"backup {backup_id} OK" in proc.stdout
        assert "    users: 1" in proc.stdout

    # Restore into a new data directory: identical to the live database up to the snapshot's head.
    live = _rows(database)
    restored = tmp_path / "restored"
    proc = gateway("backup", "restore", backup_id, "--data-dir", str(restored), *c)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    got = _rows(restored / "gateway.db")
    head = manifest["audit_head_seq"]
    # The run row of a manual backup is written after its snapshot: the live database has it (every
    # replica's readiness sees the backup), the backup does not.
    (run,) = live.pop("backup_runs")
    assert run[1:4] == (f"manual:{backup_id}", "manual", "ok")
    assert got.pop("backup_runs") == []
    # A copy restored into another data directory is given a lineage of its own (its account-ledger
    # lines are never read as the live deployment's), descending from the live one's.
    ((key, value, _),) = got.pop("kv_settings")
    assert key == "account_ledger.lineage"
    assert json.loads(str(value))["ancestors"] == ["root"]
    assert live.pop("kv_settings") == []
    assert {k: v for k, v in got.items() if k != "audit_events"} == {
        k: v for k, v in live.items() if k != "audit_events"
    }
    with closing(sqlite3.connect(restored / "gateway.db")) as conn:
        restored_chain = conn.execute(
            "SELECT * FROM audit_events WHERE seq <= ? ORDER BY seq", (head,)
        ).fetchall()
        after = conn.execute("SELECT kind FROM audit_events WHERE seq > ?", (head,)).fetchall()
    with closing(sqlite3.connect(database)) as conn:
        live_chain = conn.execute(
            "SELECT * FROM audit_events WHERE seq <= ? ORDER BY seq", (head,)
        ).fetchall()
    assert restored_chain == live_chain
    assert after == [("backup.restored",)]  # the restored node's first record says where it came from
    restored_config = tmp_path / "restored.yaml"
    restored_config.write_text(
        f"public_url: http://127.0.0.1:8080\ndata_dir: {restored}\nkeyring: {keyring}\n"
    )
    proc = gateway("audit", "verify", "--config", str(restored_config))
    assert proc.returncode == 0, proc.stdout + proc.stderr

    # Restoring over it again is refused without --force (exit 2), done with it.
    proc = gateway("backup", "restore", backup_id, "--data-dir", str(restored), *c)
    assert proc.returncode == 2
    assert "exists and is not empty" in proc.stderr
    assert _audit(restored / "gateway.db", "backup.restored")[0]["forced"] is False
    proc = gateway("backup", "restore", backup_id, "--data-dir", str(restored), "--force", *c)
    assert proc.returncode == 0, proc.stderr
    # The security-event sinks heard of both restores (a re-attack run: only the rewound trail did).
    sunk = [json.loads(line) for line in (tmp_path / "security.jsonl").read_text().splitlines()]
    restores = [e for e in sunk if e["event"]["action"] == "backup.restored"]
    assert [e["gateway"]["details"]["forced"] for e in restores] == [False, True]

    # A flipped byte: exit 1 naming the part, recorded as backup.verify_failed.
    damaged = tmp_path / "nas" / backup_id / "gateway.db.enc"
    raw = bytearray(damaged.read_bytes())
    raw[100] ^= 0x01
    damaged.write_bytes(bytes(raw))
    proc = gateway("backup", "verify", str(tmp_path / "nas" / backup_id), *c)
    assert proc.returncode == 1
    assert f"backup {backup_id} FAILED verification: part gateway.db: sha256 mismatch" in proc.stdout
    assert "Traceback" not in proc.stderr

    # A wrong keyring: exit 1, decryption named.
    other = tmp_path / "other"
    other_config = tmp_path / "other.yaml"
    other_config.write_text(f"public_url: http://127.0.0.1:8080\ndata_dir: {other}\n")
    assert gateway("keys", "init", "--config", str(other_config)).returncode == 0
    proc = gateway("backup", "verify", str(backup), "--config", str(other_config))
    assert proc.returncode == 1
    assert "cannot decrypt part gateway.db: wrong keyring?" in proc.stdout

    created = _audit(database, "backup.created")
    assert [r["backup_id"] for r in created] == [backup_id]
    assert created[0]["replication_failed"] == []
    assert len(_audit(database, "backup.verified")) == 3
    failed = _audit(database, "backup.verify_failed")
    assert [(r["part"], r["outcome"]) for r in failed] == [("gateway.db", "failure")]
    with closing(sqlite3.connect(database)) as conn:
        details = " ".join(
            d for (d,) in conn.execute("SELECT details FROM audit_events WHERE kind LIKE 'backup.%'")
        )
    key = json.loads(keyring.read_text())["keys"]
    assert not any(k in details for k in key.values())

    # Prune with keep_daily 1: a second backup the same day replaces the first.
    proc = gateway("backup", "create", "--no-replicate", *c)
    assert proc.returncode == 0, proc.stderr
    second = proc.stdout.splitlines()[-1]
    proc = gateway("backup", "prune", "--dry-run", *c)
    assert proc.returncode == 0
    assert f"would delete {backup_id}" in proc.stdout
    assert backup.exists()
    proc = gateway("backup", "prune", *c)
    assert f"deleted {backup_id}" in proc.stdout
    assert f"keep    {second}" in proc.stdout
    assert not backup.exists()
    assert _audit(database, "backup.pruned")[0]["deleted"] == [backup_id]


def test_sealed_incident_evidence_is_restored_byte_for_byte(tmp_path: Path) -> None:
    data = tmp_path / "data"
    config = tmp_path / "gateway.yaml"
    config.write_text(f"public_url: http://127.0.0.1:8080\ndata_dir: {data}\n")
    c = ("--config", str(config))
    assert run_cli("migrate", *c).returncode == 0
    assert run_cli("keys", "init", *c).returncode == 0
    proc = run_cli("incident", "case", "open", "--title", "credential stuffing", *c)
    assert proc.returncode == 0, proc.stderr
    case = proc.stdout.split()[-1]
    # Containment seals the evidence bundle under <data_dir>/incidents/<case>/, its hash in the chain.
    proc = run_cli("incident", "case", "phase", case, "containment", *c)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (bundle,) = (data / "incidents" / case).iterdir()
    sealed = bundle.read_bytes()
    assert hashlib.sha256(sealed).hexdigest() in proc.stdout

    proc = run_cli("backup", "create", *c)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"part incidents/{case}/{bundle.name}: {len(sealed)} bytes" in proc.stdout
    backup_id = proc.stdout.splitlines()[-1]
    manifest = json.loads((data / "backups" / backup_id / "manifest.json").read_text())
    (part,) = [p for p in manifest["parts"] if p["name"].startswith("incidents/")]
    assert part["plain_sha256"] == hashlib.sha256(sealed).hexdigest()

    proc = run_cli("backup", "verify", backup_id, *c)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (
        "incident evidence: 1 file(s) restored and hashed, 1 matching a seal in the audit chain"
        in proc.stdout
    )

    restored = tmp_path / "restored"
    proc = run_cli("backup", "restore", backup_id, "--data-dir", str(restored), *c)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (restored / "incidents" / case / bundle.name).read_bytes() == sealed
    assert "Traceback" not in proc.stderr

    # Gone from the node before a backup: that backup says so (and still verifies).
    bundle.unlink()
    proc = run_cli("backup", "create", "--no-replicate", *c)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = run_cli("backup", "verify", proc.stdout.splitlines()[-1], *c)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (
        f"the evidence bundle sealed with sha256 {hashlib.sha256(sealed).hexdigest()} is not in this backup"
        in proc.stdout
    )


def test_backup_cli_user_errors(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(f"public_url: http://127.0.0.1:8080\ndata_dir: {tmp_path / 'data'}\n")
    c = ("--config", str(config))
    proc = run_cli("backup", "verify", *c)
    assert proc.returncode == 2
    assert "no backups in" in proc.stderr
    proc = run_cli("backup", "restore", "nosuch", "--data-dir", str(tmp_path / "x"), *c)
    assert proc.returncode == 2
    assert "no backup 'nosuch'" in proc.stderr
    pg = tmp_path / "pg.yaml"
    pg.write_text(
        "public_url: http://127.0.0.1:8080\nstorage: {url: 'postgresql+asyncpg://postgres@127.0.0.1:5432/test'}\n"
    )
    proc = run_cli("backup", "create", "--config", str(pg))
    assert proc.returncode == 2
    assert "backup.pgbackrest is not configured" in proc.stderr
    proc = run_cli("backup")
    assert proc.returncode == 2
    # Options of the other backend: refused with what to do instead, nothing run.
    for args, message in (
        (("backup", "create", "--type", "full"), "--type is for PostgreSQL"),
        (("backup", "verify", "--target", str(tmp_path / "nas")), "verified by its path"),
    ):
        proc = run_cli(*args, *c)
        assert proc.returncode == 2, proc.stderr
        assert message in proc.stderr
    with_pgbackrest = tmp_path / "pgbackrest.yaml"
    with_pgbackrest.write_text(
        "public_url: http://127.0.0.1:8080\n"
        "storage: {url: 'postgresql+asyncpg://postgres@127.0.0.1:5432/test'}\n"
        f"backup: {{targets: [{tmp_path / 'nas'}], pgbackrest: {{pg_path: /var/lib/postgresql/15/main, "
        "cipher_pass: 'a passphrase long enough to keep'}}\n"
    )
    p = ("--config", str(with_pgbackrest))
    refused: tuple[tuple[tuple[str, ...], str], ...] = (
        (("backup", "verify", "20261203-152508F"), "leave out the backup id"),
        (("backup", "verify", "--target", "rclone:elsewhere:x"), "is not one of backup.targets"),
        (("backup", "create", "--to", str(tmp_path)), "pgBackRest writes to backup.pgbackrest.repo_path"),
        (("backup", "restore", "x", "--data-dir", str(tmp_path / "r")), "gateway pgbackrest restore"),
        (("backup", "prune"), "retention_full"),
        (
            ("pgbackrest", "restore", "--pg-path", str(tmp_path / "r"), "--backup", "latest"),
            "not a pgBackRest backup label",
        ),
        (
            ("pgbackrest", "restore", "--pg-path", str(tmp_path / "r"), "--repo-path", str(tmp_path)),
            "no repository of stanza",
        ),
        (("pgbackrest", "verify", "--target", "/elsewhere"), "is not one of backup.targets"),
    )
    for command, message in refused:
        proc = run_cli(*command, *p)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert message in proc.stderr
        assert "Traceback" not in proc.stderr
    assert not (tmp_path / "r").exists()


def test_a_backup_from_before_the_account_ledger_restores_with_its_factors(tmp_path: Path) -> None:
    """A re-attack run: a backup made before migration 0014 (the account ledger) failed the restore's
    ledger step after the database had been replaced ("no such table: account_ledger"). It is brought
    to this schema first; its factors and provider links survive the rebuilds (foreign keys off)."""
    from alembic import command

    from gateway.backup.archive import create_backup
    from gateway.clock import SYSTEM_CLOCK
    from gateway.crypto.keyring import Keyring
    from gateway.store.migrate import alembic_config

    data = tmp_path / "data"
    config = tmp_path / "gateway.yaml"
    config.write_text(f"public_url: http://127.0.0.1:8080\ndata_dir: {data}\n")
    made = run_cli("user", "add", "alice", "--no-password", "--config", str(config))
    assert made.returncode == 0, made.stdout + made.stderr
    database = data / "gateway.db"
    with closing(sqlite3.connect(database)) as conn:
        conn.execute(
            "INSERT INTO totp_credentials (user_id, name, secret_enc, confirmed, last_step, created_at) "
            "VALUES (1, 'phone', x'00', 1, 0, '2026-01-01 00:00:00')"
        )
        conn.execute(
            "INSERT INTO identity_links (provider, subject, user_id, created_at) "
            "VALUES ('corp', 'sub-1', 1, '2026-01-01 00:00:00')"
        )
        conn.commit()
    command.downgrade(alembic_config(f"sqlite+aiosqlite:///{database}", quiet=True), "0013")
    keyring = Keyring.load(data / "keys" / "keyring.json")
    _, backup = create_backup(database, data, tmp_path / "old-backups", keyring, SYSTEM_CLOCK)

    restored = tmp_path / "restored"
    proc = run_cli("backup", "restore", str(backup), "--data-dir", str(restored), "--config", str(config))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with closing(sqlite3.connect(restored / "gateway.db")) as conn:
        counts = [
            conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            for table in ("users", "totp_credentials", "identity_links", "account_ledger")
        ]
        (revision,) = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    assert counts[:3] == [1, 1, 1]
    assert revision == "0017"
