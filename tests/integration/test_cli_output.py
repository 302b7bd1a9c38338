"""What a CLI command prints: one sentence for what it did; the audit record it stored only on request.

A command that changed something used to repeat its audit record on stderr as a timestamped INFO line
of JSON (`user.disabled ... sessions_revoked`), beside its own sentence on stdout.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.integration.harness import run_cli


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> str:
    home = tmp_path_factory.mktemp("cli-output")
    path = home / "gateway.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "listen": "127.0.0.1:18080",
                "public_url": "http://127.0.0.1:18080",
                "data_dir": str(home / "data"),
                "routes": [],
            }
        )
    )
    assert run_cli("keys", "init", "--config", str(path)).returncode == 0
    return str(Path(path))


def test_a_change_says_what_it_did_without_its_audit_record(config: str) -> None:
    added = run_cli(
        "user", "add", "carol", "--password-stdin", "--config", config, stdin="pw-Strong-horse-9281\n"
    )
    disabled = run_cli("user", "disable", "carol", "--config", config)

    assert (added.returncode, disabled.returncode) == (0, 0), (added.stderr, disabled.stderr)
    assert "created user carol" in added.stdout
    assert "disabled user carol" in disabled.stdout
    assert added.stderr == disabled.stderr == ""


def test_debug_shows_the_audit_record(config: str) -> None:
    proc = run_cli("--log-level", "debug", "user", "enable", "carol", "--config", config)

    assert proc.returncode == 0, proc.stderr
    assert "gateway.audit" in proc.stderr
    assert '"event": "user.enabled"' in proc.stderr


def test_the_trail_holds_what_the_command_did(config: str) -> None:
    proc = run_cli("audit", "list", "--config", config, "--subject", "carol")

    assert proc.returncode == 0, proc.stderr
    assert "user.disabled" in proc.stdout
