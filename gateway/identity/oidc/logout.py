"""What logout needs to know about provider sign-ins, kept in the fast state.

Keys (every replica sees them; all live as long as a session can)::

    oidc-fam:<family>                   {provider, sub, sid, id_token}: the provider sign-in behind one
                                        session family (for RP-initiated logout: id_token_hint)
    oidc-sid:<provider>:<sha256(sid)>   JSON list of families signed in with that provider session
    oidc-sub:<provider>:<sha256(sub)>   JSON list of families of that subject
    oidc-jti:<provider>:<sha256(jti)>   a logout token already used (replay protection)

A back-channel logout names ``sid`` and/or ``sub``; the families found through these indexes are
ended with ``SessionStore.revoke_family``, which deletes every session of the sign-in (every host's)
and broadcasts the revocation to every replica. Index updates use compare-and-set in a retry loop, as
the session indexes do, so replicas never lose each other's entries.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Final

import msgspec

from gateway.store.fast.base import FastState, StateUnavailable

__all__ = ["OidcSignIn", "OidcSignInIndex"]

_CAS_ATTEMPTS: Final = 50
_MAX_FAMILIES: Final = 200


class OidcSignIn(msgspec.Struct, frozen=True):
    """The provider sign-in behind one session family."""

    provider: str
    sub: str
    sid: str | None
    id_token: str


_encode = msgspec.json.Encoder().encode
_decode_sign_in = msgspec.json.Decoder(OidcSignIn).decode
_decode_list = msgspec.json.Decoder(tuple[str, ...]).decode


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()


def _family_key(family: str) -> str:
    return f"oidc-fam:{family}"


def _sid_key(provider: str, sid: str) -> str:
    return f"oidc-sid:{provider}:{_digest(sid)}"


def _sub_key(provider: str, sub: str) -> str:
    return f"oidc-sub:{provider}:{_digest(sub)}"


class OidcSignInIndex:
    """Record provider sign-ins by family, and find families by provider ``sid`` or ``sub``."""

    def __init__(self, state: FastState, *, ttl: float | Callable[[], float]) -> None:
        """Create the index.

        Args:
            state: The fast state.
            ttl: How long entries live: the session lifetime, read at each write when a callable (a
                reload that lengthens it must lengthen what later sign-ins write: entries that expired
                before their sessions hid them from the provider's logout, a re-attack run).
        """
        self._state = state
        self._lifetime = ttl if callable(ttl) else (lambda: ttl)

    @property
    def _ttl(self) -> float:
        return self._lifetime()

    async def remember(self, *, family: str, sign_in: OidcSignIn) -> tuple[str, ...]:
        """Record the provider sign-in behind ``family``.

        Returns:
            The families the indexes no longer hold (the oldest, beyond ``_MAX_FAMILIES`` of one
            subject or provider session): the caller ends them. A logout finds sign-ins only here, and
            an attack run kept its first session out of the provider's logout by signing in 200 more
            times after it.

        Raises:
            StateUnavailable: the store cannot answer.
        """
        await self._state.set(_family_key(family), _encode(sign_in), ttl=self._ttl)
        dropped = await self._add(_sub_key(sign_in.provider, sign_in.sub), family)
        if sign_in.sid:
            dropped += await self._add(_sid_key(sign_in.provider, sign_in.sid), family)
        return tuple(dict.fromkeys(dropped))

    async def get(self, family: str) -> OidcSignIn | None:
        """The provider sign-in behind ``family``, if it was one."""
        return self._parse(await self._state.get(_family_key(family)))

    async def forget(self, family: str) -> OidcSignIn | None:
        """Remove and return the record of ``family`` (at sign-out), and its index entries: an ended
        sign-in must not hold one of the places a live one needs."""
        record = self._parse(await self._state.take(_family_key(family)))
        if record is not None:
            await self._remove(_sub_key(record.provider, record.sub), [family])
            if record.sid:
                await self._remove(_sid_key(record.provider, record.sid), [family])
        return record

    async def families(self, *, provider: str, sub: str | None, sid: str | None) -> tuple[str, ...]:
        """Families to end for a logout naming ``sid`` and/or ``sub``; their index entries are removed.

        With both, only families of that provider session *and* that subject qualify (a token whose
        sid and sub disagree ends nothing more than either names), and so do the subject's sign-ins
        whose ID token carried no ``sid`` (the provider named no session then; ending them is the
        safe side). Entries of families not chosen stay in the index.
        """
        sid_key = _sid_key(provider, sid) if sid else None
        by_sid = self._parse_list(await self._state.get(sid_key)) if sid_key else ()
        if sub is None:
            chosen = list(by_sid)
        else:
            of_subject = self._parse_list(await self._state.get(_sub_key(provider, sub)))
            if sid_key is None:
                chosen = list(of_subject)
            else:
                chosen = [f for f in by_sid if f in of_subject]
                for family in of_subject:
                    if family not in chosen and await self._without_sid(family):
                        chosen.append(family)
            if chosen:
                await self._remove(_sub_key(provider, sub), chosen)
        if sid_key is not None and chosen:
            await self._remove(sid_key, chosen)
        return tuple(chosen)

    async def claim_token_id(self, *, provider: str, jti: str, ttl: float) -> bool:
        """Mark a logout token's ``jti`` used; False if it was already (a replay)."""
        key = f"oidc-jti:{provider}:{_digest(jti)}"
        return await self._state.set(key, b"1", ttl=max(ttl, 1.0), only_if_absent=True)

    # -- internals ---------------------------------------------------------------------------------

    @staticmethod
    def _parse(raw: bytes | None) -> OidcSignIn | None:
        if raw is None:
            return None
        try:
            return _decode_sign_in(raw)
        except msgspec.MsgspecError:
            return None

    @staticmethod
    def _parse_list(raw: bytes | None) -> tuple[str, ...]:
        if raw is None:
            return ()
        try:
            return _decode_list(raw)
        except msgspec.MsgspecError:
            return ()

    async def _without_sid(self, family: str) -> bool:
        record = await self.get(family)
        return record is not None and not record.sid

    async def _remove(self, key: str, families: list[str]) -> None:
        gone = set(families)
        await self._update(key, lambda cur: [f for f in cur if f not in gone])

    async def _add(self, key: str, family: str) -> tuple[str, ...]:
        """Append ``family``; return the oldest ones that no longer fit."""
        for _ in range(_CAS_ATTEMPTS):
            raw = await self._state.get(key)
            listed = tuple(dict.fromkeys([*self._parse_list(raw), family]))
            kept = listed[-_MAX_FAMILIES:]
            if await self._state.compare_and_set(key, raw, _encode(kept), ttl=self._ttl):
                return listed[: len(listed) - len(kept)]
        raise StateUnavailable("OIDC session index is too contended")

    async def _update(self, key: str, change: Callable[[tuple[str, ...]], list[str]]) -> None:
        for _ in range(_CAS_ATTEMPTS):
            raw = await self._state.get(key)
            new = tuple(dict.fromkeys(change(self._parse_list(raw))))
            if await self._state.compare_and_set(key, raw, _encode(new), ttl=self._ttl):
                return
        raise StateUnavailable("OIDC session index is too contended")
