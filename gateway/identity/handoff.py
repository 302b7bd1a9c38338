"""One-time hand-off codes: how a route on another host gets a session from the auth host.

Cookies are per host, so after signing in on the auth host (``public_url``) the browser is sent to
``https://<route host>/.gateway/handoff?code=...``, where the code is exchanged for a session of the
same sign-in family on that host. A code:

* is 256 random bits, stored only as its SHA-256 (``handoff:<hash>``), like session ids;
* works once (``FastState.take``: of concurrent redemptions exactly one wins);
* lives at most 60 seconds;
* is bound to the host it was issued for: a code leaked through a ``Referer`` or log on one host
  cannot be spent on another. A code presented at the wrong host is burnt, not kept for a retry;
* is bound to the browser: it becomes a session only in the browser whose auth-host session issued it.
  Otherwise anyone could sign in, take the hand-off link instead of following it, and have a victim's
  browser open it (login CSRF: the victim is signed out of the app and into the attacker's account,
  and what they type goes there). So the first code is not redeemed: the app host sets a random nonce
  cookie in the browser and sends it, with a new code :meth:`HandoffCodes.bind` to the nonce's hash, to
  the auth host; there :meth:`HandoffCodes.confirm` checks that the browser's auth-host session is of
  the same sign-in family and sends it back with a third code, which the app host redeems only with
  the nonce cookie. Each code works once, and all three together within the first one's minute.
"""

from __future__ import annotations

import enum
import hashlib
import re
import secrets
from dataclasses import dataclass, fields

import msgspec

from gateway.clock import Clock
from gateway.identity.sessions import Session
from gateway.store.fast.base import FastState

__all__ = ["MAX_HANDOFF_TTL", "HandoffCodes", "HandoffGrant", "NotConfirmed", "nonce_hash", "normalise_host"]

MAX_HANDOFF_TTL = 60.0
_CODE = re.compile(r"[A-Za-z0-9_-]{20,128}")


@dataclass(frozen=True, slots=True)
class HandoffGrant:
    """A redeemed code: which sign-in it continues, on which host, and a snapshot of the session.

    ``origin`` is the app's ``scheme://host[:port]``; ``binding`` the hash of the app host's nonce
    (empty on the first code), ``confirmed`` whether the auth host has seen the same browser.
    """

    family: str
    user_id: int
    target_host: str
    session: Session
    issued_at: float
    expires_at: float
    origin: str = ""
    binding: str = ""
    confirmed: bool = False


class NotConfirmed(enum.Enum):
    """Why :meth:`HandoffCodes.confirm` refused a code, for the words the browser is shown."""

    GONE = "gone"  # unknown, used or expired: nothing says whose it was
    ELSEWHERE = "elsewhere"  # issued by another sign-in (another browser), or not a code to confirm


class _Record(msgspec.Struct, frozen=True):
    family: str
    user_id: int
    target_host: str
    session: Session
    issued_at: float
    expires_at: float
    origin: str = ""
    binding: str = ""
    confirmed: bool = False


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


def nonce_hash(nonce: str) -> str:
    """What a code is bound to: the SHA-256 of the app host's nonce cookie (the nonce itself stays in
    the browser)."""
    return hashlib.sha256(nonce.encode()).hexdigest()


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
        origin: str = "",
        ttl: float = MAX_HANDOFF_TTL,
    ) -> str:
        """Issue a code for ``target_host`` continuing ``session``'s sign-in.

        Args:
            family: The sign-in family (must be ``session.family``).
            user_id: The user (must be ``session.user_id``).
            target_host: The host the code may be redeemed on.
            session: The auth-host session; its level, factors and roles carry over.
            origin: The app's ``scheme://host[:port]``, where the auth host sends the browser back.
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
        record = _Record(
            family=family,
            user_id=user_id,
            target_host=host,
            session=session,
            issued_at=now,
            expires_at=now + ttl,
            origin=origin,
        )
        return await self._store(record)

    async def bind(self, grant: HandoffGrant, *, binding: str) -> str:
        """A new code for the same hand-off, bound to the app host's nonce (``binding``, its hash)."""
        return await self._store(_record_of(grant, binding=binding, confirmed=False))

    async def confirm(self, code: str, *, family: str) -> tuple[str, str] | NotConfirmed:
        """Spend a bound code on the auth host for the browser whose session is of ``family``.

        Returns:
            The confirmed code and the app's origin to send it back to; or why not: GONE when the code
            is unknown, used or expired (a replayed step is told it was used, not that it belongs to
            another browser); ELSEWHERE when it is not bound, already confirmed, without an origin, or
            was issued by another sign-in (another browser: the login CSRF this refuses). Either way
            the code is spent.
        """
        record = await self._take(code)
        if record is None:
            return NotConfirmed.GONE
        # Not bound, confirmed already, another sign-in's, or nowhere to send it back to (no origin).
        if not record.binding or record.confirmed or record.family != family or not record.origin:
            return NotConfirmed.ELSEWHERE
        return await self._store(msgspec.structs.replace(record, confirmed=True)), record.origin

    async def _store(self, record: _Record) -> str:
        # Whether the code is still good is decided by expires_at when it is taken; the store's TTL
        # only cleans up (at least a second, for a code stored in the last moment of its minute).
        ttl = max(record.expires_at - self._clock.time(), 1.0)
        code = secrets.token_urlsafe(32)
        await self._state.set(_key(code), _encode(record), ttl=ttl, only_if_absent=True)
        return code

    async def _take(self, code: str) -> _Record | None:
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
        return record

    async def redeem(self, code: str, *, host: str) -> HandoffGrant | None:
        """Spend ``code`` on ``host``.

        Returns:
            The grant, or None if the code is unknown, used, expired, malformed, or was issued for
            another host.

        Raises:
            StateUnavailable: the store cannot answer.
        """
        record = await self._take(code)
        if record is None:
            return None
        here = normalise_host(host)
        if not here or here != record.target_host:
            return None
        return _grant(record)


def _grant(record: _Record) -> HandoffGrant:
    return HandoffGrant(**msgspec.structs.asdict(record))


def _record_of(grant: HandoffGrant, *, binding: str, confirmed: bool) -> _Record:
    values = {f.name: getattr(grant, f.name) for f in fields(grant)}
    return _Record(**{**values, "binding": binding, "confirmed": confirmed})
