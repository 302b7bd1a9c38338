"""Incident records (``incident_cases``, ``incident_entries``) under the privacy rules, on SQLite and
PostgreSQL, with time moved by a FakeClock.

Retention: a case closed longer than ``privacy.retention.incidents`` goes with its timeline; one closed
recently, and one still open however old, stay; a person hold on an affected user or a class hold on
``incidents`` keeps it until released; the run's counts are in its ``privacy.retention_run`` record and
the chain still verifies. Erasure: afterwards no column of either table holds the person's username or
email (also a non-ASCII name, which the JSON of an entry stores escaped), other people's names stay,
the evidence column is as it was sealed, and the chain verifies.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
from sqlalchemy import text

from gateway.audit.chain import verify_database
from gateway.audit.trail import AuditLog
from gateway.clock import FakeClock
from gateway.crypto.keyring import Keyring
from gateway.identity.accounts import AccountService
from gateway.identity.models import User
from gateway.identity.passwords import PasswordHasher
from gateway.identity.regulation import Regulator
from gateway.identity.sessions import SessionStore
from gateway.privacy.consent import Consents
from gateway.privacy.register import Channel
from gateway.privacy.retention import Retention, RunReport
from gateway.privacy.service import Privacy
from gateway.response.cases import Cases, CaseView
from gateway.response.personal_data import CasePersonalData
from gateway.response.phases import Phase
from gateway.settings.schema import (
    Duration,
    PasswordSettings,
    PrivacySettings,
    RegulationSettings,
    SessionSettings,
)
from gateway.store.db import Database
from gateway.store.fast import MemoryFastState
from gateway.threat.incidents import Action, Incident, IncidentStore, new_incident_id

FAST_ARGON = PasswordSettings(memory_kib=1024, time_cost=1, parallelism=1, min_length=12)
PASSWORD = "amber quarry lantern voyage"
SETTINGS = PrivacySettings()
DAY = 86400.0
START = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
SEALED = {
    "sha256": "5" * 64,
    "file": "/var/lib/gateway/incidents/evidence.zip",
    "since": "2026-11-30T09:30:00+00:00",
    "until": "2026-12-01T09:30:00+00:00",
    "records": 12,
    "sealed_at": "2026-12-01T09:30:00+00:00",
    "problem": None,
}


@dataclass
class World:
    db: Database
    clock: FakeClock
    keyring: Keyring
    audit: AuditLog
    accounts: AccountService
    privacy: Privacy
    cases: Cases
    incidents: IncidentStore

    def engine(self) -> Retention:
        return Retention(
            self.db,
            self.privacy,
            keyring=self.keyring,
            audit=self.audit,
            incidents=self.incidents,
            settings=lambda: SETTINGS,
            clock=self.clock,
        )

    async def run(self, *, force: bool = False) -> RunReport:
        report = await self.engine().run(self.clock.now(), "test:1", force=force)
        assert report is not None
        return report

    async def person(self, name: str, email: str | None = None) -> User:
        return await self.accounts.create(
            username=name, password=PASSWORD, email=email, display_name=name.title(), actor="admin:root"
        )

    async def incident(self, title: str, *users: str, closed: bool) -> CaseView:
        case = await self.cases.open(
            title=title, severity_="medium", actor="rule:brute_force", users=users, rule="brute_force"
        )
        await self.cases.note(case.id, f"Looked into {title}.", actor="user:boss")
        if closed:
            await self.cases.move(case.id, Phase.POST_INCIDENT, actor="user:boss")
            await self.cases.move(case.id, Phase.CLOSED, actor="user:boss")
        return await self.cases.get(case.id)

    async def rows(self, table: str) -> list[dict[str, Any]]:
        async with self.db.engine.connect() as conn:
            result = await conn.execute(text(f"SELECT * FROM {table}"))
            return [dict(row._mapping) for row in result]

    async def entries_of(self, case_id: str) -> int:
        return sum(1 for row in await self.rows("incident_entries") if row["case_id"] == case_id)

    async def case_ids(self) -> set[str]:
        return {str(row["id"]) for row in await self.rows("incident_cases")}


@pytest.fixture
async def world(database: Database, tmp_path: Path) -> AsyncIterator[World]:
    clock = FakeClock(START.timestamp())
    fast = MemoryFastState(clock=clock)
    keyring = Keyring.create(tmp_path / "keyring.json")
    audit = AuditLog(database, clock=clock, keyring=keyring)
    sessions = SessionStore(fast, SessionSettings(), clock)
    regulator = Regulator(
        fast,
        lambda: RegulationSettings(free_attempts=3, max_failures=5, lock_time=Duration(900)),
        audit,
        clock,
    )
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
        incident_records=CasePersonalData(database, detections=IncidentStore(fast)),
        clock=clock,
    )
    cases = Cases(database, audit, clock)
    yield World(database, clock, keyring, audit, accounts, privacy, cases, IncidentStore(fast))
    await fast.close()


def _incidents(report: RunReport) -> dict[str, Any]:
    (found,) = [c.to_json() for c in report.classes if c.data_class == "incidents"]
    return found


async def _verifies(db: Database, keyring: Keyring) -> bool:
    report = await verify_database(db, keyring=keyring)
    assert report.ok, report.problem
    return True


# -- retention -------------------------------------------------------------------------------------------


async def test_a_closed_record_goes_after_the_rule_and_an_open_or_recent_one_stays(world: World) -> None:
    old = await world.incident("brute force: ann", "ann", closed=True)
    still_open = await world.incident("spraying: 203.0.113.9", closed=False)
    assert await world.entries_of(old.id) == 4  # opened, the note, two phase moves
    world.clock.advance(300 * DAY)
    recent = await world.incident("brute force: ben", "ben", closed=True)
    world.clock.advance(101 * DAY)  # old closed 401 days ago, recent 101; still_open opened 401 days ago

    plan = next(
        c for c in (await world.engine().plan(world.clock.now())).classes if c.data_class == "incidents"
    )
    assert [i.label for i in plan.survey.due] == [f"incident record {old.id} (closed 2026-12-01)"]
    assert [i.key for i in plan.survey.upcoming] == [f"case:{recent.id}"]
    assert plan.survey.held == {}

    report = await world.run()
    assert report.ok
    assert _incidents(report) == {
        "done": 1,
        "action": "deleted",
        "held": {},
        "error": None,
        "parts": {"detections": 0, "records": 1, "record_entries": 4},
    }
    assert await world.case_ids() == {still_open.id, recent.id}
    assert await world.entries_of(old.id) == 0
    assert await world.entries_of(recent.id) == 4
    # The run's audit record carries the counts, and names nobody.
    (event,) = await world.audit.events(kind="privacy.retention_run")
    details = json.loads(event.details)
    assert details["classes"]["incidents"]["parts"]["records"] == 1
    assert "ann" not in event.details
    # Nothing the chain verifies was in the deleted rows.
    assert await _verifies(world.db, world.keyring)

    # Idempotent: a forced run the same day finds nothing more.
    again = await world.run(force=True)
    assert _incidents(again)["done"] == 0
    assert await world.case_ids() == {still_open.id, recent.id}

    # The recent one goes at its own time; the open one never.
    world.clock.advance(300 * DAY)
    assert _incidents(await world.run())["parts"]["records"] == 1
    assert await world.case_ids() == {still_open.id}


@pytest.mark.parametrize("scope", ["person", "class"])
async def test_a_hold_keeps_a_closed_record_until_released(world: World, scope: str) -> None:
    case = await world.incident("brute force: cleo", "cleo", "dora", closed=True)
    # A person hold on any affected user keeps the record, as a class hold does.
    hold = {"username": "dora"} if scope == "person" else {"data_class": "incidents"}
    await world.privacy.holds.place("CERT-77", reason="forensics", by="cli:counsel", **hold)
    world.clock.advance(401 * DAY)

    plan = next(
        c for c in (await world.engine().plan(world.clock.now())).classes if c.data_class == "incidents"
    )
    assert plan.survey.due == []
    assert plan.survey.held == {"CERT-77": 1}
    report = await world.run()
    assert _incidents(report)["held"] == {"CERT-77": 1}
    assert _incidents(report)["parts"]["records"] == 0
    assert await world.case_ids() == {case.id}
    assert await world.entries_of(case.id) == 4

    await world.privacy.holds.release("CERT-77", by="cli:counsel")
    report = await world.run(force=True)
    assert _incidents(report)["parts"] == {"detections": 0, "records": 1, "record_entries": 4}
    assert await world.case_ids() == set()


# -- erasure ---------------------------------------------------------------------------------------------


async def _columns(world: World) -> list[str]:
    """Every value of every row of both incident tables, as text."""
    values = []
    for table in ("incident_cases", "incident_entries"):
        for row in await world.rows(table):
            values += [str(v) for v in row.values()]
    return values


async def test_erasure_leaves_no_incident_column_naming_the_person(world: World) -> None:
    alice = await world.person("alice", "alice@example.com")
    await world.person("carol", "carol@example.com")
    # Alice is an affected user of one incident and the responder of another.
    attacked = await world.incident("brute force: alice", "alice", "carol", closed=False)
    await world.cases.note(
        attacked.id, "Called alice@example.com; Alice confirmed it was not her. Carol was not reached.",
        actor="user:boss",
    )  # fmt: skip
    await world.cases.record(
        attacked.id, "notification", "user:boss", "Notified 1 of 2 affected people by email; not sent: alice",
        {"sent": ["carol"], "failed": {"alice": "mailbox of alice@example.com full"}, "template": "incident"},
    )  # fmt: skip
    await world.cases.add_evidence(attacked.id, SEALED)
    handled = await world.incident("spraying: 198.51.100.4", closed=False)
    await world.cases.update(
        handled.id, actor="user:alice", owner="alice", root_cause="alice reset the password of carol"
    )
    await world.cases.note(handled.id, "Blocked the address.", actor="user:alice")
    before = {row["id"]: row["evidence"] for row in await world.rows("incident_cases")}

    request = await world.privacy.erase(
        alice, settings=SETTINGS, channel=Channel.ADMIN, actor="admin:root", verified_by="ID checked"
    )
    tombstone = request.subject
    assert tombstone.startswith("[erased:")
    assert request.details["incident_rows_pseudonymised"] == 8

    values = await _columns(world)
    assert not [v for v in values if "alice" in v.lower()]
    # The same tombstone as the audit erasure; other people keep their names.
    cases = {row["id"]: row for row in await world.rows("incident_cases")}
    assert json.loads(cases[attacked.id]["affected_users"]) == [tombstone, "carol"]
    assert cases[attacked.id]["title"] == f"brute force: {tombstone}"
    assert (cases[handled.id]["owner"], cases[handled.id]["root_cause"]) == (
        tombstone,
        f"{tombstone} reset the password of carol",
    )
    entries = [row for row in await world.rows("incident_entries") if row["case_id"] == attacked.id]
    (note,) = [row for row in entries if str(row["text"]).startswith("Called")]
    assert note["text"] == f"Called {tombstone}; {tombstone} confirmed it was not her. Carol was not reached."
    (sent,) = [row for row in entries if row["kind"] == "notification"]
    assert json.loads(sent["details"])["failed"] == {tombstone: f"mailbox of {tombstone} full"}
    assert {row["actor"] for row in await world.rows("incident_entries") if row["case_id"] == handled.id} >= {
        tombstone
    }
    # Sealed evidence stays as it was sealed; the chain verifies.
    assert {row["id"]: row["evidence"] for row in await world.rows("incident_cases")} == before
    assert await _verifies(world.db, world.keyring)


async def test_a_non_ascii_name_is_found_also_where_json_escapes_it(world: World) -> None:
    jozef = await world.person("józef")
    case = await world.incident("brute force: józef", "józef", closed=True)
    await world.cases.record(case.id, "notification", "user:boss", "Notified", {"sent": ["józef"]})
    raw = [row["details"] for row in await world.rows("incident_entries") if row["kind"] == "notification"]
    assert raw == ['{"sent": ["j\\u00f3zef"]}']  # how the entry stores it

    await world.privacy.erase(
        jozef, settings=SETTINGS, channel=Channel.ADMIN, actor="admin:root", verified_by="ID checked"
    )
    values = await _columns(world)
    assert not [v for v in values if "józef" in v or "j\\u00f3zef" in v]


async def test_an_erasure_reaches_the_threat_detectors_incidents_too(world: World) -> None:
    """An attack run: after an erasure, the console's Incidents list (the detector's incidents, kept
    30 days in the fast state) still named the person with the address and browser of a hijack."""
    alice = await world.person("alice", "alice@example.com")
    hijack = Incident(
        id=new_incident_id(),
        rule="session_hijack",
        at=world.clock.time(),
        subject="alice",
        ip="203.0.113.9",
        summary="session of alice used from a new address and browser",
        evidence={"user": "alice", "email": "alice@example.com", "user_agent": "Firefox", "count": 2},
        actions=(Action(kind="revoke_session", target="alice", note="ended the session of alice"),),
    )
    other = Incident(
        id=new_incident_id(), rule="spraying", at=world.clock.time(), subject="", ip="198.51.100.4"
    )
    await world.incidents.save(hijack, new=True)
    await world.incidents.save(other, new=True)
    request = await world.privacy.erase(
        alice, settings=SETTINGS, channel=Channel.ADMIN, actor="admin:root", verified_by="ID checked"
    )
    tombstone = request.subject
    after = await world.incidents.get(hijack.id)
    assert after is not None
    assert "alice" not in msgspec.json.encode(after).decode().lower()
    assert (after.subject, after.evidence["user"], after.actions[0].target) == (
        tombstone,
        tombstone,
        tombstone,
    )
    assert after.ip == "203.0.113.9"  # addresses stay, as in the incident records (docs/privacy.md)
    assert await world.incidents.get(other.id) == other


async def test_erasing_a_common_word_keeps_other_peoples_records_and_their_structure(world: World) -> None:
    """An attack run erased accounts named ``detection`` and ``phishing``: every timeline entry's
    ``{"detection": id}`` lost its key and its ``{"phase": "detection"}`` its value (lifting the case's
    blocks then failed with a 500), and another person's case title lost its first word."""
    detection = await world.person("detection")
    phishing = await world.person("phishing", "ph@example.com")
    spotted = Incident(
        id=new_incident_id(), rule="brute_force", at=world.clock.time(), subject="mallory", ip="198.51.100.7",
        summary="5 failed sign-in steps for 'mallory'",
    )  # fmt: skip
    case, _ = await world.cases.from_detection(spotted)
    other = await world.incident("Phishing of finance team, victim Mallory Smith", "mallory", closed=False)
    own = await world.incident("phishing reported", "phishing", closed=False)
    await world.cases.note(other.id, "ph@example.com forwarded the mail.", actor="user:phishing")
    before = await world.rows("incident_entries")

    for person in (detection, phishing):
        await world.privacy.erase(
            person, settings=SETTINGS, channel=Channel.PORTAL, actor="user:x", verified_by="signed-in session"
        )

    after = {row["id"]: row for row in await world.rows("incident_entries")}
    for row in before:
        if row["case_id"] == case.id:  # nothing of this case is about either person
            assert after[row["id"]] == row
    details = [json.loads(str(r["details"])) for r in after.values() if r["kind"] == "detection"]
    assert details[0]["detection"] == spotted.id
    cases = {row["id"]: row for row in await world.rows("incident_cases")}
    assert cases[other.id]["title"] == "Phishing of finance team, victim Mallory Smith"
    assert cases[own.id]["title"].endswith("reported")
    assert "phishing" not in cases[own.id]["title"]
    # A former owner, the case no longer about them: the record of it loses the name, not its key.
    dan, owner = await world.person("dan"), await world.person("owner")
    handed = await world.incident("Handover", "mallory", closed=False)
    await world.cases.update(handed.id, actor="user:boss", owner="dan")
    await world.cases.update(handed.id, actor="user:boss", owner="carol")
    for person in (dan, owner):
        await world.privacy.erase(
            person, settings=SETTINGS, channel=Channel.PORTAL, actor="user:x", verified_by="signed-in session"
        )
    rows = [r for r in await world.rows("incident_entries") if r["case_id"] == handed.id]
    updates = [json.loads(str(r["details"])) for r in rows]
    assert {"owner": "carol"} in updates  # "owner" the key, not the person erased
    assert {"owner": "dan"} not in updates  # the former owner: a value wholly theirs
    assert any(str(u.get("owner", "")).startswith("[erased:") for u in updates)
    # In a case not about her, what names her unambiguously still goes: her address, and her as actor.
    (note,) = [r for r in after.values() if r["case_id"] == other.id and "forwarded" in str(r["text"])]
    assert "ph@example.com" not in str(note["text"])
    assert note["actor"] != "user:phishing"


