"""The rights end to end over the real stores (SQLite and PostgreSQL): export against its schema,
rectification, restriction, closure, erasure with the audit chain still verifying and nothing
readable left, legal holds suspending an erasure, and overdue requests reported once.

Each limit is also attacked: a restricted or closed account tries to sign in again, an erased
person's name is searched in every column of every audit row, a held erasure is retried.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from sqlalchemy import select, text

from gateway.audit.chain import verify_database
from gateway.audit.trail import AuditLog, SecurityEvent
from gateway.clock import FakeClock
from gateway.crypto.keyring import Keyring
from gateway.identity.accounts import AccountExists, AccountService, SignInFailed, UnknownAccount
from gateway.identity.levels import AuthLevel, Factor, FactorUse
from gateway.identity.models import User
from gateway.identity.oidc.models import IdentityLink
from gateway.identity.passwords import PasswordHasher
from gateway.identity.regulation import Regulator
from gateway.identity.sessions import SessionStore
from gateway.privacy.consent import Consents
from gateway.privacy.export import SCHEMA_PATH
from gateway.privacy.models import PrivacyRequest, RemovedContent
from gateway.privacy.register import Channel, Kind, RequestNotPending, RequestView, Status, UnknownRequest
from gateway.privacy.removed import UnknownRemoved
from gateway.privacy.service import EmailNeedsAdmin, Privacy, ProviderOwned, TooManyExports
from gateway.response.personal_data import CasePersonalData
from gateway.settings.schema import (
    Duration,
    PasswordSettings,
    PrivacySettings,
    RegulationSettings,
    SessionSettings,
)
from gateway.store.db import Database
from gateway.store.fast import MemoryFastState

FAST_ARGON = PasswordSettings(memory_kib=1024, time_cost=1, parallelism=1, min_length=12)
PASSWORD = "amber quarry lantern voyage"
IP = "203.0.113.77"
SETTINGS = PrivacySettings()
SCHEMA = json.loads(SCHEMA_PATH.read_text())


@dataclass
class World:
    db: Database
    clock: FakeClock
    keyring: Keyring
    audit: AuditLog
    sessions: SessionStore
    accounts: AccountService
    privacy: Privacy
    fast: MemoryFastState

    async def alice(self) -> User:
        user = await self.accounts.create(
            username="alice",
            password=PASSWORD,
            email="alice@example.com",
            display_name="Alice L",
            actor="admin:root",
        )
        # Give her a trail: a sign-in from her address and a live session.
        await self.accounts.authenticate("alice", PASSWORD, ip=IP)
        await self.sessions.create(
            user_id=user.id,
            username=user.username,
            level=AuthLevel.ONE_FACTOR,
            factors=(FactorUse(Factor.PASSWORD, self.clock.time()),),
            roles=(),
            ip=IP,
            user_agent="Mozilla/5.0 Firefox/140.0",
            host="auth.example.com",
            email=user.email,
        )
        return user

    async def request(self, ref: str) -> PrivacyRequest:
        async with self.db.session() as s:
            row = (await s.scalars(select(PrivacyRequest).where(PrivacyRequest.ref == ref))).one()
        return row


@pytest.fixture
async def world(database: Database, tmp_path: Path) -> AsyncIterator[World]:
    clock = FakeClock(datetime(2026, 12, 1, tzinfo=UTC).timestamp())
    fast = MemoryFastState(clock=clock)
    keyring = Keyring.create(tmp_path / "keyring.json")
    audit = AuditLog(database, clock=clock, keyring=keyring)
    regulator = Regulator(
        fast,
        lambda: RegulationSettings(free_attempts=3, max_failures=5, lock_time=Duration(900)),
        audit,
        clock,
    )
    sessions = SessionStore(fast, SessionSettings(), clock)
    accounts = AccountService(
        database, PasswordHasher(FAST_ARGON), regulator, audit, clock, sessions=sessions
    )
    privacy = Privacy(
        database,
        keyring=keyring,
        accounts=accounts,
        sessions=sessions,
        audit=audit,
        consents=Consents(database, audit, sessions, purposes=lambda: SETTINGS.purposes, clock=clock),
        incident_records=CasePersonalData(database),
        clock=clock,
        fast=fast,
    )
    yield World(database, clock, keyring, audit, sessions, accounts, privacy, fast)
    await fast.close()


def _as_admin() -> dict[str, object]:
    return {
        "settings": SETTINGS,
        "channel": Channel.ADMIN,
        "actor": "admin:root",
        "verified_by": "called back on the number on file",
    }


def _as_portal(user: User) -> dict[str, object]:
    return {
        "settings": SETTINGS,
        "channel": Channel.PORTAL,
        "actor": f"user:{user.username}",
        "verified_by": "signed-in session",
    }


async def _requests(world: World) -> int:
    async with world.db.session() as s:
        return len((await s.scalars(select(PrivacyRequest))).all())


async def test_a_persons_own_exports_are_limited_per_window_and_a_refused_one_changes_nothing(
    world: World,
) -> None:
    """An export reads everything held about the person and is kept in the register for years: a
    script with a session (or a stolen one) must not take thousands (GDPR Art. 12(5))."""
    user = await world.alice()
    for _ in range(SETTINGS.export_limit):
        await world.privacy.export(user, **_as_portal(user))  # type: ignore[arg-type]
    recorded = await _requests(world)
    with pytest.raises(TooManyExports) as refused:
        await world.privacy.export(user, **_as_portal(user))  # type: ignore[arg-type]
    assert refused.value.status == 429
    assert "within an hour" in str(refused.value)
    assert await _requests(world) == recorded
    # An administrator acting for the person is not counted, and another person has their own count.
    await world.privacy.export(user, **_as_admin())  # type: ignore[arg-type]
    bob = await world.accounts.create(username="bob", password=PASSWORD, actor="admin:root")
    await world.privacy.export(bob, **_as_portal(bob))  # type: ignore[arg-type]
    # Signing in again does not reset it; the window's end does.
    world.clock.advance(float(SETTINGS.export_window) - 1)
    with pytest.raises(TooManyExports):
        await world.privacy.export(user, **_as_portal(user))  # type: ignore[arg-type]
    world.clock.advance(2)
    await world.privacy.export(user, **_as_portal(user))  # type: ignore[arg-type]


async def test_a_new_account_given_an_erased_ones_id_has_a_count_of_its_own(world: World) -> None:
    """A re-attack run: SQLite gives a deleted account's id to the next one, and the new person's first
    export was refused on the erased person's count (telling them a former account existed)."""
    user = await world.alice()
    for _ in range(SETTINGS.export_limit):
        await world.privacy.export(user, **_as_portal(user))  # type: ignore[arg-type]
    await world.privacy.erase(user, **_as_admin())  # type: ignore[arg-type]
    world.clock.advance(1)
    dave = await world.accounts.create(username="dave", password=PASSWORD, actor="admin:root")
    if world.db.backend == "sqlite":
        assert dave.id == user.id  # the reuse this is about (PostgreSQL's sequence never reuses)
    await world.privacy.export(dave, **_as_portal(dave))  # type: ignore[arg-type]


