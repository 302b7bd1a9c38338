"""Invitation tokens on every fast-state backend: single use, superseded by a newer one, expired on the
clock, stored only as a hash, and never mistaken for junk input."""

from __future__ import annotations

import asyncio
import hashlib

import pytest

from gateway.clock import FakeClock
from gateway.identity.invitations import Invitation, Invitations, fingerprint
from gateway.store.fast import FastState

TTL = 72 * 3600.0


@pytest.fixture
def invitations(fast_state: FastState, clock: FakeClock) -> Invitations:
    return Invitations(fast_state, clock)


async def test_issue_peek_and_take(invitations: Invitations, fast_state: FastState, clock: FakeClock) -> None:
    issued = await invitations.issue(user_id=7, username="nina", ttl=TTL)
    assert len(issued.token) == 43
    expected = Invitation(
        user_id=7,
        username="nina",
        issued_at=clock.time(),
        expires_at=clock.time() + TTL,
        fingerprint=hashlib.sha256(issued.token.encode()).hexdigest()[:12],
    )
    assert issued.invitation == expected
    assert fingerprint(issued.token) == expected.fingerprint
    # Looking does not use it up; the store holds the hash only, never the token.
    assert await invitations.peek(issued.token) == expected
    assert await invitations.peek(issued.token) == expected
    assert await fast_state.get("invite:" + hashlib.sha256(issued.token.encode()).hexdigest()) is not None
    assert await fast_state.get("invite:" + issued.token) is None
    assert await invitations.pending(7) == expected
    assert await invitations.take(issued.token) == expected


async def test_single_use(invitations: Invitations) -> None:
    issued = await invitations.issue(user_id=7, username="nina", ttl=TTL)
    assert await invitations.take(issued.token) is not None
    assert await invitations.take(issued.token) is None
    assert await invitations.peek(issued.token) is None
    assert await invitations.pending(7) is None


async def test_concurrent_acceptances_one_wins(invitations: Invitations) -> None:
    issued = await invitations.issue(user_id=7, username="nina", ttl=TTL)
    taken = await asyncio.gather(*(invitations.take(issued.token) for _ in range(8)))
    assert sum(t is not None for t in taken) == 1


async def test_a_new_invitation_supersedes_the_old_one(invitations: Invitations) -> None:
    old = await invitations.issue(user_id=7, username="nina", ttl=TTL)
    new = await invitations.issue(user_id=7, username="nina", ttl=TTL)
    assert old.token != new.token
    assert await invitations.peek(old.token) is None
    assert await invitations.take(old.token) is None
    assert await invitations.pending(7) == new.invitation
    # Another account's invitation is its own.
    other = await invitations.issue(user_id=8, username="omar", ttl=TTL)
    assert await invitations.take(new.token) == new.invitation
    assert await invitations.take(other.token) == other.invitation


async def test_a_superseded_token_whose_key_survived_is_still_refused(
    invitations: Invitations, fast_state: FastState
) -> None:
    # Two admins inviting at once: both keys are written, the last pointer wins. Simulated by putting
    # the first key back after the second invitation deleted it.
    first = await invitations.issue(user_id=7, username="nina", ttl=TTL)
    key = "invite:" + hashlib.sha256(first.token.encode()).hexdigest()
    raw = await fast_state.get(key)
    assert raw is not None
    second = await invitations.issue(user_id=7, username="nina", ttl=TTL)
    await fast_state.set(key, raw, ttl=TTL)
    assert await invitations.peek(first.token) is None
    assert await invitations.take(first.token) is None
    # ...and using the stale one did not disturb the current one.
    assert await invitations.take(second.token) == second.invitation


async def test_expiry_on_the_clock(invitations: Invitations, clock: FakeClock) -> None:
    issued = await invitations.issue(user_id=7, username="nina", ttl=3600)
    clock.advance(3599)
    assert await invitations.peek(issued.token) is not None
    clock.advance(1)
    assert await invitations.peek(issued.token) is None
    assert await invitations.take(issued.token) is None
    assert await invitations.pending(7) is None


async def test_withdraw(invitations: Invitations) -> None:
    issued = await invitations.issue(user_id=7, username="nina", ttl=TTL)
    assert await invitations.withdraw(7) is True
    assert await invitations.take(issued.token) is None
    assert await invitations.withdraw(7) is False


@pytest.mark.parametrize(
    "token", ["", "short", "x" * 42, "x" * 44, "a" * 42 + "=", "../" + "a" * 40, "a" * 42 + "\u00e9"]
)
async def test_malformed_tokens_are_refused_without_a_look_up(invitations: Invitations, token: str) -> None:
    assert await invitations.peek(token) is None
    assert await invitations.take(token) is None


async def test_a_ttl_must_be_positive(invitations: Invitations) -> None:
    with pytest.raises(ValueError, match="positive"):
        await invitations.issue(user_id=7, username="nina", ttl=0)