async def test_erasing_an_account_named_after_anothers_address_leaves_that_persons_records(
    world: World,
) -> None:
    """An attack run: alice, under a legal hold, changed her address; an account was made under her
    old one (a username may hold an @) and erased, and every incident record naming alice's old
    address, her held evidence, was rewritten as the erased account's."""
    alice = await world.person("alice", "alice@example.com")
    await world.privacy.holds.place("CASE-12", reason="court order", by="admin:counsel", username="alice")
    held = await world.incident("Phishing of alice", "alice", closed=False)
    await world.cases.note(held.id, "alice@example.com confirmed she typed her password", actor="user:boss")
    unheld = await world.incident("Reported by mail", "carol", closed=False)
    await world.cases.note(unheld.id, "alice@example.com forwarded the mail", actor="user:boss")
    world.clock.advance(3600)
    await world.accounts.set_profile(alice.id, email="alice.new@example.com", actor="admin:root")
    namesake = await world.person("alice@example.com")  # the old address is free now; no address of its own
    before = await world.rows("incident_entries"), await world.rows("incident_cases")

    await world.privacy.erase(
        namesake, settings=SETTINGS, channel=Channel.PORTAL, actor="user:x", verified_by="signed-in session"
    )

    # Written before the account was made, and (the first) about a person under a hold: as they were.
    assert (await world.rows("incident_entries"), await world.rows("incident_cases")) == before


