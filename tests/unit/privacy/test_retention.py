"""The retention engine over the real stores (SQLite and PostgreSQL), with time moved by a FakeClock.

A closed registration is still there at 179 days (and the plan says when it goes) and erased at 181,
with the chain verifying and the name in no audit row; person and class holds stop each purge and the
next run after their release does it; removed content goes at its expiry unless held; old audit
records lose their personal fields and stay on a verifying chain; incidents and register rows are
pruned; two engines on two connections racing for one period do the work once.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from gateway.audit.chain import verify_database
from gateway.audit.erase import EXPIRED_PSEUDONYM
from gateway.audit.trail import AuditLog
from gateway.clock import FakeClock
from gateway.crypto.keyring import Keyring
from gateway.identity.accounts import AccountService
from gateway.identity.models import User
from gateway.identity.passwords import PasswordHasher
from gateway.identity.regulation import Regulator
from gateway.identity.sessions import SessionStore
from gateway.privacy import chores
from gateway.privacy.consent import Consents
from gateway.privacy.holds import DATA_CLASSES
from gateway.privacy.models import PrivacyRequest, RemovedContent, RetentionRun
from gateway.privacy.register import Channel, Kind, Status
from gateway.privacy.retention import VERBS, Plan, Retention, RunReport, period_of
from gateway.privacy.retention_rules import RegistrationRule
from gateway.privacy.service import Privacy
from gateway.response.personal_data import CasePersonalData
from gateway.settings.schema import (
    Duration,
    PasswordSettings,
    PrivacySettings,
    RegulationSettings,
    RetentionSettings,
    SessionSettings,
)
from gateway.store.db import Database
from gateway.store.fast import MemoryFastState
from gateway.threat.incidents import Incident, IncidentStore
from tests.support.wait import wait_until_async

FAST_ARGON = PasswordSettings(memory_kib=1024, time_cost=1, parallelism=1, min_length=12)
PASSWORD = "amber quarry lantern voyage"
IP = "203.0.113.77"
SETTINGS = PrivacySettings()
DAY = 86400.0
START = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)


@dataclass
class World:
    db: Database
    clock: FakeClock
    keyring: Keyring
    audit: AuditLog
    fast: MemoryFastState
    accounts: AccountService
    privacy: Privacy
    incidents: IncidentStore
    settings: PrivacySettings

    def engine(self, db: Database | None = None) -> Retention:
        """A retention engine; on ``db`` (another connection pool) with its own services."""
        privacy = self.privacy
        audit = self.audit
        if db is not None:
            audit = AuditLog(db, clock=self.clock, keyring=self.keyring)
            accounts = AccountService(
                db, PasswordHasher(FAST_ARGON), _regulator(self.fast, audit, self.clock), audit, self.clock
            )
            privacy = _privacy(db, self.keyring, accounts, None, audit, self.clock)
        return Retention(
            db or self.db,
            privacy,
            keyring=self.keyring,
            audit=audit,
            incidents=self.incidents,
            settings=lambda: self.settings,
            clock=self.clock,
        )

    async def person(self, name: str) -> User:
        user = await self.accounts.create(
            username=name,
            password=PASSWORD,
            email=f"{name}@example.com",
            display_name=name.title(),
            actor="admin:root",
        )
        await self.accounts.authenticate(name, PASSWORD, ip=IP)
        return user

    async def close(self, user: User) -> None:
        await self.privacy.close(
            user,
            settings=self.settings,
            channel=Channel.PORTAL,
            actor=f"user:{user.username}",
            verified_by="s",
        )

    async def run(self) -> RunReport:
        report = await self.engine().run(self.clock.now(), "test:1")
        assert report is not None
        return report

    async def audit_text(self) -> str:
        async with self.db.engine.connect() as conn:
            rows = (await conn.execute(text("SELECT * FROM audit_events"))).all()
        return "\n".join(" ".join(str(v) for v in row) for row in rows)

    async def verifies(self) -> bool:
        report = await verify_database(self.db, keyring=self.keyring)
        assert report.ok, report.problem
        return True


def _privacy(
    db: Database,
    keyring: Keyring,
    accounts: AccountService,
    sessions: SessionStore | None,
    audit: AuditLog,
    clock: FakeClock,
) -> Privacy:
    return Privacy(
        db,
        keyring=keyring,
        accounts=accounts,
        sessions=sessions,
        audit=audit,
        consents=Consents(db, audit, sessions, purposes=lambda: SETTINGS.purposes, clock=clock),
        incident_records=CasePersonalData(db),
        clock=clock,
    )


def _regulator(fast: MemoryFastState, audit: AuditLog, clock: FakeClock) -> Regulator:
    return Regulator(
        fast,
        lambda: RegulationSettings(free_attempts=3, max_failures=5, lock_time=Duration(900)),
        audit,
        clock,
    )


@pytest.fixture
async def world(database: Database, tmp_path: Path) -> AsyncIterator[World]:
    clock = FakeClock(START.timestamp())
    fast = MemoryFastState(clock=clock)
    keyring = Keyring.create(tmp_path / "keyring.json")
    audit = AuditLog(database, clock=clock, keyring=keyring)
    sessions = SessionStore(fast, SessionSettings(), clock)
    accounts = AccountService(
        database, PasswordHasher(FAST_ARGON), _regulator(fast, audit, clock), audit, clock, sessions=sessions
    )
    privacy = _privacy(database, keyring, accounts, sessions, audit, clock)
    yield World(database, clock, keyring, audit, fast, accounts, privacy, IncidentStore(fast), SETTINGS)
    await fast.close()


def _class(plan: Plan | RunReport, name: str) -> dict[str, object]:
    if isinstance(plan, Plan):
        (found,) = [c.to_json() for c in plan.classes if c.data_class == name]
        return found
    (run,) = [c.to_json() for c in plan.classes if c.data_class == name]
    return run


# -- registration --------------------------------------------------------------------------------------


async def test_a_closed_registration_stays_179_days_and_is_erased_at_181(world: World) -> None:
    alice = await world.person("alice")
    await world.close(alice)
    closed_at = world.clock.now()

    world.clock.advance(179 * DAY)
    plan = await world.engine().plan(world.clock.now())
    registration = _class(plan, "registration")
    assert registration["due_now"] == 0
    assert registration["next"] == [
        {"what": "alice", "due_at": (closed_at + timedelta(days=180)).isoformat()}
    ]
    report = await world.run()
    assert _class(report, "registration")["done"] == 0
    assert await world.accounts.get(alice.id) is not None

    world.clock.advance(2 * DAY)
    assert _class(await world.engine().plan(world.clock.now()), "registration")["due_now"] == 1
    report = await world.run()
    assert report.ok
    assert _class(report, "registration")["done"] == 1
    assert await world.accounts.get(alice.id) is None
    assert await world.verifies()
    trail = await world.audit_text()
    assert "alice" not in trail
    assert IP not in trail
    # The erasure is in the register, by the rule, under the pseudonym only; no archive was kept.
    async with world.db.session() as s:
        rows = (await s.scalars(select(PrivacyRequest).where(PrivacyRequest.kind == "erasure"))).all()
        archives = (await s.scalars(select(RemovedContent))).all()
    (erasure,) = rows
    assert erasure.status == Status.COMPLETED
    assert erasure.channel == Channel.SYSTEM
    assert erasure.subject.startswith("[erased:")
    assert "closed 181 days ago" in erasure.outcome
    assert archives == []
    (event,) = await world.audit.events(kind="privacy.erased")
    assert event.actor == "system:retention"
    assert json.loads(event.details)["reason"] == "registration closed 181 days ago"
    # One run event per run, with counts and no person.
    events = await world.audit.events(kind="privacy.retention_run")
    done = sorted(json.loads(e.details)["classes"]["registration"]["done"] for e in events)
    assert done == [0, 1]


async def test_a_registration_reopened_or_replaced_after_the_run_listed_it_is_not_erased(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An attack run: the person listed last was deleted mid-run and a new account made, which SQLite
    gave the deleted id; the run erased the newcomer by that id. One reopened meanwhile is kept too,
    and the run goes on with the others."""
    first = await world.person("first")
    reopened = await world.person("reopened")
    victim = await world.person("victim")
    for user in (first, reopened, victim):
        await world.close(user)
    world.clock.advance(181 * DAY)
    listed = RegistrationRule.survey
    newcomers: list[User] = []

    async def listed_then_changed(rule: RegistrationRule, *args: object) -> object:
        survey = await listed(rule, *args)  # type: ignore[arg-type]
        await world.accounts.reopen(reopened.id, actor="admin:root")
        await world.accounts.delete(victim.id, actor="admin:root")
        newcomers.append(await world.person("bystander"))
        return survey

    monkeypatch.setattr(RegistrationRule, "survey", listed_then_changed)
    report = await world.run()
    assert _class(report, "registration")["done"] == 1
    assert await world.accounts.get(first.id) is None
    assert await world.accounts.get(reopened.id) is not None
    (bystander,) = newcomers
    kept = await world.accounts.get(bystander.id)
    assert kept is not None
    assert kept.username == "bystander"
    async with world.db.session() as s:
        rows = (await s.scalars(select(PrivacyRequest).where(PrivacyRequest.kind == "erasure"))).all()
    # The replaced one has no row (its account was gone when the run came to it), the reopened one a
    # refusal.
    assert sorted(r.status for r in rows) == sorted([Status.COMPLETED, Status.REJECTED])