async def test_export_matches_its_schema_and_holds_no_secret(world: World) -> None:
    user = await world.alice()
    request, doc = await world.privacy.export(user, **_as_portal(user))  # type: ignore[arg-type]
    jsonschema.validate(doc, SCHEMA, format_checker=jsonschema.FormatChecker())
    assert doc["account"]["email"] == "alice@example.com"
    assert doc["sessions"][0]["ip"] == IP
    assert doc["sessions"][0]["browser"] == "Firefox"
    assert any(e["kind"] == "signin.password" for e in doc["audit_events"])
    blob = json.dumps(doc)
    assert "argon2" not in blob
    assert user.password_hash is not None
    assert user.password_hash not in blob
    # The request is in the register, completed, and in the trail.
    assert request.status == Status.COMPLETED
    assert request.kind == Kind.ACCESS
    assert request.completed_at is not None
    assert request.due_at == request.received_at + timedelta(days=30)
    (event,) = await world.audit.events(kind="privacy.access")
    assert json.loads(event.details)["request"] == request.ref


async def test_a_person_gets_and_erases_only_their_own_records(world: World) -> None:
    """The outside review's attack: records were matched by bare name, so a reused username got the
    earlier account's records (and a failed sign-in typed under the name before it existed), and an
    admin's address came with the records of what the admin did to the account. Erasing then blanked
    those records too. Now a person's records start with their account, and carry only their own
    address."""
    old = await world.accounts.create(
        username="bob", password=PASSWORD, email="bob@old.example", actor="admin:root"
    )
    await world.accounts.authenticate("bob", PASSWORD, ip="198.51.100.23")
    await world.accounts.delete(old.id, actor="admin:root")
    world.clock.advance(60)
    with pytest.raises(SignInFailed):
        await world.accounts.authenticate("bob", "a wrong guess from somewhere", ip="192.0.2.99")
    world.clock.advance(60)
    bob = await world.accounts.create(username="bob", password=PASSWORD, actor="admin:root")
    world.clock.advance(1)
    await world.audit.record("admin.user.password_change", actor="admin:carol", subject="bob", ip="10.9.8.7")
    await world.accounts.authenticate("bob", PASSWORD, ip=IP)

    _, doc = await world.privacy.export(bob, **_as_portal(bob))  # type: ignore[arg-type]
    blob = json.dumps(doc["audit_events"])
    for earlier in ("198.51.100.23", "192.0.2.99", "bob@old.example"):
        assert earlier not in blob
    assert IP in blob
    by_admin = [e for e in doc["audit_events"] if e["actor"] == "admin:carol"]
    assert by_admin
    assert [e["ip"] for e in by_admin] == [""] * len(by_admin)
    assert "10.9.8.7" not in blob

    await world.privacy.erase(bob, **_as_portal(bob))  # type: ignore[arg-type]
    trail = await _audit_text(world.db)
    for earlier in ("198.51.100.23", "192.0.2.99"):
        assert earlier in trail  # the other people's records are still whole
    assert IP not in trail


