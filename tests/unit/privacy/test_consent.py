"""Consents and objections over the real stores (SQLite and PostgreSQL): records, history, the audit
trail, and the opt-out of the person's live sessions following every change."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field

import msgspec.structs
import pytest
from sqlalchemy import func, select, update

from gateway.audit.trail import AuditLog
from gateway.clock import FakeClock
from gateway.errors import BadRequest
from gateway.identity.accounts import AccountService, UnknownAccount
from gateway.identity.levels import AuthLevel, Factor, FactorUse
from gateway.identity.models import User
from gateway.identity.passwords import PasswordHasher
from gateway.identity.regulation import Regulator
from gateway.identity.sessions import Session, SessionStore
from gateway.privacy.consent import (
    BadDecision,
    Consents,
    NotConsentBased,
    NotObjectable,
    UnknownPurpose,
    purpose_named,
)
from gateway.privacy.models import ConsentRecord
from gateway.privacy.purposes import GEOLOCATION, POLICY_ANALYTICS
from gateway.settings.schema import (
    DEFAULT_PURPOSES,
    Duration,
    PasswordSettings,
    Purpose,
    RegulationSettings,
    SessionSettings,
)
from gateway.store.db import Database
from gateway.store.fast import MemoryFastState

FAST_ARGON = PasswordSettings(memory_kib=1024, time_cost=1, parallelism=1, min_length=12)
PASSWORD = "amber quarry lantern voyage"
NOTICE = "We send a monthly mail about new features. Unsubscribe with one click."
NEWSLETTER = Purpose(name="newsletter", title="Newsletter", notice=NOTICE, version=1)
BILLING = Purpose(name="billing", title="Billing", notice="Invoices.", basis="contract")


@dataclass
class World:
    db: Database
    clock: FakeClock
    audit: AuditLog
    sessions: SessionStore
    accounts: AccountService
    consents: Consents
    purposes: list[Purpose] = field(default_factory=list)

    async def user(self, name: str = "alice") -> User:
        return await self.accounts.create(username=name, password=PASSWORD, actor="test")

    async def sign_in(self, user: User) -> tuple[str, Session]:
        fresh = await self.accounts.get(user.id)
        assert fresh is not None
        return await self.sessions.create(
            user_id=user.id,
            username=user.username,
            level=AuthLevel.ONE_FACTOR,
            factors=(FactorUse(Factor.PASSWORD, self.clock.time()),),
            roles=(),
            ip="192.0.2.1",
            user_agent="pytest",
            host="auth.example.com",
            optout=await self.consents.optout_of(fresh),
        )

    async def optout_now(self, session_id: str) -> tuple[str, ...]:
        session = await self.sessions.get(session_id)
        assert session is not None
        return session.optout

    async def details(self, kind: str) -> list[dict[str, object]]:
        return [json.loads(e.details) for e in await self.audit.events(kind=kind)]

    def bump(self, name: str) -> Purpose:
        """A new version of a purpose's notice, as a reload brings it."""
        for i, purpose in enumerate(self.purposes):
            if purpose.name == name:
                self.purposes[i] = msgspec.structs.replace(purpose, version=purpose.version + 1)
                return self.purposes[i]
        raise AssertionError(name)


@pytest.fixture
def world(database: Database, clock: FakeClock) -> World:
    audit = AuditLog(database, clock=clock)
    fast = MemoryFastState(clock=clock)
    sessions = SessionStore(
        fast, SessionSettings(idle_timeout=Duration(1800), lifetime=Duration(3600)), clock
    )
    regulator = Regulator(fast, lambda: RegulationSettings(), audit, clock)
    accounts = AccountService(
        database, PasswordHasher(FAST_ARGON), regulator, audit, clock, sessions=sessions
    )
    purposes = [*DEFAULT_PURPOSES, NEWSLETTER, BILLING]
    consents = Consents(database, audit, sessions, purposes=lambda: purposes, clock=clock)
    return World(database, clock, audit, sessions, accounts, consents, purposes)


async def test_a_new_person_is_asked_and_opted_out_until_they_answer(world: World) -> None:
    alice = await world.user()
    assert [p.name for p in await world.consents.pending(alice.id)] == ["newsletter"]
    _, session = await world.sign_in(alice)
    assert session.optout == ("newsletter",)


