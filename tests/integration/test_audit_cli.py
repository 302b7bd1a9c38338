"""``gateway audit …`` as an operator runs it: real subprocesses on SQLite and PostgreSQL.

Checked: exit codes (0 verified, 1 tampered or failed, 2 user error), what stdout and stderr say, and
never a traceback. Records are written by several OS processes at once, as workers and replicas do.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.harness import ROOT, run_cli
from tests.unit.store import conftest_db

pg_database = conftest_db.pg_database
database_url = conftest_db.database_url

ACTIONS = ["list", "verify", "checkpoint", "export", "verify-bundle"]

_WRITER = """\
import asyncio, sys
from gateway.audit.trail import AuditLog
from gateway.store.db import Database

async def main(url, name, n):
    db = Database.open(url, pool_size=2)
    try:
        log = AuditLog(db)
        for i in range(n):
            await log.record("test.append", actor=name, subject="s", details={"i": i})
    finally:
        await db.close()

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


def gateway(*args: str) -> subprocess.CompletedProcess[str]:
    proc = run_cli(*args)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def write_concurrently(url: str, processes: int, each: int) -> None:
    """Append from several OS processes at once (each its own engine and connections)."""
    procs = [
        subprocess.Popen([sys.executable, "-c", _WRITER, url, f"worker:{p}", str(each)], cwd=ROOT)
        for p in range(processes)
    ]
    for proc in procs:
        assert proc.wait(timeout=120) == 0


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(f"public_url: http://127.0.0.1:8080\ndata_dir: {tmp_path / 'data'}\n")
    assert gateway("migrate", "--config", str(path)).returncode == 0
    return path


def _db(config: Path) -> sqlite3.Connection:
    return sqlite3.connect(config.parent / "data" / "gateway.db")


def _url(config: Path) -> str:
    return f"sqlite+aiosqlite:///{config.parent / 'data' / 'gateway.db'}"


def test_help_and_usage() -> None:
    proc = gateway("audit", "--help")
    assert proc.returncode == 0
    for action in ACTIONS:
        assert action in proc.stdout
        assert gateway("audit", action, "--help").returncode == 0
    proc = gateway("audit")
    assert proc.returncode == 2
    assert "ACTION" in proc.stderr


def test_verify_checkpoint_list_and_export(config: Path, tmp_path: Path) -> None:
    c = ("--config", str(config))
    assert gateway("keys", "init", *c).returncode == 0
    assert gateway("keys", "rotate", "--keyring", *c).returncode == 0  # recorded as keys.rotated
    write_concurrently(_url(config), processes=3, each=5)

    proc = gateway("audit", "checkpoint", *c)
    assert proc.returncode == 0, proc.stderr
    checkpoint = json.loads(proc.stdout)
    assert (checkpoint["type"], checkpoint["head_seq"], checkpoint["count"]) == ("audit.checkpoint", 16, 16)

    proc = gateway("audit", "verify", *c)
    assert proc.returncode == 0, proc.stdout
    assert "audit trail OK: 16 record(s) verified" in proc.stdout
    assert f"head hash: {checkpoint['head_hash']}" in proc.stdout
    assert "checkpoints: 1 reached and signatures valid" in proc.stdout

    proc = gateway("audit", "list", *c, "--kind", "keys.rotated")
    assert proc.returncode == 0
    assert "keys.rotated" in proc.stdout
    assert "keyring_key" in proc.stdout
    proc = gateway("audit", "list", *c, "--limit", "3", "--json")
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["seq"] for r in rows] == [16, 15, 14]

    bundle = tmp_path / "evidence.zip"
    proc = gateway("audit", "export", *c, "--since", "2000-01-01", "--until", "2100-01-01", "-o", str(bundle))
    assert proc.returncode == 0, proc.stderr
    assert "16 record(s) (seq 1..16" in proc.stdout
    proc = gateway("audit", "verify-bundle", str(bundle))
    assert proc.returncode == 0, proc.stdout
    assert "bundle OK: 16 record(s)" in proc.stdout
    assert "signatures NOT checked" in proc.stdout
    proc = gateway("audit", "verify-bundle", str(bundle), *c)
    assert proc.returncode == 0, proc.stdout
    assert "checkpoints inside the range: 1 match; signatures valid" in proc.stdout