async def test_an_admins_export_holds_their_acts_not_the_other_peoples_data(world: World) -> None:
    """An attack run: an admin's own export held dave's email address from the record of the admin
    creating dave's account. The act is the admin's; the texts in it about dave are not."""
    admin = await world.accounts.create(username="root", password=PASSWORD, actor="admin:root")
    await world.accounts.create(
        username="dave", password=PASSWORD, email="dave@example.com", actor="user:root"
    )
    _, doc = await world.privacy.export(admin, **_as_portal(admin))  # type: ignore[arg-type]
    jsonschema.validate(doc, SCHEMA, format_checker=jsonschema.FormatChecker())
    (created,) = [e for e in doc["audit_events"] if e["kind"] == "user.created" and e["subject"] != "root"]
    assert "dave" not in json.dumps(doc)  # nor whom it was about (a re-attack run read who objected)
    assert created["details"]["has_password"] is True  # flags stay: what the act was
    (own,) = [e for e in doc["audit_events"] if e["kind"] == "user.created" and e["subject"] == "root"]
    assert own["details"]["has_password"] is True


async def test_a_reason_about_the_person_names_nobody_else_in_their_export(world: World) -> None:
    """A re-attack run: an admin's reason for disabling alice named the person who reported her, by
    email address, in alice's own export."""
    user = await world.alice()
    await world.audit.record(
        "admin.user.disable",
        actor="admin:boss",
        subject="alice",
        details={"reason": "fraud report by carol@example.com (ticket 42)", "sessions": 1},
    )
    _, doc = await world.privacy.export(user, **_as_portal(user))  # type: ignore[arg-type]
    (disabled,) = [e for e in doc["audit_events"] if e["kind"] == "admin.user.disable"]
    assert "carol@example.com" not in json.dumps(doc)
    assert disabled["details"]["reason"].startswith("fraud report by [left out")
    assert doc["account"]["email"] == "alice@example.com"  # her own stays


async def test_a_later_account_given_the_same_id_does_not_see_the_earlier_ones_requests(world: World) -> None:
    """SQLite gives a deleted account's id to the next new account, and the register outlives accounts:
    dan must not see, nor export, the requests zack made."""
    zack = await world.accounts.create(username="zack", password=PASSWORD, actor="admin:root")
    earlier, _ = await world.privacy.export(zack, **_as_portal(zack))  # type: ignore[arg-type]
    await world.accounts.delete(zack.id, actor="admin:root")
    world.clock.advance(60)
    dan = await world.accounts.create(username="dan", password=PASSWORD, actor="admin:root")
    if world.db.backend == "sqlite":
        assert dan.id == zack.id  # the case this guards against
    assert await world.privacy.register.find(owner=dan) == []
    own, doc = await world.privacy.export(dan, **_as_portal(dan))  # type: ignore[arg-type]
    assert [r["ref"] for r in doc["privacy_requests"]] == [own.ref]  # this export's own request only
    assert [r.ref for r in await world.privacy.register.find(owner=dan)] == [own.ref]
    assert earlier.ref not in json.dumps(doc)


async def test_a_field_the_schema_does_not_know_fails_validation() -> None:
    # The schema is strict (additionalProperties: false): a field added to the export without the
    # schema (and so without documentation) is caught by the test above.
    doc = {"format": "gateway.personal-data/1", "surprise": 1}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, SCHEMA)


async def test_rectification_changes_email_and_name_and_is_audited(world: World) -> None:
    user = await world.alice()
    request = await world.privacy.rectify(
        user,
        email="Alice.New@Example.com",
        display_name="Alice Liddell",
        **_as_admin(),  # type: ignore[arg-type]
    )
    fresh = await world.accounts.get(user.id)
    assert fresh is not None
    assert (fresh.email, fresh.display_name) == (
        "alice.new@example.com",
        "Alice Liddell",
    )
    assert request.status == Status.COMPLETED
    assert "email" in request.outcome
    (event,) = await world.audit.events(kind="user.profile_changed")
    assert "alice.new" not in event.details  # the fields, never the values


async def test_rectification_reaches_live_sessions(world: World) -> None:
    # The apps read the email from the session (identity headers, assertion): a correction that
    # waited for the next sign-in would keep handing them the wrong one.
    user = await world.alice()
    (before,) = await world.sessions.list_user(user.id)
    assert before.email == "alice@example.com"
    await world.privacy.rectify(user, email="alice.fixed@example.com", **_as_admin())  # type: ignore[arg-type]
    (live,) = await world.sessions.list_user(user.id)
    assert live.email == "alice.fixed@example.com"