@pytest.mark.parametrize("scope", ["person", "class"])
async def test_a_hold_stops_the_purge_until_released(world: World, scope: str) -> None:
    alice = await world.person("alice")
    await world.close(alice)
    hold = {"username": "alice"} if scope == "person" else {"data_class": "registration"}
    await world.privacy.holds.place("COURT-2027-4", reason="order", by="cli:counsel", **hold)

    world.clock.advance(181 * DAY)
    plan = _class(await world.engine().plan(world.clock.now()), "registration")
    assert plan["due_now"] == 0
    assert plan["held"] == {"COURT-2027-4": 1}
    report = await world.run()
    assert _class(report, "registration") == {
        "done": 0,
        "action": "erased",
        "held": {"COURT-2027-4": 1},
        "error": None,
    }
    assert await world.accounts.get(alice.id) is not None
    # Another run in the same period is not a run at all; a forced one still respects the hold.
    assert await world.engine().run(world.clock.now(), "test:2") is None
    forced = await world.engine().run(world.clock.now(), "cli:op", force=True)
    assert forced is not None
    assert forced.period == period_of(world.clock.now(), DAY) + "/manual-1"
    assert await world.accounts.get(alice.id) is not None

    await world.privacy.holds.release("COURT-2027-4", by="cli:counsel")
    world.clock.advance(DAY)
    report = await world.run()
    assert _class(report, "registration")["done"] == 1
    assert await world.accounts.get(alice.id) is None
    assert await world.verifies()


