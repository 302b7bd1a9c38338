"""The assertion-signing keys on SQLite and PostgreSQL (real servers): first key, rotation, publication,
pruning, and the private halves at rest.

"Replicas" are separate :class:`SigningKeys` on separate database engines, as separate processes
would have; the clock is a :class:`FakeClock` moved by hand.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import func, select, update

from gateway.clock import FakeClock
from gateway.crypto.keyring import Keyring, KeyringError
from gateway.crypto.models import SigningKey
from gateway.crypto.signing import (
    KeySet,
    KeyState,
    SigningKeys,
    SigningUnavailable,
    private_key_aad,
)
from gateway.settings.schema import AssertionSettings, Duration
from gateway.store.db import Database

GRACE = 3600.0
AHEAD = 600.0
SETTINGS = AssertionSettings(ttl=Duration(300), grace=Duration(GRACE), publish_ahead=Duration(AHEAD))


@pytest.fixture
def keyring_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys" / "keyring.json"
    Keyring.create(path)
    return path


@pytest.fixture
def keyring(keyring_file: Path) -> Keyring:
    return Keyring.load(keyring_file)


@pytest.fixture
def keys(database: Database, keyring: Keyring, clock: FakeClock) -> SigningKeys:
    return SigningKeys(database, keyring, clock, SETTINGS)


@pytest.fixture
async def replicas(migrated_url: str) -> AsyncIterator[Callable[[], Database]]:
    """Open more engines on the same database (one per simulated replica); closed afterwards."""
    opened: list[Database] = []

    def open_one() -> Database:
        db = Database.open(migrated_url, pool_size=2)
        opened.append(db)
        return db

    yield open_one
    for db in opened:
        await db.close()


async def _rows(db: Database) -> list[SigningKey]:
    async with db.session() as session:
        return list(await session.scalars(select(SigningKey).order_by(SigningKey.active_from)))


def _kids(keyset: KeySet, at: float) -> set[str]:
    return {k["kid"] for k in keyset.jwks(at)["keys"]}


# -- the first key ----------------------------------------------------------------------------------


async def test_ensure_creates_one_key_that_signs_at_once(keys: SigningKeys, clock: FakeClock) -> None:
    keyset = await keys.ensure()
    assert len(keyset.keys) == 1
    key = keyset.keys[0]
    assert key.active_from == clock.time()
    assert key.retired_at is None
    signing = keyset.signing_key(clock.time())
    assert signing is not None
    assert signing.kid == key.kid
    assert signing.private_key is not None
    assert keys.current() is keyset


async def test_jwks_holds_public_members_only(keys: SigningKeys, clock: FakeClock) -> None:
    await keys.ensure()
    (jwk,) = keys.jwks()["keys"]
    assert set(jwk) == {"kid", "kty", "crv", "x", "y", "alg", "use"}
    assert (jwk["kty"], jwk["crv"], jwk["alg"], jwk["use"]) == ("EC", "P-256", "ES256", "sig")
    for coordinate in ("x", "y"):
        assert len(base64.urlsafe_b64decode(jwk[coordinate] + "=")) == 32
    # The published key is the public half of the key that signs.
    signing = keys.current().signing_key(clock.time())
    assert signing is not None
    assert signing.private_key is not None
    numbers = signing.private_key.public_key().public_numbers()
    assert base64.urlsafe_b64decode(jwk["x"] + "=") == numbers.x.to_bytes(32, "big")


async def test_ensure_is_idempotent(keys: SigningKeys, database: Database) -> None:
    first = await keys.ensure()
    second = await keys.ensure()
    assert [k.kid for k in first.keys] == [k.kid for k in second.keys]
    assert len(await _rows(database)) == 1


async def test_replicas_starting_together_create_exactly_one_key(
    replicas: Callable[[], Database], keyring: Keyring, clock: FakeClock, database: Database
) -> None:
    fleet = [SigningKeys(replicas(), keyring, clock, SETTINGS) for _ in range(8)]
    keysets = await asyncio.gather(*(k.ensure() for k in fleet))
    assert len(await _rows(database)) == 1
    # Every replica loaded that one key and signs with it.
    signers = {ks.signing_key(clock.time()).kid for ks in keysets}  # type: ignore[union-attr]
    assert len(signers) == 1


async def test_ensure_adds_a_key_when_every_key_is_retired(
    keys: SigningKeys, database: Database, clock: FakeClock
) -> None:
    first = (await keys.ensure()).keys[0].kid
    async with database.session() as session:
        await session.execute(update(SigningKey).values(retired_at=clock.now()))
        await session.commit()
    keyset = await keys.ensure()
    assert len(keyset.keys) == 2
    signing = keyset.signing_key(clock.time())
    assert signing is not None
    assert signing.kid != first


async def test_current_before_any_load_is_unavailable(keys: SigningKeys) -> None:
    assert keys.keyset is None
    with pytest.raises(SigningUnavailable):
        keys.current()
    with pytest.raises(SigningUnavailable):
        keys.jwks()


# -- rotation ---------------------------------------------------------------------------------------


async def test_rotation_publishes_first_signs_later_and_keeps_the_old_key_for_grace(
    keys: SigningKeys, database: Database, clock: FakeClock
) -> None:
    old = (await keys.ensure()).keys[0].kid
    clock.advance(100)
    new = await keys.rotate()
    keyset = await keys.load()
    rotated_at = clock.time()

    # Published at once, not signing yet.
    assert _kids(keyset, rotated_at) == {old, new}
    assert keyset.signing_key(rotated_at).kid == old  # type: ignore[union-attr]
    states = {k.kid: keyset.state(k, rotated_at) for k in keyset.keys}
    assert states == {old: KeyState.ACTIVE, new: KeyState.NEXT}

    # One second before active_from the old key still signs; at active_from the new one does.
    assert keyset.signing_key(rotated_at + AHEAD - 1).kid == old  # type: ignore[union-attr]
    assert keyset.signing_key(rotated_at + AHEAD).kid == new  # type: ignore[union-attr]

    # The old key stays published (retiring) for the grace period, then is gone.
    during = rotated_at + AHEAD + GRACE - 1
    assert _kids(keyset, during) == {old, new}
    assert keyset.state(keyset.keys[1], during) is KeyState.RETIRING
    after = rotated_at + AHEAD + GRACE
    assert _kids(keyset, after) == {new}
    assert keyset.state(keyset.keys[1], after) is KeyState.EXPIRED

    # The loaded set answers by time: no reload is needed for the switch.
    clock.advance(AHEAD)
    assert keys.current().signing_key(clock.time()).kid == new  # type: ignore[union-attr]
    assert {k["kid"] for k in keys.jwks()["keys"]} == {old, new}

    # prune() removes nothing during the grace period, the old key after it.
    clock.advance(GRACE - 1)
    assert await keys.prune() == 0
    clock.advance(1)
    assert await keys.prune() == 1
    assert [r.kid for r in await _rows(database)] == [new]


async def test_rotation_rows_carry_the_hand_over_time(
    keys: SigningKeys, database: Database, clock: FakeClock
) -> None:
    await keys.ensure()
    new = await keys.rotate()
    old_row, new_row = await _rows(database)
    assert new_row.kid == new
    assert new_row.active_from.timestamp() == clock.time() + AHEAD
    assert old_row.retired_at == new_row.active_from
    assert new_row.retired_at is None


async def test_rotating_with_no_key_makes_one_that_signs_at_once(keys: SigningKeys, clock: FakeClock) -> None:
    kid = await keys.rotate()
    keyset = await keys.load()
    assert keyset.signing_key(clock.time()).kid == kid  # type: ignore[union-attr]


async def test_two_rotations_leave_exactly_one_signer_at_every_moment(
    keys: SigningKeys, clock: FakeClock
) -> None:
    first = (await keys.ensure()).keys[0].kid
    second = await keys.rotate()
    clock.advance(10)
    third = await keys.rotate()
    keyset = await keys.load()
    start = clock.time() - 10
    timeline = [keyset.signing_key(start + t) for t in (0, AHEAD - 1, AHEAD + 5, AHEAD + 10, AHEAD + 100)]
    assert [k.kid if k else None for k in timeline] == [first, first, second, third, third]


async def test_rotation_prunes_expired_keys(keys: SigningKeys, database: Database, clock: FakeClock) -> None:
    first = (await keys.ensure()).keys[0].kid
    await keys.rotate()
    clock.advance(AHEAD + GRACE)
    await keys.rotate()
    assert first not in {r.kid for r in await _rows(database)}


async def test_refresh_picks_up_another_replicas_rotation(
    keys: SigningKeys, replicas: Callable[[], Database], keyring: Keyring, clock: FakeClock
) -> None:
    await keys.ensure()
    assert await keys.refresh() is False
    other = SigningKeys(replicas(), keyring, clock, SETTINGS)
    new = await other.rotate()
    assert await keys.refresh(if_older_than=5.0) is False  # loaded just now: not asked again yet
    clock.advance(5)
    assert await keys.refresh(if_older_than=5.0) is True
    assert new in {k["kid"] for k in keys.jwks()["keys"]}
    assert await keys.refresh() is False


async def test_concurrent_refreshes_read_once(keys: SigningKeys, database: Database) -> None:
    await keys.ensure()
    await keys.rotate()
    results = await asyncio.gather(*(keys.refresh() for _ in range(5)))
    assert results.count(True) == 1


# -- the private halves at rest ---------------------------------------------------------------------


async def test_private_key_is_stored_encrypted(
    keys: SigningKeys, database: Database, keyring: Keyring
) -> None:
    keyset = await keys.ensure()
    private = keyset.keys[0].private_key
    assert private is not None
    der = private.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    secret = private.private_numbers().private_value.to_bytes(32, "big")
    (row,) = await _rows(database)
    stored = (row.private_enc + row.public_jwk).encode()
    for plain in (der, pem, secret):
        for form in (
            plain,
            base64.b64encode(plain),
            base64.urlsafe_b64encode(plain).rstrip(b"="),
            plain.hex().encode(),
        ):
            assert form not in stored
    assert b"PRIVATE KEY" not in stored
    assert "d" not in json.loads(row.public_jwk)
    # It is keyring ciphertext bound to its own kid.
    assert row.private_enc.startswith(f"v1.{keyring.active_id}.")
    assert keyring.decrypt(row.private_enc, aad=private_key_aad(row.kid)) == der
    with pytest.raises(KeyringError):
        keyring.decrypt(row.private_enc, aad=private_key_aad("another"))


def _flip(token: str) -> str:
    head, body = token.rsplit(".", 1)
    middle = len(body) // 2
    return f"{head}.{body[:middle]}{'A' if body[middle] != 'A' else 'B'}{body[middle + 1 :]}"


async def test_tampered_ciphertext_fails_to_load(keys: SigningKeys, database: Database) -> None:
    await keys.ensure()
    (row,) = await _rows(database)
    async with database.session() as session:
        await session.execute(
            update(SigningKey).where(SigningKey.kid == row.kid).values(private_enc=_flip(row.private_enc))
        )
        await session.commit()
    with pytest.raises(KeyringError):
        await keys.load()
    with pytest.raises(KeyringError):
        await keys.ensure()


async def test_ciphertext_moved_to_another_row_fails_to_load(
    keys: SigningKeys, database: Database, clock: FakeClock
) -> None:
    await keys.ensure()
    await keys.rotate()
    old, new = await _rows(database)
    # An attacker with database access swaps in the old key's ciphertext for the key that will sign.
    async with database.session() as session:
        await session.execute(
            update(SigningKey).where(SigningKey.kid == new.kid).values(private_enc=old.private_enc)
        )
        await session.commit()
    clock.advance(AHEAD)
    with pytest.raises(KeyringError):
        await keys.load()


async def test_a_private_key_that_does_not_match_its_public_key_is_refused(
    keys: SigningKeys, database: Database, keyring: Keyring
) -> None:
    await keys.ensure()
    (row,) = await _rows(database)
    impostor = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    async with database.session() as session:
        await session.execute(
            update(SigningKey)
            .where(SigningKey.kid == row.kid)
            .values(private_enc=keyring.encrypt(impostor, aad=private_key_aad(row.kid)))
        )
        await session.commit()
    with pytest.raises(KeyringError, match="does not match"):
        await keys.load()


async def test_failed_refresh_keeps_the_loaded_keys(
    keys: SigningKeys, database: Database, clock: FakeClock
) -> None:
    await keys.ensure()
    await keys.rotate()
    loaded = await keys.load()
    clock.advance(AHEAD)  # the new key signs now, so it must decrypt
    async with database.session() as session:
        await session.execute(update(SigningKey).values(private_enc="v1.knope.AAAA"))
        await session.commit()
    with pytest.raises(KeyringError):
        await keys.refresh()
    assert keys.current() is loaded


async def test_keys_encrypted_under_a_newer_keyring_key_reload_the_keyring_file(
    database: Database, replicas: Callable[[], Database], keyring_file: Path, clock: FakeClock
) -> None:
    started = Keyring.load(keyring_file)  # what a running gateway loaded at start
    worker = SigningKeys(database, started, clock, SETTINGS)
    await worker.ensure()
    # An operator rotates the keyring, then the signing key with the new keyring.
    operator_keyring = Keyring.load(keyring_file)
    operator_keyring.rotate(keyring_file)
    new = await SigningKeys(replicas(), operator_keyring, clock, SETTINGS).rotate()
    assert await worker.refresh() is True
    clock.advance(AHEAD)
    signing = worker.current().signing_key(clock.time())
    assert signing is not None
    assert signing.kid == new
    assert signing.private_key is not None


def _in_memory(keyring_file: Path) -> Keyring:
    """The file's keys as a keyring built from key material: it has no file to read again."""
    doc = json.loads(keyring_file.read_text())
    return Keyring({kid: base64.b64decode(key) for kid, key in doc["keys"].items()}, doc["active"])


async def test_without_the_keyring_file_a_future_key_is_published_but_cannot_sign(
    database: Database, replicas: Callable[[], Database], keyring_file: Path, clock: FakeClock
) -> None:
    worker = SigningKeys(database, _in_memory(keyring_file), clock, SETTINGS)
    await worker.ensure()
    operator_keyring = Keyring.load(keyring_file)
    operator_keyring.rotate(keyring_file)
    new = await SigningKeys(replicas(), operator_keyring, clock, SETTINGS).rotate()
    assert await worker.refresh() is True
    assert new in {k["kid"] for k in worker.jwks()["keys"]}
    pending = next(k for k in worker.current().keys if k.kid == new)
    assert pending.private_key is None


async def test_load_without_private_halves_decrypts_nothing(
    keys: SigningKeys, database: Database, clock: FakeClock
) -> None:
    await keys.ensure()
    async with database.session() as session:
        await session.execute(update(SigningKey).values(private_enc="v1.knope.AAAA"))
        await session.commit()
    public = await keys.load(with_private=False)
    assert [k.private_key for k in public.keys] == [None]
    assert public.keys[0].keyring_kid == "knope"
    async with database.session() as session:
        assert await session.scalar(select(func.count()).select_from(SigningKey)) == 1
