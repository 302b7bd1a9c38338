"""Failed-attempt limits per account: back-off, then a temporary lock (NIST SP 800-63B §5.2.2).

One counter per canonical account name covers the password *and* every second factor, so an attacker
cannot split guesses across factors. The counter lives in the fast state, so every replica sees the
same count and the same lock.

Rules (``RegulationSettings``)::

    failures 1 .. free_attempts        no delay
    failure n > free_attempts          wait 2^(n - free_attempts) s before the next attempt (≤ lock_time)
    failure n = max_failures           locked for lock_time, audited once as ``account.locked``
    completed sign-in                  counter reset (every factor the session needs is done; a
                                       correct password alone resets nothing when a second factor
                                       is still to come, so cycling sign-ins never buys more guesses)
    lock_time without a failure        counter forgotten (an old typo does not count towards today's lock)

A lock ends on its own after ``lock_time``, and the count starts afresh. Locks are temporary on
purpose: a permanent lock would let anyone lock anyone out. A temporary one is re-armed cheaply, so a
browser that completed a sign-in for the account counts under a key of its own
(``<account>|device:<id>``, :mod:`gateway.identity.devices`): whoever keeps failing the password
elsewhere locks the account's shared counter, not the person's own browser.

**Attempts are counted before their secret is checked.** :meth:`Regulator.attempt` reserves the
attempt as *pending* (or refuses it) before the password is hashed or the code compared, and the
rules above apply to the failures *and* the pending attempts together: a pending attempt counts as a
failure until it turns out right. Without this, every request of a parallel burst passed the check
before the first failure was counted (an outside test got ~170 TOTP guesses past a limit of 10 in one
burst). Now a burst gets the free attempts and the first back-off step in flight at once, and the rest
wait, as sequential guesses do. A right answer withdraws its reservation and moves no timer; a wrong
one becomes a failure. A reservation whose process died is forgotten after :data:`PENDING_LEASE`.

All the state of one account is a single record, changed with compare-and-set, so concurrent failures
on several replicas are all counted and exactly one of them performs the transition into "locked" (and
writes the one audit event). Times in the record come from the injected clock, not from key expiry,
so the rules are exact on both backends; the key's TTL only cleans up.

If the fast state is down, every method raises ``StateUnavailable`` (503): sign-in fails closed rather
than going unregulated.

Errors::

    GatewayError
    └── AccountLocked    429 account-locked    locked, or inside the back-off delay (retry_after s)
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Final, Self

from gateway.audit.trail import AuditLog
from gateway.clock import Clock
from gateway.errors import GatewayError
from gateway.identity.devices import account_of
from gateway.settings.schema import RegulationSettings
from gateway.store.fast.base import FastState, StateUnavailable

__all__ = ["KEY_PREFIX", "PENDING_LEASE", "AccountLocked", "Attempt", "Regulator"]

logger = logging.getLogger(__name__)

KEY_PREFIX: Final = "reg:"
# Compare-and-set rounds before giving up. Each lost round means another replica just counted a
# failure for the same account; losing this many in a row means the store is misbehaving.
_CAS_ROUNDS: Final = 32
# Exponent cap so a huge failure count cannot overflow the float; lock_time caps the delay anyway.
_MAX_EXPONENT: Final = 60
#: Seconds after which pending attempts no one settled (their process died) stop counting. A password
#: hash waits for a free hashing slot, so this is well above the slowest sign-in step.
PENDING_LEASE: Final = 30.0
#: What an attempt refused because the attempts already in flight could reach the lock is told to wait.
_BUSY_RETRY: Final = 1.0


class AccountLocked(GatewayError):
    """Too many failed attempts: wait ``retry_after`` seconds (429)."""

    status = 429
    reason = "account-locked"
    title = "Too many attempts"

    def __init__(self, retry_after: float) -> None:
        """Build the error.

        Args:
            retry_after: Seconds until the next attempt is allowed (rounded up for the message).
        """
        self.retry_after = max(0.0, retry_after)
        super().__init__(_wait_message(self.retry_after))


@dataclass(frozen=True, slots=True)
class _Record:
    failures: int = 0
    last_failure: float = 0.0
    locked_until: float = 0.0
    # Attempts reserved and not yet settled, and when the latest was reserved.
    pending: int = 0
    last_reserved: float = 0.0

    def encode(self) -> bytes:
        doc = {"f": self.failures, "t": self.last_failure, "u": self.locked_until}
        if self.pending:
            doc |= {"p": self.pending, "r": self.last_reserved}
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, raw: bytes | None, account: str) -> _Record:
        if raw is None:
            return cls()
        try:
            doc = json.loads(raw)
            return cls(
                int(doc["f"]), float(doc["t"]), float(doc["u"]), int(doc.get("p", 0)), float(doc.get("r", 0))
            )
        except (ValueError, TypeError, KeyError):
            # Only something with write access to the fast state can write this, and it could as well
            # delete the key: starting afresh grants nothing it did not already have.
            logger.error("unreadable regulation record for %r; starting afresh", account)
            return cls()


class Regulator:
    """Counts failed sign-in steps per account and refuses attempts while backing off or locked."""

    def __init__(
        self, state: FastState, settings: Callable[[], RegulationSettings], audit: AuditLog, clock: Clock
    ) -> None:
        """Wire the regulator.

        Args:
            state: Shared fast state (keys ``reg:<account>``).
            settings: The regulation settings in force (free attempts, failures before the lock, lock
                time); a serving process gives the live configuration's, so a reload applies.
            audit: Where locks are recorded.
            clock: Unix time; tests move a fake one.
        """
        self._state = state
        self._settings = settings
        self._audit = audit
        self._clock = clock

    def attempt(self, account: str) -> Attempt:
        """One attempt at a secret of ``account``, as ``async with regulator.attempt(account) as a:``.

        Entering reserves the attempt (pending) or refuses it, before the password is hashed or the
        code compared, so a locked account costs no hashing and a parallel burst cannot all pass before
        the first failure is counted. Inside, :meth:`Attempt.fail` counts it as a failure; leaving
        without that (a right answer, or an error that is not a wrong answer) withdraws it.

        Raises (on entering):
            AccountLocked: Locked, backing off, or as many attempts in flight as would reach the lock.
            StateUnavailable: The fast state cannot answer.
        """
        return Attempt(self, account)

    async def retry_after(self, account: str) -> float:
        """Seconds until an attempt for ``account`` would be let in (0: now). Reads; reserves nothing.

        Raises:
            StateUnavailable: The fast state cannot answer.
        """
        now = self._clock.time()
        return self._refusal(
            self._current(_Record.decode(await self._state.get(_key(account)), account), now), now
        )

    async def _reserve(self, account: str) -> None:
        def reserve(record: _Record, now: float) -> _Record:
            wait = self._refusal(record, now)
            if wait > 0:
                raise AccountLocked(wait)
            return replace(record, pending=record.pending + 1, last_reserved=now)

        await self._update(account, reserve)

    def _refusal(self, record: _Record, now: float) -> float:
        """How long a new attempt must wait (0: it may go ahead)."""
        wait = self._wait(record, now)
        if wait <= 0 and record.failures + record.pending >= self._settings().max_failures:
            # The attempts in flight would reach the lock if they all failed: this one waits for them.
            return _BUSY_RETRY
        return max(wait, 0.0)

    async def _withdraw(self, account: str) -> None:
        def withdraw(record: _Record, now: float) -> _Record:
            return replace(record, pending=max(0, record.pending - 1))

        await self._update(account, withdraw)

    async def _fail(self, account: str, *, ip: str, factor: str) -> None:
        def fail(record: _Record, now: float) -> _Record:
            pending = max(0, record.pending - 1)
            if record.locked_until > now:
                # An attempt reserved just before another one locked the account: the lock already
                # stands, and extending it would let attackers prolong it at will.
                return replace(record, pending=pending)
            failures = record.failures + 1
            locked_until = (
                now + float(self._settings().lock_time) if failures >= self._settings().max_failures else 0.0
            )
            return _Record(failures, now, locked_until, pending, record.last_reserved)

        before, after = await self._update(account, fail)
        logger.info("failed %s attempt for %r from %s (%d in a row)", factor, account, ip, after.failures)
        if after.locked_until and not before.locked_until:
            # Only the caller whose compare-and-set made the transition gets here: one audit per lock.
            name = account_of(account)
            details: dict[str, object] = {
                "failures": after.failures,
                "lock_time": float(self._settings().lock_time),
            }
            if name != account:
                details["known_device"] = True  # the lock holds for that browser alone
            await self._audit.record(
                "account.locked", actor="system", subject=name, ip=ip, outcome="locked", details=details
            )

    async def record_success(self, account: str) -> None:
        """Forget the failures after a completed sign-in (never after a first factor alone).

        A lock stands: an attempt reserved before it may complete after it, and must not lift it for
        the guesses still coming. Attempts still pending keep counting.

        Args:
            account: The canonical account name.

        Raises:
            StateUnavailable: The fast state cannot answer.
        """

        def forgive(record: _Record, now: float) -> _Record:
            if record.locked_until > now:
                return record
            return _Record(pending=record.pending, last_reserved=record.last_reserved)

        # Written, not deleted: a delete after the compare-and-set would drop a reservation another
        # replica made in between. An empty record expires with its key within a second.
        await self._update(account, forgive)

    def delay(self, failures: int) -> float:
        """Seconds to wait after ``failures`` consecutive failures (before the lock applies)."""
        extra = failures - self._settings().free_attempts
        if extra <= 0:
            return 0.0
        return min(float(2 ** min(extra, _MAX_EXPONENT)), float(self._settings().lock_time))

    def _current(self, record: _Record, now: float) -> _Record:
        if record.pending and now - record.last_reserved >= PENDING_LEASE:
            record = replace(record, pending=0, last_reserved=0.0)  # reserved by a process that died
        ended = record.locked_until and record.locked_until <= now
        quiet = not record.locked_until and now - record.last_failure >= float(self._settings().lock_time)
        if ended or (record.failures and quiet):
            # A lock that has ended, or failures older than lock_time, no longer count: a fresh start
            # (the attempts in flight still do).
            return _Record(pending=record.pending, last_reserved=record.last_reserved)
        return record

    def _wait(self, record: _Record, now: float) -> float:
        if record.locked_until > now:
            return record.locked_until - now
        # Back-off from the last failure for the failures; and, while attempts are in flight, from the
        # latest reservation as though they had all failed.
        wait = record.last_failure + self.delay(record.failures) - now if record.failures else 0.0
        if record.pending:
            wait = max(wait, record.last_reserved + self.delay(record.failures + record.pending) - now)
        return wait

    async def _update(
        self, account: str, change: Callable[[_Record, float], _Record]
    ) -> tuple[_Record, _Record]:
        key = _key(account)
        for _ in range(_CAS_ROUNDS):
            raw = await self._state.get(key)
            now = self._clock.time()
            before = self._current(_Record.decode(raw, account), now)
            after = change(before, now)
            if after == before and raw is not None:
                return before, after
            # The key outlives everything it records by lock_time at most; the TTL only cleans up (the
            # rules above are checked against the stored times).
            latest = max(after.locked_until, after.last_failure, after.last_reserved)
            ttl = latest - now + float(self._settings().lock_time)
            if await self._state.compare_and_set(key, raw, after.encode(), ttl=max(ttl, 1.0)):
                return before, after
        raise StateUnavailable(f"regulation counter for {account!r} kept changing; giving up")


class Attempt:
    """One reserved attempt (see :meth:`Regulator.attempt`): entering reserves it, :meth:`fail` counts it
    as a failure, leaving without a failure withdraws it."""

    __slots__ = ("_account", "_regulator", "_settled")

    def __init__(self, regulator: Regulator, account: str) -> None:
        self._regulator = regulator
        self._account = account
        self._settled = False

    async def __aenter__(self) -> Self:
        await self._regulator._reserve(self._account)
        return self

    async def fail(self, *, ip: str, factor: str) -> None:
        """Count this attempt as a failed one; lock the account when that makes ``max_failures``.

        Args:
            ip: Client address, for the audit event of a lock.
            factor: Which step failed ("password", "totp", ...), for the log.
        """
        self._settled = True
        await self._regulator._fail(self._account, ip=ip, factor=factor)

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if not self._settled:
            self._settled = True
            await self._regulator._withdraw(self._account)


def _key(account: str) -> str:
    return KEY_PREFIX + account


def _wait_message(seconds: float) -> str:
    if seconds <= 60:
        n = max(1, math.ceil(seconds))
        return f"Too many failed attempts. Try again in {n} second{'s' if n != 1 else ''}."
    minutes = math.ceil(seconds / 60)
    return f"Too many failed attempts. Try again in {minutes} minute{'s' if minutes != 1 else ''}."