async def test_a_persons_hold_keeps_records_naming_them_in_any_spelling(world: World) -> None:
    """An attack run: a hold on bob kept the closed record listed under "bob", but the retention run
    deleted the ones an admin had listed under "BOB" and "bob@example.com"."""
    await world.person("bob", "bob@example.com")
    await world.privacy.holds.place("LIT-7", reason="litigation", by="admin:counsel", username="bob")
    spelled = [
        await world.incident(f"case of {name}", name, closed=True)
        for name in ("bob", "BOB", "bob@example.com")
    ]
    other = await world.incident("case of carol", "carol", closed=True)
    world.clock.advance(401 * DAY)
    report = await world.run()
    assert report.ok
    assert await world.case_ids() == {case.id for case in spelled}
    assert other.id not in await world.case_ids()


async def _previewed(world: World, case_id: str) -> list[Any]:
    """The incident's notices as previewed, one per message."""
    from gateway.response.notification import notify_affected
    from gateway.settings.loader import parse_settings

    notified = await notify_affected(
        await world.cases.get(case_id),
        settings=parse_settings("public_url: https://auth.example.com\n"),
        accounts=world.accounts,
        cases=world.cases,
        audit=world.audit,
        actor="user:boss",
        send=False,
    )
    return list(notified.previews)


