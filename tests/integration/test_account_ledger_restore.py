"""A restore does not bring back the people erased, deleted or disabled since the backup: the real CLI
and a real ``gateway serve`` on the embedded default.

The attack: each of them signs in with their old password on a gateway started on the restored
database, restored in place and into a new data directory.
"""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.integration.harness import (
    Echo,
    add_user,
    echo_route,
    free_port,
    gateway_config,
    run_cli,
    run_echo,
    run_gateway,
)
from tests.integration.http_client import PASSWORD, SESSION_COOKIE, browser, login, post_form
from tests.integration.test_sign_in_steps import add_app, enroll_totp, next_code


def _signs_in(client: httpx.Client, user: str) -> bool:
    login(client, user)
    signed_in = any(c.name == SESSION_COOKIE for c in client.cookies.jar)
    client.cookies.clear()
    return signed_in


def _signed_in_site(tmp_path: Path, echo: Echo) -> tuple[dict[str, Any], Path, tuple[str, str]]:
    """A config whose route needs a sign-in, written where the CLI finds it; its ``--config`` option."""
    config = gateway_config(
        tmp_path, free_port(), [echo_route(echo, public_paths=[])], session={"insecure_cookies": True}
    )
    config_path = tmp_path / "gateway.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    return config, config_path, ("--config", str(config_path))


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
        config, config_path, c = _signed_in_site(tmp_path, echo)
        for name in ("alice", "bob", "carol", "dave"):
            add_user(config_path, name, PASSWORD)
        backup_id = _cli("backup", "create", *c).strip().splitlines()[-1].split()[-1]

        _cli("privacy", "erase", "alice", "--verified-by", "signed letter", "--yes", *c)
        _cli("user", "delete", "bob", "--yes", *c)
        _cli("user", "disable", "carol", *c)

        # In place (the gateway stopped): the old database is replaced, the node's ledger stays.
        data = Path(config["data_dir"])
        restored = _cli("backup", "restore", backup_id, "--data-dir", str(data), "--force", *c)
        assert "account ledger: 3 change(s) made after this backup" in restored
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
        assert "account ledger: 3 change(s)" in restored
        moved = {**config, "data_dir": str(elsewhere), "keyring": str(data / "keys" / "keyring.json")}
        with run_gateway(tmp_path / "moved", moved) as gw, browser(gw) as client:
            for gone in ("alice", "bob", "carol"):
                assert not _signs_in(client, gone), gone
            assert _signs_in(client, "dave")


def test_a_restore_does_not_undo_a_withdrawn_consent_or_an_objection(tmp_path: Path) -> None:
    """What a person stopped since the backup stays stopped on the restored database (GDPR Art. 7(3),
    21(3)): their consent withdrawn and their objection, both through the CLI's rights commands."""
    newsletter = {"name": "newsletter", "title": "Newsletter", "notice": "News by email.", "basis": "consent"}
    geolocation = {
        "name": "geolocation",
        "title": "Sign-in location checks",
        "notice": "Where you sign in from.",
        "basis": "legitimate_interest",
        "objectable": True,
    }
    with run_echo() as echo:
        config, config_path, c = _signed_in_site(tmp_path, echo)
        config["privacy"] = {"purposes": [newsletter, geolocation]}
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        add_user(config_path, "erin", PASSWORD)
        database = Path(config["data_dir"]) / "gateway.db"
        with closing(sqlite3.connect(database)) as conn, conn:
            # Her consent, as the sign-in prompt records it (no command grants one for a person).
            conn.execute(
                "INSERT INTO consent_records (user_id, purpose, version, decision, at, method) "
                "SELECT id, 'newsletter', 1, 'granted', '2026-12-01 10:00:00.000000', 'sign-in prompt' "
                "FROM users WHERE username = 'erin'"
            )
        backup_id = _cli("backup", "create", *c).strip().splitlines()[-1].split()[-1]

        _cli(
            "privacy", "withdraw", "erin", "newsletter", "--verified-by", "letter", "--reason", "by post", *c
        )
        _cli("privacy", "object", "erin", "geolocation", "--verified-by", "letter", "--reason", "by post", *c)

        restored = _cli("backup", "restore", backup_id, "--data-dir", str(database.parent), "--force", *c)
        assert "account ledger: 2 change(s) made after this backup" in restored
        with closing(sqlite3.connect(database)) as conn:  # what the restore alone brings back
            assert conn.execute("SELECT objections FROM users WHERE username = 'erin'").fetchone() == ("",)
        with run_gateway(tmp_path / "in-place", config):
            pass
        with closing(sqlite3.connect(database)) as conn:
            assert conn.execute("SELECT objections FROM users WHERE username = 'erin'").fetchone() == (
                "geolocation",
            )
            newest = conn.execute(
                "SELECT decision, method FROM consent_records WHERE purpose = 'newsletter' ORDER BY id DESC"
            ).fetchone()
        assert newest == ("withdrawn", "account ledger")
        (replayed,) = _replayed(database)
        assert (replayed["consents_withdrawn"], replayed["objections_made"]) == (1, 1)