async def test_granting_records_the_version_and_reaches_the_live_session(world: World) -> None:
    alice = await world.user()
    session_id, _ = await world.sign_in(alice)
    world.clock.advance(5)
    view = await world.consents.record(alice.id, NEWSLETTER, "granted", "sign-in prompt", actor="user:alice")
    assert (view.purpose, view.version, view.decision, view.method) == (
        "newsletter",
        1,
        "granted",
        "sign-in prompt",
    )
    assert view.at == world.clock.now()
    assert await world.optout_now(session_id) == ()
    assert await world.consents.pending(alice.id) == ()
    [event] = await world.audit.events(kind="privacy.consent.granted")
    assert (event.actor, event.subject) == ("user:alice", "alice")
    assert json.loads(event.details) == {"purpose": "newsletter", "version": 1, "method": "sign-in prompt"}
    # The notice is what was agreed to, but the trail names it by version, never by its text.
    assert "monthly" not in event.details


async def test_withdrawal_is_one_call_and_the_history_keeps_every_answer(world: World) -> None:
    alice = await world.user()
    session_id, _ = await world.sign_in(alice)
    await world.consents.record(alice.id, NEWSLETTER, "granted", "sign-in prompt", actor="user:alice")
    world.clock.advance(60)
    await world.consents.record(alice.id, NEWSLETTER, "withdrawn", "api", actor="user:alice")
    assert await world.optout_now(session_id) == ("newsletter",)
    assert [v.decision for v in await world.consents.history(alice.id)] == ["granted", "withdrawn"]
    current = await world.consents.current(alice.id)
    assert current["newsletter"].decision == "withdrawn"
    assert await world.details("privacy.consent.withdrawn") == [
        {"purpose": "newsletter", "version": 1, "method": "api"}
    ]
    # Withdrawn is an answer: not asked again until the notice changes.
    assert await world.consents.pending(alice.id) == ()


async def test_a_new_version_of_the_notice_is_asked_again_and_not_processed_meanwhile(world: World) -> None:
    alice = await world.user()
    await world.consents.record(alice.id, NEWSLETTER, "granted", "sign-in prompt", actor="user:alice")
    _, before = await world.sign_in(alice)
    assert before.optout == ()
    v2 = world.bump("newsletter")
    assert [p.version for p in await world.consents.pending(alice.id)] == [2]
    _, after = await world.sign_in(alice)
    assert after.optout == ("newsletter",)
    await world.consents.record(alice.id, v2, "granted", "sign-in prompt", actor="user:alice")
    assert [(v.version, v.decision) for v in await world.consents.history(alice.id)] == [
        (1, "granted"),
        (2, "granted"),
    ]
    assert await world.consents.pending(alice.id) == ()


async def test_an_answer_that_is_not_one_changes_nothing(world: World) -> None:
    alice = await world.user()
    session_id, _ = await world.sign_in(alice)
    with pytest.raises(BadDecision) as caught:
        await world.consents.record(alice.id, NEWSLETTER, "maybe", "api", actor="user:alice")
    assert 400 <= caught.value.status < 500
    with pytest.raises(NotConsentBased) as conflict:
        await world.consents.record(alice.id, DEFAULT_PURPOSES[0], "granted", "api", actor="user:alice")
    assert conflict.value.status == 409
    assert await world.consents.history(alice.id) == []
    assert await world.audit.events(kind="privacy.consent.granted") == []
    assert await world.optout_now(session_id) == ("newsletter",)


async def test_an_unknown_purpose_or_account_is_refused(world: World) -> None:
    with pytest.raises(UnknownPurpose) as caught:
        world.consents.purpose("nope")
    assert isinstance(caught.value, BadRequest)
    assert caught.value.status == 422
    assert purpose_named(world.purposes, "newsletter") is NEWSLETTER
    with pytest.raises(UnknownAccount):
        await world.consents.record(999, NEWSLETTER, "granted", "api", actor="admin:root")
    with pytest.raises(UnknownAccount):
        await world.consents.object(999, DEFAULT_PURPOSES[1], method="api", actor="admin:root")
    async with world.db.session() as session:
        assert await session.scalar(select(func.count()).select_from(ConsentRecord)) == 0