async def _previews(world: World, case_id: str) -> dict[str, Any]:
    """The incident's notices as previewed, by recipient address."""
    return {p.to.rpartition("<")[2].rstrip(">"): p for p in await _previewed(world, case_id)}


async def test_a_notice_names_its_recipient_alone(world: World) -> None:
    """A re-attack run: everyone affected got a notice naming the others, by their email address as
    the incident listed them, or by display name in the title."""
    await world.person("bob", "bob@example.com")
    await world.person("carol", "carol@example.com")
    case = await world.incident(
        "Carol and bob reused a leaked password", "bob", "CAROL@example.com", closed=False
    )
    await world.cases.update(case.id, actor="user:boss", root_cause="x")
    previews = await _previews(world, case.id)
    to_bob, to_carol = previews["bob@example.com"], previews["carol@example.com"]
    assert "carol" not in (to_bob.subject + to_bob.body).lower()
    assert "another account and bob" in to_bob.subject.lower()
    assert "bob" not in to_carol.subject.lower()
    # A display name is its owner's choice: one set to another affected person's name does not keep
    # that person in the notice (a re-attack run).
    await world.accounts.create(
        username="mallory", password=PASSWORD, email="m@example.com", display_name="bob", actor="admin:root"
    )
    await world.cases.update(case.id, actor="user:boss", users=["mallory"])
    to_mallory = (await _previews(world, case.id))["m@example.com"]
    assert "bob" not in to_mallory.subject.lower()