async def test_the_plan_lists_a_held_erasure_once_its_hold_is_released(world: World) -> None:
    carol = await world.person("carol")
    await world.privacy.holds.place("COURT-2027-9", reason="order", by="cli:counsel", username="carol")
    held = await world.privacy.erase(
        carol, settings=world.settings, channel=Channel.ADMIN, actor="admin:root", verified_by="ID checked"
    )
    assert held.status == Status.ON_HOLD
    assert (await world.engine().plan(world.clock.now())).resumable == ()

    await world.privacy.holds.release("COURT-2027-9", by="cli:counsel")
    assert (await world.engine().plan(world.clock.now())).resumable == (held.ref,)
    report = await world.run()
    assert report.resumed == 1
    assert await world.accounts.get(carol.id) is None
    assert (await world.engine().plan(world.clock.now())).resumable == ()


# -- removed content ---------------------------------------------------------------------------------------


async def _erase(world: World, name: str) -> None:
    user = await world.person(name)
    await world.privacy.erase(
        user, settings=world.settings, channel=Channel.ADMIN, actor="admin:root", verified_by="ID checked"
    )


async def _archives(world: World) -> int:
    async with world.db.session() as s:
        return int((await s.execute(select(func.count()).select_from(RemovedContent))).scalar_one())


async def test_removed_content_goes_at_its_expiry_and_not_under_a_hold(world: World) -> None:
    await _erase(world, "bob")
    await _erase(world, "carol")
    # An order about carol arrives after her erasure: it finds her archive by her subject key.
    await world.privacy.holds.place("SUBPOENA-9", reason="investigation", by="cli:counsel", username="carol")
    assert await _archives(world) == 2

    world.clock.advance(179 * DAY)
    assert _class(await world.run(), "removed_content")["done"] == 0
    assert await _archives(world) == 2

    world.clock.advance(2 * DAY)
    report = await world.run()
    assert _class(report, "removed_content") == {
        "done": 1,
        "action": "deleted",
        "held": {"SUBPOENA-9": 1},
        "error": None,
    }
    async with world.db.session() as s:
        (left,) = (await s.scalars(select(RemovedContent))).all()
    _, opened = await world.privacy.removed.read(left.ref)
    assert opened is not None
    account = opened["account"]
    assert isinstance(account, dict)
    assert account["username"] == "carol"

    await world.privacy.holds.release("SUBPOENA-9", by="cli:counsel")
    world.clock.advance(DAY)
    assert _class(await world.run(), "removed_content")["done"] == 1
    assert await _archives(world) == 0


