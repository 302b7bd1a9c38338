"""Known devices: which counter a sign-in attempt is regulated under."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from gateway.crypto.keyring import Keyring
from gateway.identity.devices import KnownDevices, account_of, password_generation

HASH = password_generation(True, datetime(2026, 12, 1, 10, tzinfo=UTC))


def test_a_valid_cookie_for_the_account_counts_apart_and_nothing_else_does(tmp_path: Path) -> None:
    keyring = Keyring.create(tmp_path / "keyring.json")
    devices = KnownDevices(keyring)
    alices = devices.token("alice", HASH)
    key = devices.regulation_key("alice", HASH, alices)
    assert key.startswith("alice|device:")
    assert account_of(key) == "alice"
    # Anyone else's cookie, a forged one, none: the account's shared counter.
    assert devices.regulation_key("bob", HASH, alices) == "bob"
    device, _, mac = alices.partition(".")
    assert devices.regulation_key("alice", HASH, f"{device}.{'0' * len(mac)}") == "alice"
    assert devices.regulation_key("alice", HASH, f"other.{mac}") == "alice"
    assert devices.regulation_key("alice", HASH, None) == "alice"
    assert devices.regulation_key("alice", HASH, "") == "alice"
    assert devices.regulation_key("alice", HASH, "no-dot") == "alice"
    # Another deployment's keyring does not know this browser.
    other = KnownDevices(Keyring.create(tmp_path / "other.json"))
    assert other.regulation_key("alice", HASH, alices) == "alice"


def test_a_cookie_survives_a_keyring_rotation(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    keyring = Keyring.create(path)
    token = KnownDevices(keyring).token("alice", HASH)
    keyring.rotate(path)
    assert KnownDevices(keyring).regulation_key("alice", HASH, token) != "alice"


def test_a_new_password_ends_every_device_cookie_of_the_account(tmp_path: Path) -> None:
    """An attack run: device cookies collected while an intruder had the account outlived the
    password change and the factor reset that took it back, each a fresh allowance of guesses."""
    devices = KnownDevices(Keyring.create(tmp_path / "keyring.json"))
    token = devices.token("alice", HASH)
    assert devices.regulation_key("alice", HASH, token) != "alice"
    changed = password_generation(True, datetime(2026, 12, 7, 9, tzinfo=UTC))
    assert devices.regulation_key("alice", changed, token) == "alice"  # changed
    assert devices.regulation_key("alice", password_generation(False, None), token) == "alice"  # withdrawn
    # A rehash keeps the time the password was set: the same generation, the cookie still counts apart.
    assert (
        devices.regulation_key(
            "alice", password_generation(True, datetime(2026, 12, 1, 10, tzinfo=UTC)), token
        )
        != "alice"
    )


def test_a_cookie_under_a_keyring_key_marked_compromised_counts_as_none(tmp_path: Path) -> None:
    """Attack run F5: cookies MACed under a keyring key marked compromised still counted apart, so the
    key's holder could mint one per guess batch for any account (CSRF tokens under it are refused)."""
    from gateway.crypto.keyring import Compromise

    path = tmp_path / "keyring.json"
    keyring = Keyring.create(path)
    leaked = keyring.active_id
    devices = KnownDevices(keyring)
    minted = devices.token("alice", HASH)
    keyring.rotate(path)
    assert devices.regulation_key("alice", HASH, minted) != "alice"  # a rotation alone keeps it
    keyring.mark_compromised(path, leaked, Compromise("2026-12-06T20:00:00+00:00", 0))
    assert devices.regulation_key("alice", HASH, minted) == "alice"
    # One issued since, under the new key, still counts apart.
    fresh = devices.token("alice", HASH)
    assert devices.regulation_key("alice", HASH, fresh).startswith("alice|device:")