async def test_one_person_listed_under_several_spellings_is_told_once(world: World) -> None:
    """A re-attack run listed one person under 64 spellings (VICTIM, ViCtIm, the address) and mailed
    them 65 times from one call."""
    await world.person("victim", "victim@example.com")
    case = await world.incident("Phished", "victim", closed=False)
    await world.cases.update(case.id, actor="user:boss", users=["VICTIM", "ViCtIm", "victim@example.com"])
    assert [p.to.rpartition("<")[2] for p in await _previewed(world, case.id)] == ["victim@example.com>"]


async def test_a_short_display_name_is_left_out_as_written(world: World) -> None:
    """A re-attack run: a two-letter display name ("Li") stayed in another affected person's notice.
    It is found as written (the word "li" in another case is not the person, nor are "An" and "an")."""
    await world.person("bob", "bob@example.com")
    await world.accounts.create(
        username="liwei", password=PASSWORD, email="li@example.com", display_name="Li", actor="admin:root"
    )
    case = await world.incident(
        "Li and bob reused a leaked password; see the li list", "bob", "liwei", closed=False
    )
    to_bob = (await _previews(world, case.id))["bob@example.com"]
    assert "Li " not in to_bob.subject + to_bob.body
    assert "another account and bob" in to_bob.subject.lower()
    assert "the li list" in to_bob.subject
    to_li = (await _previews(world, case.id))["li@example.com"]
    assert "Li and another account" in to_li.subject, to_li.subject


