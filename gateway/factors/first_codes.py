"""The one showing of recovery codes that follows a user's first passkey.

Registering the first passkey happens in the WebAuthn API call; the codes are shown by the page the
browser goes to next (``/.gateway/account/first-codes``). That page must not mint codes for whoever
asks: a password-only session of a user with no unused codes would get ten fresh ones and pass the
second factor with one of them. So the registration that has just proven the new factor leaves a
grant bound to the session it elevated, single use and short-lived, and the page spends it.

Keys (fast state, shared by every worker and replica)::

    firstcodes:<session id hash>    b"1"; TTL ``GRANT_TTL``; taken (atomically) by the page
"""

from __future__ import annotations

from typing import Final

from gateway.store.fast.base import FastState

__all__ = ["GRANT_TTL", "FirstCodesGrants"]

#: Long enough for the browser to follow the redirect, short enough that an abandoned grant dies.
GRANT_TTL: Final = 600.0


class FirstCodesGrants:
    """Single-use permissions to show recovery codes right after a first factor was registered."""

    def __init__(self, state: FastState) -> None:
        """Wire the grants to the shared fast state."""
        self._state = state

    async def issue(self, session_hash: str) -> None:
        """Allow the session ``session_hash`` (the one the new factor elevated) one showing."""
        await self._state.set(_key(session_hash), b"1", ttl=GRANT_TTL)

    async def redeem(self, session_hash: str) -> bool:
        """Spend the session's grant; True exactly once per grant, also under concurrent requests."""
        return await self._state.take(_key(session_hash)) is not None


def _key(session_hash: str) -> str:
    return f"firstcodes:{session_hash}"
