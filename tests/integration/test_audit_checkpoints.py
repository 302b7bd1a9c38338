"""A running gateway sends signed audit checkpoints out of the database, into its log sinks.

What a SIEM keeps of them is what makes a truncated trail detectable: `gateway audit verify
--checkpoint` with the checkpoint taken from the sink output passes on the intact trail and fails
once the tail of the trail is deleted.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from tests.integration.harness import (
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


def test_checkpoints_reach_the_sinks_and_prove_truncation(tmp_path: Path) -> None:
    port = free_port()
    sink = tmp_path / "events.log"
    with run_echo() as echo:
        config = gateway_config(
            tmp_path,
            port,
            [echo_route(echo)],
            audit={"checkpoint_interval": "1s"},
            logging={"sinks": [{"type": "file", "path": str(sink)}]},
        )
        with run_gateway(tmp_path, config) as gw:
            add_user(gw.config_path, "carol", PASSWORD)
            add_user(gw.config_path, "dave", PASSWORD)
            # policy.changed (bootstrap) and two user.created: a checkpoint covering all three.
            wait_until(
                lambda: any(cp["count"] >= 3 for cp in checkpoints_in(sink)), timeout=30, what="a checkpoint"
            )
    latest = max(checkpoints_in(sink), key=lambda cp: cp["head_seq"])
    saved = tmp_path / "from-siem.json"
    saved.write_text(json.dumps(latest))
    ok = run_cli("audit", "verify", "--config", str(gw.config_path), "--checkpoint", str(saved))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    # Someone with database access removes the newest record: the sink's checkpoint proves it.
    with sqlite3.connect(tmp_path / "data" / "gateway.db") as conn:
        conn.execute("DELETE FROM audit_events WHERE seq = (SELECT MAX(seq) FROM audit_events)")
    bad = run_cli("audit", "verify", "--config", str(gw.config_path), "--checkpoint", str(saved))
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "Traceback" not in bad.stderr
