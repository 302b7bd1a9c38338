"""Bad arguments and input to the CLI are a usage error (exit 2, one line), never a traceback, and change
nothing: the inputs of a fuzzing run that each printed a traceback or ran half the command first."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.integration.harness import ROOT, run_cli


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "listen": "127.0.0.1:18080",
                "public_url": "http://127.0.0.1:18080",
                "data_dir": str(tmp_path / "data"),
                "routes": [
                    {"name": "app", "host": "127.0.0.1", "upstreams": ["http://127.0.0.1:9"], "mfa": "none"}
                ],
            }
        )
    )
    return path


def _usage_error(*args: str) -> str:
    proc = run_cli(*args)
    assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    return proc.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["healthcheck", "--timeout", "-1"],
        ["healthcheck", "--timeout", "nan"],
        ["healthcheck", "--timeout", "1e999"],
        ["echo", "--listen", "abc"],
        ["echo", "--listen", "127.0.0.1:99999"],
        ["echo", "--listen", "[::1]"],
        ["quickstart", "--listen", "127.0.0.1:"],
    ],
)
def test_bad_option_values_are_usage_errors(args: list[str]) -> None:
    assert "expected" in _usage_error(*args)


@pytest.mark.parametrize(
    "args",
    [
        ["audit", "list", "--limit", "99999999999999999999999"],
        ["user", "list", "--limit", "-1"],
        ["user", "list", "--offset", "-5"],
        ["policy", "history", "--limit", "0"],
        ["dr", "drill", "--port", "99999999999999999999999"],
        ["dr", "drill", "--port", "-1"],
    ],
)
def test_bad_numbers_are_usage_errors_before_anything_runs(config: Path, args: list[str]) -> None:
    assert "expected a whole number" in _usage_error(*args, "--config", str(config))
    # Refused while reading the arguments: no database was made, no drill restored anything.
    assert not (config.parent / "data").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["privacy", "rectify", "alice", "--name", "A", "--verified-by", " "], "a reason is required"),
        (["privacy", "export", "alice", "--verified-by", "id card\x1b[2J"], "one line of text"),
        (["privacy", "close", "alice", "--verified-by", "x" * 2001], "at most 2000 characters"),
        (["incident", "case", "open", "--title", "t", "--ip", ""], "expected an IP address"),
        (["incident", "case", "open", "--title", "t", "--ip", "10.0.0.300"], "expected an IP address"),
        (["retention", "plan", "--at", ""], "not an ISO 8601 time"),
    ],
)
def test_blank_or_malformed_text_options_are_usage_errors(
    config: Path, args: list[str], message: str
) -> None:
    assert message in _usage_error(*args, "--config", str(config))


def test_a_password_on_stdin_that_is_not_utf8_is_refused(config: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "user", "add", "newu", "--password-stdin", "--config", str(config)],
        cwd=ROOT,
        input=b"\xffSup3r-secret-pass!xx\n",
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert b"not UTF-8 text" in proc.stderr
    assert b"Traceback" not in proc.stderr
    with sqlite3.connect(config.parent / "data" / "gateway.db") as db:
        assert db.execute("SELECT count(*) FROM users").fetchone() == (0,)


def test_unblocking_what_is_not_blocked_is_recorded_as_refused(config: Path) -> None:
    assert "not blocked" in run_cli("incident", "unblock-ip", "10.77.0.1", "--config", str(config)).stderr
    with sqlite3.connect(config.parent / "data" / "gateway.db") as db:
        rows = db.execute(
            "SELECT outcome, details FROM audit_events WHERE kind = 'incident.unblock_ip'"
        ).fetchall()
    assert [(outcome, json.loads(details)["error"]) for outcome, details in rows] == [
        ("failure", "not-blocked")
    ]