@pytest.mark.parametrize("scope", ["person", "registration"])
async def test_what_a_correction_under_a_hold_replaced_stays_while_the_hold_does(
    world: World, scope: str
) -> None:
    """Also under a class hold on registration: a re-attack run saw the value sealed under one go at
    its expiry while the hold stood."""
    bob = await world.person("bob")
    await world.privacy.holds.place(
        "ORDER-77",
        reason="preservation",
        by="cli:counsel",
        username="bob" if scope == "person" else None,
        data_class="registration" if scope == "registration" else None,
    )
    await world.privacy.rectify(
        bob,
        email="",
        settings=world.settings,
        channel=Channel.PORTAL,
        actor="user:bob",
        verified_by="signed-in session",
    )
    world.clock.advance(181 * DAY)
    report = await world.run()
    assert _class(report, "removed_content")["held"] == {"ORDER-77": 1}
    assert await _archives(world) == 1
    await world.privacy.holds.release("ORDER-77", by="cli:counsel")
    world.clock.advance(DAY)
    assert _class(await world.run(), "removed_content")["done"] == 1
    assert await _archives(world) == 0


async def test_a_hold_placed_after_a_keyring_rotation_still_keeps_the_archive(
    world: World, tmp_path: Path
) -> None:
    await _erase(world, "bob")
    world.keyring.rotate(tmp_path / "keyring.json")
    # The hold's subject key is under the new key, the archive's under the old one.
    await world.privacy.holds.place("ORDER-5", reason="police request", by="cli:counsel", username="bob")
    world.clock.advance(181 * DAY)
    assert _class(await world.run(), "removed_content")["held"] == {"ORDER-5": 1}
    assert await _archives(world) == 1


# -- audit events --------------------------------------------------------------------------------------


