"""Failed-attempt regulation on the in-process AND the Redis fast state (real server), with a fake clock.

Every rule is checked by moving the clock, never by sleeping: the regulator keeps its times in the
record (from the injected clock), so both backends follow the fake clock exactly. Attempts are
reserved before their secret is checked, so the burst tests check how many of many parallel attempts
on two replicas get to the secret at all.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

import pytest

from gateway.audit.trail import AuditLog
from gateway.clock import FakeClock
from gateway.errors import GatewayError
from gateway.identity.regulation import PENDING_LEASE, AccountLocked, Regulator
from gateway.settings.schema import Duration, RegulationSettings
from gateway.store.db import Database
from gateway.store.fast import FastState, StateUnavailable

SETTINGS = RegulationSettings(free_attempts=3, max_failures=7, lock_time=Duration(900))
IP = "203.0.113.9"


@dataclass
class World:
    clock: FakeClock
    state: FastState
    audit: AuditLog
    regulator: Regulator

    def advance(self, seconds: float) -> None:
        # One clock: the regulator's Unix time and the in-process store's TTLs move together.
        self.clock.advance(seconds)

    async def fail(self, times: int = 1, account: str = "alice") -> None:
        """``times`` wrong answers, each let in now (AccountLocked if the regulator refuses one)."""
        for _ in range(times):
            async with self.regulator.attempt(account) as attempt:
                await attempt.fail(ip=IP, factor="password")

    async def fail_patiently(self, times: int, account: str = "alice") -> None:
        """``times`` wrong answers, each after waiting out the back-off the regulator asks for."""
        for _ in range(times):
            self.advance(await self.wait(account))
            await self.fail(account=account)

    async def wait(self, account: str = "alice") -> float:
        """Seconds the regulator makes ``account`` wait now (0 when an attempt is allowed)."""
        return await self.regulator.retry_after(account)

    async def locks(self, account: str = "alice") -> list[dict[str, object]]:
        return [
            {
                "subject": e.subject,
                "actor": e.actor,
                "ip": e.ip,
                "outcome": e.outcome,
                **json.loads(e.details),
            }
            for e in await self.audit.events(kind="account.locked", subject=account)
        ]


@pytest.fixture
def world(fast_state: FastState, clock: FakeClock, audit_db: Database) -> World:
    audit = AuditLog(audit_db, clock=clock)
    return World(clock, fast_state, audit, Regulator(fast_state, lambda: SETTINGS, audit, clock))


async def test_free_attempts_have_no_delay(world: World) -> None:
    assert await world.wait() == 0
    for _ in range(SETTINGS.free_attempts):
        await world.fail()
        assert await world.wait() == 0


async def test_back_off_doubles_after_the_free_attempts(world: World) -> None:
    await world.fail(SETTINGS.free_attempts)
    waits = []
    for _ in range(SETTINGS.max_failures - SETTINGS.free_attempts - 1):
        await world.fail()
        wait = await world.wait()
        waits.append(wait)
        world.advance(wait - 0.5)
        assert await world.wait() == pytest.approx(0.5)
        world.advance(0.5)
        assert await world.wait() == 0
    assert waits == [2, 4, 8]
    assert await world.locks() == []


async def test_back_off_is_capped_at_lock_time(fast_state: FastState, audit_db: Database) -> None:
    settings = RegulationSettings(free_attempts=1, max_failures=100, lock_time=Duration(60))
    clock = FakeClock()
    regulator = Regulator(fast_state, lambda: settings, AuditLog(audit_db, clock=clock), clock)
    assert [regulator.delay(n) for n in (0, 1, 2, 3, 6, 7, 8, 99, 10**6)] == [0, 0, 2, 4, 32, 60, 60, 60, 60]
    # Seven failures, each after its back-off (2, 4, … 32 s: less than the 60 s of quiet that would
    # forget them); the seventh's back-off is the first one capped.
    for _ in range(7):
        clock.advance(await regulator.retry_after("alice"))
        async with regulator.attempt("alice") as attempt:
            await attempt.fail(ip=IP, factor="totp")
    with pytest.raises(AccountLocked) as info:
        async with regulator.attempt("alice"):
            pass
    assert info.value.retry_after == 60


async def test_lock_after_max_failures_is_audited_once(world: World) -> None:
    await world.fail_patiently(SETTINGS.max_failures - 1)
    assert await world.locks() == []
    # An attempt reserved by a process that then died (never settled) stops counting after the lease,
    # and, settled after the lock, neither extends it nor audits it again.
    world.advance(await world.wait())
    orphan = world.regulator.attempt("alice")
    await orphan.__aenter__()
    world.advance(PENDING_LEASE)
    await world.fail()
    with pytest.raises(AccountLocked) as info:
        async with world.regulator.attempt("alice"):
            pass
    locked = info.value
    assert isinstance(locked, GatewayError)
    assert (locked.status, locked.reason, locked.retry_after) == (429, "account-locked", 900)
    assert locked.detail == "Too many failed attempts. Try again in 15 minutes."
    expected = {
        "subject": "alice",
        "actor": "system",
        "ip": IP,
        "outcome": "locked",
        "failures": SETTINGS.max_failures,
        "lock_time": 900.0,
    }
    assert await world.locks() == [expected]
    world.advance(100)
    await orphan.fail(ip=IP, factor="password")
    assert await world.wait() == 800
    assert await world.locks() == [expected]
    # Other accounts are not affected.
    assert await world.wait("bob") == 0


async def test_a_known_device_lock_names_the_account_and_holds_for_that_device(world: World) -> None:
    """A lock under a known device's key is audited under the account's name (the SIEM looks for
    people, not keys), says it is that browser's, and leaves the account's shared counter alone."""
    device_key = "alice|device:Zm9vYmFyYmF6cXV4"
    await world.fail_patiently(SETTINGS.max_failures, account=device_key)
    (locked,) = await world.locks("alice")
    assert (locked["subject"], locked["known_device"]) == ("alice", True)
    assert await world.wait(device_key) > 0
    assert await world.wait("alice") == 0


async def test_lock_expires_after_lock_time_and_counting_starts_afresh(world: World) -> None:
    await world.fail_patiently(SETTINGS.max_failures)
    world.advance(SETTINGS.lock_time - 1)
    assert await world.wait() == 1
    world.advance(1)
    assert await world.wait() == 0
    # A fresh start: the free attempts are free again, the next lock needs max_failures again.
    await world.fail(SETTINGS.free_attempts)
    assert await world.wait() == 0
    await world.fail_patiently(SETTINGS.max_failures - SETTINGS.free_attempts)
    assert await world.wait() == SETTINGS.lock_time
    assert len(await world.locks()) == 2


async def test_success_resets_but_never_lifts_a_lock(world: World) -> None:
    await world.fail_patiently(SETTINGS.max_failures - 1)
    assert await world.wait() > 0
    await world.regulator.record_success("alice")
    assert await world.wait() == 0
    await world.fail_patiently(SETTINGS.max_failures - 1)
    assert await world.locks() == []
    await world.fail_patiently(1)
    assert len(await world.locks()) == 1
    # A sign-in that completes during the lock (its attempt was let in before) leaves the lock standing.
    await world.regulator.record_success("alice")
    assert await world.wait() == SETTINGS.lock_time


async def test_a_right_answer_withdraws_its_attempt_and_moves_no_timer(world: World) -> None:
    await world.fail_patiently(SETTINGS.free_attempts + 1)
    world.advance(await world.wait())
    async with world.regulator.attempt("alice"):
        assert await world.wait() > 0  # while it is checked, it counts as a failure
    assert await world.wait() == 0  # the next step of the sign-in may follow at once
    raw = await world.state.get("reg:alice")
    assert raw is not None
    assert json.loads(raw)["f"] == SETTINGS.free_attempts + 1
    assert "p" not in json.loads(raw)


async def test_failures_are_forgotten_after_a_quiet_lock_time(world: World) -> None:
    await world.fail_patiently(SETTINGS.max_failures - 1)
    world.advance(SETTINGS.lock_time)
    assert await world.wait() == 0
    await world.fail()
    assert await world.wait() == 0  # the first failure of a new run
    assert await world.locks() == []


async def _burst(world: World, peer: Regulator, size: int) -> int:
    """``size`` parallel wrong answers, alternating between two replicas; how many reached the secret."""
    checked = 0

    async def guess(regulator: Regulator) -> None:
        nonlocal checked
        try:
            async with regulator.attempt("alice") as attempt:
                checked += 1
                await asyncio.sleep(0.01)  # the code being compared while the others arrive
                await attempt.fail(ip=IP, factor="totp")
        except AccountLocked:
            pass

    await asyncio.gather(*(guess(world.regulator if i % 2 else peer) for i in range(size)))
    return checked


async def test_a_parallel_burst_on_two_replicas_gets_no_more_guesses_than_one_at_a_time(
    world: World, fast_state_peer: FastState
) -> None:
    """The attack an outside test ran: ~170 of 200 parallel TOTP guesses checked against a limit of
    10. Now a burst gets the free attempts and the first back-off step; then it must wait."""
    peer = Regulator(fast_state_peer, lambda: SETTINGS, world.audit, world.clock)
    assert await _burst(world, peer, 60) == SETTINGS.free_attempts + 1
    assert await world.wait() == 2


async def test_bursts_never_exceed_the_lock_budget_and_the_lock_is_audited_once(
    world: World, fast_state_peer: FastState
) -> None:
    peer = Regulator(fast_state_peer, lambda: SETTINGS, world.audit, world.clock)
    checked = 0
    while not await world.locks():
        world.advance(await world.wait())
        checked += await _burst(world, peer, 30)
    assert checked == SETTINGS.max_failures
    assert len(await world.locks()) == 1
    assert await world.wait() > 0


async def test_counters_live_under_reg_keys_and_a_success_leaves_an_empty_record(world: World) -> None:
    await world.fail()
    assert json.loads(await world.state.get("reg:alice") or b"{}")["f"] == 1
    # Written empty rather than deleted (a delete could drop another replica's reservation made in
    # between); the empty record goes with its key's one-second TTL.
    await world.regulator.record_success("alice")
    assert json.loads(await world.state.get("reg:alice") or b"{}") == {"f": 0, "t": 0.0, "u": 0.0}


async def test_a_success_keeps_the_reservations_of_attempts_in_flight(world: World) -> None:
    guess = world.regulator.attempt("alice")
    await guess.__aenter__()  # another replica's guess, still being checked
    await world.regulator.record_success("alice")
    assert json.loads(await world.state.get("reg:alice") or b"{}")["p"] == 1
    await guess.fail(ip=IP, factor="totp")
    assert json.loads(await world.state.get("reg:alice") or b"{}")["f"] == 1


async def test_an_unreadable_record_starts_afresh(world: World) -> None:
    await world.state.set("reg:alice", b"garbage")
    assert await world.wait() == 0
    await world.fail()
    assert await world.wait() == 0


async def test_a_lost_fast_state_fails_closed(world: World) -> None:
    await world.state.close()
    with pytest.raises(StateUnavailable):
        await world.wait()
    with pytest.raises(StateUnavailable):
        async with world.regulator.attempt("alice"):
            pass
    with pytest.raises(StateUnavailable):
        await world.fail()


@pytest.mark.parametrize(
    ("seconds", "message"),
    [
        (0.2, "Try again in 1 second."),
        (2, "Try again in 2 seconds."),
        (60, "Try again in 60 seconds."),
        (61, "Try again in 2 minutes."),
        (900, "Try again in 15 minutes."),
    ],
)
def test_account_locked_message(seconds: float, message: str) -> None:
    assert AccountLocked(seconds).detail == f"Too many failed attempts. {message}"
