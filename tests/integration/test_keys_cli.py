"""``gateway keys rotate --keyring --stage`` and ``gateway keys activate``: the two-step keyring rotation
for replicas that each hold their own copy of the file, as an operator runs it (real subprocesses).

Checked: a staged key is in the file but encrypts nothing; activating it makes it the key new
secrets use, audited as ``keys.activated``; wrong input (an unknown id, ``--stage`` without
``--keyring``) is exit 2 and changes nothing; never a traceback.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from gateway.crypto.keyring import Keyring
from tests.integration.harness import run_cli
from tests.integration.harness import run_cli_checked as gateway


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(f"public_url: http://127.0.0.1:8080\ndata_dir: {tmp_path / 'data'}\n")
    assert gateway("migrate", "--config", str(path)).returncode == 0
    assert gateway("keys", "init", "--config", str(path)).returncode == 0
    return path


def _keyring(config: Path) -> dict[str, object]:
    proc = gateway("keys", "list", "--config", str(config), "--json")
    assert proc.returncode == 0, proc.stderr
    found: dict[str, object] = json.loads(proc.stdout)["keyring"]
    return found


def test_stage_then_activate(config: Path) -> None:
    c = ("--config", str(config))
    first = str(_keyring(config)["active"])
    staged = gateway("keys", "rotate", "--keyring", "--stage", *c)
    assert staged.returncode == 0, staged.stderr
    kid = staged.stdout.split("staged key ")[1].split()[0]
    assert f"gateway keys activate {kid}" in staged.stdout
    keyring = _keyring(config)
    assert keyring["active"] == first
    assert keyring["keys"] == sorted([first, kid])
    file = config.parent / "data" / "keys" / "keyring.json"
    assert Keyring.load(file).encrypt(b"x", aad=b"t").split(".")[1] == first

    listed = gateway("keys", "list", *c)
    assert f"active key {first}; keys {', '.join(sorted([first, kid]))}" in listed.stdout

    done = gateway("keys", "activate", kid, *c)
    assert done.returncode == 0, done.stderr
    assert f"key {kid} is active for new secrets" in done.stdout
    assert _keyring(config)["active"] == kid
    assert Keyring.load(file).encrypt(b"x", aad=b"t").split(".")[1] == kid
    again = gateway("keys", "activate", kid, *c)
    assert again.returncode == 0
    assert "is the active key already" in again.stdout

    audited = gateway("audit", "list", *c, "--kind", "keys.activated", "--json")
    (record,) = [json.loads(line) for line in audited.stdout.splitlines()]
    assert json.loads(record["details"]) == {"keyring_key": kid}
    assert gateway("audit", "verify", *c).returncode == 0


def test_wrong_input_is_exit_2_and_changes_nothing(config: Path) -> None:
    c = ("--config", str(config))
    before = (config.parent / "data" / "keys" / "keyring.json").read_bytes()
    unknown = gateway("keys", "activate", "knotakey", *c)
    assert unknown.returncode == 2
    assert "no key 'knotakey'" in unknown.stderr
    assert "gateway keys list" in unknown.stderr
    for what in ("--signing", "--all"):
        refused = gateway("keys", "rotate", what, "--stage", *c)
        assert refused.returncode == 2
        assert "--stage stages a keyring key: give it with --keyring" in refused.stderr
    assert (config.parent / "data" / "keys" / "keyring.json").read_bytes() == before
    assert gateway("keys", "activate", "--help").returncode == 0


def test_keys_init_on_a_new_node_makes_the_data_directory_private_whatever_the_umask(tmp_path: Path) -> None:
    """An attack run: under umask 000, `keys init` created the data directory as a mere parent of
    keys/ with mode 0777, and another local user replaced gateway.db in it."""
    data = tmp_path / "node" / "data"
    path = tmp_path / "gateway.yaml"
    path.write_text(f"public_url: http://127.0.0.1:8080\ndata_dir: {data}\n")
    old = os.umask(0)
    try:
        assert gateway("keys", "init", "--config", str(path)).returncode == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert stat.S_IMODE((data / "keys").stat().st_mode) == 0o700
    assert stat.S_IMODE((data / "keys" / "keyring.json").stat().st_mode) == 0o600


def test_a_leaked_keyring_key_is_marked_and_a_backup_forged_with_it_is_refused(config: Path) -> None:
    """The backups attack run: with a copy of the old keyring file it forged a newer backup, and
    `backup verify` chose it. Marked compromised, the old key vouches only for what it had signed."""
    import shutil

    from gateway.backup.archive import create_backup
    from gateway.clock import SYSTEM_CLOCK

    c = ("--config", str(config))
    data = config.parent / "data"
    file = data / "keys" / "keyring.json"
    made = gateway("backup", "create", *c)
    assert made.returncode == 0, made.stderr
    (trusted,) = (p.name for p in (data / "backups").iterdir())
    stolen = Keyring.load(shutil.copy(file, config.parent / "stolen.json"))
    old = stolen.active_id

    refused = gateway("keys", "rotate", "--keyring", "--stage", "--compromised", *c)
    assert refused.returncode == 2
    assert "must stop encrypting now" in refused.stderr
    rotated = gateway("keys", "rotate", "--keyring", "--compromised", *c)
    assert rotated.returncode == 0, rotated.stderr
    assert f"key {old} marked compromised" in rotated.stdout
    assert f"still trusted: {trusted}" in rotated.stdout
    keyring = _keyring(config)
    new = str(keyring["active"])
    assert new != old
    assert list(keyring["compromised"]) == [old]  # type: ignore[call-overload]

    # The forgery: a newer backup of the same database, signed with the copy of the old file.
    _, forged = create_backup(data / "gateway.db", data, data / "backups", stolen, SYSTEM_CLOCK)
    chosen = gateway("backup", "verify", *c)
    assert chosen.returncode == 0, chosen.stderr
    assert f"backup {trusted} OK" in chosen.stdout
    # Not verified, but named as passed over, and why (an attack run: it was skipped without a word).
    assert f"backup {forged.name}" not in chosen.stdout
    assert f"skipped {forged.name} ({forged}), dated later: signed under a compromised key" in chosen.stdout
    named = gateway("backup", "verify", forged.name, *c)
    assert named.returncode == 1
    assert "marked compromised" in named.stdout + named.stderr
    restore = gateway("backup", "restore", forged.name, "--data-dir", str(config.parent / "restored"), *c)
    assert restore.returncode == 1
    assert not (config.parent / "restored" / "gateway.db").exists()

    again = gateway("keys", "activate", old, *c)
    assert again.returncode == 2
    assert "never becomes active again" in again.stderr
    active = gateway("keys", "mark-compromised", new, *c)
    assert active.returncode == 2
    assert "is the active key" in active.stderr
    listed = gateway("keys", "list", *c)
    assert f"keyring key {old}: compromised since" in listed.stdout
    assert gateway("audit", "verify", *c).returncode == 0


def test_the_leaks_time_is_checked_before_anything_changes_and_kept_with_the_mark(config: Path) -> None:
    c = ("--config", str(config))
    first = str(_keyring(config)["active"])
    for args, said in (
        (("rotate", "--keyring", "--leaked-since", "2026-01-01"), "give it with --compromised"),
        (("rotate", "--signing", "--compromised", "--leaked-since", "2026-01-01"), "rotate --keyring"),
        (("rotate", "--keyring", "--compromised", "--leaked-since", "2999-01-01"), "in the future"),
        (("rotate", "--keyring", "--compromised", "--leaked-since", "last tuesday"), "ISO 8601"),
    ):
        refused = gateway("keys", *args, *c)
        assert refused.returncode == 2, (args, refused.stderr)
        assert said in refused.stderr
    assert (_keyring(config)["active"], _keyring(config)["compromised"]) == (first, {})

    done = gateway("keys", "rotate", "--keyring", "--compromised", "--leaked-since", "2026-12-01T08:00", *c)
    assert done.returncode == 0, done.stderr
    assert "signed before the leak (2026-12-01T08:00:00+00:00)" in done.stdout
    mark = _keyring(config)["compromised"][first]  # type: ignore[index]
    assert mark["leaked_since"] == "2026-12-01T08:00:00+00:00"
    listed = gateway("keys", "list", *c)
    assert "before the leak at 2026-12-01T08:00:00+00:00" in listed.stdout


def test_a_staged_key_activated_with_compromised_marks_the_one_it_replaces(config: Path) -> None:
    c = ("--config", str(config))
    first = str(_keyring(config)["active"])
    staged = gateway("keys", "rotate", "--keyring", "--stage", *c)
    kid = staged.stdout.split("staged key ")[1].split()[0]
    done = gateway("keys", "activate", kid, "--compromised", *c)
    assert done.returncode == 0, done.stderr
    assert f"key {first} marked compromised" in done.stdout
    keyring = _keyring(config)
    assert (keyring["active"], list(keyring["compromised"])) == (kid, [first])  # type: ignore[call-overload]
    audited = gateway("audit", "list", *c, "--kind", "keys.activated", "--json")
    (record,) = [json.loads(line) for line in audited.stdout.splitlines()]
    assert json.loads(record["details"]) == {
        "keyring_key": kid,
        "keyring_key_compromised": first,
        "backups_vouched": 0,
    }
    assert gateway("audit", "verify", *c).returncode == 0


def _signing_key_and_seeds(config: Path, *owners: str) -> str:
    """What a running gateway would have stored: its first signing key and, per owner, an account with
    a confirmed authenticator app, both encrypted under the active keyring key. The signing kid."""
    import asyncio
    from datetime import UTC, datetime

    from gateway.clock import SYSTEM_CLOCK
    from gateway.crypto.signing import SigningKeys
    from gateway.identity.models import TotpCredential, User
    from gateway.settings.schema import AssertionSettings
    from gateway.store.db import Database

    data = config.parent / "data"

    async def store() -> str:
        db = Database.open(f"sqlite+aiosqlite:///{data / 'gateway.db'}", pool_size=1)
        keyring = Keyring.load(data / "keys" / "keyring.json")
        try:
            kid = (await SigningKeys(db, keyring, SYSTEM_CLOCK, AssertionSettings()).ensure()).keys[0].kid
            now = datetime.now(UTC)
            async with db.session() as session:
                for name in owners:
                    user = User(username=name, email=None, display_name=name, password_hash=None, created_at=now, updated_at=now, password_changed_at=None)  # fmt: skip
                    session.add(user)
                    await session.flush()
                    sealed = keyring.encrypt(b"JBSWY3DPEHPK3PXP", aad=f"totp:{user.id}".encode())
                    session.add(TotpCredential(user_id=user.id, name="Phone", secret_enc=sealed, confirmed=True, last_step=0, created_at=now, last_used_at=None))  # fmt: skip
                await session.commit()
            return kid
        finally:
            await db.close()

    return asyncio.run(store())


def _signing_keys(config: Path) -> list[dict[str, object]]:
    proc = gateway("keys", "list", "--config", str(config), "--json")
    assert proc.returncode == 0, proc.stderr
    found: list[dict[str, object]] = json.loads(proc.stdout)["signing_keys"]
    return found


def test_a_leaked_keyring_key_takes_the_signing_key_it_encrypted_and_names_the_seeds_it_encrypted(
    config: Path,
) -> None:
    """Attack run F2: `keys rotate --keyring --compromised` left the signing key active, its private
    half encrypted under the leaked key (a copy of the leaked file and a database backup forged
    assertions for anyone), and said nothing of the TOTP seeds under it."""
    c = ("--config", str(config))
    leaked_ring = str(_keyring(config)["active"])
    leaked = _signing_key_and_seeds(config, "alice", "bob")
    done = gateway("keys", "rotate", "--keyring", "--compromised", *c)
    assert done.returncode == 0, done.stderr
    assert f"signing key: {leaked} had its private half encrypted under a leaked keyring key" in done.stdout
    assert f"deleted as compromised: {leaked}" in done.stdout
    assert f"the TOTP seeds of 2 account(s) are encrypted under {leaked_ring}" in done.stdout
    assert "NOT re-encrypted" in done.stdout
    assert "gateway user reset-mfa USERNAME" in done.stdout
    assert done.stdout.rstrip().count("alice, bob") == 1
    new_ring = str(_keyring(config)["active"])
    (key,) = _signing_keys(config)
    assert (key["state"], key["keyring_key"]) == ("active", new_ring)
    assert key["kid"] != leaked
    audited = gateway("audit", "list", *c, "--kind", "keys.rotated", "--json")
    (record,) = [json.loads(line) for line in audited.stdout.splitlines()]
    assert json.loads(record["details"])["signing_keys_under_leaked_keyring_key"] == [leaked]
    assert gateway("audit", "verify", *c).returncode == 0


def test_a_key_marked_before_the_signing_key_followed_is_shown_and_marking_it_again_retires_it(
    config: Path,
) -> None:
    """A keyring key marked by a release that left the signing key under it: `keys list` says so, and
    `mark-compromised` (like `activate --compromised`) rotates the signing key it encrypted."""
    c = ("--config", str(config))
    file = config.parent / "data" / "keys" / "keyring.json"
    first = str(_keyring(config)["active"])
    leaked = _signing_key_and_seeds(config, "carol")
    assert gateway("keys", "rotate", "--keyring", *c).returncode == 0  # the signing key stays under first
    from gateway.crypto.keyring import Compromise

    Keyring.load(file).mark_compromised(file, first, Compromise("2026-12-06T20:00:00+00:00", 0))
    listed = gateway("keys", "list", *c)
    assert f"signing key {leaked}: its private half is encrypted under keyring key {first}" in listed.stdout
    assert "gateway keys rotate --signing --compromised" in listed.stdout

    done = gateway("keys", "mark-compromised", first, *c)
    assert done.returncode == 0, done.stderr
    assert f"signing key: {leaked} had its private half encrypted under a leaked keyring key" in done.stdout
    assert f"the TOTP seeds of 1 account(s) are encrypted under {first}" in done.stdout
    assert "carol" in done.stdout
    (key,) = _signing_keys(config)
    assert key["kid"] != leaked
    assert key["keyring_key"] == _keyring(config)["active"]
    assert "private half is encrypted under" not in gateway("keys", "list", *c).stdout


def test_activating_with_compromised_rotates_the_signing_key_under_the_replaced_key(config: Path) -> None:
    c = ("--config", str(config))
    first = str(_keyring(config)["active"])
    leaked = _signing_key_and_seeds(config)
    staged = gateway("keys", "rotate", "--keyring", "--stage", *c)
    kid = staged.stdout.split("staged key ")[1].split()[0]
    done = gateway("keys", "activate", kid, "--compromised", *c)
    assert done.returncode == 0, done.stderr
    assert f"deleted as compromised: {leaked}" in done.stdout
    assert f"no TOTP seed is encrypted under {first}" in done.stdout
    (key,) = _signing_keys(config)
    assert (key["state"], key["keyring_key"]) == ("active", kid)
    audited = gateway("audit", "list", *c, "--kind", "keys.activated", "--json")
    (record,) = [json.loads(line) for line in audited.stdout.splitlines()]
    assert json.loads(record["details"])["old_keys_deleted"] == [leaked]
    assert gateway("audit", "verify", *c).returncode == 0


@pytest.mark.parametrize("how", ["activate", "mark-compromised"])
def test_the_ledger_is_written_again_under_the_new_key_when_the_old_one_is_marked(
    config: Path, how: str
) -> None:
    """Lines MACed under a key marked compromised are no longer read (whoever holds the key can write
    them): the commands that mark one write this node's ledger lines again under the active key at once,
    so a restore made right after still makes the changes again (a disabled account stays disabled)."""
    c = ("--config", str(config))
    first = str(_keyring(config)["active"])
    added = run_cli("user", "add", "carol", "--password-stdin", *c, stdin="a long passphrase 1\n")
    assert added.returncode == 0, added.stderr
    assert gateway("user", "disable", "carol", *c).returncode == 0
    ledger = config.parent / "data" / "account-ledger.jsonl"
    assert {json.loads(line)["mac_kid"] for line in ledger.read_bytes().splitlines()} == {first}
    staged = gateway("keys", "rotate", "--keyring", "--stage", *c)
    kid = staged.stdout.split("staged key ")[1].split()[0]
    if how == "activate":
        done = gateway("keys", "activate", kid, "--compromised", *c)
    else:
        assert gateway("keys", "activate", kid, *c).returncode == 0
        done = gateway("keys", "mark-compromised", first, *c)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in ledger.read_bytes().splitlines()]
    assert {line["mac_kid"] for line in lines} == {kid}
    assert [line["state"] for line in lines] == ["disabled"]


def test_a_mark_waits_until_a_restored_databases_ledger_changes_are_made_again(config: Path) -> None:
    """A re-attack run: restore a backup, then rotate the leaked keyring at once, then start the
    gateway. The disable made since the backup was only in the ledger file, under the key the rotation
    marked, and was lost with it. Every command that marks a key refuses until a gateway has started on
    the restored database (exit 1, nothing rotated)."""
    c = ("--config", str(config))
    added = run_cli("user", "add", "carol", "--password-stdin", *c, stdin="a long passphrase 1\n")
    assert added.returncode == 0, added.stderr
    made = gateway("backup", "create", *c)
    assert made.returncode == 0, made.stderr
    backup_id = made.stdout.strip().splitlines()[-1].split()[-1]
    assert gateway("user", "disable", "carol", *c).returncode == 0
    data = config.parent / "data"
    restored = gateway("backup", "restore", backup_id, "--data-dir", str(data), "--force", *c)
    assert restored.returncode == 0, restored.stderr
    keyring_file = (data / "keys" / "keyring.json").read_bytes()

    rotated = gateway("keys", "rotate", "--keyring", "--compromised", *c)
    assert rotated.returncode == 1
    assert "1 change(s) the database lacks" in rotated.stderr
    assert "start a gateway on it once" in rotated.stderr
    staged = gateway("keys", "rotate", "--keyring", "--stage", *c)
    kid = staged.stdout.split("staged key ")[1].split()[0]
    activated = gateway("keys", "activate", kid, "--compromised", *c)
    assert activated.returncode == 1
    assert "1 change(s) the database lacks" in activated.stderr
    keyring = json.loads((data / "keys" / "keyring.json").read_bytes())
    assert keyring["active"] == json.loads(keyring_file)["active"]
    assert not keyring.get("compromised")
    assert "disabled of account" in rotated.stderr  # each change is named
    assert "--drop-unsettled" in rotated.stderr

    # A change no gateway can make keeps every mark refused otherwise: the override gives them up.
    dropped = gateway("keys", "rotate", "--keyring", "--compromised", "--drop-unsettled", *c)
    assert dropped.returncode == 0, dropped.stderr
    assert json.loads((data / "keys" / "keyring.json").read_bytes()).get("compromised")
    audited = gateway("audit", "list", *c, "--kind", "keys.ledger_unsettled_dropped", "--json")
    (record,) = [json.loads(line) for line in audited.stdout.splitlines()]
    assert json.loads(record["details"])["changes"] == 1