async def test_objecting_stops_the_purpose_in_every_live_session(world: World) -> None:
    alice = await world.user()
    await world.consents.record(alice.id, NEWSLETTER, "granted", "sign-in prompt", actor="user:alice")
    first, _ = await world.sign_in(alice)
    second, _ = await world.sign_in(alice)
    analytics = world.consents.purpose(POLICY_ANALYTICS)
    assert await world.consents.object(alice.id, analytics, method="api", actor="user:alice")
    assert await world.optout_now(first) == (POLICY_ANALYTICS,)
    assert await world.optout_now(second) == (POLICY_ANALYTICS,)
    stored = await world.accounts.get(alice.id)
    assert stored is not None
    assert stored.objections == POLICY_ANALYTICS
    assert await world.details("privacy.objection.added") == [
        {"purpose": POLICY_ANALYTICS, "version": 1, "method": "api"}
    ]
    # Objecting again is no change: nothing more is recorded.
    assert not await world.consents.object(alice.id, analytics, method="api", actor="user:alice")
    assert len(await world.audit.events(kind="privacy.objection.added")) == 1
    assert await world.consents.withdraw_objection(alice.id, analytics, method="api", actor="admin:bob")
    assert await world.optout_now(first) == ()
    [event] = await world.audit.events(kind="privacy.objection.withdrawn")
    assert (event.actor, event.subject) == ("admin:bob", "alice")


async def test_a_purpose_that_cannot_be_objected_to_is_refused(world: World) -> None:
    alice = await world.user()
    for purpose in (BILLING, NEWSLETTER):
        with pytest.raises(NotObjectable) as caught:
            await world.consents.object(alice.id, purpose, method="api", actor="user:alice")
        assert caught.value.status == 409
        assert isinstance(caught.value, BadRequest)
    stored = await world.accounts.get(alice.id)
    assert stored is not None
    assert stored.objections == ""
    assert await world.audit.events(kind="privacy.objection.added") == []


async def test_concurrent_objections_are_both_kept(world: World) -> None:
    alice = await world.user()
    geo, analytics = world.consents.purpose(GEOLOCATION), world.consents.purpose(POLICY_ANALYTICS)
    await asyncio.gather(
        world.consents.object(alice.id, geo, method="api", actor="user:alice"),
        world.consents.object(alice.id, analytics, method="api", actor="user:alice"),
    )
    stored = await world.accounts.get(alice.id)
    assert stored is not None
    assert stored.objections == "geolocation policy_analytics"


async def test_restriction_applied_stops_every_optional_purpose(world: World) -> None:
    alice = await world.user()
    await world.consents.record(alice.id, NEWSLETTER, "granted", "sign-in prompt", actor="user:alice")
    session_id, _ = await world.sign_in(alice)
    async with world.db.session() as session:
        await session.execute(update(User).where(User.id == alice.id).values(restricted=True))
        await session.commit()
    assert await world.consents.apply_optout(alice.id) == 1
    assert await world.optout_now(session_id) == ("geolocation", "newsletter", "policy_analytics")
    # Nothing left to change: the second application writes nothing.
    assert await world.consents.apply_optout(alice.id) == 0
    assert await world.consents.apply_optout(999) == 0


async def test_allows_answers_for_a_username(world: World) -> None:
    alice, bob = await world.user("alice"), await world.user("bob")
    await world.consents.object(
        alice.id, world.consents.purpose(GEOLOCATION), method="api", actor="user:alice"
    )
    assert not await world.consents.allows("alice", GEOLOCATION)
    assert await world.consents.allows("alice", POLICY_ANALYTICS)
    assert await world.consents.allows("bob", GEOLOCATION)
    assert not await world.consents.allows("nobody", GEOLOCATION)
    assert bob.id != alice.id


async def test_an_unreadable_decision_counts_as_refused(world: World) -> None:
    alice = await world.user()
    async with world.db.session() as session:
        session.add(
            ConsentRecord(
                user_id=alice.id,
                purpose="newsletter",
                version=1,
                decision="yes",
                at=world.clock.now(),
                method="x",
            )
        )
        await session.commit()
    assert (await world.consents.current(alice.id))["newsletter"].decision == "refused"
    _, session_ = await world.sign_in(alice)
    assert session_.optout == ("newsletter",)
