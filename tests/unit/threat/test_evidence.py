"""The audit events behind an incident (the console's incident detail), on SQLite and PostgreSQL."""

from __future__ import annotations

from gateway.audit.trail import AuditLog
from gateway.clock import FakeClock
from gateway.settings.schema import Duration, ThreatRule
from gateway.store.db import Database
from gateway.store.fast import FastState
from gateway.threat.evidence import incident_events
from gateway.threat.incidents import Incident
from gateway.threat.responder import Responder

RULE = ThreatRule(count=3, window=Duration(300), responses=("alert", "block_ip"))
ATTACKER = "198.51.100.50"


def responder(fast_state: FastState, database: Database, clock: FakeClock) -> tuple[Responder, AuditLog]:
    audit = AuditLog(database, clock=clock)
    return Responder(state=fast_state, audit=audit, accounts=None, sessions=None, clock=clock), audit


async def test_a_brute_force_shows_the_accounts_failures_in_its_window_and_what_was_done(
    fast_state: FastState, database: Database, clock: FakeClock
) -> None:
    resp, audit = responder(fast_state, database, clock)
    # Too old for the window, another account, and a success: none of them raised it.
    await audit.record("signin.password", actor="anonymous", subject="alice", ip=ATTACKER, outcome="failure")
    clock.advance(400)
    await audit.record("signin.password", actor="anonymous", subject="bob", ip=ATTACKER, outcome="failure")
    await audit.record("signin.password", actor="user:alice", subject="alice", ip="203.0.113.1")
    for kind in ("signin.password", "signin.password", "mfa.totp"):
        clock.advance(10)
        await audit.record(kind, actor="anonymous", subject="alice", ip=ATTACKER, outcome="failure")
    incident = await resp.respond(
        "brute_force", RULE, subject="alice", ip=ATTACKER, summary="3 failed sign-in steps",
        evidence={"failures": 3, "window": 300.0},
    )  # fmt: skip
    clock.advance(60)
    await resp.lift(incident.id, actor="user:boss")

    events = await incident_events(database, incident)
    assert [(e.kind, e.subject, e.outcome) for e in events.raised] == [
        ("mfa.totp", "alice", "failure"),
        ("signin.password", "alice", "failure"),
        ("signin.password", "alice", "failure"),
    ]
    assert [e.kind for e in events.related] == ["incident.lifted", "threat.brute_force"]
    assert all(incident.id in e.details for e in events.related)


async def test_a_spray_shows_the_addresses_failures_over_accounts(
    fast_state: FastState, database: Database, clock: FakeClock
) -> None:
    resp, audit = responder(fast_state, database, clock)
    for name in ("a1", "a2", "a3"):
        await audit.record("signin.password", actor="anonymous", subject=name, ip=ATTACKER, outcome="failure")
    await audit.record("signin.password", actor="anonymous", subject="a4", ip="192.0.2.1", outcome="failure")
    incident = await resp.respond(
        "spraying", RULE, ip=ATTACKER, summary="3 accounts", evidence={"accounts": 3, "window": 600.0}
    )
    events = await incident_events(database, incident, limit=2)
    assert [e.subject for e in events.raised] == ["a3", "a2"]  # newest first, at most `limit`
    assert [e.kind for e in events.related] == ["threat.spraying"]


async def test_a_manual_block_has_no_signals_only_the_admins_action(
    fast_state: FastState, database: Database, clock: FakeClock
) -> None:
    resp, _ = responder(fast_state, database, clock)
    incident = await resp.block_ip("203.0.113.0/24", seconds=3600, actor="user:boss", reason="scanner")
    assert incident.actor == "user:boss"
    events = await incident_events(database, incident)
    assert events.raised == []
    assert [(e.kind, e.actor) for e in events.related] == [("incident.block_ip", "user:boss")]
    [entry] = await resp.blocks.entries()
    assert (entry.cidr, entry.actor, entry.reason) == ("203.0.113.0/24", "user:boss", "scanner")


async def test_an_incident_from_a_request_rule_has_no_audit_signals(
    fast_state: FastState, database: Database, clock: FakeClock
) -> None:
    # Denials and session use are requests (the access log), not audit events.
    incident = Incident(id="inc-0000abcd", rule="reconnaissance", at=clock.time(), subject="carol")
    events = await incident_events(database, incident)
    assert (list(events.raised), list(events.related)) == ([], [])