def test_a_restore_does_not_bring_back_a_leaked_password_token_or_signing_key(tmp_path: Path) -> None:
    """What a security team does after a leak, undone by a restore from a backup made before it: a
    password changed, an API token revoked, the signing keys rotated as compromised. A gateway started
    on the restored database makes each again before it serves."""
    with run_echo() as echo:
        port = free_port()
        routes = [
            {**echo_route(echo, public_paths=[]), "path": "/"},
            {"name": "api", "host": "127.0.0.1", "path": "/api", "upstreams": [echo.url], "auth": ["bearer"]},
        ]
        config = gateway_config(tmp_path, port, routes, session={"insecure_cookies": True})
        config_path = tmp_path / "gateway.yaml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        c = ("--config", str(config_path))
        add_user(config_path, "eve", PASSWORD)
        add_user(config_path, "dave", PASSWORD)
        _cli("service-account", "create", "ci", *c)
        token = _cli("token", "create", "ci", "--route", "api", "--expires", "30d", *c).strip()
        with run_gateway(tmp_path / "first", config) as gw:  # creates the first signing key
            leaked = {k["kid"] for k in httpx.get(f"{gw.url}/.gateway/jwks.json", timeout=30).json()["keys"]}
            assert leaked
        backup_id = _cli("backup", "create", *c).strip().splitlines()[-1].split()[-1]

        proc = run_cli(
            "user", "set-password", "eve", "--password-stdin", *c, stdin="a brand new passphrase 2026\n"
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        _cli("token", "revoke", token[:12], *c)
        _cli("keys", "rotate", "--signing", "--compromised", *c)

        data = Path(config["data_dir"])
        restored = _cli("backup", "restore", backup_id, "--data-dir", str(data), "--force", *c)
        assert "account ledger: 3 change(s) made after this backup" in restored
        with run_gateway(tmp_path / "restored", config) as gw, browser(gw) as client:
            assert not _signs_in(client, "eve")  # the leaked password
            assert _signs_in(client, "dave")  # the control: the restore itself worked
            bearer = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
            assert httpx.get(f"{gw.url}/api/x", headers=bearer, timeout=30).status_code == 401
            served = {k["kid"] for k in httpx.get(f"{gw.url}/.gateway/jwks.json", timeout=30).json()["keys"]}
            assert served
            assert not served & leaked
        (replayed,) = _replayed(data / "gateway.db")
        assert (replayed["passwords_cleared"], replayed["tokens_revoked"], replayed["keys_deleted"]) == (
            1,
            1,
            1,
        )


def test_what_a_copy_restored_elsewhere_does_never_reaches_the_deployment(tmp_path: Path) -> None:
    """The re-attack run: with `backup.ledger` at a shared path, a copy restored into another data
    directory (a drill) wrote its changes into the deployment's ledger, and the deployment made them at
    its next sync. The copy now has a lineage of its own."""
    with run_echo() as echo:
        port = free_port()
        shared = tmp_path / "shared" / "account-ledger.jsonl"
        config = gateway_config(
            tmp_path, port, [echo_route(echo, public_paths=[])],
            session={"insecure_cookies": True}, backup={"ledger": str(shared)},
        )  # fmt: skip
        config_path = tmp_path / "gateway.yaml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        c = ("--config", str(config_path))
        for name in ("alice", "bob"):
            add_user(config_path, name, PASSWORD)
        backup_id = _cli("backup", "create", *c).strip().splitlines()[-1].split()[-1]

        elsewhere = tmp_path / "drill"
        proc = run_cli("backup", "restore", backup_id, "--data-dir", str(elsewhere), *c)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "the live deployment's ledger" in proc.stderr
        copy = {
            **config,
            "data_dir": str(elsewhere),
            "keyring": str(Path(config["data_dir"]) / "keys" / "keyring.json"),
        }
        copy_path = tmp_path / "copy.yaml"
        copy_path.write_text(yaml.safe_dump(copy, sort_keys=False))
        # On the copy: alice disabled, bob's password changed (both noted in the shared ledger file).
        _cli("user", "disable", "alice", "--config", str(copy_path))
        proc = run_cli(
            "user", "set-password", "bob", "--password-stdin", "--config", str(copy_path),
            stdin="a copy-only passphrase 2026\n",
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert shared.read_text().count("\n") >= 2

        with run_gateway(tmp_path / "live", config) as gw, browser(gw) as client:
            assert _signs_in(client, "alice")
            assert _signs_in(client, "bob")
        assert _replayed(Path(config["data_dir"]) / "gateway.db") == []


def test_a_copy_adopted_as_the_deployment_keeps_its_history_through_an_older_restore(tmp_path: Path) -> None:
    """An attack run, the README's own disaster-recovery flow: a backup restored into a new directory
    (a lineage of its own) became the deployment; someone was disabled there; then a backup from before
    the copy was restored in place. The restored database carried the old lineage, which does not read
    the copy's lines, and the disabled person signed in."""
    with run_echo() as echo:
        config, config_path, c = _signed_in_site(tmp_path, echo)
        add_user(config_path, "dave", PASSWORD)
        add_user(config_path, "erin", PASSWORD)
        _cli("privacy", "restrict", "erin", "--verified-by", "letter", *c)
        backup_id = _cli("backup", "create", *c).strip().splitlines()[-1].split()[-1]
        adopted_dir = tmp_path / "adopted"
        proc = run_cli("backup", "restore", backup_id, "--data-dir", str(adopted_dir), *c)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        adopted = {
            **config,
            "data_dir": str(adopted_dir),
            "keyring": str(Path(config["data_dir"]) / "keys" / "keyring.json"),
        }
        adopted_path = tmp_path / "adopted.yaml"
        adopted_path.write_text(yaml.safe_dump(adopted, sort_keys=False))
        a = ("--config", str(adopted_path))
        _cli("user", "disable", "dave", *a)
        # A lifting is never made again, so it is no change the restore owes (the count says 1).
        _cli("privacy", "restrict", "erin", "--lift", "--verified-by", "letter", *a)
        # The older backup, found by its path: the adopted copy's backups directory has none.
        older = Path(config["data_dir"]) / "backups" / backup_id
        # A drill of it from the adopted deployment: its node reads the deployment's history too.
        drill = json.loads(_cli("dr", "drill", "--backup", str(older), "--keep", "--json", *a))
        assert drill["outcome"] == "success", drill
        try:
            with closing(sqlite3.connect(Path(drill["node_dir"]) / "data" / "gateway.db")) as conn:
                (disabled,) = conn.execute("SELECT disabled FROM users WHERE username = 'dave'").fetchone()
            assert disabled
        finally:
            shutil.rmtree(drill["node_dir"], ignore_errors=True)
        proc = run_cli("backup", "restore", str(older), "--data-dir", str(adopted_dir), "--force", *a)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "1 change(s) made after this backup" in proc.stdout
        with run_gateway(tmp_path / "adopted-run", adopted) as gw, browser(gw) as client:
            assert not _signs_in(client, "dave")
        # The node's disk lost with its database: the lineage cannot be known, and the restore says so.
        for lost in adopted_dir.glob("gateway.db*"):
            lost.unlink()
        proc = run_cli("backup", "restore", str(older), "--data-dir", str(adopted_dir), *a)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "the node's database is missing" in proc.stderr


def _second_factor(client: httpx.Client, user: str, path: str, code: str) -> bool:
    """Password, then ``code`` at the second-factor ``path``: whether that completes the sign-in."""
    assert login(client, user).status_code == 302
    done = post_form(client, path, {"code": code, "rd": "/"}).status_code == 302
    client.cookies.clear()
    return done


def test_a_restore_does_not_bring_back_a_removed_factor_or_a_spent_code(tmp_path: Path) -> None:
    """A phone with the authenticator app was lost: the person signed in with a recovery code and took
    the app off the account. A restore from a backup made before brought both back: the thief's phone
    and the code someone may have seen worked again."""
    with run_echo() as echo:
        config, config_path, c = _signed_in_site(tmp_path, echo)
        add_user(config_path, "fay", PASSWORD)
        with run_gateway(tmp_path / "first", config) as gw, browser(gw) as client:
            assert login(client, "fay").status_code == 302
            secret, codes = enroll_totp(client)
        backup_id = _cli("backup", "create", *c).strip().splitlines()[-1].split()[-1]

        with run_gateway(tmp_path / "lost", config) as gw, browser(gw) as client:
            assert login(client, "fay").status_code == 302
            assert post_form(client, "/.gateway/mfa/recovery", {"code": codes[0]}).status_code in (302, 303)
            portal = client.get("/.gateway/account")
            factor = re.search(r"/\.gateway/account/factors/totp/(\d+)/remove", portal.text)
            assert factor, portal.text
            add_app(
                client
            )  # the only factor goes once another is there (tests/integration/test_sign_in_steps)
            assert (
                post_form(client, f"/.gateway/account/factors/totp/{factor.group(1)}/remove").status_code
                == 303
            )

        data = Path(config["data_dir"])
        restored = _cli("backup", "restore", backup_id, "--data-dir", str(data), "--force", *c)
        assert "account ledger: 2 change(s) made after this backup" in restored
        with run_gateway(tmp_path / "restored", config) as gw, browser(gw) as client:
            assert not _second_factor(
                client, "fay", "/.gateway/mfa/totp", next_code(secret)
            )  # the lost phone
            assert not _second_factor(client, "fay", "/.gateway/mfa/recovery", codes[0])  # the spent code
            assert _second_factor(client, "fay", "/.gateway/mfa/recovery", codes[1])  # the control
        (replayed,) = _replayed(data / "gateway.db")
        assert replayed["factors_removed"] == 2


def _anonymous_status(gw: Any, ip: str = "") -> int:
    headers = {"Accept": "application/json", **({"X-Forwarded-For": ip} if ip else {})}
    return httpx.get(f"{gw.url}/x", headers=headers, timeout=10.0).status_code


def test_a_restore_takes_the_nodes_lockdown_and_blocks_over_not_the_backups(tmp_path: Path) -> None:
    """An attack run restored a backup made during a lockdown after it had been lifted: every route
    was shut again, while the restore said the lockdown was gone. The switch and the address blocks
    answer what happens now: the node's are carried over, the backup's are not."""
    with run_echo() as echo:
        config, _config_path, c = _signed_in_site(tmp_path, echo)
        config["trusted_proxies"] = ["127.0.0.1/32"]
        _config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        data = Path(config["data_dir"])
        _cli("lockdown", "on", "--reason", "during the backup", *c)
        backup_id = _cli("backup", "create", *c).strip().splitlines()[-1].split()[-1]
        _cli("lockdown", "off", "--reason", "over", *c)

        restored = _cli("backup", "restore", backup_id, "--data-dir", str(data), "--force", *c)
        assert "lockdown: off, as on the node" in restored
        assert _lockdown_records(data) == [("lockdown.on", "during the backup"), ("lockdown.off", _CARRIED)]
        with run_gateway(tmp_path / "after-lift", config) as gw:
            assert _anonymous_status(gw) == 401  # open: the sign-in answers, not the maintenance page

        # A restore in the middle of an incident: the routes stay shut and the address blocked.
        _cli("lockdown", "on", "--reason", "incident 7", *c)
        _cli("incident", "block-ip", "198.51.100.0/24", "--for", "1h", "--reason", "incident 7", *c)
        restored = _cli("backup", "restore", backup_id, "--data-dir", str(data), "--force", *c)
        assert "lockdown: ON for every route" in restored
        assert "address blocks in force carried over: 1" in restored
        with run_gateway(tmp_path / "during", config) as gw:
            assert _anonymous_status(gw) == 503
        assert "198.51.100.0/24" in _cli("incident", "list", *c)
        # The backup's switch was on too, for another reason: the node's is the one in force.
        assert _lockdown_records(data)[-1] == ("lockdown.on", _CARRIED)
        assert "incident 7" in _cli("lockdown", "status", *c)


_CARRIED = "carried across the restore"


def _lockdown_records(data: Path) -> list[tuple[str, str]]:
    """The lockdown records of the node's trail: kind and reason (the carried ones' as ``_CARRIED``)."""
    with closing(sqlite3.connect(data / "gateway.db")) as conn:
        rows = conn.execute(
            "SELECT kind, details FROM audit_events WHERE kind LIKE 'lockdown.%' ORDER BY seq"
        )
        found = [(kind, str(json.loads(details).get("reason", ""))) for kind, details in rows]
    return [(kind, _CARRIED if _CARRIED in reason else reason) for kind, reason in found]