async def test_rectification_to_a_taken_email_changes_nothing_and_is_rejected(world: World) -> None:
    user = await world.alice()
    await world.accounts.create(
        username="bob", password=PASSWORD, email="bob@example.com", actor="admin:root"
    )
    with pytest.raises(AccountExists, match="already used"):
        await world.privacy.rectify(user, email="bob@example.com", **_as_admin())  # type: ignore[arg-type]
    fresh = await world.accounts.get(user.id)
    assert fresh is not None
    assert fresh.email == "alice@example.com"
    (request,) = await world.privacy.register.find(user_id=user.id)
    assert request.status == Status.REJECTED
    # The register keeps why, not bob's address: alice would read it in her requests and export.
    assert request.outcome is not None
    assert "account-exists" in request.outcome
    assert "bob" not in request.outcome


async def test_a_person_cannot_claim_another_email_address_only_remove_theirs(world: World) -> None:
    user = await world.alice()
    for email in ("dave@corp.example", "not an address"):
        with pytest.raises(EmailNeedsAdmin):
            await world.privacy.rectify(user, email=email, **_as_portal(user))  # type: ignore[arg-type]
    assert await world.privacy.register.find(user_id=user.id) == []
    fresh = await world.accounts.get(user.id)
    assert fresh is not None
    assert fresh.email == "alice@example.com"
    await world.privacy.rectify(user, email="", **_as_portal(user))  # type: ignore[arg-type]
    removed = await world.accounts.get(user.id)
    assert removed is not None
    assert removed.email is None


async def test_fields_owned_by_an_identity_provider_say_where_to_correct_them(world: World) -> None:
    user = await world.alice()
    async with world.db.session() as s:
        s.add(IdentityLink(provider="corp-sso", subject="abc", user_id=user.id, created_at=world.clock.now()))
        await s.commit()
    with pytest.raises(ProviderOwned, match="corp-sso"):
        await world.privacy.rectify(user, email="x@example.com", **_as_portal(user))  # type: ignore[arg-type]


async def test_restriction_stops_sign_in_keeps_data_and_ends_sessions(world: World) -> None:
    user = await world.alice()
    await world.privacy.restrict(user, True, **_as_portal(user))  # type: ignore[arg-type]
    assert await world.sessions.list_user(user.id) == []
    with pytest.raises(SignInFailed):  # the attack: sign in again with the right password
        await world.accounts.authenticate("alice", PASSWORD, ip=IP)
    kept = await world.accounts.get(user.id)
    assert kept is not None
    assert kept.restricted
    assert kept.email == "alice@example.com"
    await world.privacy.restrict(kept, False, **_as_portal(user))  # type: ignore[arg-type]
    assert (await world.accounts.authenticate("alice", PASSWORD, ip=IP)).user.id == user.id


async def test_closure_stops_sign_in_and_says_when_the_data_goes(world: World) -> None:
    user = await world.alice()
    request = await world.privacy.close(user, **_as_portal(user))  # type: ignore[arg-type]
    assert "180 days" in request.outcome
    with pytest.raises(SignInFailed):
        await world.accounts.authenticate("alice", PASSWORD, ip=IP)


async def _audit_text(db: Database) -> str:
    """Every column of every audit row, as one string (what someone reading the table would see)."""
    async with db.engine.connect() as conn:
        rows = (await conn.execute(text("SELECT * FROM audit_events"))).all()
    return "\n".join(" ".join(str(v) for v in row) for row in rows)


async def test_erasure_leaves_nothing_readable_and_the_chain_verifying(world: World) -> None:
    user = await world.alice()
    assert "alice" in await _audit_text(world.db)
    assert IP in await _audit_text(world.db)
    # What the log sinks get while the erasure runs: they keep it, the erasure's rewrite of the trail
    # never reaches them (an attack run found "user.deleted ... alice" there, and again at a restore).
    sent: list[SecurityEvent] = []
    world.audit.listeners.append(sent.append)
    request = await world.privacy.erase(user, **_as_portal(user))  # type: ignore[arg-type]
    assert request.status == Status.COMPLETED
    assert {e.kind for e in sent} >= {"user.deleted", "privacy.erased"}
    for event in sent:
        assert "alice" not in f"{event.actor} {event.subject} {event.details}", event
    assert await world.accounts.get(user.id) is None
    trail = await _audit_text(world.db)
    assert "alice" not in trail
    assert IP not in trail
    report = await verify_database(world.db, keyring=world.keyring)
    assert report.ok, report.problem
    # The register proves it, under the pseudonym only.
    row = await world.request(request.ref)
    assert row.subject.startswith("[erased:")
    assert row.user_id is None
    assert "alice" not in row.details
    # The removed content is sealed (no plaintext), and opens with the keyring for an investigation.
    async with world.db.session() as s:
        kept = (await s.scalars(select(RemovedContent))).one()
    assert b"alice" not in kept.payload
    assert kept.expires_at == world.clock.now() + timedelta(days=180)
    _, opened = await world.privacy.removed.read(request.ref)
    assert opened is not None
    account = opened["account"]
    assert isinstance(account, dict)
    assert account["username"] == "alice"


@pytest.mark.parametrize("hold", ["person", "registration"])
async def test_a_correction_under_a_legal_hold_keeps_the_values_it_replaced(world: World, hold: str) -> None:
    """An open item of the last note: a correction overwrote the address a hold was placed to keep."""
    user = await world.alice()
    await world.privacy.holds.place(
        "ORDER-41",
        reason="preservation order",
        by="admin:counsel",
        username="alice" if hold == "person" else None,
        data_class="registration" if hold == "registration" else None,
    )
    request = await world.privacy.rectify(
        user,
        email="alice.new@example.com",
        display_name="Alice N",
        **_as_admin(),  # type: ignore[arg-type]
    )
    assert request.status == Status.COMPLETED
    fresh = await world.accounts.get(user.id)
    assert fresh is not None
    assert fresh.email == "alice.new@example.com"
    async with world.db.session() as s:
        kept = (await s.scalars(select(RemovedContent))).one()
    assert b"alice@example.com" not in kept.payload  # sealed
    assert (kept.ref, kept.pseudonym) == (request.ref, "")
    assert kept.expires_at == world.clock.now() + timedelta(days=180)
    (listed,) = await world.privacy.removed.find("alice")
    assert (listed.ref, listed.who) == (request.ref, "(account kept)")
    assert "ORDER-41" in listed.reason
    view, opened = await world.privacy.open_removed(request.ref, reason="case 12", actor="cli:counsel")
    assert view.ref == request.ref
    assert opened["account"] == {
        "id": user.id,
        "username": "alice",
        "email": "alice@example.com",
        "display_name": "Alice L",
    }
    assert opened["hold"] == "ORDER-41"
    (event,) = await world.audit.events(kind="privacy.removed_content_opened")
    assert (event.actor, event.subject) == ("cli:counsel", "alice")
    assert json.loads(event.details) == {"ref": request.ref, "reason": "case 12"}
    # The person's erasure, once the hold is gone, takes the opening's record with the rest, and gives
    # the archive the erasure's pseudonym: opened afterwards, it is recorded under the tombstone (a
    # re-attack run's reading wrote the name beside the pseudonym into the trail).
    await world.privacy.holds.release("ORDER-41", by="admin:counsel")
    await world.privacy.erase(fresh, **_as_admin())  # type: ignore[arg-type]
    assert "alice" not in await _audit_text(world.db)
    archives = await world.privacy.removed.find()
    assert request.ref in {a.ref for a in archives}
    assert len(archives) == 2  # the correction's and the erasure's, under one tombstone
    (tombstone,) = {a.who for a in archives}
    assert tombstone.startswith("[erased:")
    await world.privacy.open_removed(request.ref, reason="case 13", actor="cli:counsel")
    assert "alice" not in await _audit_text(world.db)


async def test_a_correction_outside_a_hold_keeps_nothing(world: World) -> None:
    user = await world.alice()
    # A hold on another person, and one on a class a correction does not change.
    await world.privacy.holds.place("ORDER-1", reason="order", by="admin:counsel", username="bob")
    await world.privacy.holds.place("ORDER-2", reason="order", by="admin:counsel", data_class="incidents")
    await world.privacy.rectify(user, email="alice.new@example.com", **_as_admin())  # type: ignore[arg-type]
    assert await world.privacy.removed.find() == []
    with pytest.raises(UnknownRemoved):
        await world.privacy.open_removed("PR-nothing", reason="curious", actor="cli:x")
    assert await world.audit.events(kind="privacy.removed_content_opened") == []


