"""One-time hand-off codes: how a route on another host gets a session from the auth host.

Cookies are per host, so after signing in on the auth host (``public_url``) the browser is sent to
``https://<route host>/.gateway/handoff?code=...``, where the code is exchanged for a session of the
same sign-in family on that host. A code:

* is 256 random bits, stored only as its SHA-256 (``handoff:<hash>``), like session ids;
* works once (``FastState.take``: of concurrent redemptions exactly one wins);
* lives at most 60 seconds;
* is bound to the host it was issued for: a code leaked through a ``Referer`` or log on one host
  cannot be spent on another. A code presented at the wrong host is burnt, not kept for a retry.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass

import msgspec

from gateway.clock import Clock
from gateway.identity.sessions import Session
from gateway.store.fast.base import FastState

__all__ = ["MAX_HANDOFF_TTL", "HandoffCodes", "HandoffGrant", "normalise_host"]

MAX_HANDOFF_TTL = 60.0
_CODE = re.compile(r"[A-Za-z0-9_-]{20,128}")


@dataclass(frozen=True, slots=True)
class HandoffGrant:
    """A redeemed code: which sign-in it continues, on which host, and a snapshot of the session."""

    family: str
    user_id: int
    target_host: str
    session: Session
    issued_at: float
    expires_at: float


class _Record(msgspec.Struct, frozen=True):
    family: str
    user_id: int
    target_host: str
    session: Session
    issued_at: float
    expires_at: float


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(_Record).decode


def normalise_host(host: str) -> str:
    """Lower-case, without port or trailing dot; ``[v6]`` literals keep their brackets."""
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1] if end > 0 else ""
    return host.partition(":")[0].rstrip(".")


def _key(code: str) -> str:
    return "handoff:" + hashlib.sha256(code.encode("ascii")).hexdigest()


class HandoffCodes:
    """Issue and redeem hand-off codes in the fast state."""

    def __init__(self, state: FastState, clock: Clock) -> None:
        """Create the service.

        Args:
            state: The fast state shared by the replicas.
            clock: Unix time (expiry is checked on it as well as by the store's TTL).
        """
        self._state = state
        self._clock = clock

    async def issue(
        self,
        *,
        family: str,
        user_id: int,
        target_host: str,
        session: Session,
        ttl: float = MAX_HANDOFF_TTL,
    ) -> str:
        """Issue a code for ``target_host`` continuing ``session``'s sign-in.

        Args:
            family: The sign-in family (must be ``session.family``).
            user_id: The user (must be ``session.user_id``).
            target_host: The host the code may be redeemed on.
            session: The auth-host session; its level, factors and roles carry over.
            ttl: Seconds the code is valid, at most 60.

        Returns:
            The code, to put in the redirect URL.

        Raises:
            ValueError: ``ttl`` outside (0, 60], an empty host, or a session of another family/user.
            StateUnavailable: the store cannot answer.
        """
        if not 0 < ttl <= MAX_HANDOFF_TTL:
            raise ValueError(f"hand-off ttl must be in (0, {MAX_HANDOFF_TTL:g}] seconds, got {ttl!r}")
        if session.family != family or session.user_id != user_id:
            raise ValueError("the session does not belong to this family and user")
        host = normalise_host(target_host)
        if not host:
            raise ValueError("target_host is empty")
        now = self._clock.time()
        code = secrets.token_urlsafe(32)
        record = _Record(
            family=family,
            user_id=user_id,
            target_host=host,
            session=session,
            issued_at=now,
            expires_at=now + ttl,
        )
        await self._state.set(_key(code), _encode(record), ttl=ttl, only_if_absent=True)
        return code

    async def redeem(self, code: str, *, host: str) -> HandoffGrant | None:
        """Spend ``code`` on ``host``.

        Returns:
            The grant, or None if the code is unknown, used, expired, malformed, or was issued for
            another host.

        Raises:
            StateUnavailable: the store cannot answer.
        """
        if not _CODE.fullmatch(code):
            return None
        raw = await self._state.take(_key(code))
        if raw is None:
            return None
        try:
            record = _decode(raw)
        except msgspec.MsgspecError:
            return None
        if self._clock.time() >= record.expires_at:
            return None
        here = normalise_host(host)
        if not here or here != record.target_host:
            return None
        return HandoffGrant(
            family=record.family,
            user_id=record.user_id,
            target_host=record.target_host,
            session=record.session,
            issued_at=record.issued_at,
            expires_at=record.expires_at,
        )
