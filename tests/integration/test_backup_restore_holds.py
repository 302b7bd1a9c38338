"""``gateway backup restore`` keeps the legal holds of the node it replaces: the real CLI on the
embedded default.

The attack: a backup, then two legal holds placed (one on a data class, one on a person), the backup
restored over the node; the restored database had neither hold and the next retention run anonymised
what they held. A hold released since the backup stays released; privacy requests opened since are
named as lost; a node whose database cannot be read is said loudly, and so is one that does not
descend from the backup (a re-attack run: on a rebuilt host a command had made a new empty database
first, and the restore said "0 placed since this backup" without a warning).
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.integration.harness import run_cli


def _cli(*args: str) -> str:
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def _holds(database: Path) -> list[tuple[object, ...]]:
    """Every hold as stored, but its row id."""
    with closing(sqlite3.connect(database)) as conn:
        return conn.execute(
            "SELECT reference, scope, subject_key, subject, data_class, reason, placed_by, placed_at, "
            "released_by, released_at FROM legal_holds ORDER BY reference"
        ).fetchall()


def _active(config: tuple[str, str]) -> list[str]:
    listed = json.loads(_cli("privacy", "hold", "list", "--json", *config))
    return sorted(h["reference"] for h in listed if h["active"])


def test_a_restore_keeps_the_legal_holds_placed_and_the_releases_made_since_the_backup(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"public_url: http://127.0.0.1:8080\ndata_dir: {data}\nprivacy: {{retention: {{audit_events: 1s}}}}\n"
    )
    c = ("--config", str(config))
    _cli("user", "add", "alice", "--no-password", *c)
    _cli("privacy", "hold", "place", "OLD-1", "--class", "incidents", "--reason", "closed case", *c)
    backup_id = _cli("backup", "create", *c).splitlines()[-1]

    _cli("privacy", "hold", "place", "CASE-1", "--class", "audit_events", "--reason", "court order", *c)
    _cli("privacy", "hold", "place", "CASE-2", "--user", "alice", "--reason", "litigation", *c)
    _cli("privacy", "hold", "release", "OLD-1", *c)
    _cli("privacy", "export", "alice", "--verified-by", "passport", "--out", str(tmp_path / "a.json"), *c)
    (request,) = json.loads(_cli("privacy", "requests", "--json", *c))
    live = _holds(data / "gateway.db")

    proc = run_cli("backup", "restore", backup_id, "--data-dir", str(data), "--force", *c)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (
        "legal holds carried over: 2 placed since this backup (CASE-1, CASE-2), 1 released since (OLD-1)"
        in proc.stdout
    )
    # Each as it was placed (the person's by their subject key too), the release as it was made.
    assert _holds(data / "gateway.db") == live
    assert _active(c) == ["CASE-1", "CASE-2"]
    # The register's rows of requests opened since are not made again: named, to be opened again.
    assert f"privacy requests opened after it: {request['ref']} (access)" in proc.stderr
    # The restored trail says what was carried, and verifies.
    with closing(sqlite3.connect(data / "gateway.db")) as conn:
        carried = [
            (kind, json.loads(details)["reference"])
            for kind, details in conn.execute(
                "SELECT kind, details FROM audit_events WHERE kind LIKE 'privacy.hold.%' "
                "AND details LIKE '%carried across the restore%' ORDER BY seq"
            )
        ]
    assert carried == [
        ("privacy.hold.placed", "CASE-1"),
        ("privacy.hold.placed", "CASE-2"),
        ("privacy.hold.released", "OLD-1"),
    ]
    _cli("audit", "verify", *c)
    # What the retention run would anonymise: nothing of the audit trail, the holds keep it (alice's
    # records by CASE-2, the rest by CASE-1).
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    plan = json.loads(_cli("retention", "plan", "--json", "--at", tomorrow, *c))
    (audit,) = [k for k in plan["classes"] if k["data_class"] == "audit_events"]
    assert (audit["due_now"], sorted(audit["held"])) == (0, ["CASE-1", "CASE-2"])

    # The same backup again: the holds are there already, nothing is placed twice.
    proc = run_cli("backup", "restore", backup_id, "--data-dir", str(data), "--force", *c)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _holds(data / "gateway.db") == live


def test_a_restore_says_loudly_when_the_nodes_holds_cannot_be_read(tmp_path: Path) -> None:
    data = tmp_path / "data"
    config = tmp_path / "gateway.yaml"
    config.write_text(f"public_url: http://127.0.0.1:8080\ndata_dir: {data}\n")
    c = ("--config", str(config))
    backup_id = _cli("backup", "create", *c).splitlines()[-1]
    _cli("privacy", "hold", "place", "CASE-1", "--class", "audit_events", "--reason", "court order", *c)
    # A lost disk: the node's database is gone.
    for file in data.glob("gateway.db*"):
        file.unlink()

    proc = run_cli("backup", "restore", backup_id, "--data-dir", str(data), "--force", *c)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "legal holds: NOT carried over" in proc.stdout
    assert "WARNING: legal holds NOT carried over: the node's database" in proc.stderr
    assert "place the missing ones again (`gateway privacy hold place`)" in proc.stderr
    assert _active(c) == []


@pytest.mark.parametrize("records_before", [True, False], ids=["trail", "empty-trail"])
def test_a_restore_says_loudly_when_the_nodes_database_is_a_new_one(
    tmp_path: Path, records_before: bool
) -> None:
    data = tmp_path / "data"
    config = tmp_path / "gateway.yaml"
    config.write_text(f"public_url: http://127.0.0.1:8080\ndata_dir: {data}\n")
    c = ("--config", str(config))
    if records_before:
        _cli("user", "add", "alice", "--no-password", *c)
    backup_id = _cli("backup", "create", *c).splitlines()[-1]
    _cli("privacy", "hold", "place", "CASE-1", "--class", "audit_events", "--reason", "court order", *c)
    # A copy restored into a new directory reads the live deployment: its hold is carried over.
    proc = run_cli("backup", "restore", backup_id, "--data-dir", str(tmp_path / "copy"), *c)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "legal holds carried over: 1 placed since this backup (CASE-1)" in proc.stdout
    assert "WARNING" not in proc.stderr
    # A rebuilt host: the node's database gone, and a command run before the restore made a new one.
    for file in data.glob("gateway.db*"):
        file.unlink()
    assert _active(c) == []
    assert (data / "gateway.db").is_file()

    proc = run_cli("backup", "restore", backup_id, "--data-dir", str(data), "--force", *c)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "legal holds: NOT carried over" in proc.stdout
    assert "legal holds carried over" not in proc.stdout
    assert (
        f"WARNING: legal holds NOT carried over: the node's database {data / 'gateway.db'} does not "
        "descend from this backup"
    ) in proc.stderr
    assert "place the missing ones again (`gateway privacy hold place`)" in proc.stderr