async def test_a_right_racing_the_persons_own_erasure_leaves_nothing_naming_them(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A re-attack run: rectifications from 8 threads racing the person's erasure left records naming
    them after it (user.profile_changed, privacy.rectification) and register rows in clear for three
    years. Here the erasure comes between the change and its records, and between two requests."""
    user = await world.alice()
    update = AccountService._update_noted

    async def update_then_erased(accounts: AccountService, user_id: int, *args: Any, **values: Any) -> None:
        await update(accounts, user_id, *args, **values)
        await world.privacy.erase(user, **_as_portal(user))  # type: ignore[arg-type]

    monkeypatch.setattr(AccountService, "_update_noted", update_then_erased)
    await world.privacy.rectify(user, display_name="X", email=None, **_as_portal(user))  # type: ignore[arg-type]
    monkeypatch.undo()
    # A request opened after it: refused, no row (the page answers as for a signed-out person).
    with pytest.raises(UnknownAccount):
        await world.privacy.rectify(user, display_name="Y", email=None, **_as_portal(user))  # type: ignore[arg-type]
    trail = await _audit_text(world.db)
    assert "alice" not in trail
    async with world.db.session() as s:
        subjects = [r.subject for r in (await s.scalars(select(PrivacyRequest))).all()]
    assert len(subjects) == 2
    assert all(subject.startswith("[erased:") for subject in subjects), subjects
    assert (await verify_database(world.db, keyring=world.keyring)).ok


async def test_a_legal_hold_suspends_erasure_until_released(world: World) -> None:
    user = await world.alice()
    await world.privacy.holds.place("COURT-2026-17", reason="subpoena", by="admin:counsel", username="alice")
    request = await world.privacy.erase(user, **_as_portal(user))  # type: ignore[arg-type]
    assert request.status == Status.ON_HOLD
    assert request.hold_ref == "COURT-2026-17"
    held = await world.accounts.get(user.id)
    assert held is not None
    assert held.restricted
    # The person's own copy says a hold applies but not which: the order may be confidential (an
    # attack run read its case number and reason in the held person's export, a re-attack run through
    # the console's records of the same acts).
    for kind, details in (
        ("admin.privacy.hold.place", {"reference": "COURT-2026-17", "reason": "subpoena"}),
        ("admin.privacy.hold.release", {"reference": "COURT-2026-17", "reason": "subpoena ended"}),
        ("admin.privacy.erase", {"hold": "COURT-2026-17", "reason": "their request"}),
    ):
        await world.audit.record(kind, actor="user:counsel", subject="alice", details=details)
    _, doc = await world.privacy.export(held, **_as_portal(held))  # type: ignore[arg-type]
    jsonschema.validate(doc, SCHEMA, format_checker=jsonschema.FormatChecker())
    assert [r["status"] for r in doc["privacy_requests"] if r["kind"] == "erasure"] == ["on_hold"]
    kinds = {e["kind"] for e in doc["audit_events"]}
    assert {"privacy.hold.placed", "privacy.erasure", "admin.privacy.hold.place"} <= kinds
    erased = [e for e in doc["audit_events"] if e["kind"] == "admin.privacy.erase"]
    assert [e["details"] for e in erased] == [{"reason": "their request"}]  # only what names the hold
    assert "COURT-2026-17" not in json.dumps(doc)
    assert "subpoena" not in json.dumps(doc)
    with pytest.raises(SignInFailed):
        await world.accounts.authenticate("alice", PASSWORD, ip=IP)
    # Retrying while held changes nothing.
    assert await world.privacy.resume_held_erasures(settings=SETTINGS, actor="system:retention") == []
    assert await world.accounts.get(user.id) is not None
    await world.privacy.holds.release("COURT-2026-17", by="admin:counsel")
    (done,) = await world.privacy.resume_held_erasures(settings=SETTINGS, actor="system:retention")
    assert done.ref == request.ref
    assert done.status == Status.COMPLETED
    assert await world.accounts.get(user.id) is None
    assert (await verify_database(world.db, keyring=world.keyring)).ok


@pytest.mark.parametrize("data_class", ["audit_events", "incidents", "privacy_requests"])
async def test_a_class_hold_on_what_an_erasure_changes_suspends_it(world: World, data_class: str) -> None:
    """A re-attack run: under a class hold on audit_events an erasure tombstoned the person's audit
    records for good, which the hold had been placed to keep."""
    user = await world.alice()
    trail_before = await _audit_text(world.db)
    await world.privacy.holds.place("CASE-13", reason="litigation", by="admin:counsel", data_class=data_class)
    request = await world.privacy.erase(user, **_as_portal(user))  # type: ignore[arg-type]
    assert (request.status, request.hold_ref) == (Status.ON_HOLD, "CASE-13")
    assert "alice" in await _audit_text(world.db)
    assert "alice" in trail_before
    await world.privacy.holds.release("CASE-13", by="admin:counsel")
    (done,) = await world.privacy.resume_held_erasures(settings=SETTINGS, actor="system:retention")
    assert done.status == Status.COMPLETED
    assert await world.accounts.get(user.id) is None


async def test_a_released_hold_never_erases_whoever_has_the_id_now(world: World) -> None:
    """An attack run: the held person's account was deleted (``gateway user delete`` ignores holds),
    SQLite gave its id to the next new account, and releasing the hold erased that stranger."""
    user = await world.alice()
    await world.privacy.holds.place("COURT-2026-18", reason="subpoena", by="admin:counsel", username="alice")
    request = await world.privacy.erase(user, **_as_portal(user))  # type: ignore[arg-type]
    assert request.status == Status.ON_HOLD
    await world.accounts.delete(user.id, actor="cli:root")
    world.clock.advance(60)
    stranger = await world.accounts.create(username="zoe", password=PASSWORD, actor="admin:root")
    reused = stranger.id == user.id  # SQLite reuses the highest id; PostgreSQL never does
    await world.privacy.holds.release("COURT-2026-18", by="admin:counsel")
    assert await world.privacy.resumable_erasures() == []
    assert await world.privacy.resume_held_erasures(settings=SETTINGS, actor="system:retention") == []
    assert await world.accounts.get(stranger.id) is not None, f"the stranger was erased (id reused: {reused})"


async def test_a_held_erasure_listed_then_replaced_never_erases_the_newcomer(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A re-attack run: the held person's account was deleted after the resumable erasures were listed
    (and checked), the next new account got its id, and the resumed erasure erased it by that id."""
    user = await world.alice()
    await world.privacy.holds.place("COURT-2026-19", reason="subpoena", by="admin:counsel", username="alice")
    request = await world.privacy.erase(user, **_as_portal(user))  # type: ignore[arg-type]
    assert request.status == Status.ON_HOLD
    await world.privacy.holds.release("COURT-2026-19", by="admin:counsel")
    listed = Privacy.resumable_erasures
    newcomers: list[User] = []

    async def listed_then_replaced(privacy: Privacy) -> list[RequestView]:
        found = await listed(privacy)
        await world.accounts.delete(user.id, actor="cli:root")
        world.clock.advance(60)
        newcomers.append(await world.accounts.create(username="zoe", password=PASSWORD, actor="admin:root"))
        return found

    monkeypatch.setattr(Privacy, "resumable_erasures", listed_then_replaced)
    assert await world.privacy.resume_held_erasures(settings=SETTINGS, actor="system:retention") == []
    (zoe,) = newcomers
    assert await world.accounts.get(zoe.id) is not None


async def test_overdue_requests_are_reported_once(world: World) -> None:
    user = await world.alice()
    open_request = await world.privacy.register.open(
        Kind.ERASURE, settings=SETTINGS, user_id=user.id, subject="alice", channel=Channel.ADMIN
    )
    assert await world.privacy.report_overdue() == 0
    world.clock.advance(31 * 86400)
    assert await world.privacy.report_overdue() == 1
    assert await world.privacy.report_overdue() == 0  # once, also across replicas (marked in the row)
    (event,) = await world.audit.events(kind="privacy.request_overdue")
    assert json.loads(event.details)["request"] == open_request.ref
    assert event.outcome == "failure"


async def test_ccpa_requests_are_due_in_45_days(world: World) -> None:
    user = await world.alice()
    request = await world.privacy.register.open(
        Kind.ACCESS, settings=SETTINGS, user_id=user.id, subject="alice", channel=Channel.CLI, law="ccpa"
    )
    assert request.due_at - request.received_at == timedelta(days=45)
    assert request.status == Status.RECEIVED  # not verified yet
    verified = await world.privacy.register.verify(request.ref, by="admin:bob (ID checked by phone)")
    assert verified.status == Status.VERIFIED
    assert verified.verified_at is not None


async def test_a_stale_check_cannot_undo_another_admins_step(world: World) -> None:
    """The console and the CLI read a request, check its status, then act: the register's change is
    conditional, so an admin acting on a stale read (another admin rejected it meanwhile) changes
    nothing instead of reopening a closed request."""
    user = await world.alice()
    request = await world.privacy.register.open(
        Kind.ERASURE, settings=SETTINGS, user_id=user.id, subject="alice", channel=Channel.ADMIN
    )
    rejected = await world.privacy.register.reject(request.ref, outcome="not the account holder")
    with pytest.raises(
        RequestNotPending, match="is rejected: there is no identity left to verify; nothing was changed"
    ):
        await world.privacy.register.verify(request.ref, by="admin:bob")
    with pytest.raises(RequestNotPending, match="only an open request can be rejected"):
        await world.privacy.register.reject(request.ref, outcome="again")
    with pytest.raises(RequestNotPending):
        await world.privacy.register.hold(request.ref, hold_ref="hold-1", outcome="held")
    row = await world.request(request.ref)
    assert (row.status, row.verified_at, row.outcome, row.hold_ref) == (
        Status.REJECTED,
        None,
        "not the account holder",
        rejected.hold_ref,
    )
    # Verifying twice: the second finds it verified.
    other = await world.privacy.register.open(
        Kind.ACCESS, settings=SETTINGS, user_id=user.id, subject="alice", channel=Channel.CLI
    )
    await world.privacy.register.verify(other.ref, by="admin:bob (phone)")
    with pytest.raises(RequestNotPending, match="is verified: there is no identity left to verify"):
        await world.privacy.register.verify(other.ref, by="admin:eve")
    assert (await world.request(other.ref)).verified_by == "admin:bob (phone)"
    with pytest.raises(UnknownRequest):
        await world.privacy.register.verify("PR-NOPE", by="admin:bob")


async def test_a_verify_at_the_same_moment_never_reopens_a_rejected_request(world: World) -> None:
    """Reject and verify of one request at the same moment (two connections on PostgreSQL): whichever
    runs first, the request ends rejected; a verify that comes second changes nothing (a verify that
    came first is kept, and the reject of a verified request is allowed after it)."""
    user = await world.alice()
    for _ in range(5):
        request = await world.privacy.register.open(
            Kind.ERASURE, settings=SETTINGS, user_id=user.id, subject="alice", channel=Channel.ADMIN
        )
        rejected, verified = await asyncio.gather(
            world.privacy.register.reject(request.ref, outcome="duplicate"),
            world.privacy.register.verify(request.ref, by="admin:bob"),
            return_exceptions=True,
        )
        row = await world.request(request.ref)
        if isinstance(verified, RequestNotPending):
            assert not isinstance(rejected, BaseException)
            assert (row.status, row.verified_at) == (Status.REJECTED, None)
        else:
            # verify went first: reject of a verified (still open) request is allowed after it.
            assert not isinstance(verified, BaseException), verified
            assert not isinstance(rejected, BaseException), rejected
            assert row.status == Status.REJECTED
            assert row.verified_at is not None


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_an_erasure_leaves_nothing_of_the_person_in_the_sqlite_files(
    world: World, tmp_path: Path
) -> None:
    """An attack run read an erased person's password hash, address and sign-in addresses in
    ``gateway.db-wal`` (old copies of changed pages) after the erasure: deleted rows are overwritten
    (``secure_delete``) and the log is emptied into the file when the erasure is done."""
    # The files of the embedded database (PostgreSQL reclaims dead rows by its own VACUUM).
    files = sorted(tmp_path.glob("*.db*"))
    assert files, list(tmp_path.iterdir())
    user = await world.alice()
    # The hash as stored: its salt and digest are what a reader of the file could take.
    fresh = await world.accounts.get(user.id)
    assert fresh is not None
    assert fresh.password_hash
    secret_part = fresh.password_hash.rsplit("$", 1)[-1].encode()
    raw = b"".join(f.read_bytes() for f in sorted(tmp_path.glob("*.db*")))
    assert b"alice@example.com" in raw
    assert secret_part in raw
    await world.privacy.erase(user, **_as_portal(user))  # type: ignore[arg-type]
    raw = b"".join(f.read_bytes() for f in sorted(tmp_path.glob("*.db*")))
    for trace in (b"alice@example.com", secret_part, IP.encode(), b"Alice L"):
        assert trace not in raw, trace


async def test_the_service_accounts_a_person_owns_are_exported_and_erased_with_them(world: World) -> None:
    """An attack run: a service account's owner and description named the person by their email address
    (and its creation record did), the export left them out, and the erasure left them, so the email
    address named the erased person afterwards."""
    from gateway.machine.accounts import ServiceAccounts

    machines = ServiceAccounts(world.db, world.audit, world.fast, world.clock, max_lifetime=86400.0)
    user = await world.alice()
    await machines.create_account(
        "billing-bot",
        owner="alice@example.com",
        description="billing sync; ask alice@example.com",
        actor="cli:root",
    )
    await machines.create_account("ci-bot", owner="Alice", description="alice builds", actor="cli:root")
    await machines.create_account(
        "ops-bot", owner="ops@example.com", description="for alice", actor="cli:root"
    )
    _, doc = await world.privacy.export(user, **_as_portal(user))  # type: ignore[arg-type]
    jsonschema.validate(doc, SCHEMA, format_checker=jsonschema.FormatChecker())
    assert sorted(a["name"] for a in doc["service_accounts_owned"]) == ["billing-bot", "ci-bot"]

    await world.privacy.erase(user, **_as_portal(user))  # type: ignore[arg-type]
    views = {v.name: v for v in await machines.list_accounts()}
    assert views["billing-bot"].owner.startswith("[erased:")
    assert views["billing-bot"].description == f"billing sync; ask {views['billing-bot'].owner}"
    assert views["ci-bot"].owner == views["billing-bot"].owner  # one person, one tombstone
    # A bare name in free text may be a word; another owner stays.
    assert (views["ci-bot"].description, views["ops-bot"].owner) == ("alice builds", "ops@example.com")
    trail = await _audit_text(world.db)
    assert "alice@example.com" not in trail
    assert "ops@example.com" in trail
    report = await verify_database(world.db, keyring=world.keyring)
    assert report.ok, report.problem


async def test_a_display_name_chosen_in_the_portal_claims_no_service_account(world: World) -> None:
    """An attack run: a user renamed herself "Platform Team" in the portal, exported that team's service
    account, and her erasure replaced the team's ownership and erased the details of the admin's record
    of its creation. A display name is the person's own choice, so it proves no ownership."""
    from gateway.machine.accounts import ServiceAccounts

    machines = ServiceAccounts(world.db, world.audit, world.fast, world.clock, max_lifetime=86400.0)
    user = await world.alice()
    await machines.create_account(
        "team-bot", owner="Platform Team", description="nightly billing export", actor="cli:root"
    )
    await world.accounts.set_profile(user.id, display_name="Platform Team", actor=f"user:{user.username}")
    _, doc = await world.privacy.export(user, **_as_portal(user))  # type: ignore[arg-type]
    assert doc["service_accounts_owned"] == []
    assert "nightly billing export" not in json.dumps(doc)

    await world.privacy.erase(user, **_as_portal(user))  # type: ignore[arg-type]
    views = {v.name: v for v in await machines.list_accounts()}
    assert (views["team-bot"].owner, views["team-bot"].description) == (
        "Platform Team",
        "nightly billing export",
    )
    trail = await _audit_text(world.db)
    assert "Platform Team" in trail  # the admin's record of the creation keeps its details
    report = await verify_database(world.db, keyring=world.keyring)
    assert report.ok, report.problem
