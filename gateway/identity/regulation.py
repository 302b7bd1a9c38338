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
purpose: a permanent lock would let anyone lock anyone out.

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
from dataclasses import dataclass
from typing import Final

from gateway.audit.trail import AuditLog
from gateway.clock import Clock
from gateway.errors import GatewayError
from gateway.settings.schema import RegulationSettings
from gateway.store.fast.base import FastState, StateUnavailable

__all__ = ["KEY_PREFIX", "AccountLocked", "Regulator"]

logger = logging.getLogger(__name__)

KEY_PREFIX: Final = "reg:"
# Compare-and-set rounds before giving up. Each lost round means another replica just counted a
# failure for the same account; losing this many in a row means the store is misbehaving.
_CAS_ROUNDS: Final = 32
# Exponent cap so a huge failure count cannot overflow the float; lock_time caps the delay anyway.
_MAX_EXPONENT: Final = 60


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

    def encode(self) -> bytes:
        return json.dumps(
            {"f": self.failures, "t": self.last_failure, "u": self.locked_until}, separators=(",", ":")
        ).encode()

    @classmethod
    def decode(cls, raw: bytes | None, account: str) -> _Record:
        if raw is None:
            return cls()
        try:
            doc = json.loads(raw)
            return cls(int(doc["f"]), float(doc["t"]), float(doc["u"]))
        except (ValueError, TypeError, KeyError):
            # Only something with write access to the fast state can write this, and it could as well
            # delete the key: starting afresh grants nothing it did not already have.
            logger.error("unreadable regulation record for %r; starting afresh", account)
            return cls()


class Regulator:
    """Counts failed sign-in steps per account and refuses attempts while backing off or locked."""

    def __init__(self, state: FastState, settings: RegulationSettings, audit: AuditLog, clock: Clock) -> None:
        """Wire the regulator.

        Args:
            state: Shared fast state (keys ``reg:<account>``).
            settings: Free attempts, failures before the lock, lock time.
            audit: Where locks are recorded.
            clock: Unix time; tests move a fake one.
        """
        self._state = state
        self._settings = settings
        self._audit = audit
        self._clock = clock

    async def check(self, account: str) -> None:
        """Refuse an attempt for ``account`` while it is locked or backing off.

        Call before checking the password or code, so a locked account costs no hashing.

        Args:
            account: The canonical account name.

        Raises:
            AccountLocked: Locked, or the back-off delay since the last failure has not passed.
            StateUnavailable: The fast state cannot answer.
        """
        now = self._clock.time()
        record = self._current(_Record.decode(await self._state.get(_key(account)), account), now)
        wait = self._wait(record, now)
        if wait > 0:
            raise AccountLocked(wait)

    async def record_failure(self, account: str, *, ip: str, factor: str) -> None:
        """Count a failed attempt; lock the account when it reaches ``max_failures``.

        Args:
            account: The canonical account name.
            ip: Client address, for the audit event of a lock.
            factor: Which step failed ("password", "totp", ...), for the log.

        Raises:
            StateUnavailable: The fast state cannot answer.
        """

        def fail(record: _Record, now: float) -> _Record:
            if record.locked_until > now:
                # An attempt that passed check() just before another replica locked the account: the
                # lock already stands, and extending it would let attackers prolong it at will.
                return record
            failures = record.failures + 1
            locked_until = (
                now + float(self._settings.lock_time) if failures >= self._settings.max_failures else 0.0
            )
            return _Record(failures=failures, last_failure=now, locked_until=locked_until)

        before, after = await self._update(account, fail)
        logger.info("failed %s attempt for %r from %s (%d in a row)", factor, account, ip, after.failures)
        if after.locked_until and not before.locked_until:
            # Only the caller whose compare-and-set made the transition gets here: one audit per lock.
            await self._audit.record(
                "account.locked",
                actor="system",
                subject=account,
                ip=ip,
                outcome="locked",
                details={"failures": after.failures, "lock_time": float(self._settings.lock_time)},
            )

    async def record_success(self, account: str) -> None:
        """Reset the counter after a completed sign-in (never after a first factor alone).

        Args:
            account: The canonical account name.

        Raises:
            StateUnavailable: The fast state cannot answer.
        """
        await self._state.delete(_key(account))

    def delay(self, failures: int) -> float:
        """Seconds to wait after ``failures`` consecutive failures (before the lock applies)."""
        extra = failures - self._settings.free_attempts
        if extra <= 0:
            return 0.0
        return min(float(2 ** min(extra, _MAX_EXPONENT)), float(self._settings.lock_time))

    def _current(self, record: _Record, now: float) -> _Record:
        # A lock that has ended, or failures older than lock_time, no longer count: fresh start.
        if record.locked_until:
            return record if record.locked_until > now else _Record()
        if record.failures and now - record.last_failure >= float(self._settings.lock_time):
            return _Record()
        return record

    def _wait(self, record: _Record, now: float) -> float:
        if record.locked_until > now:
            return record.locked_until - now
        return record.last_failure + self.delay(record.failures) - now if record.failures else 0.0

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
            ttl = max(after.locked_until, after.last_failure) - now + float(self._settings.lock_time)
            if await self._state.compare_and_set(key, raw, after.encode(), ttl=max(ttl, 1.0)):
                return before, after
        raise StateUnavailable(f"regulation counter for {account!r} kept changing; giving up")


def _key(account: str) -> str:
    return KEY_PREFIX + account


def _wait_message(seconds: float) -> str:
    if seconds <= 60:
        n = max(1, math.ceil(seconds))
        return f"Too many failed attempts. Try again in {n} second{'s' if n != 1 else ''}."
    minutes = math.ceil(seconds / 60)
    return f"Too many failed attempts. Try again in {minutes} minute{'s' if minutes != 1 else ''}."
