"""Known devices: which counter a sign-in attempt is regulated under."""

from __future__ import annotations

from pathlib import Path

from gateway.crypto.keyring import Keyring
from gateway.identity.devices import KnownDevices, account_of


def test_a_valid_cookie_for_the_account_counts_apart_and_nothing_else_does(tmp_path: Path) -> None:
    keyring = Keyring.create(tmp_path / "keyring.json")
    devices = KnownDevices(keyring)
    alices = devices.token("alice")
    key = devices.regulation_key("alice", alices)
    assert key.startswith("alice|device:")
    assert account_of(key) == "alice"
    # Anyone else's cookie, a forged one, none: the account's shared counter.
    assert devices.regulation_key("bob", alices) == "bob"
    device, _, mac = alices.partition(".")
    assert devices.regulation_key("alice", f"{device}.{'0' * len(mac)}") == "alice"
    assert devices.regulation_key("alice", f"other.{mac}") == "alice"
    assert devices.regulation_key("alice", None) == "alice"
    assert devices.regulation_key("alice", "") == "alice"
    assert devices.regulation_key("alice", "no-dot") == "alice"
    # Another deployment's keyring does not know this browser.
    other = KnownDevices(Keyring.create(tmp_path / "other.json"))
    assert other.regulation_key("alice", alices) == "alice"


def test_a_cookie_survives_a_keyring_rotation(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    keyring = Keyring.create(path)
    token = KnownDevices(keyring).token("alice")
    keyring.rotate(path)
    assert KnownDevices(keyring).regulation_key("alice", token) != "alice"