async def test_old_audit_records_lose_their_personal_fields_and_the_chain_verifies(world: World) -> None:
    await world.person("dave")
    world.clock.advance(300 * DAY)
    await world.person("erin")
    world.clock.advance(101 * DAY)  # dave's records are 401 days old, erin's 101

    plan = _class(await world.engine().plan(world.clock.now()), "audit_events")
    assert isinstance(plan["due_now"], int)
    assert plan["due_now"] >= 2
    report = await world.run()
    assert _class(report, "audit_events")["done"] == plan["due_now"]
    assert await world.verifies()
    trail = await world.audit_text()
    assert "dave" not in trail
    assert "erin" in trail
    async with world.db.engine.connect() as conn:
        kinds = (
            await conn.execute(
                text("SELECT kind, subject, ip FROM audit_events WHERE kind = 'user.created' ORDER BY seq")
            )
        ).all()
    assert (kinds[0][1], kinds[0][2]) == (f"[erased:{EXPIRED_PSEUDONYM}]", f"[erased:{EXPIRED_PSEUDONYM}]")
    assert kinds[1][1] == "erin"
    # The next day's run finds nothing more to erase for dave, and writes no erasure record for it.
    erasures = len(await world.audit.events(kind="privacy.audit_erased"))
    world.clock.advance(DAY)
    assert _class(await world.run(), "audit_events")["done"] == 0
    assert len(await world.audit.events(kind="privacy.audit_erased")) == erasures


async def test_holds_keep_old_audit_records(world: World) -> None:
    await world.person("dave")
    await world.person("frank")
    await world.privacy.holds.place("CASE-1", reason="litigation", by="cli:counsel", username="dave")
    async with world.db.engine.connect() as conn:
        naming_dave = (
            await conn.execute(
                text("SELECT count(*) FROM audit_events WHERE subject = 'dave' OR actor = 'user:dave'")
            )
        ).scalar_one()
    assert naming_dave >= 2  # created, signed in
    world.clock.advance(401 * DAY)
    report = await world.run()
    result = _class(report, "audit_events")
    assert result["held"] == {"CASE-1": naming_dave}
    assert isinstance(result["done"], int)
    assert result["done"] >= 2
    trail = await world.audit_text()
    assert "dave" in trail
    assert "frank" not in trail
    assert await world.verifies()

    # A class hold keeps them all.
    await world.person("grace")
    await world.privacy.holds.place(
        "REGULATOR-7", reason="inquiry", by="cli:counsel", data_class="audit_events"
    )
    world.clock.advance(401 * DAY)
    report = await world.run()
    assert _class(report, "audit_events")["done"] == 0
    assert _class(report, "audit_events")["held"]["REGULATOR-7"] >= 2  # type: ignore[index]
    assert "grace" in await world.audit_text()
    assert await world.verifies()


# -- incidents and the register ------------------------------------------------------------------------


async def test_incidents_and_register_rows_are_pruned(world: World) -> None:
    henry = await world.person("henry")
    done = await world.privacy.register.open(
        Kind.ACCESS, settings=world.settings, user_id=henry.id, subject="henry", channel=Channel.CLI
    )
    await world.privacy.register.complete(done.ref, outcome="exported")
    still_open = await world.privacy.register.open(
        Kind.ACCESS, settings=world.settings, user_id=henry.id, subject="henry", channel=Channel.CLI
    )
    world.clock.advance(3 * 365 * DAY + DAY)
    recent = await world.privacy.register.open(
        Kind.ACCESS, settings=world.settings, user_id=henry.id, subject="henry", channel=Channel.CLI
    )
    await world.privacy.register.reject(recent.ref, outcome="not verified")
    now = world.clock.time()
    await world.incidents.save(Incident("inc-0000000a", "spraying", now - 401 * DAY, ip=IP), new=True)
    await world.incidents.save(Incident("inc-0000000b", "spraying", now - 10 * DAY, ip=IP), new=True)

    plan = await world.engine().plan(world.clock.now())
    assert _class(plan, "incidents")["due_now"] == 1
    assert _class(plan, "privacy_requests")["due_now"] == 1
    report = await world.run()
    assert _class(report, "incidents")["done"] == 1
    assert _class(report, "privacy_requests")["done"] == 1
    assert [i.id for i in await world.incidents.latest()] == ["inc-0000000b"]
    refs = {r.ref for r in await world.privacy.register.find()}
    assert done.ref not in refs
    assert {still_open.ref, recent.ref} <= refs


