"""argon2id password hashing: correctness, equal cost for unknown users, rehash, policy, and the event loop.

(``gateway/identity/passwords.py``; kept beside the factor tests that use the same hasher.)
"""

from __future__ import annotations

import asyncio
import os
import random
import string
import threading
from typing import Literal

import argon2
import pytest

from gateway.errors import ConfigError
from gateway.identity.passwords import HASH_THREAD_NICENESS, MAX_PASSWORD_CHARS, PasswordHasher
from gateway.settings import parse_settings
from gateway.settings.schema import PasswordSettings

# Cheap argon2 for tests (the loader refuses these in a config file; constructing them directly is fine).
FAST = PasswordSettings(memory_kib=1024, time_cost=1, parallelism=1, min_length=12)
STRONGER = PasswordSettings(memory_kib=2048, time_cost=2, parallelism=1, min_length=12)
PASSWORD = "amber quarry lantern voyage"


@pytest.fixture
def hasher() -> PasswordHasher:
    return PasswordHasher(FAST)


async def test_hash_and_verify(hasher: PasswordHasher) -> None:
    stored = await hasher.hash(PASSWORD)
    assert stored.startswith("$argon2id$v=19$m=1024,t=1,p=1$")
    assert PASSWORD not in stored
    assert await hasher.verify(stored, PASSWORD)
    assert not await hasher.verify(stored, PASSWORD + " ")
    assert not await hasher.verify(stored, "")
    # Salted: the same password never hashes the same twice.
    assert await hasher.hash(PASSWORD) != stored


async def test_configured_parameters_are_used() -> None:
    hasher = PasswordHasher(PasswordSettings(memory_kib=2048, time_cost=3, parallelism=2))
    assert (await hasher.hash(PASSWORD)).startswith("$argon2id$v=19$m=2048,t=3,p=2$")


async def test_unknown_user_is_checked_against_a_dummy_hash_of_the_same_cost(hasher: PasswordHasher) -> None:
    calls: list[str] = []

    class Spy(argon2.PasswordHasher):
        def hash(self, password: str | bytes, *, salt: bytes | None = None) -> str:
            calls.append("hash")
            return super().hash(password, salt=salt)

        def verify(self, hash: str | bytes, password: str | bytes) -> Literal[True]:
            calls.append(f"verify {str(hash)[:30]}")
            return super().verify(hash, password)

    hasher._argon = Spy.from_parameters(hasher._argon._parameters)
    for _ in range(3):
        assert not await hasher.verify(None, PASSWORD)
    # One argon2 computation per call, the first one making the dummy (no double cost on first use),
    # all with the configured parameters. Even the dummy's own password is refused.
    assert calls == ["hash", "verify $argon2id$v=19$m=1024,t=1,p=1$", "verify $argon2id$v=19$m=1024,t=1,p=1$"]
    assert not await hasher.verify(None, "gateway dummy password for absent accounts")


async def test_passwords_are_nfkc_normalised(hasher: PasswordHasher) -> None:
    stored = await hasher.hash("ﬁve ﬁsh and a ½ loaf")  # ligatures and a vulgar fraction
    assert await hasher.verify(stored, "five fish and a 1\u20442 loaf")
    # Spaces are kept as typed.
    assert not await hasher.verify(stored, " ﬁve ﬁsh and a ½ loaf")


@pytest.mark.parametrize(
    "stored", ["", "plaintext", "$2b$12$abcdefghijklmnopqrstuv", "$argon2id$v=19$m=1024,t=1,p=1$bad"]
)
async def test_a_corrupt_stored_hash_never_matches(hasher: PasswordHasher, stored: str) -> None:
    assert not await hasher.verify(stored, PASSWORD)
    assert hasher.needs_rehash(stored)


async def test_rehash_is_detected_when_parameters_change(hasher: PasswordHasher) -> None:
    stored = await hasher.hash(PASSWORD)
    assert not hasher.needs_rehash(stored)
    stronger = PasswordHasher(STRONGER)
    assert stronger.needs_rehash(stored)
    # The old hash still verifies under the new settings (sign-in works, then it is re-hashed).
    assert await stronger.verify(stored, PASSWORD)
    assert not stronger.needs_rehash(await stronger.hash(PASSWORD))
    assert PasswordHasher(PasswordSettings(memory_kib=1024, time_cost=1, parallelism=2)).needs_rehash(stored)