def test_tampering_is_named_with_the_first_bad_record(config: Path, tmp_path: Path) -> None:
    c = ("--config", str(config))
    write_concurrently(_url(config), processes=2, each=5)
    assert gateway("audit", "checkpoint", *c).returncode == 0
    saved = tmp_path / "from-the-sinks.jsonl"
    saved.write_text((config.parent / "data" / "audit-checkpoints" / "checkpoints.jsonl").read_text())

    with _db(config) as conn:
        conn.execute("UPDATE audit_events SET outcome = 'failure' WHERE seq = 7")
    proc = gateway("audit", "verify", *c)
    assert proc.returncode == 1
    assert "record id 7 (seq 7): its content does not match its hash" in proc.stdout
    assert "What to do:" in proc.stdout
    with _db(config) as conn:
        conn.execute("UPDATE audit_events SET outcome = 'success' WHERE seq = 7")
    assert gateway("audit", "verify", *c).returncode == 0

    # Truncation: the stored chain is valid, only the checkpoint shows what is gone.
    with _db(config) as conn:
        conn.execute("DELETE FROM audit_events WHERE seq >= 9")
    (config.parent / "data" / "audit-checkpoints" / "checkpoints.jsonl").unlink()  # the attacker's too
    proc = gateway("audit", "verify", *c)
    assert proc.returncode == 0
    assert "a truncated tail cannot be detected" in proc.stdout
    proc = gateway("audit", "verify", *c, "--checkpoint", str(saved))
    assert proc.returncode == 1
    assert "record(s) seq 9..10 are gone from the end of the chain" in proc.stdout
    assert "truncated" in proc.stdout


def test_user_errors(config: Path, tmp_path: Path) -> None:
    c = ("--config", str(config))
    cases = [
        (("audit", "list", *c, "--since", "last tuesday"), "not an ISO 8601 time"),
        (("audit", "list", *c, "--limit", "0"), "--limit must be at least 1"),
        (("audit", "verify", *c, "--checkpoint", str(tmp_path / "nope.jsonl")), "no such checkpoint file"),
        (("audit", "verify", *c, "--checkpoint", str(config)), "not JSON"),
        (("audit", "export", *c, "--since", "2026-02-01", "--until", "2026-01-01", "-o", "x.zip"), "before"),
        (("audit", "verify-bundle", str(tmp_path / "nope.zip")), "no such bundle"),
        (("audit", "verify-bundle", str(config)), "neither a directory nor a zip file"),
        (("audit", "verify", "--config", str(tmp_path / "missing.yaml")), "missing.yaml"),
    ]
    for args, complaint in cases:
        proc = gateway(*args)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert complaint in proc.stderr, (args, proc.stderr)


def test_tampered_bundle_fails(config: Path, tmp_path: Path) -> None:
    c = ("--config", str(config))
    write_concurrently(_url(config), processes=1, each=4)
    bundle = tmp_path / "bundle"
    assert (
        gateway(
            "audit", "export", *c, "--since", "2000-01-01", "--until", "2100-01-01", "-o", str(bundle)
        ).returncode
        == 0
    )
    events = bundle / "events.jsonl"
    events.write_text(events.read_text().replace("worker:0", "worker:9", 1))
    proc = gateway("audit", "verify-bundle", str(bundle))
    assert proc.returncode == 1
    assert "events.jsonl does not match its SHA-256 in the manifest" in proc.stdout


def test_concurrent_processes_keep_one_chain(database_url: str, tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"public_url: http://127.0.0.1:8080\ndata_dir: {tmp_path / 'data'}\nstorage: {{url: '{database_url}'}}\n"
    )
    assert gateway("migrate", "--config", str(config)).returncode == 0
    write_concurrently(database_url, processes=4, each=15)
    proc = gateway("audit", "verify", "--config", str(config))
    assert proc.returncode == 0, proc.stdout
    assert "audit trail OK: 60 record(s) verified" in proc.stdout
    assert "(seq 60, id 60)" in proc.stdout
