"""Recovery codes on SQLite and PostgreSQL (real servers): shown once, stored hashed, each usable once."""

from __future__ import annotations

import asyncio
import math
import re
from dataclasses import dataclass

import pytest
from sqlalchemy import select

from gateway.clock import FakeClock
from gateway.factors.recovery import ALPHABET, CODE_CHARS, RecoveryCodes, normalise_code
from gateway.identity.models import RecoveryCode, User
from gateway.identity.passwords import PasswordHasher
from gateway.settings.schema import MfaSettings, PasswordSettings
from gateway.store.db import Database

# Cheap argon2 for tests (the loader refuses these in a config file; constructing them directly is fine).
FAST_ARGON = PasswordSettings(memory_kib=1024, time_cost=1, parallelism=1, max_concurrent_hashes=4)
CODE_RE = re.compile(r"[0-9a-hjkmnp-tv-z]{4}-[0-9a-hjkmnp-tv-z]{4}-[0-9a-hjkmnp-tv-z]{4}")


@dataclass
class World:
    db: Database
    clock: FakeClock
    codes: RecoveryCodes
    alice: int
    bob: int

    async def rows(self, user_id: int) -> list[RecoveryCode]:
        async with self.db.session() as session:
            found = await session.scalars(select(RecoveryCode).where(RecoveryCode.user_id == user_id).order_by(RecoveryCode.position))  # fmt: skip
            return list(found.all())


async def _add_user(db: Database, clock: FakeClock, username: str) -> int:
    user = User(username=username, email=None, display_name=username, password_hash=None, created_at=clock.now(), updated_at=clock.now(), password_changed_at=None)  # fmt: skip
    async with db.session() as session:
        session.add(user)
        await session.commit()
    return user.id


@pytest.fixture
async def world(database: Database) -> World:
    clock = FakeClock()
    codes = RecoveryCodes(database, PasswordHasher(FAST_ARGON), MfaSettings(recovery_codes=10), clock)
    alice = await _add_user(database, clock, "alice")
    bob = await _add_user(database, clock, "bob")
    return World(database, clock, codes, alice, bob)


async def test_generate_shows_distinct_codes_and_stores_only_hashes(world: World) -> None:
    codes = await world.codes.generate(world.alice)
    assert len(codes) == len(set(codes)) == 10
    assert all(CODE_RE.fullmatch(code) for code in codes)
    rows = await world.rows(world.alice)
    assert [r.position for r in rows] == list(range(10))
    assert len({r.batch for r in rows}) == 1
    for row in rows:
        assert row.code_hash.startswith("$argon2id$")
        assert row.used_at is None
        assert row.created_at == world.clock.now()
        assert not any(code.replace("-", "") in row.code_hash for code in codes)
    assert await world.codes.remaining(world.alice) == 10
    assert await world.codes.remaining(world.bob) == 0


def test_codes_carry_at_least_60_bits() -> None:
    assert len(set(ALPHABET)) == len(ALPHABET) == 32
    assert not set("ilou") & set(ALPHABET)  # nothing to misread on paper
    assert CODE_CHARS * math.log2(len(ALPHABET)) >= 60


async def test_codes_use_the_whole_alphabet(world: World) -> None:
    # 10 batches of 10 codes: 1200 characters; a missing letter would show a biased generator.
    seen: set[str] = set()
    generator = RecoveryCodes(
        world.db, PasswordHasher(FAST_ARGON), MfaSettings(recovery_codes=10), world.clock
    )
    for _ in range(10):
        seen.update("".join(await generator.generate(world.bob)).replace("-", ""))
    assert seen == set(ALPHABET)


async def test_each_code_works_once(world: World) -> None:
    codes = await world.codes.generate(world.alice)
    for i, code in enumerate(codes):
        assert await world.codes.use(world.alice, code)
        assert not await world.codes.use(world.alice, code)
        assert await world.codes.remaining(world.alice) == 10 - i - 1
    used = await world.rows(world.alice)
    assert all(r.used_at == world.clock.now() for r in used)


async def test_input_is_forgiving(world: World) -> None:
    codes = await world.codes.generate(world.alice)
    raw = codes[0].replace("-", "")
    assert await world.codes.use(world.alice, f"  {raw[:4].upper()} {raw[4:8]}-{raw[8:]}\n")
    assert await world.codes.use(world.alice, codes[1].upper().replace("-", " "))
    assert await world.codes.use(world.alice, codes[2].replace("-", ""))


@pytest.mark.parametrize(
    ("typed", "expected"),
    [
        ("abcd-efgh-jkmn", "abcdefghjkmn"),
        ("ABCD EFGH JKMN", "abcdefghjkmn"),
        ("oOiI-lL00-1111", "001111001111"),  # look-alikes read as the digits they resemble
        ("abcd-efgh-jkm", None),
        ("abcd-efgh-jkmnp", None),
        ("abcd-efgh-jkmu", None),  # "u" is not in the alphabet
        ("abcd_efgh_jkmn", None),
        ("", None),
    ],
)
def test_normalise_code(typed: str, expected: str | None) -> None:
    assert normalise_code(typed) == expected


async def test_wrong_and_foreign_codes_are_refused(world: World) -> None:
    alice = await world.codes.generate(world.alice)
    bob = await world.codes.generate(world.bob)
    assert not await world.codes.use(world.alice, bob[0])
    assert not await world.codes.use(world.alice, "0000-0000-0000")
    assert not await world.codes.use(world.alice, "not a code")
    assert not await world.codes.use(world.alice, alice[0] + "0")
    assert await world.codes.remaining(world.alice) == 10
    assert await world.codes.remaining(world.bob) == 10


async def test_concurrent_use_of_one_code_succeeds_once(world: World) -> None:
    codes = await world.codes.generate(world.alice)
    results = await asyncio.gather(*(world.codes.use(world.alice, codes[3]) for _ in range(5)))
    assert results.count(True) == 1
    assert await world.codes.remaining(world.alice) == 9


async def test_concurrent_use_when_every_request_matched_first(world: World) -> None:
    racers = 4
    barrier = asyncio.Barrier(racers)

    class Racing(RecoveryCodes):
        async def _spend(self, row_id: int) -> bool:
            # Every request has found its code before any marks it used: the worst case.
            await barrier.wait()
            return await super()._spend(row_id)

    racing = Racing(world.db, PasswordHasher(FAST_ARGON), MfaSettings(), world.clock)
    codes = await racing.generate(world.alice)
    results = await asyncio.gather(*(racing.use(world.alice, codes[0]) for _ in range(racers)))
    assert results.count(True) == 1


async def test_a_new_batch_replaces_the_old_one(world: World) -> None:
    old = await world.codes.generate(world.alice)
    assert await world.codes.use(world.alice, old[0])
    world.clock.advance(60)
    new = await world.codes.generate(world.alice)
    assert not set(old) & set(new)
    for code in old[1:3]:
        assert not await world.codes.use(world.alice, code)
    rows = await world.rows(world.alice)
    assert len(rows) == 10
    assert len({r.batch for r in rows}) == 1
    assert await world.codes.remaining(world.alice) == 10
    assert await world.codes.use(world.alice, new[9])
    assert await world.codes.remaining(world.alice) == 9


async def test_batch_size_follows_the_settings(world: World) -> None:
    codes = RecoveryCodes(world.db, PasswordHasher(FAST_ARGON), MfaSettings(recovery_codes=4), world.clock)
    assert len(await codes.generate(world.alice)) == 4
    assert await codes.remaining(world.alice) == 4