@pytest.mark.parametrize(
    ("password", "ok"),
    [
        ("", False),
        ("kqzvbwm hrtx"[:11], False),
        ("kqzvbwm hrtx", True),  # no composition rules (NIST SP 800-63B)
        ("twelve chars", True),
        ("ﬁsh & chips", True),  # counted after NFKC: the ligature is two letters, eleven become twelve
        ("ﬁsh & chip", False),
        ("".join(random.Random(0).choices(string.ascii_lowercase + " ", k=MAX_PASSWORD_CHARS)), True),
        ("x" * (MAX_PASSWORD_CHARS + 1), False),
    ],
)
def test_policy_length(hasher: PasswordHasher, password: str, ok: bool) -> None:
    # The length rules only; what else is refused is tested in tests/unit/identity/test_password_policy.py.
    problem = hasher.check_policy(password)
    assert (problem is None) == ok
    if problem is not None:
        assert "characters" in problem


def test_policy_uses_the_configured_minimum() -> None:
    hasher = PasswordHasher(PasswordSettings(min_length=20))
    assert (
        hasher.check_policy("a" * 19)
        == "Use at least 20 characters; a few unrelated words are easy to remember."
    )
    assert hasher.check_policy("purple monkey dishes") is None  # 20 characters


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("passwords: {memory_kib: 4096}\n", "below OWASP's minimum"),
        ("passwords: {min_length: 6}\n", "at least 8"),
    ],
)
def test_parameters_below_owasp_are_refused_by_config(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_settings("public_url: https://auth.example.com\n" + text)


async def test_the_event_loop_stays_responsive_while_20_hashes_run() -> None:
    # Real cost (OWASP minimum), so each hash takes long enough that a blocking implementation would
    # starve the heartbeat completely.
    settings = PasswordSettings(max_concurrent_hashes=2)
    hasher = PasswordHasher(settings)
    running = 0
    peak = 0
    lock = threading.Lock()

    class Counting(argon2.PasswordHasher):
        def hash(self, password: str | bytes, *, salt: bytes | None = None) -> str:
            nonlocal running, peak
            with lock:
                running += 1
                peak = max(peak, running)
            try:
                return super().hash(password, salt=salt)
            finally:
                with lock:
                    running -= 1

    hasher._argon = Counting.from_parameters(hasher._argon._parameters)
    ticks = 0
    done = asyncio.Event()

    async def heartbeat() -> None:
        nonlocal ticks
        while not done.is_set():
            await asyncio.sleep(0.001)  # the scenario: a heartbeat that needs the loop every millisecond
            ticks += 1

    beat = asyncio.create_task(heartbeat())
    hashes = await asyncio.gather(*(hasher.hash(f"{PASSWORD} {i}") for i in range(20)))
    done.set()
    await beat
    assert len(set(hashes)) == 20
    # A hash that blocked the loop would leave the heartbeat no turn until all 20 were done.
    assert ticks >= 20
    # And the burst queued behind the bound instead of taking every core.
    assert peak == settings.max_concurrent_hashes


async def test_hashes_run_in_threads_below_the_event_loops_priority() -> None:
    hasher = PasswordHasher(FAST)
    seen: list[tuple[int, int]] = []

    class Recording(argon2.PasswordHasher):
        def hash(self, password: str | bytes, *, salt: bytes | None = None) -> str:
            tid = threading.get_native_id()
            seen.append((tid, os.getpriority(os.PRIO_PROCESS, tid)))
            return super().hash(password, salt=salt)

    hasher._argon = Recording.from_parameters(hasher._argon._parameters)
    await hasher.hash(PASSWORD)
    loop_tid = threading.get_native_id()
    loop_nice = os.getpriority(os.PRIO_PROCESS, loop_tid)
    [(tid, nice)] = seen
    assert tid != loop_tid
    assert nice == min(19, loop_nice + HASH_THREAD_NICENESS)
    # The event loop's own thread keeps its priority.
    assert os.getpriority(os.PRIO_PROCESS, loop_tid) == loop_nice
