"""Sign-in work one client address may ask for: failed passwords and passkey challenges per window.

The account regulator (``gateway.identity.regulation``) limits the guesses against one account, and the
spraying rule the accounts one address tries. Neither bounds what one address costs: an attack run
sent 1,500 sign-ins a minute from one address with logins that name no account (each one still costs
an argon2id hash, so a wrong name and a wrong password look alike), raised nothing, and slowed every
other sign-in from 43 ms to a second; another created 533 passkey challenges a second, each a row in
the fast state for five minutes.

So each address (an IPv6 one by its /64, a NAT64 client by its IPv4: ``threat.addresses``) may fail
``regulation.address_failures`` password sign-ins per ``regulation.address_window``; past that its
sign-ins are refused (429) before any hashing until the window ends. Only failures count: a busy office
behind one address signs in as often as it likes. Passkey challenges count whether used or not
(``regulation.address_challenges``). The counters live in the fast state, so every worker and replica
counts together. ``0`` turns a limit off.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, Literal

from gateway.errors import GatewayError
from gateway.settings.schema import RegulationSettings
from gateway.store.fast.base import FastState
from gateway.threat.addresses import counted_as

__all__ = ["AddressAttempts", "TooManyAttempts"]

Kind = Literal["password", "challenge"]

_KEY: Final = "attempts:{}:{}"


class TooManyAttempts(GatewayError):
    """This address asked for more sign-in work than its window allows (429)."""

    status = 429
    reason = "too-many-attempts"
    title = "Too many attempts"


class AddressAttempts:
    """The per-address counters (one object per process)."""

    def __init__(self, state: FastState, settings: Callable[[], RegulationSettings]) -> None:
        """``settings`` gives the regulation settings in force (a reload applies)."""
        self._state = state
        self._settings = settings

    async def admit(self, kind: Kind, ip: str) -> None:
        """Raise unless ``ip`` may make another attempt of ``kind`` now (reads; counts nothing).

        Raises:
            TooManyAttempts: The address reached its limit in this window.
            StateUnavailable: The fast state cannot answer (503: fail closed).
        """
        limit, _ = self._limit(kind)
        if limit and ip:
            raw = await self._state.get(_KEY.format(kind, counted_as(ip)))
            if raw is not None and int(raw) >= limit:
                raise self._refusal()

    async def count(self, kind: Kind, ip: str) -> None:
        """Count one attempt of ``kind`` (a failed password; a challenge made) from ``ip``."""
        limit, window = self._limit(kind)
        if limit and ip:
            await self._state.incr_window(_KEY.format(kind, counted_as(ip)), window=window)

    async def spend(self, kind: Kind, ip: str) -> None:
        """:meth:`admit`, then :meth:`count`: for work that is done whatever its outcome."""
        await self.admit(kind, ip)
        await self.count(kind, ip)

    def _limit(self, kind: Kind) -> tuple[int, float]:
        settings = self._settings()
        limit = settings.address_failures if kind == "password" else settings.address_challenges
        return limit, float(settings.address_window)

    def _refusal(self) -> TooManyAttempts:
        window = float(self._settings().address_window)
        return TooManyAttempts(
            f"Too many sign-in attempts from your network. Try again in {window:.0f} seconds.",
        )
