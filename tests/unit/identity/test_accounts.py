"""Local accounts on SQLite and PostgreSQL (real servers): create, find, sign in, change, disable, delete.

The sign-in tests check the security properties rather than the happy path only: every failure is the
same answer, every attempt runs the password hash (no timing shortcut for unknown users), every
spelling of a person shares one failure counter, and the reason for a failure reaches the audit trail
only.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import func, select

from gateway.audit.models import AuditEvent
from gateway.audit.trail import AuditLog
from gateway.clock import FakeClock
from gateway.identity.accounts import (
    SIGN_IN_FAILED_MESSAGE,
    AccountExists,
    AccountService,
    InvalidAccount,
    SignInFailed,
    SignInResult,
    UnknownAccount,
    WeakPassword,
    WrongPassword,
)
from gateway.identity.levels import AuthLevel, Factor, FactorUse
from gateway.identity.models import RecoveryCode, TotpCredential, User, WebAuthnCredential
from gateway.identity.passwords import PasswordHasher
from gateway.identity.regulation import AccountLocked, Regulator
from gateway.identity.sessions import SessionStore
from gateway.settings.schema import Duration, PasswordSettings, RegulationSettings, SessionSettings
from gateway.store.db import Database
from gateway.store.fast import MemoryFastState

# Cheap argon2 for tests (the loader refuses these in a config file; constructing them directly is fine).
FAST_ARGON = PasswordSettings(memory_kib=1024, time_cost=1, parallelism=1, min_length=12)
STRONGER_ARGON = PasswordSettings(memory_kib=2048, time_cost=2, parallelism=1, min_length=12)
REGULATION = RegulationSettings(free_attempts=3, max_failures=5, lock_time=Duration(900))

PASSWORD = "amber quarry lantern voyage"
OTHER_PASSWORD = "another long passphrase 42"
IP = "198.51.100.7"


class CountingHasher(PasswordHasher):
    """The real hasher, counting how often (and against what) a password was verified."""

    def __init__(self, settings: PasswordSettings) -> None:
        super().__init__(settings)
        self.verified: list[str | None] = []

    async def verify(self, stored: str | None, password: str) -> bool:
        self.verified.append(stored)
        return await super().verify(stored, password)


@dataclass
class World:
    db: Database
    clock: FakeClock
    audit: AuditLog
    hasher: CountingHasher
    regulator: Regulator
    sessions: SessionStore
    accounts: AccountService

    def service(self, hasher: PasswordHasher, *, sessions: SessionStore | None = None) -> AccountService:
        return AccountService(self.db, hasher, self.regulator, self.audit, self.clock, sessions=sessions)

    async def events(self, kind: str) -> list[AuditEvent]:
        return await self.audit.events(kind=kind)

    async def sign_in(self, user: User) -> str:
        """A live session for ``user`` in the real session store; returns its id."""
        session_id, _session = await self.sessions.create(
            user_id=user.id,
            username=user.username,
            level=AuthLevel.ONE_FACTOR,
            factors=(FactorUse(Factor.PASSWORD, self.clock.time()),),
            roles=tuple(user.roles.split()),
            ip=IP,
            user_agent="test",
            host="auth.example.com",
        )
        return session_id


@pytest.fixture
async def world(database: Database) -> AsyncIterator[World]:
    clock = FakeClock()
    fast = MemoryFastState(clock=clock)
    audit = AuditLog(database, clock=clock)
    hasher = CountingHasher(FAST_ARGON)
    regulator = Regulator(fast, lambda: REGULATION, audit, clock)
    sessions = SessionStore(fast, SessionSettings(), clock)
    accounts = AccountService(database, hasher, regulator, audit, clock, sessions=sessions)
    yield World(database, clock, audit, hasher, regulator, sessions, accounts)
    await fast.close()


async def _alice(world: World, **overrides: Any) -> User:
    options: dict[str, Any] = {
        "username": "Alice",
        "password": PASSWORD,
        "email": "Alice@Example.com",
        "display_name": "Alice Liddell",
        "roles": ["dev", "ops"],
        "actor": "admin:root",
    }
    options.update(overrides)
    return await world.accounts.create(**options)


# -- create and find ---------------------------------------------------------------------------------


async def test_create_stores_canonical_names_and_a_hash(world: World) -> None:
    user = await _alice(world)
    assert (user.username, user.email) == ("alice", "alice@example.com")
    assert user.roles == "dev ops"
    assert user.password_hash is not None
    assert PASSWORD not in user.password_hash
    assert user.password_changed_at == world.clock.now()
    (event,) = await world.events("user.created")
    assert (event.actor, event.subject, event.outcome) == ("admin:root", "alice", "success")
    assert PASSWORD not in event.details


@pytest.mark.parametrize(
    "login",
    [
        "alice",
        "ALICE",
        "  Alice ",
        "\uff41\uff4c\uff49\uff43\uff45",
        "alice@example.com",
        "ALICE@Example.COM",
    ],
)
async def test_find_by_any_spelling_of_username_or_email(world: World, login: str) -> None:
    user = await _alice(world)
    found = await world.accounts.find(login)
    assert found is not None
    assert found.id == user.id


@pytest.mark.parametrize("login", ["bob", "", "   ", "al\u200dice", "alice@example.org", "a/b"])
async def test_find_unknown_is_none(world: World, login: str) -> None:
    await _alice(world)
    assert await world.accounts.find(login) is None


@pytest.mark.parametrize(
    ("username", "email", "why"),
    [
        ("ALICE", None, "same username, other case"),
        ("\uff41\uff4c\uff49\uff43\uff45", "x@example.com", "same username, full-width"),
        ("bob", "ALICE@example.com", "same email, other case"),
        ("alice@example.com", None, "username equal to alice's email"),
    ],
)
async def test_duplicates_are_refused(world: World, username: str, email: str | None, why: str) -> None:
    await _alice(world)
    with pytest.raises(AccountExists):
        await world.accounts.create(username=username, password=PASSWORD, email=email, actor="admin:root")
    async with world.db.session() as session:
        assert await session.scalar(select(func.count(User.id))) == 1, why


async def test_email_equal_to_another_username_is_refused(world: World) -> None:
    await world.accounts.create(username="carol@example.com", password=None, actor="admin:root")
    with pytest.raises(AccountExists, match="already used"):
        await world.accounts.create(
            username="dave", password=None, email="Carol@Example.com", actor="admin:root"
        )


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        ({"username": "al ice"}, InvalidAccount),
        ({"username": "al\u202eice"}, InvalidAccount),
        ({"email": "alice@localhost"}, InvalidAccount),
        ({"roles": ["two words"]}, InvalidAccount),
        ({"roles": ["a,b"]}, InvalidAccount),
        ({"display_name": "evil\x1b[2J"}, InvalidAccount),
        ({"display_name": "Dave\u3164filler"}, InvalidAccount),  # a Hangul filler (an attack run)
        ({"display_name": "Frank\u2028admin@corp.example  active  admin"}, InvalidAccount),
        ({"display_name": "Eve\u200b"}, InvalidAccount),
        ({"username": "alice."}, InvalidAccount),  # a trailing dot reads as alice
        ({"username": "b\u0966b"}, InvalidAccount),  # a Devanagari zero reads as o
        ({"username": "adm\u0661n"}, InvalidAccount),  # an Arabic-Indic one reads as l
        ({"password": "short"}, WeakPassword),
    ],
)
async def test_invalid_input_is_refused_before_anything_is_stored(
    world: World, overrides: dict[str, Any], error: type[Exception]
) -> None:
    with pytest.raises(error) as info:
        await _alice(world, **overrides)
    assert info.value.args[0]  # a message for a human
    assert await world.accounts.list(limit=10, offset=0) == []
    assert await world.events("user.created") == []


@pytest.mark.parametrize(
    ("existing", "typed"),
    [
        ("alice", "al\u0130ce"),  # stored as "ali" + a combining dot: drawn as alice (an attack run)
        ("alice", "al\u0131\u0307ce"),
        ("alice", "a\u01c0ice"),
        ("bob", "b\u0585b"),
        ("joe", "\u0458\u043e\u0435"),  # wholly Cyrillic
        ("admin", "\u0251dmin"),
    ],
)
async def test_a_name_that_reads_as_one_in_use_is_refused(world: World, existing: str, typed: str) -> None:
    await world.accounts.create(username=existing, password=None, actor="admin:root")
    with pytest.raises(InvalidAccount, match="reads as"):
        await world.accounts.create(username=typed, password=None, actor="admin:root")
    assert [u.username for u in await world.accounts.list(limit=10, offset=0)] == [existing]


async def test_a_name_in_another_script_and_a_joined_display_name_are_names(world: World) -> None:
    """The controls: a Cyrillic username that reads as no one in use, and a display name with the
    zero-width non-joiner Persian is written with and an emoji built with joiners."""
    await world.accounts.create(username="joe", password=None, actor="admin:root")
    made = await world.accounts.create(
        username="\u0430\u043b\u0435\u043a\u0441\u0435\u0439",
        password=None,
        actor="admin:root",
        display_name="\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645 \U0001f469\u200d\U0001f4bb",
    )
    assert made.username == "\u0430\u043b\u0435\u043a\u0441\u0435\u0439"


async def test_weak_password_carries_the_policy_message(world: World) -> None:
    problem = world.hasher.check_policy("short")
    assert problem is not None
    with pytest.raises(WeakPassword) as info:
        await _alice(world, password="short")
    assert info.value.detail == problem
    assert (info.value.status, info.value.reason) == (400, "weak-password")


async def test_account_without_password(world: World) -> None:
    user = await _alice(world, password=None)
    assert user.password_hash is None
    assert user.password_changed_at is None


# -- sign-in -----------------------------------------------------------------------------------------


async def test_sign_in_by_username_or_email(world: World) -> None:
    user = await _alice(world)
    for login in ("alice", "ALICE", "alice@EXAMPLE.com", "\uff41\uff4c\uff49\uff43\uff45"):
        result = await world.accounts.authenticate(login, PASSWORD, ip=IP)
        assert isinstance(result, SignInResult)
        assert result.user.id == user.id
        assert result.must_change_password is False
    events = await world.events("signin.password")
    assert len(events) == 4
    assert all(e.outcome == "success" and e.subject == "alice" and e.ip == IP for e in events)


async def test_must_change_password_is_reported(world: World) -> None:
    await _alice(world, must_change_password=True)
    result = await world.accounts.authenticate("alice", PASSWORD, ip=IP)
    assert result.must_change_password is True


async def _failure(world: World, login: str, password: str) -> SignInFailed:
    with pytest.raises(SignInFailed) as info:
        await world.accounts.authenticate(login, password, ip=IP)
    return info.value


async def test_every_failure_is_the_same_answer(world: World) -> None:
    await _alice(world)
    await world.accounts.create(username="nopass", password=None, actor="admin:root")
    await world.accounts.create(username="gone", password=PASSWORD, actor="admin:root")
    gone = await world.accounts.find("gone")
    assert gone is not None
    await world.accounts.disable(gone.id, actor="admin:root")

    cases = {
        "unknown-user": ("mallory", PASSWORD),
        "bad-password": ("alice", "wrong password here"),
        "no-password": ("nopass", PASSWORD),
        "disabled": ("gone", PASSWORD),
        "invalid login": ("al\u200dice", PASSWORD),
    }
    answers = {name: await _failure(world, login, pw) for name, (login, pw) in cases.items()}
    shapes = {(type(e), e.status, e.reason, e.detail, str(e), e.args, e.location) for e in answers.values()}
    assert shapes == {
        (SignInFailed, 401, "invalid-credentials", SIGN_IN_FAILED_MESSAGE, SIGN_IN_FAILED_MESSAGE,
         (SIGN_IN_FAILED_MESSAGE,), None)
    }  # fmt: skip

    # The reason is in the audit trail only.
    failures = [e for e in await world.events("signin.password") if e.outcome == "failure"]
    reasons = sorted(json.loads(e.details)["reason"] for e in failures)
    assert reasons == sorted(["unknown-user", "bad-password", "no-password", "disabled", "unknown-user"])
    by_reason = {json.loads(e.details)["reason"]: e for e in failures}
    assert by_reason["bad-password"].subject == "alice"
    assert by_reason["disabled"].subject == "gone"
    assert all(PASSWORD not in e.details and e.ip == IP for e in failures)
    # What was typed for no account is never recorded (a password typed into the username box is
    # often a valid username, as a passphrase is): a keyed digest, one per login, for detection.
    unknown = {e.subject for e in failures if json.loads(e.details)["reason"] == "unknown-user"}
    assert len(unknown) == 2
    assert all(re.fullmatch(r"~[0-9a-f]{32}", subject) for subject in unknown)
    assert "mallory" not in json.dumps([(e.subject, e.details) for e in failures])


async def test_a_token_typed_as_the_login_is_never_recorded(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    """An attack run: an API token typed into the username box (a valid username spelling) reached the
    audit trail, the security-event sinks and the process log as it was typed."""
    token = "gwt_Q7xkP2mZ9vLq4RtY8wNb3JcH6dF1sKe5GaX0uTo2iPl"
    caplog.set_level("INFO")
    await _failure(world, token, PASSWORD)
    (failure,) = [e for e in await world.events("signin.password") if e.outcome == "failure"]
    assert failure.subject.startswith("~")
    assert token.casefold() not in caplog.text.casefold()
    # Still counted, as every login is (under a hash of it).
    await _failure(world, token, PASSWORD)
    assert len([e for e in await world.events("signin.password") if e.outcome == "failure"]) == 2


async def test_a_password_typed_as_the_login_is_never_recorded_even_when_it_could_be_a_name(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    """An attack run: a passphrase typed into the username box is a valid username, and was kept in the
    audit trail (400 days), the sinks and the log. Unknown logins are kept as keyed digests only."""
    await _alice(world)
    caplog.set_level("INFO")
    for typed in ("Copper-Lantern-4471", "copper-lantern-4471", "copper.lantern@example.com"):
        await _failure(world, typed, "x")
    failures = [e for e in await world.events("signin.password") if e.outcome == "failure"]
    subjects = [e.subject for e in failures]
    assert len(set(subjects)) == 2  # the same login in any case is one, for the counters and detection
    assert "lantern" not in caplog.text.casefold() + json.dumps([(e.subject, e.details) for e in failures])


async def test_an_unknown_login_cannot_write_a_lock_for_a_real_account(world: World) -> None:
    """Another attack run: an unknown email-shaped login holding the known-device separator
    (``alice|device:x@corp.com``) was counted under itself, and its lock's audit record named alice,
    on a known browser, though alice was never locked."""
    await _alice(world)
    for _ in range(12):
        with contextlib.suppress(SignInFailed, AccountLocked):
            await world.accounts.authenticate("alice|device:x@corp.com", "x", ip=IP)
        world.clock.advance(120)  # past each back-off: every attempt counts
    locks = await world.events("account.locked")
    assert locks, "the unknown login is locked as any other"
    assert all(e.subject.startswith("~") and "alice" not in e.details for e in locks)
    assert (await world.accounts.authenticate("alice", PASSWORD, ip=IP)).user.username == "alice"


async def test_the_password_is_always_hashed(world: World) -> None:
    user = await _alice(world)
    await world.accounts.create(username="nopass", password=None, actor="admin:root")
    world.hasher.verified.clear()
    for login in ("mallory", "nopass", "al\u200dice", ""):
        await _failure(world, login, PASSWORD)
    await _failure(world, "alice", "wrong password here")
    # No account or no password: verified against None (the hasher's dummy hash, same cost).
    assert world.hasher.verified == [None, None, None, None, user.password_hash]


async def test_email_alias_shares_the_failure_counter(world: World) -> None:
    await _alice(world)
    for _ in range(REGULATION.max_failures):
        await _failure(world, "alice@example.com", "wrong password here")
        world.clock.advance(REGULATION.lock_time / 100)  # outside each back-off delay, inside the window
    world.hasher.verified.clear()
    with pytest.raises(AccountLocked) as info:
        await world.accounts.authenticate("ALICE", PASSWORD, ip=IP)
    assert info.value.status == 429
    # Locked accounts are refused before any hashing (no CPU to burn, nothing to learn).
    assert world.hasher.verified == []
    world.clock.advance(REGULATION.lock_time + 1)
    assert (await world.accounts.authenticate("alice", PASSWORD, ip=IP)).user.username == "alice"


async def test_a_lock_does_not_tell_which_email_is_which_username(world: World) -> None:
    """The attack run: fail ``alice`` until she backs off, then try ``alice@example.com``: a 429 said
    the two were one account, where an unknown pair (``mallory`` / ``mallory@example.com``) got 401."""
    await _alice(world)
    for name in ("alice", "mallory"):
        for _ in range(REGULATION.max_failures):
            await _failure(world, name, "wrong password here")
            world.clock.advance(REGULATION.lock_time / 100)
        with pytest.raises(AccountLocked):
            await world.accounts.authenticate(name, "wrong password here", ip=IP)
    world.hasher.verified.clear()
    # The alias answers as the unknown email does: a wrong password, after a hash of the same cost.
    for email in ("alice@example.com", "mallory@example.com"):
        with pytest.raises(SignInFailed):
            await world.accounts.authenticate(email, "wrong password here", ip=IP)
    assert world.hasher.verified == [None, None]
    # The account's lock still holds for it, silently: the right password through the alias fails too.
    with pytest.raises(SignInFailed):
        await world.accounts.authenticate("alice@example.com", PASSWORD, ip=IP)
    # And the alias is regulated under its own spelling, as an unknown email is.
    for _ in range(REGULATION.max_failures):
        with contextlib.suppress(SignInFailed, AccountLocked):
            await world.accounts.authenticate("alice@example.com", "wrong password here", ip=IP)
        world.clock.advance(REGULATION.lock_time / 100)
    with pytest.raises(AccountLocked):
        await world.accounts.authenticate("alice@example.com", "wrong password here", ip=IP)


async def test_unknown_logins_lock_like_real_ones(world: World) -> None:
    # Otherwise an attacker could tell real accounts by which ones ever say "locked".
    for _ in range(REGULATION.max_failures):
        await _failure(world, "Mallory", "wrong password here")
        world.clock.advance(REGULATION.lock_time / 100)
    with pytest.raises(AccountLocked):
        await world.accounts.authenticate("mallory", "wrong password here", ip=IP)


async def test_a_correct_password_alone_does_not_reset_the_counter(world: World) -> None:
    # The attack run's hole: a correct password reset the counter that wrong second-factor codes add
    # to, so signing in again bought another round of guesses. Now the limit holds across sign-ins.
    await _alice(world)
    for _ in range(REGULATION.max_failures - 1):
        await _failure(world, "alice", "wrong password here")
        world.clock.advance(REGULATION.lock_time / 100)
    world.clock.advance(REGULATION.lock_time / 10)
    await world.accounts.authenticate("alice", PASSWORD, ip=IP)
    world.clock.advance(await world.regulator.retry_after("alice"))
    async with world.regulator.attempt("alice") as attempt:  # a wrong code at the second step
        await attempt.fail(ip=IP, factor="totp")
    with pytest.raises(AccountLocked):
        await world.accounts.authenticate("alice", PASSWORD, ip=IP)


async def test_a_completed_sign_in_resets_the_counter(world: World) -> None:
    await _alice(world)
    for _ in range(REGULATION.max_failures - 1):
        await _failure(world, "alice", "wrong password here")
        world.clock.advance(REGULATION.lock_time / 100)
    world.clock.advance(REGULATION.lock_time / 10)
    await world.accounts.authenticate("alice", PASSWORD, ip=IP)
    await world.regulator.record_success("alice")  # what the sign-in pages do once it is complete
    for _ in range(REGULATION.max_failures - 1):
        await _failure(world, "alice", "wrong password here")
        world.clock.advance(REGULATION.lock_time / 100)
    world.clock.advance(REGULATION.lock_time / 10)
    await world.accounts.authenticate("alice", PASSWORD, ip=IP)


async def test_rehash_when_the_parameters_change(world: World) -> None:
    user = await _alice(world)
    old_hash = user.password_hash
    assert old_hash is not None
    stronger = world.service(PasswordHasher(STRONGER_ARGON))
    assert PasswordHasher(STRONGER_ARGON).needs_rehash(old_hash)

    result = await stronger.authenticate("alice", PASSWORD, ip=IP)
    new_hash = result.user.password_hash
    assert new_hash is not None
    assert new_hash != old_hash
    assert not PasswordHasher(STRONGER_ARGON).needs_rehash(new_hash)
    stored = await world.accounts.get(user.id)
    assert stored is not None
    assert stored.password_hash == new_hash
    # The password is unchanged, only its hash: the change date stays.
    assert stored.password_changed_at == user.password_changed_at
    latest = (await world.events("signin.password"))[0]
    assert json.loads(latest.details) == {"rehashed": True}

    # Signing in again with the same parameters does not hash again.
    again = await stronger.authenticate("alice", PASSWORD, ip=IP)
    assert again.user.password_hash == new_hash


async def test_no_rehash_with_current_parameters(world: World) -> None:
    user = await _alice(world)
    result = await world.accounts.authenticate("alice", PASSWORD, ip=IP)
    assert result.user.password_hash == user.password_hash


# -- changing passwords ------------------------------------------------------------------------------


async def test_set_password_with_current_password(world: World) -> None:
    user = await _alice(world, must_change_password=True)
    session_id = await world.sign_in(user)
    world.clock.advance(60)
    await world.accounts.set_password(user.id, OTHER_PASSWORD, actor="user:alice", current_password=PASSWORD)
    await _failure(world, "alice", PASSWORD)
    result = await world.accounts.authenticate("alice", OTHER_PASSWORD, ip=IP)
    assert result.must_change_password is False
    assert result.user.password_changed_at == world.clock.now()
    (event,) = [e for e in await world.events("user.password_changed") if e.outcome == "success"]
    assert (event.actor, event.subject) == ("user:alice", "alice")
    assert OTHER_PASSWORD not in event.details
    assert PASSWORD not in event.details
    # Changing a password does not end sessions by itself: the portal decides.
    assert await world.sessions.get(session_id) is not None


async def test_set_password_wrong_current_password(world: World) -> None:
    user = await _alice(world)
    with pytest.raises(WrongPassword) as info:
        await world.accounts.set_password(
            user.id, OTHER_PASSWORD, actor="user:alice", current_password="not my password"
        )
    assert (info.value.status, info.value.reason) == (400, "wrong-password")
    await world.accounts.authenticate("alice", PASSWORD, ip=IP)  # unchanged
    (event,) = [e for e in await world.events("user.password_changed") if e.outcome == "failure"]
    assert json.loads(event.details) == {"reason": "bad-current-password"}


async def test_set_password_wrong_current_password_is_regulated(world: World) -> None:
    # A stolen session must not become an unlimited password-guessing oracle.
    user = await _alice(world)
    for _ in range(REGULATION.max_failures):
        with pytest.raises(WrongPassword):
            await world.accounts.set_password(
                user.id, OTHER_PASSWORD, actor="user:alice", current_password="not my password"
            )
        world.clock.advance(REGULATION.lock_time / 100)
    with pytest.raises(AccountLocked):
        await world.accounts.set_password(
            user.id, OTHER_PASSWORD, actor="user:alice", current_password=PASSWORD
        )


async def test_admin_password_reset(world: World) -> None:
    user = await _alice(world)
    await world.accounts.set_password(user.id, OTHER_PASSWORD, actor="admin:root", must_change_password=True)
    result = await world.accounts.authenticate("alice", OTHER_PASSWORD, ip=IP)
    assert result.must_change_password is True
    event = (await world.events("user.password_changed"))[0]
    assert json.loads(event.details) == {"by_admin": True, "must_change_password": True}


async def test_set_password_policy(world: World) -> None:
    user = await _alice(world)
    with pytest.raises(WeakPassword):
        await world.accounts.set_password(user.id, "short", actor="user:alice", current_password=PASSWORD)
    await world.accounts.authenticate("alice", PASSWORD, ip=IP)


# -- disable, enable, delete, reset MFA --------------------------------------------------------------


async def test_disable_revokes_sessions_and_refuses_sign_in(world: World) -> None:
    user = await _alice(world)
    bob = await world.accounts.create(username="bob", password=PASSWORD, actor="admin:root")
    mine = [await world.sign_in(user) for _ in range(3)]
    bobs = await world.sign_in(bob)
    assert await world.accounts.disable(user.id, actor="admin:root") == 3
    for session_id in mine:
        assert await world.sessions.get(session_id) is None
    assert await world.sessions.get(bobs) is not None  # nobody else's
    await _failure(world, "alice", PASSWORD)
    (event,) = await world.events("user.disabled")
    assert (event.actor, event.subject) == ("admin:root", "alice")
    assert json.loads(event.details) == {"sessions_revoked": 3}

    await world.accounts.enable(user.id, actor="admin:root")
    assert (await world.accounts.authenticate("alice", PASSWORD, ip=IP)).user.id == user.id
    assert len(await world.events("user.enabled")) == 1


async def test_disable_without_a_session_store(world: World) -> None:
    user = await _alice(world)
    session_id = await world.sign_in(user)
    bare = world.service(world.hasher)
    assert bare.revokes_sessions is False
    assert await bare.disable(user.id, actor="cli:root") is None
    assert await world.sessions.get(session_id) is not None  # out of reach: the CLI says so
    (event,) = await world.events("user.disabled")
    assert json.loads(event.details) == {"sessions_revoked": "unknown"}


async def _give_factors(world: World, user_id: int) -> None:
    now = world.clock.now()
    async with world.db.session() as session:
        session.add_all(
            [
                TotpCredential(user_id=user_id, name="Phone", secret_enc="ciphertext", confirmed=True,
                               last_step=0, created_at=now, last_used_at=None),
                TotpCredential(user_id=user_id, name="Old phone", secret_enc="ciphertext", confirmed=False,
                               last_step=0, created_at=now, last_used_at=None),
                WebAuthnCredential(user_id=user_id, name="YubiKey", credential_id=f"cred-{user_id}".encode(),
                                   public_key=b"pk", sign_count=0, transports="usb", aaguid="",
                                   discoverable=False, backed_up=False, user_verified=True,
                                   created_at=now, last_used_at=now),
                *[RecoveryCode(user_id=user_id, batch="b1", position=i, code_hash=f"h{i}", created_at=now,
                               used_at=now if i == 0 else None) for i in range(4)],
            ]
        )  # fmt: skip
        await session.commit()


async def _factor_rows(world: World, user_id: int) -> tuple[int, int, int]:
    async with world.db.session() as session:
        counts = []
        for model in (TotpCredential, WebAuthnCredential, RecoveryCode):
            counts.append(
                await session.scalar(select(func.count(model.id)).where(model.user_id == user_id)) or 0
            )
        return counts[0], counts[1], counts[2]


async def test_list_and_factors(world: World) -> None:
    alice = await _alice(world)
    bob = await world.accounts.create(username="Bob", password=None, actor="admin:root")
    await _give_factors(world, alice.id)
    summaries = await world.accounts.list(limit=10, offset=0)
    assert [s.username for s in summaries] == ["alice", "bob"]
    a, b = summaries
    assert (a.totp, a.webauthn, a.recovery_codes_left, a.has_password, a.roles) == (
        1,
        1,
        3,
        True,
        ("dev", "ops"),
    )
    assert (b.totp, b.webauthn, b.recovery_codes_left, b.has_password, b.id) == (0, 0, 0, False, bob.id)
    assert a.created_at == world.clock.now()
    assert [s.username for s in await world.accounts.list(limit=1, offset=1)] == ["bob"]

    factors = await world.accounts.factors(alice.id)
    assert [(f.kind, f.name, f.confirmed) for f in factors.totp] == [
        ("totp", "Phone", True),
        ("totp", "Old phone", False),
    ]
    assert [(f.name, f.last_used_at) for f in factors.webauthn] == [("YubiKey", world.clock.now())]
    assert (factors.recovery_codes_left, factors.recovery_codes_total) == (3, 4)


async def test_reset_mfa_removes_every_factor(world: World) -> None:
    alice = await _alice(world)
    bob = await world.accounts.create(username="bob", password=None, actor="admin:root")
    await _give_factors(world, alice.id)
    await _give_factors(world, bob.id)
    # The sessions the removed factors elevated end with them; nobody else's do.
    sessions = [await world.sign_in(alice) for _ in range(2)]
    bobs = await world.sign_in(bob)
    removed = await world.accounts.reset_mfa(alice.id, actor="admin:root")
    assert removed == {"totp": 2, "webauthn": 1, "recovery_codes": 4, "sessions": 2}
    assert await _factor_rows(world, alice.id) == (0, 0, 0)
    assert await _factor_rows(world, bob.id) == (2, 1, 4)  # nobody else's
    for session_id in sessions:
        assert await world.sessions.get(session_id) is None
    assert await world.sessions.get(bobs) is not None
    (event,) = await world.events("user.mfa_reset")
    assert event.subject == "alice"
    assert json.loads(event.details) == {**removed, "sessions_revoked": 2}
    # The password still works; the account is not disabled.
    await world.accounts.authenticate("alice", PASSWORD, ip=IP)


async def test_delete_cascades_and_revokes(world: World) -> None:
    alice = await _alice(world)
    await _give_factors(world, alice.id)
    sessions = [await world.sign_in(alice) for _ in range(2)]
    assert await world.accounts.delete(alice.id, actor="admin:root") == 2
    for session_id in sessions:
        assert await world.sessions.get(session_id) is None
    assert await world.accounts.get(alice.id) is None
    assert await world.accounts.find("alice") is None
    assert await _factor_rows(world, alice.id) == (0, 0, 0)
    await _failure(world, "alice", PASSWORD)
    (event,) = await world.events("user.deleted")
    assert (event.actor, event.subject) == ("admin:root", "alice")
    # The audit trail outlives the account.
    assert await world.events("user.created") != []
    # The name is free again.
    await _alice(world)


async def test_unknown_ids(world: World) -> None:
    assert await world.accounts.get(4242) is None
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: world.accounts.disable(4242, actor="admin:root"),
        lambda: world.accounts.enable(4242, actor="admin:root"),
        lambda: world.accounts.delete(4242, actor="admin:root"),
        lambda: world.accounts.reset_mfa(4242, actor="admin:root"),
        lambda: world.accounts.set_password(4242, OTHER_PASSWORD, actor="admin:root"),
        lambda: world.accounts.factors(4242),
    ]
    for call in calls:
        with pytest.raises(UnknownAccount) as info:
            await call()
        assert (info.value.status, info.value.reason) == (404, "unknown-account")


@pytest.mark.parametrize(
    "name", ["system", "Anonymous", " policy ", "203.0.113.7", "inc-3f9a1c2b", "PR-ABCDEFGH23"]
)
async def test_no_account_may_take_a_name_the_gateway_writes_for_itself(world: World, name: str) -> None:
    """An account called ``system`` would own the records the gateway writes as ``system`` (every
    account lock, with the attacker's address) in its export, and blank them by erasing itself; one
    named like an address, an incident or a privacy request, the records about that (an attack run's
    account ``203.0.113.7`` exported an admin's block of the address and erased it)."""
    with pytest.raises(InvalidAccount, match="audit trail"):
        await world.accounts.create(username=name, password=None, actor="admin:root")
