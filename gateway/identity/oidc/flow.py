"""The state of one sign-in in flight: ``state``, ``nonce`` and the PKCE verifier, bound to the browser.

At the start, the gateway draws three secrets and keeps them server-side in the fast state, under the
SHA-256 of ``state`` (``oidc-flow:<hash>``, ten minutes):

* ``state`` travels to the provider and back; it finds the record. Taking the record is atomic
  (``FastState.take``), so a state (and with it the code) is spent exactly once, on any replica.
* the record also holds the SHA-256 of a random **browser binding** that only this browser has, in an
  HttpOnly cookie. A callback URL carried to another browser (login CSRF: an attacker's code and
  state planted in a victim's browser) does not match it and is refused; the record is burnt anyway.
* ``nonce`` goes into the authorization request and must come back inside the signed ID token.
* the PKCE ``code_verifier`` never leaves the gateway until the token request; only its S256
  challenge is in the browser's URL, so an intercepted code is useless without it.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Final

import msgspec
from authlib.oauth2.rfc7636 import create_s256_code_challenge

from gateway.clock import Clock
from gateway.errors import BadRequest
from gateway.store.fast.base import FastState

__all__ = ["FLOW_TTL", "Flow", "FlowInvalid", "FlowRecord", "FlowStore", "is_binding", "new_binding", "s256"]

FLOW_TTL: Final = 600.0
_TOKEN: Final = re.compile(r"[A-Za-z0-9_-]{20,128}")


class FlowInvalid(BadRequest):
    """The callback does not belong to a sign-in this browser started (or it was already used)."""

    reason = "oidc-state-invalid"
    title = "This sign-in link is not valid"


class FlowRecord(msgspec.Struct, frozen=True):
    """What the gateway remembers about one sign-in in flight."""

    provider: str
    binding: str  # SHA-256 (hex) of the browser binding cookie
    nonce: str
    verifier: str
    rd: str
    created_at: float


@dataclass(frozen=True, slots=True)
class Flow:
    """A started sign-in: the values for the authorization request."""

    state: str
    nonce: str
    code_challenge: str


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(FlowRecord).decode


def s256(verifier: str) -> str:
    """The PKCE S256 code challenge of a verifier (RFC 7636 §4.2, authlib's implementation)."""
    return str(create_s256_code_challenge(verifier))


def new_binding() -> str:
    """A fresh browser binding value (the cookie)."""
    return secrets.token_urlsafe(32)


def is_binding(value: str | None) -> bool:
    """Whether a cookie value has the shape of a browser binding (else a new one is drawn)."""
    return value is not None and _TOKEN.fullmatch(value) is not None


def _hash(value: str) -> str:
    return hashlib.sha256(value.encode("ascii", "replace")).hexdigest()


def _key(state: str) -> str:
    return "oidc-flow:" + _hash(state)


class FlowStore:
    """Start and finish sign-ins in the fast state (shared by the replicas)."""

    def __init__(self, state: FastState, clock: Clock) -> None:
        """Create the store.

        Args:
            state: The fast state.
            clock: Unix time (records also expire by the store's TTL).
        """
        self._state = state
        self._clock = clock

    async def begin(self, *, provider: str, binding: str, rd: str) -> Flow:
        """Start a sign-in for the browser holding ``binding``.

        Raises:
            ValueError: ``binding`` is not a binding value.
            StateUnavailable: the store cannot answer.
        """
        if not is_binding(binding):
            raise ValueError("not a browser binding value")
        state = secrets.token_urlsafe(32)
        nonce = secrets.token_urlsafe(32)
        verifier = secrets.token_urlsafe(48)  # 64 characters, inside RFC 7636's 43..128
        record = FlowRecord(
            provider=provider,
            binding=_hash(binding),
            nonce=nonce,
            verifier=verifier,
            rd=rd[:2048],
            created_at=self._clock.time(),
        )
        await self._state.set(_key(state), _encode(record), ttl=FLOW_TTL, only_if_absent=True)
        return Flow(state=state, nonce=nonce, code_challenge=s256(verifier))

    async def finish(self, *, state: str, binding: str | None, provider: str) -> FlowRecord:
        """Spend ``state``: return its record if it belongs to this browser and provider.

        Presented by the browser that started it, the record is deleted whatever the outcome, so every
        state works at most once. Presented by another browser it is left alone: a callback URL sent
        from elsewhere (its state read off a screen, a log, a referrer) used it up, and the person's
        own sign-in then failed (a fuzzing run).

        Raises:
            FlowInvalid: no such sign-in (missing, used, expired), another browser's, or another provider's.
            StateUnavailable: the store cannot answer.
        """
        if not state or not _TOKEN.fullmatch(state):
            raise FlowInvalid(
                "The answer from the identity provider has no valid state.", reason="oidc-state-missing"
            )
        # Looked at first, spent only by its own browser; the take is what makes it single-use.
        self._own(await self._state.get(_key(state)), binding)
        record = self._own(await self._state.take(_key(state)), binding)
        if record.provider != provider:
            raise FlowInvalid("This sign-in was started with another provider.", reason="oidc-state-mismatch")
        if self._clock.time() - record.created_at > FLOW_TTL:
            raise FlowInvalid("This sign-in has expired.", reason="oidc-state-unknown")
        return record

    @staticmethod
    def _own(raw: bytes | None, binding: str | None) -> FlowRecord:
        """The record in ``raw`` if it is there and this browser's (FlowInvalid otherwise)."""
        if raw is None:
            raise FlowInvalid("This sign-in was already used or has expired.", reason="oidc-state-unknown")
        try:
            record = _decode(raw)
        except msgspec.MsgspecError as exc:
            raise FlowInvalid("This sign-in could not be read.", reason="oidc-state-unknown") from exc
        if binding is None or not hmac.compare_digest(_hash(binding), record.binding):
            raise FlowInvalid("This sign-in was started in another browser.", reason="oidc-state-mismatch")
        return record
