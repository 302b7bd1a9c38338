"""Invitation links: how a new account gets its first password without an admin ever knowing it.

An admin creates an account with no password (or clears one) and hands the user a link
``<public_url>/.gateway/invite/<token>``; the user opens it and chooses their password there
(``gateway.web.invite``). A token:

* is 256 random bits (``secrets.token_urlsafe(32)``), stored only as its SHA-256
  (``invite:<hash>`` → the account's id and username), like session ids and hand-off codes, so a
  copy of the fast state does not hold a usable link;
* works once (``FastState.take``: of concurrent acceptances exactly one wins);
* expires after ``admin.invitation_ttl``, checked on the injected clock as well as by the key's TTL
  (Redis keeps its own time);
* is the account's only one: ``invite-user:<id>`` names the current hash, a new invitation replaces
  it and deletes the old key, and a token whose hash is no longer the current one is refused even if
  its key survived (two admins inviting at once: the last pointer written wins, the other link dies).

The token is never logged or audited; :attr:`Invitation.fingerprint` (the first 12 hex digits of its
hash) is what the audit trail and the console show.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from typing import Final

import msgspec

from gateway.clock import Clock
from gateway.store.fast.base import FastState

__all__ = ["INVITE_PATH", "Invitation", "Invitations", "IssuedInvitation", "fingerprint"]

#: Where the gateway's own page for a link lives, under the public URL (``/.gateway/invite/<token>``).
INVITE_PATH: Final = "/.gateway/invite/"
# token_urlsafe(32) is 43 characters; anything else cannot be one of ours (no store look-up for junk).
_TOKEN: Final = re.compile(r"[A-Za-z0-9_-]{43}")
_FINGERPRINT: Final = 12


@dataclass(frozen=True, slots=True)
class Invitation:
    """A valid invitation: whose account it opens, when it was issued and when it expires."""

    user_id: int
    username: str
    issued_at: float
    expires_at: float
    # The first hex digits of the token's hash: safe to log, audit and show.
    fingerprint: str


@dataclass(frozen=True, slots=True)
class IssuedInvitation:
    """A new invitation with its token, which exists in the clear only here: show it once."""

    token: str
    invitation: Invitation


class _Record(msgspec.Struct, frozen=True):
    user_id: int
    username: str
    issued_at: float
    expires_at: float


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(_Record).decode


def _hash(token: str) -> str:
    # Any text hashes (a junk token is fingerprinted for the audit trail too); ours are ASCII.
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def fingerprint(token: str) -> str:
    """What may be recorded about ``token``: a prefix of its hash, never the token."""
    return _hash(token)[:_FINGERPRINT]


def _key(digest: str) -> str:
    return "invite:" + digest


def _user_key(user_id: int) -> str:
    return f"invite-user:{user_id}"


class Invitations:
    """Issue, look up, accept and withdraw invitation tokens in the fast state."""

    def __init__(self, state: FastState, clock: Clock) -> None:
        """Create the service.

        Args:
            state: The fast state shared by the replicas.
            clock: Unix time (expiry is checked on it as well as by the store's TTL).
        """
        self._state = state
        self._clock = clock

    async def issue(self, *, user_id: int, username: str, ttl: float) -> IssuedInvitation:
        """Issue a token for the account, replacing any earlier one (which stops working at once).

        Args:
            user_id: The account.
            username: Its canonical username (shown on the page the link opens).
            ttl: Seconds the link works.

        Returns:
            The token (to put in the link, shown once) and what is known about it.

        Raises:
            ValueError: ``ttl`` is not positive.
            StateUnavailable: The store cannot answer.
        """
        if not ttl > 0:
            raise ValueError(f"invitation ttl must be positive, got {ttl!r}")
        now = self._clock.time()
        token = secrets.token_urlsafe(32)
        digest = _hash(token)
        record = _Record(user_id=user_id, username=username, issued_at=now, expires_at=now + ttl)
        await self._state.set(_key(digest), _encode(record), ttl=ttl, only_if_absent=True)
        previous = await self._state.get(_user_key(user_id))
        # The pointer first, the old key second: from this write on the old token is refused (its hash
        # is no longer the current one) even if deleting it fails.
        await self._state.set(_user_key(user_id), digest.encode("ascii"), ttl=ttl)
        if previous is not None and previous.decode("ascii", "replace") != digest:
            await self._state.delete(_key(previous.decode("ascii", "replace")))
        return IssuedInvitation(token=token, invitation=self._invitation(record, digest))

    async def peek(self, token: str) -> Invitation | None:
        """The invitation ``token`` opens, without using it (the page that shows the form).

        Returns:
            It, or None if the token is malformed, unknown, used, superseded or expired.

        Raises:
            StateUnavailable: The store cannot answer.
        """
        if not _TOKEN.fullmatch(token):
            return None
        digest = _hash(token)
        raw = await self._state.get(_key(digest))
        return await self._valid(raw, digest)

    async def take(self, token: str) -> Invitation | None:
        """Use ``token``: it works once, whoever races it.

        Returns:
            The invitation, or None if the token is malformed, unknown, used, superseded or expired.

        Raises:
            StateUnavailable: The store cannot answer.
        """
        if not _TOKEN.fullmatch(token):
            return None
        digest = _hash(token)
        raw = await self._state.take(_key(digest))
        invitation = await self._valid(raw, digest)
        if invitation is not None:
            # Only if it is still ours: a newer invitation issued meanwhile keeps its pointer.
            await self._state.compare_and_set(_user_key(invitation.user_id), digest.encode("ascii"), None)
        return invitation

    async def pending(self, user_id: int) -> Invitation | None:
        """The account's current invitation, or None (the console shows when it expires)."""
        pointer = await self._state.get(_user_key(user_id))
        if pointer is None:
            return None
        digest = pointer.decode("ascii", "replace")
        invitation = await self._valid(await self._state.get(_key(digest)), digest)
        return invitation if invitation is not None and invitation.user_id == user_id else None

    async def withdraw(self, user_id: int) -> bool:
        """End the account's invitation, if any (its link stops working). Returns whether one was live."""
        pointer = await self._state.take(_user_key(user_id))
        if pointer is None:
            return False
        return await self._state.delete(_key(pointer.decode("ascii", "replace"))) > 0

    async def _valid(self, raw: bytes | None, digest: str) -> Invitation | None:
        if raw is None:
            return None
        try:
            record = _decode(raw)
        except msgspec.MsgspecError:
            return None
        if self._clock.time() >= record.expires_at:
            return None
        current = await self._state.get(_user_key(record.user_id))
        if current is None or current.decode("ascii", "replace") != digest:
            return None  # superseded by a newer invitation, or withdrawn
        return self._invitation(record, digest)

    @staticmethod
    def _invitation(record: _Record, digest: str) -> Invitation:
        return Invitation(
            user_id=record.user_id,
            username=record.username,
            issued_at=record.issued_at,
            expires_at=record.expires_at,
            fingerprint=digest[:_FINGERPRINT],
        )
