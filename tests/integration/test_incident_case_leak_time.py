"""``gateway incident case rotate-keys --compromised --leaked-since``: the responder says from the
incident when the keys leaked, as ``gateway keys rotate`` lets them (real subprocesses, embedded default,
no gateway running: the rotation and its record are the CLI's alone).

Checked: the leak's time reaches the keyring key's compromise mark (read back with ``gateway keys list
--json``, as the keys tests do) and the incident's record of the action (its timeline and the
``incident.action`` audit record); a time in the future, one that cannot be read, or one given without
a keyring mark is exit 2 with the reason, and then nothing is rotated and nothing recorded in the case.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.integration.harness import run_cli_checked as gateway


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(f"public_url: http://127.0.0.1:8080\ndata_dir: {tmp_path / 'data'}\n")
    assert gateway("migrate", "--config", str(path)).returncode == 0
    assert gateway("keys", "init", "--config", str(path)).returncode == 0
    return path


def _open_case(config: Path) -> str:
    opened = gateway("incident", "case", "open", "--title", "keyring file leaked", "--config", str(config))
    assert opened.returncode == 0, opened.stderr
    return opened.stdout.strip()


def _keys(config: Path) -> dict[str, Any]:
    listed = gateway("keys", "list", "--config", str(config), "--json")
    assert listed.returncode == 0, listed.stderr
    found: dict[str, Any] = json.loads(listed.stdout)
    return found


def _actions(config: Path, case_id: str) -> list[dict[str, Any]]:
    shown = gateway("incident", "case", "show", case_id, "--json", "--config", str(config))
    assert shown.returncode == 0, shown.stderr
    return [e for e in json.loads(shown.stdout)["timeline"] if e["kind"] == "action"]


def _audited(config: Path, kind: str) -> list[dict[str, Any]]:
    listed = gateway("audit", "list", "--config", str(config), "--kind", kind, "--json")
    assert listed.returncode == 0, listed.stderr
    return [json.loads(json.loads(line)["details"]) for line in listed.stdout.splitlines()]


def test_the_leaks_time_reaches_the_mark_and_the_cases_record(config: Path) -> None:
    case_id = _open_case(config)
    leaked = _keys(config)["keyring"]["active"]
    # Days before now, with no offset: UTC, as `gateway keys` takes it.
    since = (datetime.now(UTC) - timedelta(days=3)).replace(second=0, microsecond=0)
    given = since.strftime("%Y-%m-%dT%H:%M")
    expected = since.isoformat()

    done = gateway(
        "incident", "case", "rotate-keys", case_id, "--keyring", "--compromised", "--leaked-since", given,
        "--config", str(config),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"keys rotated (keyring); leaked since {expected}" in done.stdout

    keyring = _keys(config)["keyring"]
    assert keyring["active"] != leaked
    assert keyring["compromised"][leaked]["leaked_since"] == expected
    (action,) = _actions(config, case_id)
    assert action["text"] == f"keys rotated (keyring); leaked since {expected}"
    assert action["details"] == {"action": "rotate-keys", "target": "keyring", "leaked_since": expected}
    (record,) = _audited(config, "incident.action")
    assert record == {"action": "rotate-keys", "target": "keyring", "leaked_since": expected}
    (rotated,) = _audited(config, "keys.rotated")
    assert (rotated["keyring_key_compromised"], rotated["leaked_since"]) == (leaked, expected)
    assert gateway("audit", "verify", "--config", str(config)).returncode == 0


def test_a_case_rotation_without_a_leak_time_records_none(config: Path) -> None:
    case_id = _open_case(config)
    leaked = _keys(config)["keyring"]["active"]
    done = gateway(
        "incident", "case", "rotate-keys", case_id, "--keyring", "--compromised", "--config", str(config)
    )
    assert done.returncode == 0, done.stderr
    assert "leaked_since" not in _keys(config)["keyring"]["compromised"][leaked]
    (action,) = _actions(config, case_id)
    assert (action["text"], action["details"]) == (
        "keys rotated (keyring)",
        {"action": "rotate-keys", "target": "keyring"},
    )


def test_a_future_or_unreadable_leak_time_is_refused_and_nothing_changes(config: Path) -> None:
    case_id = _open_case(config)
    keyring_file = config.parent / "data" / "keys" / "keyring.json"
    before = (keyring_file.read_bytes(), _keys(config))
    for args, said in (
        (("--keyring", "--compromised", "--leaked-since", "2999-01-01"), "in the future"),
        (("--compromised", "--leaked-since", "2999-01-01T00:00:00+00:00"), "in the future"),
        (("--keyring", "--compromised", "--leaked-since", "last tuesday"), "ISO 8601"),
        (("--keyring", "--leaked-since", "2026-01-01"), "give it with --compromised"),
        (("--signing", "--compromised", "--leaked-since", "2026-01-01"), "rotate --keyring"),
    ):
        refused = gateway("incident", "case", "rotate-keys", case_id, *args, "--config", str(config))
        assert refused.returncode == 2, (args, refused.stdout, refused.stderr)
        assert said in refused.stderr, (args, refused.stderr)
        assert "keys rotated" not in refused.stdout
    assert (keyring_file.read_bytes(), _keys(config)) == before
    assert _actions(config, case_id) == []
    assert _audited(config, "keys.rotated") == []
    assert _audited(config, "incident.action") == []
