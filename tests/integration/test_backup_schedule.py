"""Backups from a running gateway (embedded default, two workers): one backup per period however many
workers try, verified and replicated; a failure and a missed backup reach the sinks and turn the
readiness details' backup line red; a working backup turns it green again. Real processes, real files."""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx

from tests.integration.harness import (
    Gateway,
    echo_route,
    free_port,
    gateway_config,
    run_cli,
    run_echo,
    run_gateway,
    wait_until,
)

INTERVAL = 4  # seconds: a period; the first attempt comes one period after start


def _actions(sink: Path) -> list[str]:
    if not sink.exists():
        return []
    return [json.loads(line).get("event", {}).get("action", "") for line in sink.read_text().splitlines()]


def _backup_line(gw: Gateway) -> dict[str, Any]:
    report = httpx.get(f"{gw.url}/.gateway/ready", timeout=10).json()
    line: dict[str, Any] = report["checks"].get("backup", {})
    return line


def _runs(database: Path) -> list[tuple[str, str, str]]:
    with closing(sqlite3.connect(database)) as conn:
        return conn.execute("SELECT period, kind, status FROM backup_runs ORDER BY id").fetchall()


def test_a_running_gateway_backs_up_once_per_period_and_alerts_on_failure_and_miss(tmp_path: Path) -> None:
    port = free_port()
    sink = tmp_path / "events.jsonl"
    backups, nas = tmp_path / "backups", tmp_path / "nas"
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("a file where the backups should go")
    with run_echo() as echo:
        config = gateway_config(
            tmp_path,
            port,
            [echo_route(echo)],
            server={"workers": 2},
            logging={"sinks": [{"type": "file", "path": str(sink)}]},
            backup={
                "interval": f"{INTERVAL}s",
                "grace": "2s",
                "directory": str(backups),
                "targets": [str(nas)],
            },
        )
        with run_gateway(tmp_path, config) as gw:
            good = wait_until(
                lambda: (line := _backup_line(gw)).get("last_backup") and line,
                timeout=40,
                what="a scheduled backup in the readiness details",
            )
            assert good["ok"] is True
            first = good["last_backup"]
            assert (nas / first / "manifest.json").is_file()
            # Two more periods: still one backup each, although both workers try every one.
            wait_until(lambda: _actions(sink).count("backup.created") >= 3, timeout=40, what="three backups")

            # The backups cannot be written any more: a failure, then (interval + grace on) a miss.
            config["backup"]["directory"] = str(blocked)
            gw.rewrite_config(config)
            gw.sighup()
            red = wait_until(
                lambda: (line := _backup_line(gw)).get("ok") is False and line,
                timeout=40,
                what="a red backup line",
            )
            assert "the last backup failed" in red["error"]
            assert "cannot write backups to" in red["error"]
            wait_until(lambda: "backup.missed" in _actions(sink), timeout=40, what="a missed-backup alert")
            assert "backup.failed" in _actions(sink)

            # Fixed: the next backup turns it green again.
            config["backup"]["directory"] = str(backups)
            gw.rewrite_config(config)
            gw.sighup()
            wait_until(
                lambda: (line := _backup_line(gw)).get("ok") is True and line.get("last_backup") != first,
                timeout=40,
                what="a green backup line again",
            )
        database = tmp_path / "data" / "gateway.db"
        runs = _runs(database)

    scheduled = [period for period, kind, _ in runs if kind == "scheduled"]
    assert len(scheduled) == len(set(scheduled))
    made = _actions(sink).count("backup.created")
    assert made == sum(1 for _, kind, status in runs if kind == "scheduled" and status == "ok")
    # One worker alerted each stale backup: one missed row per alert sent.
    missed = [period for period, kind, _ in runs if kind == "missed"]
    assert Counter(_actions(sink))["backup.missed"] == len(missed) >= 1
    # What the schedule kept verifies with the CLI (all on one day: keep_daily keeps the newest).
    proc = run_cli("backup", "verify", "--config", str(tmp_path / "gateway.yaml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len([p for p in backups.iterdir() if not p.name.startswith(".")]) == 1
