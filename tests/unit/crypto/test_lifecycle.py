"""Listing and rotating keys (gateway.crypto.lifecycle), shared by ``gateway keys`` and the console."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from gateway.audit.trail import AuditLog
from gateway.clock import FakeClock
from gateway.crypto.keyring import Keyring, KeyringError
from gateway.crypto.lifecycle import RotationTarget, describe_key, rotate_keys
from gateway.crypto.signing import SigningKeys
from gateway.settings.schema import AssertionSettings, Duration
from gateway.store.db import Database

SETTINGS = AssertionSettings(ttl=Duration(300), grace=Duration(3600), publish_ahead=Duration(600))


@pytest.fixture
def keyring_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys" / "keyring.json"
    Keyring.create(path)
    return path


async def test_rotating_everything_rotates_the_signing_key_first_then_the_keyring(
    database: Database, keyring_file: Path, clock: FakeClock
) -> None:
    keyring = Keyring.load(keyring_file)
    old_ring = keyring.active_id
    signing = SigningKeys(database, keyring, clock, SETTINGS)
    first = (await signing.ensure()).keys[0].kid

    audit = AuditLog(database, clock=clock, keyring=keyring)
    rotation = await rotate_keys(
        RotationTarget.ALL, signing=signing, keyring=keyring, keyring_file=keyring_file,
        audit=audit, actor="user:boss",
    )  # fmt: skip

    assert rotation.signing is not None
    assert [k.kid for k in rotation.signing.before.keys] == [first]
    new = next(k for k in rotation.signing.after.keys if k.kid == rotation.signing.kid)
    # Encrypted under the keyring key every running process already held.
    assert new.keyring_kid == old_ring
    assert rotation.keyring_key is not None
    assert rotation.keyring_key != old_ring
    assert Keyring.load(keyring_file).active_id == rotation.keyring_key
    assert rotation.details() == {"signing_key": rotation.signing.kid, "keyring_key": rotation.keyring_key}
    # The fact, whichever channel rotated: one kind, the new key ids, the actor.
    (event,) = await audit.events(kind="keys.rotated")
    assert (event.actor, json.loads(event.details)) == ("user:boss", rotation.details())

    now = clock.time()
    states = {
        k.kid: describe_key(rotation.signing.after, k, now)["state"] for k in rotation.signing.after.keys
    }
    assert states == {first: "active", rotation.signing.kid: "next"}
    clock.advance(600)
    facts = describe_key(rotation.signing.after, new, clock.time())
    assert facts["state"] == "active"
    assert set(facts) == {
        "kid", "state", "created_at", "active_from", "retired_at", "published_until", "keyring_key",
    }  # fmt: skip
    # Public facts only.
    assert "private" not in repr(facts).lower()


async def test_each_rotation_alone(database: Database, keyring_file: Path, clock: FakeClock) -> None:
    keyring = Keyring.load(keyring_file)
    signing = SigningKeys(database, keyring, clock, SETTINGS)
    audit = AuditLog(database, clock=clock, keyring=keyring)
    only_signing = await rotate_keys(
        RotationTarget.SIGNING, signing=signing, keyring=keyring, keyring_file=keyring_file,
        audit=audit, actor="cli:root",
    )  # fmt: skip
    assert only_signing.signing is not None
    assert only_signing.keyring_key is None
    assert Keyring.load(keyring_file).active_id == keyring.active_id
    only_ring = await rotate_keys(
        RotationTarget.KEYRING, signing=signing, keyring=keyring, keyring_file=keyring_file,
        audit=audit, actor="cli:root",
    )  # fmt: skip
    assert only_ring.signing is None
    assert only_ring.details() == {"keyring_key": only_ring.keyring_key}
    assert len((await signing.load(with_private=False)).keys) == 1


async def test_a_compromised_rotation_signs_with_the_new_key_at_once_and_deletes_the_old_ones(
    database: Database, keyring_file: Path, clock: FakeClock
) -> None:
    """A leaked key: a normal rotation leaves it signing for publish_ahead and published for grace (an
    attack run's note: no way to pull it now). With compromised, it is gone at once."""
    keyring = Keyring.load(keyring_file)
    signing = SigningKeys(database, keyring, clock, SETTINGS)
    leaked = (await signing.ensure()).keys[0].kid
    await signing.rotate()  # a normal rotation before the leak was found: two old keys now
    audit = AuditLog(database, clock=clock, keyring=keyring)
    rotation = await rotate_keys(
        RotationTarget.SIGNING, signing=signing, keyring=keyring, keyring_file=keyring_file,
        audit=audit, actor="cli:root", compromised=True,
    )  # fmt: skip
    assert rotation.signing is not None
    keyset = await signing.load()
    now = clock.time()
    assert [k["kid"] for k in keyset.jwks(now)["keys"]] == [rotation.signing.kid]
    signer = keyset.signing_key(now)
    assert signer is not None
    assert signer.kid == rotation.signing.kid
    assert leaked in rotation.details()["old_keys_deleted"]  # type: ignore[operator]


async def test_a_worker_that_cannot_reload_after_a_compromised_rotation_stops_signing(
    database: Database, keyring_file: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The re-attack run: a replica cut off from the database went on signing with the leaked key for
    minutes after `keys rotate --compromised`. Told of it through the fast state, it stops signing."""
    from gateway.crypto.signing import COMPROMISE_KEY, announce_compromise, follow_compromise
    from gateway.store.fast import MemoryFastState, StateUnavailable

    keyring = Keyring.load(keyring_file)
    worker = SigningKeys(database, keyring, clock, SETTINGS)
    leaked = (await worker.ensure()).keys[0].kid
    fast = MemoryFastState(clock=clock)
    follower = asyncio.ensure_future(follow_compromise(fast, worker, every=0.05))
    try:
        await asyncio.sleep(0.1)  # subscribed, the current marker seen

        async def cut_off(**_: object) -> bool:
            raise StateUnavailable("the database is out of reach")

        monkeypatch.setattr(worker, "refresh", cut_off)
        await announce_compromise(fast, clock.time())
        assert await fast.get(COMPROMISE_KEY) is not None
        for _ in range(100):
            if worker.current().signing_key(clock.time()) is None:
                break
            await asyncio.sleep(0.02)
        assert worker.current().signing_key(clock.time()) is None  # no assertion with the leaked key
        assert leaked not in [k["kid"] for k in worker.jwks()["keys"]]
    finally:
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)
        await fast.close()


async def test_a_leaked_keyring_key_takes_the_signing_key_it_encrypted_with_it(
    database: Database, keyring_file: Path, clock: FakeClock
) -> None:
    """Attack run F2: after `keys rotate --keyring --compromised` the signing key stayed active, its
    private half keyring ciphertext under the leaked key: a copy of the leaked file and any database
    backup decrypted it, and it forged assertions for anyone. It is rotated as compromised with the
    keyring now, and the new one is encrypted under the new keyring key."""
    import shutil

    from sqlalchemy import select

    from gateway.crypto.models import SigningKey
    from gateway.crypto.signing import private_key_aad

    keyring = Keyring.load(keyring_file)
    leaked_ring = keyring.active_id
    stolen = Keyring.load(shutil.copy(keyring_file, keyring_file.with_name("stolen.json")))
    signing = SigningKeys(database, keyring, clock, SETTINGS)
    leaked = (await signing.ensure()).keys[0].kid
    audit = AuditLog(database, clock=clock, keyring=keyring)

    rotation = await rotate_keys(
        RotationTarget.KEYRING, signing=signing, keyring=keyring, keyring_file=keyring_file,
        audit=audit, actor="cli:root", compromised=True,
    )  # fmt: skip

    assert rotation.keyring_compromised == leaked_ring
    assert rotation.signing is not None
    assert rotation.signing_exposed == (leaked,)
    keyset = await signing.load()
    now = clock.time()
    assert [k["kid"] for k in keyset.jwks(now)["keys"]] == [rotation.signing.kid]
    (new,) = keyset.keys
    assert new.keyring_kid == rotation.keyring_key != leaked_ring
    signer = keyset.signing_key(now)
    assert signer is not None
    assert signer.kid == rotation.signing.kid
    # What the attacker's copy of the leaked file opens is no longer a key anyone trusts, and it does
    # not open the new one.
    async with database.session() as session:
        row = (await session.scalars(select(SigningKey))).one()
    with pytest.raises(KeyringError):
        stolen.decrypt(row.private_enc, aad=private_key_aad(row.kid))
    # One record names the mark and the signing rotation it brought.
    (event,) = await audit.events(kind="keys.rotated")
    details = json.loads(event.details)
    assert details["keyring_key_compromised"] == leaked_ring
    assert details["signing_key"] == rotation.signing.kid
    assert details["old_keys_deleted"] == [leaked]
    assert details["signing_keys_under_leaked_keyring_key"] == [leaked]


async def test_rotating_everything_for_a_leak_encrypts_the_new_signing_key_under_the_new_keyring_key(
    database: Database, keyring_file: Path, clock: FakeClock
) -> None:
    """`rotate --all --compromised` rotated the signing key first: the new one was encrypted under the
    keyring key about to be marked, so its holder could sign with it too."""
    keyring = Keyring.load(keyring_file)
    leaked_ring = keyring.active_id
    signing = SigningKeys(database, keyring, clock, SETTINGS)
    await signing.ensure()
    audit = AuditLog(database, clock=clock, keyring=keyring)
    rotation = await rotate_keys(
        RotationTarget.ALL, signing=signing, keyring=keyring, keyring_file=keyring_file,
        audit=audit, actor="cli:root", compromised=True,
    )  # fmt: skip
    assert rotation.signing is not None
    (new,) = (await signing.load(with_private=False)).keys
    assert new.kid == rotation.signing.kid
    assert new.keyring_kid == rotation.keyring_key
    assert leaked_ring in Keyring.load(keyring_file).compromised


async def test_a_leaked_keyring_key_that_encrypted_no_signing_key_leaves_the_signing_key_alone(
    database: Database, keyring_file: Path, clock: FakeClock
) -> None:
    keyring = Keyring.load(keyring_file)
    signing = SigningKeys(database, keyring, clock, SETTINGS)
    await rotate_keys(
        RotationTarget.KEYRING, signing=signing, keyring=keyring, keyring_file=keyring_file,
        audit=AuditLog(database, clock=clock, keyring=keyring), actor="cli:root",
    )  # fmt: skip
    kept = (await signing.ensure()).keys[0]  # made after the rotation: under the new keyring key
    second = keyring.active_id
    assert kept.keyring_kid == second
    await rotate_keys(
        RotationTarget.KEYRING, signing=signing, keyring=keyring, keyring_file=keyring_file,
        audit=AuditLog(database, clock=clock, keyring=keyring), actor="cli:root",
    )  # fmt: skip
    # The first keyring key (rotated out before the new signing key existed) leaked alone.
    first = next(k for k in keyring.key_ids if k not in (second, keyring.active_id))
    from gateway.crypto.lifecycle import retire_exposed_signing

    assert await retire_exposed_signing(signing, keyring, [first], clock=clock) is None
    assert [k.kid for k in (await signing.load(with_private=False)).keys] == [kept.kid]
    # The one that encrypted it did: rotated as compromised.
    retired = await retire_exposed_signing(signing, keyring, [second], clock=clock)
    assert retired is not None
    assert retired.signing is not None
    assert retired.signing_exposed == (kept.kid,)
    assert [k.kid for k in (await signing.load(with_private=False)).keys] == [retired.signing.kid]


async def test_the_new_signing_key_is_under_the_new_keyring_key_whatever_keyring_the_caller_signs_with(
    database: Database, keyring_file: Path, clock: FakeClock
) -> None:
    """The console rotates a copy loaded from the file while its signing keys encrypt under the process's
    own keyring, which still has the leaked key active: the new signing key must not be under it."""
    own = Keyring.load(keyring_file)
    leaked_ring = own.active_id
    signing = SigningKeys(database, own, clock, SETTINGS)
    await signing.ensure()
    copy = Keyring.load(keyring_file)
    rotation = await rotate_keys(
        RotationTarget.KEYRING, signing=signing, keyring=copy, keyring_file=keyring_file,
        audit=AuditLog(database, clock=clock, keyring=copy), actor="user:boss", compromised=True,
    )  # fmt: skip
    assert own.active_id == leaked_ring  # not reloaded yet
    (new,) = (await signing.load(with_private=False)).keys
    assert new.keyring_kid == rotation.keyring_key != leaked_ring
