"""The lockdown switch: who passes (group + WebAuthn + age), which routes it covers, the store that
keeps it in the fast state (audited, broadcast to a peer), and a threat rule that switches it on."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import pytest

from gateway.audit.trail import AuditLog
from gateway.clock import FakeClock
from gateway.identity.levels import AuthLevel, Factor, FactorUse
from gateway.identity.sessions import Session
from gateway.settings.schema import ThreatRule
from gateway.store.db import Database
from gateway.store.fast import FastState, StateUnavailable
from gateway.threat.lockdown import (
    LOCKDOWN_KEY,
    Lockdown,
    LockdownRefused,
    LockdownState,
    LockdownStore,
    check_request,
    is_break_glass,
)
from tests.unit.threat.conftest import World

NOW = 1_800_000_000.0
HOUR = 3600.0


def session(
    *factors: tuple[Factor, float], groups: tuple[str, ...] = (), roles: tuple[str, ...] = ()
) -> Session:
    return Session(
        id_hash="0" * 64,
        family="f",
        user_id=1,
        username="erin",
        level=AuthLevel.TWO_FACTOR,
        factors=tuple(FactorUse(f, at) for f, at in factors),
        roles=roles,
        created_at=NOW - HOUR,
        last_seen=NOW,
        ip="192.0.2.1",
        user_agent="test",
        host="app.example.com",
        groups=groups,
    )


PASSKEY = (Factor.WEBAUTHN, NOW - 60)


@pytest.mark.parametrize(
    ("sess", "roles", "group", "passes"),
    [
        # An identity provider's group of that name, with a passkey this session: passes.
        (session((Factor.PASSWORD, NOW - 90), PASSKEY, groups=("break-glass",)), (), "break-glass", True),
        # The role as the policy sees it (local role or g line), with a passkey: passes.
        (session(PASSKEY), ("break-glass",), "break-glass", True),
        # In the group, but the second factor was an authenticator app: does not.
        (
            session((Factor.PASSWORD, NOW - 90), (Factor.TOTP, NOW - 60), groups=("break-glass",)),
            (),
            "break-glass",
            False,
        ),
        # Recovery codes and an IdP's own MFA are not a passkey either.
        (
            session((Factor.RECOVERY, NOW - 60), (Factor.IDP_MFA, NOW - 60), groups=("break-glass",)),
            (),
            "break-glass",
            False,
        ),
        # A passkey, but not in the group (another group, or only a look-alike principal name).
        (session(PASSKEY, groups=("staff",)), ("admin",), "break-glass", False),
        (session(PASSKEY, groups=("group:break-glass",)), ("user:break-glass",), "break-glass", False),
        # No break-glass group configured: nobody passes.
        (session(PASSKEY, groups=("break-glass",)), ("break-glass",), None, False),
        # The passkey was used longer ago than max_factor_age (12h here).
        (session((Factor.WEBAUTHN, NOW - 13 * HOUR), groups=("break-glass",)), (), "break-glass", False),
        # An older passkey use does not count, a fresh one in the same session does.
        (
            session((Factor.WEBAUTHN, NOW - 13 * HOUR), PASSKEY, groups=("break-glass",)),
            (),
            "break-glass",
            True,
        ),
        # A use stamped in the future (a forged or clock-stepped record) does not count.
        (session((Factor.WEBAUTHN, NOW + HOUR), groups=("break-glass",)), (), "break-glass", False),
    ],
)
def test_who_passes(sess: Session, roles: tuple[str, ...], group: str | None, passes: bool) -> None:
    assert is_break_glass(sess, group=group, roles=roles, max_factor_age=12 * HOUR, now=NOW) is passes


def test_a_lockdown_covers_every_route_or_the_chosen_ones() -> None:
    every = LockdownState(on=True)
    some = LockdownState(on=True, routes=("app",))
    off = LockdownState(on=False, routes=None)
    assert every.covers("app")
    assert every.covers("wiki")
    assert some.covers("app")
    assert not some.covers("wiki")
    assert not off.covers("app")


def test_the_route_selection_is_checked() -> None:
    known = ["app", "wiki", "api"]
    assert check_request(routes=[], known=known, reason="incident 12") is None
    assert check_request(routes=["wiki", "app", "app"], known=known, reason="x") == ("app", "wiki")
    with pytest.raises(LockdownRefused, match=r"'nope'.*: api, app, wiki"):
        check_request(routes=["app", "nope"], known=known, reason="x")
    with pytest.raises(LockdownRefused, match="reason"):
        check_request(routes=[], known=known, reason="   ")
    with pytest.raises(LockdownRefused, match="longer"):
        check_request(routes=[], known=known, reason="x" * 2001)


async def test_a_switch_is_stored_audited_and_read_back(
    fast_state: FastState, clock: FakeClock, audit_db: Database
) -> None:
    audit = AuditLog(audit_db, clock=clock)
    store = LockdownStore(fast_state, clock, audit)
    assert await store.read() == LockdownState()
    on = await store.switch_on(("app",), actor="cli:root", reason="credential leak", ip="192.0.2.9")
    assert await store.read() == on
    assert on.on
    assert on.routes == ("app",)
    assert on.since == clock.time()
    clock.advance(60)
    off = await store.switch_off(actor="user:erin", reason="contained")
    assert (await store.read()).on is False
    assert off.actor == "user:erin"
    [on_event] = await audit.events(kind="lockdown.on")
    [off_event] = await audit.events(kind="lockdown.off")
    assert (on_event.actor, on_event.ip) == ("cli:root", "192.0.2.9")
    assert json.loads(on_event.details) == {"routes": ["app"], "reason": "credential leak"}
    assert json.loads(off_event.details) == {"routes": [], "reason": "contained"}


async def test_junk_in_the_key_keeps_the_gateway_shut(fast_state: FastState, clock: FakeClock) -> None:
    await fast_state.set(LOCKDOWN_KEY, b"{not json")
    state = await LockdownStore(fast_state, clock).read()
    assert state.on
    assert state.covers("anything")


async def test_the_broadcast_reaches_a_peer_and_an_outage_keeps_the_last_state(
    fast_state: FastState, fast_state_peer: FastState, clock: FakeClock
) -> None:
    here, there = LockdownStore(fast_state, clock), LockdownStore(fast_state_peer, clock)
    peer = Lockdown()
    refreshed = asyncio.Event()
    original = there.refresh

    async def noting(lockdown: Lockdown) -> None:
        await original(lockdown)
        refreshed.set()

    there.refresh = noting  # type: ignore[method-assign]
    # An hour between re-reads: only the broadcast can bring the change within the test.
    listener = asyncio.ensure_future(there.run_listener(peer, refresh_every=3600))
    try:
        async with asyncio.timeout(10):
            await refreshed.wait()
        refreshed.clear()
        await here.switch_on(None, actor="cli:root", reason="drill")
        async with asyncio.timeout(10):
            while not peer.state.on:
                await refreshed.wait()
                refreshed.clear()
        assert peer.state.covers("app")
    finally:
        listener.cancel()
        with pytest.raises(asyncio.CancelledError):
            await listener
    # The peer's store goes away: its copy keeps saying "on" (a refresh fails, the copy stays).
    await fast_state_peer.close()
    with pytest.raises(StateUnavailable):
        await there.refresh(peer)
    assert peer.state.on


async def test_a_threat_rule_locks_every_route_and_lifting_its_incident_opens_them(world: World) -> None:
    rule = ThreatRule(count=1, responses=("alert", "lockdown"))
    incident = await world.responder.respond("brute_force", rule, subject="alice", summary="x", evidence={})
    state = await world.responder.lockdown.read()
    assert state.on
    assert state.routes is None
    assert state.incident == incident.id
    assert state.actor == "system:threat"
    assert [a.kind for a in incident.actions] == ["lockdown"]
    [event] = await world.audit.events(kind="lockdown.on")
    assert json.loads(event.details)["incident"] == incident.id
    await world.responder.lift(incident.id, actor="user:erin")
    assert not (await world.responder.lockdown.read()).on


async def test_lifting_an_old_incident_leaves_a_newer_lockdown_on(world: World) -> None:
    rule = ThreatRule(count=1, responses=("lockdown",))
    incident = await world.responder.respond("brute_force", rule, subject="alice", summary="x", evidence={})
    # A person took over: their lockdown (of one route) is not the incident's to end.
    await world.responder.lockdown.switch_on(("app",), actor="cli:root", reason="narrowed")
    await world.responder.lift(incident.id, actor="user:erin")
    assert (await world.responder.lockdown.read()).routes == ("app",)


async def test_a_threat_rule_keeps_a_persons_lockdown_and_lifting_its_incident_puts_it_back(
    world: World,
) -> None:
    """An attack run: five wrong passwords set off a lockdown rule, which replaced the operator's
    lockdown; lifting the incident (a false positive) then opened every route. Now a lockdown of every
    route is left as it is, and one of some routes is widened and put back at the lift."""
    rule = ThreatRule(count=1, responses=("lockdown",))
    lockdown = world.responder.lockdown
    await lockdown.switch_on(None, actor="cli:root", reason="INC-42 credential leak")
    incident = await world.responder.respond("brute_force", rule, subject="alice", summary="x", evidence={})
    await world.responder.lift(incident.id, actor="user:erin")
    state = await lockdown.read()
    assert (state.on, state.routes, state.actor, state.reason) == (
        True,
        None,
        "cli:root",
        "INC-42 credential leak",
    )

    await lockdown.switch_on(("billing",), actor="cli:root", reason="billing only")
    incident = await world.responder.respond("brute_force", rule, subject="alice", summary="x", evidence={})
    widened = await lockdown.read()
    assert (widened.routes, widened.incident) == (None, incident.id)
    assert widened.covers("wiki")
    # What operators see says which incidents hold it and what lifting them puts back.
    shown = widened.to_json()
    assert (shown["incidents"], shown["restores"]["routes"]) == ([incident.id], ["billing"])  # type: ignore[index]
    from gateway.cli.lockdown import _describe

    assert f"lifting {incident.id} puts back: lockdown ON for routes billing" in _describe(widened)
    await world.responder.lift(incident.id, actor="user:erin")
    back = await lockdown.read()
    assert (back.on, back.routes, back.actor, back.reason, back.incident) == (
        True, ("billing",), "cli:root", "billing only", ""
    )  # fmt: skip
    assert not back.covers("wiki")
    (restored,) = [e for e in await world.audit.events(kind="lockdown.on") if e.actor == "user:erin"]
    assert json.loads(restored.details)["state"] == "cli:root: billing only"
    assert not (await world.audit.events(kind="lockdown.off"))


async def test_a_lockdown_two_incidents_hold_ends_when_both_are_lifted(world: World) -> None:
    """A re-attack run: a second incident found the first one's lockdown on; lifting the first opened
    every route while the second was unlifted. And with a person's lockdown of one route widened by
    both, lifting both puts that one back."""
    rule = ThreatRule(count=1, responses=("lockdown",))
    lockdown = world.responder.lockdown
    first = await world.responder.respond("brute_force", rule, subject="alice", summary="x", evidence={})
    second = await world.responder.respond("spraying", rule, subject="bob", summary="y", evidence={})
    await world.responder.lift(first.id, actor="user:erin")
    held = await lockdown.read()
    assert (held.on, held.routes, held.incidents) == (True, None, (second.id,))
    await world.responder.lift(second.id, actor="user:erin")
    assert not (await lockdown.read()).on

    await lockdown.switch_on(("billing",), actor="cli:root", reason="billing only")
    first = await world.responder.respond("brute_force", rule, subject="alice", summary="x", evidence={})
    second = await world.responder.respond("spraying", rule, subject="bob", summary="y", evidence={})
    await world.responder.lift(second.id, actor="user:erin")
    assert (await lockdown.read()).routes is None
    await world.responder.lift(first.id, actor="user:erin")
    back = await lockdown.read()
    assert (back.on, back.routes, back.actor, back.incidents) == (True, ("billing",), "cli:root", ())


async def test_a_lift_while_the_fast_state_is_down_stays_lifted_when_it_is_back(world: World) -> None:
    """A re-attack run: a lift on a replica cut off from Redis was written to the database alone with
    the old start time, so the older copy in Redis won once it answered again: the lifted incident's
    lockdown of every route came back (and, held by two, stayed on for good)."""
    rule = ThreatRule(count=1, responses=("lockdown",))
    lockdown = world.responder.lockdown
    await lockdown.switch_on(("billing",), actor="cli:root", reason="billing only")
    world.advance(60)
    first = await world.responder.respond("brute_force", rule, subject="alice", summary="x", evidence={})
    second = await world.responder.respond("spraying", rule, subject="bob", summary="y", evidence={})
    world.advance(60)
    world.responder.lockdown = LockdownStore(_Down(), world.clock, world.audit, db=world.audit.db)  # type: ignore[arg-type]
    await world.responder.lift(first.id, actor="user:erin")
    world.responder.lockdown = lockdown
    assert (await lockdown.read()).incidents == (second.id,)
    world.advance(60)
    await world.responder.lift(second.id, actor="user:erin")
    assert (await lockdown.read()).routes == ("billing",)


async def test_a_rule_firing_while_an_incident_is_lifted_loses_neither(world: World) -> None:
    """A re-attack run: lifting one incident while a rule fired for another lost one of the two
    changes half the time: every route open while the second was unlifted, or locked for good by the
    lifted first."""
    rule = ThreatRule(count=1, responses=("lockdown",))
    lockdown = world.responder.lockdown
    for trial in range(10):
        await lockdown.switch_off(actor="cli:root", reason="next trial")
        first = await world.responder.respond(
            "brute_force", rule, subject=f"a{trial}", summary="x", evidence={}
        )
        _, second = await asyncio.gather(
            world.responder.lift(first.id, actor="user:erin"),
            world.responder.respond("spraying", rule, subject=f"b{trial}", summary="y", evidence={}),
        )
        state = await lockdown.read()
        assert (state.on, state.incidents) == (True, (second.id,)), trial


async def test_a_fast_state_that_lost_the_switch_gets_it_back_from_the_database(
    fast_state: FastState, clock: FakeClock, audit_db: Database
) -> None:
    """An attack run: Redis restarted without persistence, and the lockdown was silently off."""
    store = LockdownStore(fast_state, clock, AuditLog(audit_db, clock=clock), db=audit_db)
    on = await store.switch_on(None, actor="cli:root", reason="breach")
    await fast_state.delete(LOCKDOWN_KEY)  # what a Redis restart without persistence does
    assert await LockdownStore(fast_state, clock, db=audit_db).read() == on
    assert await fast_state.get(LOCKDOWN_KEY) is not None  # put back for every other reader
    await store.switch_off(actor="cli:root", reason="over")
    await fast_state.delete(LOCKDOWN_KEY)
    assert (await LockdownStore(fast_state, clock, db=audit_db).read()).on is False


class _Down:
    """A fast state that does not answer (a replica cut off from Redis)."""

    async def get(self, key: str) -> bytes | None:
        raise StateUnavailable("cut off")

    async def set(self, key: str, value: bytes) -> bool:
        raise StateUnavailable("cut off")

    async def publish(self, channel: str, message: bytes) -> None:
        raise StateUnavailable("cut off")


async def test_a_worker_cut_off_from_the_fast_state_reads_the_switch_from_the_database(
    fast_state: FastState, clock: FakeClock, audit_db: Database
) -> None:
    """An attack run: a replica cut off from Redis kept serving public paths through a lockdown."""
    await LockdownStore(fast_state, clock, db=audit_db).switch_on(("app",), actor="cli:root", reason="breach")
    cut_off = LockdownStore(_Down(), clock, db=audit_db)  # type: ignore[arg-type]
    assert (await cut_off.read()).covers("app")
    with pytest.raises(StateUnavailable):  # neither answers: the caller keeps what it knew
        await LockdownStore(_Down(), clock).read()  # type: ignore[arg-type]


async def test_a_switch_made_while_the_fast_state_was_down_wins_over_the_older_value_there(
    fast_state: FastState, clock: FakeClock, audit_db: Database
) -> None:
    """The re-attack run: `lockdown on` while Redis did not answer was stored in the database alone,
    and the older `off` still in Redis kept every worker open."""
    store = LockdownStore(fast_state, clock, db=audit_db)
    await store.switch_on(None, actor="cli:root", reason="drill")
    clock.advance(10)
    await store.switch_off(actor="cli:root", reason="drill over")
    clock.advance(10)
    cut_off = LockdownStore(_Down(), clock, db=audit_db)  # type: ignore[arg-type]
    on = await cut_off.switch_on(None, actor="cli:root", reason="real incident")
    seen = await LockdownStore(fast_state, clock, db=audit_db).read()
    assert seen == on
    assert seen.on


class _Unsubscribable:
    """Reads pass to a real fast state that has no switch in it; subscribing fails (a replica that
    started while Redis was out of reach, as an attack run ran it)."""

    def __init__(self) -> None:
        self.subscriptions = 0

    async def get(self, key: str) -> bytes | None:
        raise StateUnavailable("cut off")

    async def set(self, key: str, value: bytes) -> bool:
        raise StateUnavailable("cut off")

    def subscribe(self, channel: str) -> Any:
        self.subscriptions += 1
        raise StateUnavailable("cut off")


async def test_a_worker_that_never_subscribed_follows_the_switch_in_the_database(
    fast_state: FastState, clock: FakeClock, audit_db: Database
) -> None:
    """An attack run: a replica started while Redis was out of reach retried its subscription and
    never re-read, so a lockdown switched on afterwards (in the database too) never closed it."""
    state = _Unsubscribable()
    lockdown = Lockdown()
    store = LockdownStore(state, clock, db=audit_db)  # type: ignore[arg-type]
    listener = asyncio.create_task(store.run_listener(lockdown, refresh_every=0.01))
    try:
        await LockdownStore(fast_state, clock, db=audit_db).switch_on(None, actor="cli:root", reason="breach")
        async with asyncio.timeout(5):
            while not lockdown.state.on:
                await asyncio.sleep(0.01)
        assert state.subscriptions >= 1
    finally:
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener
