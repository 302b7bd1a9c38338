"""Hand-off codes on both fast-state backends: single use, bound to one host, short-lived."""

from __future__ import annotations

import asyncio
import hashlib

import pytest

from gateway.clock import FakeClock
from gateway.identity.handoff import HandoffCodes, HandoffGrant, NotConfirmed, nonce_hash, normalise_host
from gateway.identity.levels import AuthLevel, Factor, FactorUse
from gateway.identity.sessions import Session, SessionStore
from gateway.settings.schema import SessionSettings
from gateway.store.fast import FastState


@pytest.fixture
def codes(fast_state: FastState, clock: FakeClock) -> HandoffCodes:
    return HandoffCodes(fast_state, clock)


@pytest.fixture
def sessions(fast_state: FastState, session_settings: SessionSettings, clock: FakeClock) -> SessionStore:
    return SessionStore(fast_state, session_settings, clock)


@pytest.fixture
async def source(sessions: SessionStore, clock: FakeClock) -> Session:
    _, session = await sessions.create(
        user_id=7,
        username="ada",
        level=AuthLevel.TWO_FACTOR,
        factors=(FactorUse(Factor.PASSWORD, clock.time()), FactorUse(Factor.TOTP, clock.time())),
        roles=("staff",),
        ip="192.0.2.1",
        user_agent="pytest",
        host="auth.example.com",
    )
    return session


async def issue(codes: HandoffCodes, source: Session, host: str = "wiki.example.com", ttl: float = 60) -> str:
    return await codes.issue(
        family=source.family, user_id=source.user_id, target_host=host, session=source, ttl=ttl
    )


async def test_issue_and_redeem(codes: HandoffCodes, source: Session, clock: FakeClock) -> None:
    code = await issue(codes, source)
    assert len(code) == 43
    grant = await codes.redeem(code, host="wiki.example.com")
    assert grant == HandoffGrant(
        family=source.family,
        user_id=7,
        target_host="wiki.example.com",
        session=source,
        issued_at=clock.time(),
        expires_at=clock.time() + 60,
    )


async def test_single_use(codes: HandoffCodes, source: Session) -> None:
    code = await issue(codes, source)
    assert await codes.redeem(code, host="wiki.example.com") is not None
    assert await codes.redeem(code, host="wiki.example.com") is None


async def test_concurrent_redemptions_one_wins(codes: HandoffCodes, source: Session) -> None:
    code = await issue(codes, source)
    grants = await asyncio.gather(*(codes.redeem(code, host="wiki.example.com") for _ in range(8)))
    assert sum(g is not None for g in grants) == 1


@pytest.mark.parametrize(
    "host", ["finance.example.com", "evil.com", "wiki.example.com.evil.com", "", "example.com"]
)
async def test_bound_to_its_host_and_burnt_elsewhere(codes: HandoffCodes, source: Session, host: str) -> None:
    code = await issue(codes, source)
    assert await codes.redeem(code, host=host) is None
    # A code shown to the wrong host is presumed leaked: it does not work on the right one either.
    assert await codes.redeem(code, host="wiki.example.com") is None


@pytest.mark.parametrize(
    "host",
    [
        "wiki.example.com",
        "WIKI.Example.COM",
        "wiki.example.com:443",
        "wiki.example.com.",
        " wiki.example.com",
    ],
)
async def test_host_is_normalised(codes: HandoffCodes, source: Session, host: str) -> None:
    code = await issue(codes, source, host="Wiki.Example.com:8443")
    assert await codes.redeem(code, host=host) is not None


async def test_expiry(codes: HandoffCodes, source: Session, clock: FakeClock) -> None:
    code = await issue(codes, source)
    clock.advance(59.9)
    assert await codes.redeem(code, host="wiki.example.com") is not None
    code = await issue(codes, source, ttl=10)
    clock.advance(10)
    assert await codes.redeem(code, host="wiki.example.com") is None


@pytest.mark.parametrize("ttl", [0, -1, 60.5, 3600])
async def test_ttl_is_bounded(codes: HandoffCodes, source: Session, ttl: float) -> None:
    with pytest.raises(ValueError, match="ttl"):
        await issue(codes, source, ttl=ttl)


async def test_session_must_match(codes: HandoffCodes, source: Session) -> None:
    with pytest.raises(ValueError, match="family"):
        await codes.issue(family="other", user_id=7, target_host="wiki.example.com", session=source)
    with pytest.raises(ValueError, match="family"):
        await codes.issue(family=source.family, user_id=8, target_host="wiki.example.com", session=source)
    with pytest.raises(ValueError, match="empty"):
        await issue(codes, source, host=":443")


@pytest.mark.parametrize("code", ["", "short", "x" * 500, "has spaces in it and is long enough", "A" * 43])
async def test_unknown_or_malformed_codes(codes: HandoffCodes, code: str) -> None:
    assert await codes.redeem(code, host="wiki.example.com") is None


async def test_only_the_hash_is_stored(codes: HandoffCodes, source: Session, fast_state: FastState) -> None:
    code = await issue(codes, source)
    assert await fast_state.get(f"handoff:{code}") is None
    raw = await fast_state.get("handoff:" + hashlib.sha256(code.encode()).hexdigest())
    assert raw is not None
    assert code.encode() not in raw


async def test_hand_off_joins_the_family_and_sign_out_ends_both(
    codes: HandoffCodes, sessions: SessionStore, source: Session
) -> None:
    code = await issue(codes, source)
    grant = await codes.redeem(code, host="wiki.example.com")
    assert grant is not None
    carried = grant.session
    wiki_id, wiki = await sessions.create(
        user_id=carried.user_id,
        username=carried.username,
        level=carried.level,
        factors=carried.factors,
        roles=carried.roles,
        ip="192.0.2.1",
        user_agent="pytest",
        host="wiki.example.com",
        family=grant.family,
    )
    assert (wiki.level, wiki.family, wiki.created_at) == (
        AuthLevel.TWO_FACTOR,
        source.family,
        source.created_at,
    )
    assert await sessions.revoke_family(source.family) == 2
    assert await sessions.get(wiki_id) is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Example.COM", "example.com"),
        ("example.com:8080", "example.com"),
        ("example.com.", "example.com"),
        ("[::1]:8443", "[::1]"),
        ("[::1", ""),
        ("", ""),
    ],
)
def test_normalise_host(raw: str, expected: str) -> None:
    assert normalise_host(raw) == expected


async def test_a_code_becomes_bound_then_confirmed_only_by_its_own_sign_in(
    codes: HandoffCodes, source: Session, clock: FakeClock
) -> None:
    """The three steps of a hand-off (the module docstring): each code works once, the auth host
    confirms only for the sign-in family that issued it, and the whole within the first minute."""
    first = await codes.issue(
        family=source.family, user_id=7, target_host="wiki.example.com", session=source,
        origin="https://wiki.example.com:8443",
    )  # fmt: skip
    grant = await codes.redeem(first, host="wiki.example.com")
    assert grant is not None
    assert (grant.origin, grant.binding, grant.confirmed) == ("https://wiki.example.com:8443", "", False)
    binding = nonce_hash("browser-nonce")
    bound = await codes.bind(grant, binding=binding)
    # Another sign-in (another browser) cannot confirm it, and the attempt burns it.
    assert await codes.confirm(bound, family="someone-else") is NotConfirmed.ELSEWHERE
    assert await codes.confirm(bound, family=source.family) is NotConfirmed.GONE
    bound = await codes.bind(grant, binding=binding)
    confirmed = await codes.confirm(bound, family=source.family)
    assert isinstance(confirmed, tuple)
    back, origin = confirmed
    assert origin == "https://wiki.example.com:8443"
    # Once: a replayed step (a reload) is told the code is gone, not that it is another browser's.
    assert await codes.confirm(bound, family=source.family) is NotConfirmed.GONE
    # A confirmed code cannot be confirmed again: it is only redeemed, where it was issued for.
    assert await codes.confirm(back, family=source.family) is NotConfirmed.ELSEWHERE
    bound = await codes.bind(grant, binding=binding)
    confirmed = await codes.confirm(bound, family=source.family)
    assert isinstance(confirmed, tuple)
    final = await codes.redeem(confirmed[0], host="wiki.example.com")
    assert final is not None
    assert (final.binding, final.confirmed, final.expires_at) == (binding, True, grant.expires_at)
    # An unbound code is never confirmed.
    first = await codes.issue(
        family=source.family, user_id=7, target_host="wiki.example.com", session=source, origin="https://w"
    )
    assert await codes.confirm(first, family=source.family) is NotConfirmed.ELSEWHERE
    # The steps share the first code's minute: a code bound after it is refused when spent.
    clock.advance(61)
    late = await codes.bind(grant, binding=binding)
    assert await codes.confirm(late, family=source.family) is NotConfirmed.GONE
