"""A running gateway sends signed audit checkpoints out of the database, into its log sinks.

What a SIEM keeps of them is what makes a truncated trail detectable: `gateway audit verify
--checkpoint` with the sink's log passes on the intact trail and fails once the tail of the trail is
deleted. A record forged at the tail with database access only is refused by the running gateway's
checkpointer (an ``audit.chain_broken`` alert in the sink instead of a checkpoint) and by `verify`.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.audit.chain import ChainRecord
from tests.integration.harness import (
    Gateway,
    add_user,
    echo_route,
    free_port,
    gateway_config,
    run_cli,
    run_echo,
    run_gateway,
    wait_until,
)
from tests.integration.http_client import PASSWORD


def checkpoints_in(log_file: Path) -> list[dict[str, Any]]:
    if not log_file.exists():
        return []
    found = []
    for line in log_file.read_text().splitlines():
        doc = json.loads(line)
        if doc.get("event", {}).get("action") == "audit.checkpoint":
            found.append(doc["gateway"]["checkpoint"])
    return found


@contextmanager
def checkpointing(tmp_path: Path) -> Iterator[tuple[Gateway, Path]]:
    """A gateway signing a checkpoint every second into the file sink it yields beside itself."""
    sink = tmp_path / "events.log"
    with run_echo() as echo:
        config = gateway_config(
            tmp_path,
            free_port(),
            [echo_route(echo)],
            audit={"checkpoint_interval": "1s"},
            logging={"sinks": [{"type": "file", "path": str(sink)}]},
        )
        with run_gateway(tmp_path, config) as gw:
            yield gw, sink


def test_checkpoints_reach_the_sinks_and_prove_truncation(tmp_path: Path) -> None:
    with checkpointing(tmp_path) as (gw, sink):
        add_user(gw.config_path, "carol", PASSWORD)
        add_user(gw.config_path, "dave", PASSWORD)
        # policy.changed (bootstrap) and two user.created: a checkpoint covering all three.
        wait_until(
            lambda: any(cp["count"] >= 3 for cp in checkpoints_in(sink)), timeout=30, what="a checkpoint"
        )
    # The sink's log as it is (access-log lines and all) is what verify reads.
    ok = run_cli("audit", "verify", "--config", str(gw.config_path), "--checkpoint", str(sink))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "keyed: seq 1.." in ok.stdout
    # Someone with database access removes the newest record, and the local checkpoint file too.
    with sqlite3.connect(tmp_path / "data" / "gateway.db") as conn:
        conn.execute("DELETE FROM audit_events WHERE seq = (SELECT MAX(seq) FROM audit_events)")
    (tmp_path / "data" / "audit-checkpoints" / "checkpoints.jsonl").unlink()
    bad = run_cli("audit", "verify", "--config", str(gw.config_path), "--checkpoint", str(sink))
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "are gone from the end of the chain" in bad.stdout
    assert "Traceback" not in bad.stderr


def forge_tail(db_file: Path) -> tuple[int, int]:
    """With the database only: append the next record, linked and SHA-256-hashed. (id, seq)."""
    with sqlite3.connect(db_file) as conn:
        row = conn.execute(
            "SELECT id, seq, at, record_hash FROM audit_events ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        head_id, head_seq, at, head_hash = row
        forged = ChainRecord(
            head_id + 1,
            head_seq + 1,
            datetime.fromisoformat(at).replace(tzinfo=UTC),
            "admin.user.roles",
            "admin:alice",
            "mallory",
            "192.0.2.66",
            "success",
            '{"roles": ["admin"]}',
            head_hash,
            "",
        )
        conn.execute(
            "INSERT INTO audit_events (id, at, kind, actor, subject, ip, outcome, details, seq, prev_hash, "
            "record_hash, chain_version, key_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, '')",
            (
                forged.id,
                at,
                forged.kind,
                forged.actor,
                forged.subject,
                forged.ip,
                forged.outcome,
                forged.details,
                forged.seq,
                forged.prev_hash,
                hashlib.sha256(forged.canonical()).hexdigest(),
            ),
        )
    return forged.id, forged.seq


def alerts_in(log_file: Path) -> list[str]:
    problems = []
    for line in log_file.read_text().splitlines() if log_file.exists() else []:
        doc = json.loads(line)
        if doc.get("event", {}).get("action") == "audit.chain_broken":
            problems.append(doc["gateway"]["checkpoint"]["problem"])
    return problems


def test_a_forged_tail_is_never_signed_and_verify_names_it(tmp_path: Path) -> None:
    with checkpointing(tmp_path) as (gw, sink):
        add_user(gw.config_path, "carol", PASSWORD)
        wait_until(
            lambda: any(cp["count"] >= 2 for cp in checkpoints_in(sink)), timeout=30, what="a checkpoint"
        )
        forged_id, forged_seq = forge_tail(tmp_path / "data" / "gateway.db")
        where = f"record id {forged_id} (seq {forged_seq})"
        # The gateway's own checkpointer finds it and alerts instead of signing.
        wait_until(lambda: any(where in p for p in alerts_in(sink)), timeout=30, what="a chain_broken alert")
    assert all(cp["head_seq"] < forged_seq for cp in checkpoints_in(sink))
    local = tmp_path / "data" / "audit-checkpoints" / "checkpoints.jsonl"
    assert all(json.loads(line)["head_seq"] < forged_seq for line in local.read_text().splitlines())
    bad = run_cli("audit", "verify", "--config", str(gw.config_path), "--checkpoint", str(sink))
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert f"audit trail FAILED verification: {where}: it is an unkeyed (version 1) record" in bad.stdout
    assert "Traceback" not in bad.stderr


def test_a_keyring_rotated_by_the_cli_reaches_the_running_gateway(tmp_path: Path) -> None:
    """`gateway keys rotate --keyring` while the gateway runs: the CLI keys its own audit records under
    the new key, and so does every CLI call after it. The running gateway, which loaded the keyring
    before, reads the file again for the key id it does not know: its checkpoints go on covering
    the trail (before, it could not check the new records and alerted ``audit.chain_broken``)."""
    with checkpointing(tmp_path) as (gw, sink):
        wait_until(lambda: checkpoints_in(sink), timeout=30, what="a first checkpoint")
        rotated = run_cli("keys", "rotate", "--keyring", "--config", str(gw.config_path))
        assert rotated.returncode == 0, rotated.stdout + rotated.stderr
        add_user(gw.config_path, "carol", PASSWORD)
        with sqlite3.connect(tmp_path / "data" / "gateway.db") as conn:
            (head_seq,) = conn.execute("SELECT MAX(seq) FROM audit_events").fetchone()
            keys = {k for (k,) in conn.execute("SELECT DISTINCT key_id FROM audit_events")}
        assert len(keys) == 2  # records under the first key and under the rotated one
        wait_until(
            lambda: any(cp["head_seq"] >= head_seq for cp in checkpoints_in(sink)),
            timeout=30,
            what="a checkpoint covering the records keyed under the new key",
        )
    assert alerts_in(sink) == []
