"""Sign-in work one client address may ask for: failed passwords and passkey challenges per window.

The account regulator (``gateway.identity.regulation``) limits the guesses against one account, and the
spraying rule the accounts one address tries. Neither bounds what one address costs: an attack run
sent 1,500 sign-ins a minute from one address with logins that name no account (each one still costs
an argon2id hash, so a wrong name and a wrong password look alike), raised nothing, and slowed every
other sign-in from 43 ms to a second; another created 533 passkey challenges a second, each a row in
the fast state for five minutes.

So each address (an IPv6 one by its /64, a NAT64 client by its IPv4: ``threat.addresses``) may fail
``regulation.address_failures`` password sign-ins per ``regulation.address_window``; past that its
sign-ins are refused (429) before any hashing until the window ends. Each sign-in is counted before its
hash and taken back when it succeeds, so only failures (and sign-ins still in flight) count: a busy
office behind one address signs in as often as it likes. Passkey challenges count whether used or not
(``regulation.address_challenges``). Opaque access tokens an identity provider must be asked about
count like passwords, taken back when the provider says active (``regulation.address_introspections``).
The counters live in the fast state, so every worker and replica counts together. ``0`` turns a limit
off.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Final, Literal

from gateway.errors import GatewayError
from gateway.settings.schema import RegulationSettings
from gateway.store.fast.base import FastState
from gateway.threat.addresses import counted_as

__all__ = ["AddressAttempts", "Counted", "TooManyAttempts"]

Kind = Literal["password", "challenge", "introspection"]

_KEY: Final = "attempts:{}:{}"
# The regulation setting that limits each kind.
_LIMIT: Final[dict[Kind, str]] = {
    "password": "address_failures",
    "challenge": "address_challenges",
    "introspection": "address_introspections",
}


class TooManyAttempts(GatewayError):
    """This address asked for more sign-in work than its window allows (429)."""

    status = 429
    reason = "too-many-attempts"
    title = "Too many attempts"


class Counted:
    """One attempt counted by :meth:`AddressAttempts.counting`; :meth:`fail` keeps it counted."""

    __slots__ = ("failed",)

    def __init__(self) -> None:
        self.failed = False

    def fail(self) -> None:
        """The attempt failed: it stays counted against the address."""
        self.failed = True


class AddressAttempts:
    """The per-address counters (one object per process)."""

    def __init__(self, state: FastState, settings: Callable[[], RegulationSettings]) -> None:
        """``settings`` gives the regulation settings in force (a reload applies)."""
        self._state = state
        self._settings = settings

    async def reserve(self, kind: Kind, ip: str) -> None:
        """Count one attempt of ``kind`` from ``ip`` now, before the work, and raise if that takes the
        address past its limit. Counted first: a burst of sign-ins sent at once cannot all pass a check
        that only reads (an attack run had 120 of 120 hashed against a limit of 30).

        Raises:
            TooManyAttempts: The address reached its limit in this window.
            StateUnavailable: The fast state cannot answer (503: fail closed).
        """
        limit, window = self._limit(kind)
        key = _KEY.format(kind, counted_as(ip))
        if limit and ip and await self._state.incr_window(key, window=window) > limit:
            raise self._refusal()

    async def release(self, kind: Kind, ip: str) -> None:
        """Take back a :meth:`reserve` whose attempt did not fail (only failed passwords count)."""
        limit, window = self._limit(kind)
        if limit and ip:
            await self._state.incr_window(_KEY.format(kind, counted_as(ip)), window=window, amount=-1)

    @asynccontextmanager
    async def counting(
        self, kind: Kind, ip: str, *, failures: tuple[type[BaseException], ...] = ()
    ) -> AsyncIterator[Counted]:
        """Count one attempt for the block's work: reserved on entry (raising past the limit, before any
        work), taken back on exit unless the block called :meth:`Counted.fail` or raised one of
        ``failures``. Any other exception (an outage, a cancelled request) takes it back too: only
        what the client got wrong may lock its address out.

        Raises:
            TooManyAttempts: The address reached its limit in this window (the block does not run).
            StateUnavailable: The fast state cannot answer (503: fail closed).
        """
        await self.reserve(kind, ip)
        counted = Counted()
        try:
            yield counted
        except failures:
            raise
        except BaseException:
            await self.release(kind, ip)
            raise
        if not counted.failed:
            await self.release(kind, ip)

    def _limit(self, kind: Kind) -> tuple[int, float]:
        settings = self._settings()
        limit: int = getattr(settings, _LIMIT[kind])
        return limit, float(settings.address_window)

    def _refusal(self) -> TooManyAttempts:
        window = float(self._settings().address_window)
        return TooManyAttempts(
            f"Too many sign-in attempts from your network. Try again in {window:.0f} seconds.",
        )