async def test_a_class_hold_keeps_incidents(world: World) -> None:
    await world.privacy.holds.place("CERT-1", reason="forensics", by="cli:sec", data_class="incidents")
    now = world.clock.time()
    await world.incidents.save(Incident("inc-0000000c", "spraying", now - 500 * DAY), new=True)
    assert _class(await world.run(), "incidents") == {
        "done": 0,
        "action": "deleted",
        "held": {"CERT-1": 1},
        "error": None,
        "parts": {"detections": 0, "records": 0, "record_entries": 0},
    }
    assert await world.incidents.get("inc-0000000c") is not None


# -- once per period -------------------------------------------------------------------------------


async def test_two_engines_racing_for_one_period_do_the_work_once(world: World, migrated_url: str) -> None:
    alice = await world.person("alice")
    await world.close(alice)
    world.clock.advance(181 * DAY)
    other = Database.open(migrated_url, pool_size=2)
    try:
        first, second = world.engine(), world.engine(other)
        now = world.clock.now()
        reports = await asyncio.gather(first.run(now, "replica:a"), second.run(now, "replica:b"))
    finally:
        await other.close()
    ran = [r for r in reports if r is not None]
    assert len(ran) == 1
    assert _class(ran[0], "registration")["done"] == 1
    async with world.db.session() as s:
        runs = (await s.scalars(select(RetentionRun))).all()
    (row,) = runs
    assert row.period == period_of(now, DAY)
    assert row.finished_at is not None
    assert json.loads(row.summary)["classes"]["registration"]["done"] == 1
    assert row.runner == ran[0].runner
    assert len(await world.audit.events(kind="privacy.retention_run")) == 1
    assert len(await world.audit.events(kind="privacy.erased")) == 1
    assert await world.verifies()


def test_every_place_that_names_the_data_classes_names_the_same_ones(world: World) -> None:
    # The CLI spells them out (its parser imports no domain module): this keeps the copy true.
    from gateway.cli.privacy import _DATA_CLASSES

    assert _DATA_CLASSES == DATA_CLASSES
    assert tuple(VERBS) == DATA_CLASSES
    assert tuple(rule.data_class for rule in world.engine()._rules) == DATA_CLASSES


def test_period_keys() -> None:
    at = datetime(2026, 12, 1, 23, 59, tzinfo=UTC)
    assert period_of(at, DAY) == "2026-12-01"
    assert period_of(at, 6 * 3600) == "2026-12-01T18:00:00Z"
    assert period_of(at + timedelta(minutes=1), DAY) == "2026-12-02"


async def test_the_chores_loop_runs_retention_once_per_period(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice = await world.person("alice")
    await world.close(alice)
    world.clock.advance(181 * DAY)
    monkeypatch.setattr(chores, "FIRST_RUN_DELAY", 0.01)
    # Two workers' loops; each also schedules the next period, an hour of fake time away.
    world.settings = PrivacySettings(retention=RetentionSettings(interval=Duration(3600)))
    loops = [
        asyncio.create_task(chores.run_chores(world.privacy, lambda: world.settings, world.engine()))
        for _ in range(2)
    ]
    try:

        async def ran() -> bool:
            async with world.db.session() as s:
                row = (await s.scalars(select(RetentionRun))).first()
            return row is not None and row.finished_at is not None

        await wait_until_async(ran, timeout=20, what="the worker's retention run")
        assert await world.accounts.get(alice.id) is None
    finally:
        for loop in loops:
            loop.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
    async with world.db.session() as s:
        assert len((await s.scalars(select(RetentionRun))).all()) == 1