async def test_a_send_bound_to_a_preview_goes_only_as_previewed(world: World) -> None:
    """A re-attack run: the digest covered the record's text but not the message as rendered; the
    recipient's own display name ($name) and the template behind the same name were changed between
    the preview and the send, and the changed mail went out under the old digest."""
    from gateway.response.notification import NoticeChanged, notify_affected
    from gateway.settings.loader import parse_settings

    await world.person("bob", "bob@example.com")
    case = await world.incident("brute force: bob", "bob", closed=False)
    base = (
        "public_url: https://auth.example.com\n"
        "notify:\n  smtp: {host: 127.0.0.1, port: 9, sender: sec@example.com}\n"
        "  templates:\n    incident: {subject: 'Notice: $title', body: '%s'}\n"
    )
    settings = parse_settings(base % "Hello $name. $summary.")

    async def notify(send: bool, previewed: str | None = None, **changes: Any) -> Any:
        return await notify_affected(
            await world.cases.get(case.id),
            settings=changes.get("settings", settings),
            accounts=world.accounts,
            cases=world.cases,
            audit=world.audit,
            actor="user:boss",
            send=send,
            previewed=previewed,
        )

    digest = (await notify(False)).digest
    bob = await world.accounts.find("bob")
    assert bob is not None
    await world.accounts.set_profile(
        bob.id, display_name="Bob. URGENT: verify at evil.example", actor="user:bob"
    )
    with pytest.raises(NoticeChanged):
        await notify(True, digest)
    digest = (await notify(False)).digest  # previewed again, as it now reads
    other = parse_settings(base % "Hello $name. Please reply with your password.")
    with pytest.raises(NoticeChanged):
        await notify(True, digest, settings=other)
    assert [e for e in await world.audit.events() if e.kind == "notify.sent"] == []


async def test_another_persons_address_is_left_out_of_a_shared_notice(world: World) -> None:
    """An attack run: two accounts taken over from one attacker address joined one case whose summary,
    the first detection's, named bob's previous sign-in address (often his home); alice's notice told
    her that address. The case's own address stays: it is what each person may be told."""
    await world.person("bob", "bob@example.com")
    await world.person("alice", "alice@example.com")
    case = await world.cases.open(
        title="impossible travel: bob",
        severity_="high",
        actor="rule:impossible_travel",
        users=["bob", "alice"],
        addresses=["203.0.113.20"],
        summary="'bob' signed in 16087 km from the previous sign-in (198.51.100.10) 60 min later, "
        "from 203.0.113.20 (and 2001:db8::7)",
        rule="impossible_travel",
    )
    to_alice = (await _previews(world, case.id))["alice@example.com"]
    assert "198.51.100.10" not in to_alice.body
    assert "2001:db8::7" not in to_alice.body
    assert "the previous sign-in (another address)" in to_alice.body
    assert "from 203.0.113.20" in to_alice.body
    # Alone in a case, a person is told the addresses of their own sign-ins.
    own = await world.cases.open(
        title="impossible travel: bob", severity_="high", actor="rule:impossible_travel", users=["bob"],
        addresses=["203.0.113.20"], summary="from the previous sign-in (198.51.100.10)",
        rule="impossible_travel",
    )  # fmt: skip
    assert "(198.51.100.10)" in (await _previews(world, own.id))["bob@example.com"].body
