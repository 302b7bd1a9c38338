"""A restore does not bring back the people erased, deleted or disabled since the backup: the real CLI
and a real ``gateway serve`` on the embedded default.

The attack: each of them signs in with their old password on a gateway started on the restored
database, restored in place and into a new data directory.
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path

import httpx
import yaml

from tests.integration.harness import (
    add_user,
    echo_route,
    free_port,
    gateway_config,
    run_cli,
    run_echo,
    run_gateway,
)
from tests.integration.http_client import PASSWORD, SESSION_COOKIE, browser, login


def _signs_in(client: httpx.Client, user: str) -> bool:
    login(client, user)
    signed_in = any(c.name == SESSION_COOKIE for c in client.cookies.jar)
    client.cookies.clear()
    return signed_in


def _cli(*args: str) -> str:
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def _replayed(database: Path) -> list[dict[str, object]]:
    with closing(sqlite3.connect(database)) as conn:
        return [
            json.loads(details)
            for (details,) in conn.execute(
                "SELECT details FROM audit_events WHERE kind = 'account.ledger_replayed'"
            )
        ]


def test_a_restored_database_does_not_bring_back_erased_deleted_or_disabled_people(tmp_path: Path) -> None:
    with run_echo() as echo:
        port = free_port()
        config = gateway_config(
            tmp_path, port, [echo_route(echo, public_paths=[])], session={"insecure_cookies": True}
        )
        config_path = tmp_path / "gateway.yaml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        c = ("--config", str(config_path))
        for name in ("alice", "bob", "carol", "dave"):
            add_user(config_path, name, PASSWORD)
        backup_id = _cli("backup", "create", *c).strip().splitlines()[-1].split()[-1]

        _cli("privacy", "erase", "alice", "--verified-by", "signed letter", "--yes", *c)
        _cli("user", "delete", "bob", "--yes", *c)
        _cli("user", "disable", "carol", *c)

        # In place (the gateway stopped): the old database is replaced, the node's ledger stays.
        data = Path(config["data_dir"])
        restored = _cli("backup", "restore", backup_id, "--data-dir", str(data), "--force", *c)
        assert "account ledger: 3 deletion(s), erasure(s) or disable(s) made after this backup" in restored
        with run_gateway(tmp_path / "in-place", config) as gw, browser(gw) as client:
            for gone in ("alice", "bob", "carol"):
                assert not _signs_in(client, gone), gone
            assert _signs_in(client, "dave")  # the control: the restore itself worked
        (replayed,) = _replayed(data / "gateway.db")
        assert (replayed["erased"], replayed["deleted"], replayed["disabled"]) == (1, 1, 1)
        users = _cli("user", "list", *c)
        assert "alice" not in users
        assert "bob" not in users

        # Into a new data directory: the restore takes the node's ledger along.
        elsewhere = tmp_path / "restored"
        restored = _cli("backup", "restore", backup_id, "--data-dir", str(elsewhere), *c)
        assert "account ledger: 3 deletion(s)" in restored
        moved = {**config, "data_dir": str(elsewhere), "keyring": str(data / "keys" / "keyring.json")}
        with run_gateway(tmp_path / "moved", moved) as gw, browser(gw) as client:
            for gone in ("alice", "bob", "carol"):
                assert not _signs_in(client, gone), gone
            assert _signs_in(client, "dave")
