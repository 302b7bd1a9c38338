"""Sign-ins in flight and the logout index, on both fast-state backends (in-process and Redis).

A state works once, for the browser and provider that started it, for ten minutes; concurrent
callbacks with one state get exactly one record. Back-channel logout finds session families by the
provider's ``sid`` or ``sub`` and ends them on every replica.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from types import SimpleNamespace
from typing import cast

import pytest

from gateway.audit.trail import AuditLog
from gateway.clock import FakeClock
from gateway.identity.levels import AuthLevel, Factor, FactorUse
from gateway.identity.oidc.flow import FLOW_TTL, FlowInvalid, FlowStore, new_binding, s256
from gateway.identity.oidc.logout import OidcSignIn, OidcSignInIndex
from gateway.identity.oidc.service import CompletedSignIn, OidcService
from gateway.identity.sessions import SessionStore
from gateway.settings.schema import Duration, SessionSettings
from gateway.store.db import Database
from gateway.store.fast import FastState


@pytest.fixture
def flows(fast_state: FastState, clock: FakeClock) -> FlowStore:
    return FlowStore(fast_state, clock)


def test_s256_matches_rfc_7636_appendix_b() -> None:
    assert (
        s256("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk") == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    )


async def test_a_flow_finishes_once_with_its_secrets(
    flows: FlowStore, fast_state_peer: FastState, clock: FakeClock
) -> None:
    binding = new_binding()
    flow = await flows.begin(provider="corp", binding=binding, rd="/back")
    assert len({flow.state, flow.nonce, flow.code_challenge}) == 3
    # Another replica (same Redis) finishes it.
    record = await FlowStore(fast_state_peer, clock).finish(
        state=flow.state, binding=binding, provider="corp"
    )
    assert (record.provider, record.rd, record.nonce) == ("corp", "/back", flow.nonce)
    assert s256(record.verifier) == flow.code_challenge
    assert 43 <= len(record.verifier) <= 128
    with pytest.raises(FlowInvalid) as again:
        await flows.finish(state=flow.state, binding=binding, provider="corp")
    assert again.value.reason == "oidc-state-unknown"


async def test_the_browser_binding_is_stored_hashed(flows: FlowStore, fast_state: FastState) -> None:
    binding = new_binding()
    flow = await flows.begin(provider="corp", binding=binding, rd="")
    key = "oidc-flow:" + hashlib.sha256(flow.state.encode()).hexdigest()
    raw = await fast_state.get(key)
    assert raw is not None
    assert binding.encode() not in raw
    assert flow.state.encode() not in raw


@pytest.mark.parametrize(
    ("state", "binding", "provider", "reason"),
    [
        ("", "same", "corp", "oidc-state-missing"),
        ("short", "same", "corp", "oidc-state-missing"),
        ("unknown" * 5, "same", "corp", "oidc-state-unknown"),
        (None, None, "corp", "oidc-state-mismatch"),
        (None, "other", "corp", "oidc-state-mismatch"),
        (None, "same", "other-idp", "oidc-state-mismatch"),
    ],
    ids=["missing", "malformed", "unknown", "no-cookie", "other-browser", "other-provider"],
)
async def test_callbacks_that_are_not_this_browsers_sign_in_are_refused(
    flows: FlowStore, state: str | None, binding: str | None, provider: str, reason: str
) -> None:
    mine = new_binding()
    flow = await flows.begin(provider="corp", binding=mine, rd="")
    presented = {"same": mine, "other": new_binding(), None: None}[binding]
    with pytest.raises(FlowInvalid) as info:
        await flows.finish(state=flow.state if state is None else state, binding=presented, provider=provider)
    assert info.value.reason == reason
    assert info.value.status == 400
    if state is None and binding == "same":
        # Presented by its own browser, the state is spent whatever the outcome.
        with pytest.raises(FlowInvalid):
            await flows.finish(state=flow.state, binding=mine, provider="corp")
    elif state is None:
        # Another browser (or none) does not spend it: a callback URL sent from elsewhere used to,
        # and the person's own sign-in then failed (a fuzzing run). Their browser still finishes.
        record = await flows.finish(state=flow.state, binding=mine, provider="corp")
        assert record.provider == "corp"


async def test_a_flow_expires_after_ten_minutes(flows: FlowStore, clock: FakeClock) -> None:
    binding = new_binding()
    flow = await flows.begin(provider="corp", binding=binding, rd="")
    clock.advance(FLOW_TTL + 1)
    with pytest.raises(FlowInvalid):
        await flows.finish(state=flow.state, binding=binding, provider="corp")


async def test_concurrent_callbacks_with_one_state_get_one_record(flows: FlowStore) -> None:
    binding = new_binding()
    flow = await flows.begin(provider="corp", binding=binding, rd="")
    results = await asyncio.gather(
        *(flows.finish(state=flow.state, binding=binding, provider="corp") for _ in range(8)),
        return_exceptions=True,
    )
    assert sum(1 for r in results if not isinstance(r, BaseException)) == 1
    assert all(isinstance(r, FlowInvalid) for r in results if isinstance(r, BaseException))


async def test_a_binding_must_look_like_one(flows: FlowStore) -> None:
    with pytest.raises(ValueError, match="binding"):
        await flows.begin(provider="corp", binding="x", rd="")
    assert len(base64.urlsafe_b64decode(new_binding() + "=")) == 32


# -- logout index --------------------------------------------------------------------------------------


@pytest.fixture
def sessions(fast_state: FastState, session_settings: SessionSettings, clock: FakeClock) -> SessionStore:
    return SessionStore(fast_state, session_settings, clock)


async def _family(sessions: SessionStore, clock: FakeClock, user_id: int) -> str:
    _, session = await sessions.create(
        user_id=user_id,
        username=f"u{user_id}",
        level=AuthLevel.ONE_FACTOR,
        factors=(FactorUse(Factor.OIDC, clock.time()),),
        roles=(),
        ip="192.0.2.1",
        user_agent="pytest",
        host="auth.example.com",
    )
    return session.family


async def test_logout_index_finds_families_by_sid_or_sub(
    fast_state: FastState, fast_state_peer: FastState, sessions: SessionStore, clock: FakeClock
) -> None:
    index = OidcSignInIndex(fast_state, ttl=3600)
    peer = OidcSignInIndex(fast_state_peer, ttl=3600)
    a1, a2, b = (
        await _family(sessions, clock, 1),
        await _family(sessions, clock, 1),
        await _family(sessions, clock, 2),
    )
    await index.remember(
        family=a1, sign_in=OidcSignIn(provider="corp", sub="alice", sid="sid-1", id_token="t1")
    )
    await peer.remember(
        family=a2, sign_in=OidcSignIn(provider="corp", sub="alice", sid="sid-2", id_token="t2")
    )
    await index.remember(family=b, sign_in=OidcSignIn(provider="corp", sub="bob", sid="sid-3", id_token="t3"))
    assert (await index.get(a1)) == OidcSignIn(provider="corp", sub="alice", sid="sid-1", id_token="t1")
    # sid: exactly that sign-in; another provider's sid of the same value is another session.
    assert await peer.families(provider="other", sub=None, sid="sid-1") == ()
    assert await peer.families(provider="corp", sub=None, sid="sid-1") == (a1,)
    # sub alone: every sign-in of the subject (both replicas' entries survived the concurrent updates).
    assert set(await index.families(provider="corp", sub="alice", sid=None)) == {a1, a2}
    # sid and sub that disagree: nothing.
    assert await index.families(provider="corp", sub="alice", sid="sid-3") == ()
    assert await index.forget(b) is not None
    assert await index.get(b) is None


async def test_a_logout_with_sid_also_ends_the_subjects_sign_ins_that_had_none(
    fast_state: FastState, sessions: SessionStore, clock: FakeClock
) -> None:
    """A provider that put no sid in the ID token but names one in the logout token: the sign-in is
    known by subject only, and is ended (before, nothing was, with a 200). Another sid's sign-in of
    the same subject is another provider session, and stays; so does its index entry."""
    index = OidcSignInIndex(fast_state, ttl=3600)
    plain, other = await _family(sessions, clock, 1), await _family(sessions, clock, 1)
    await index.remember(
        family=plain, sign_in=OidcSignIn(provider="corp", sub="alice", sid=None, id_token="t")
    )
    await index.remember(
        family=other, sign_in=OidcSignIn(provider="corp", sub="alice", sid="sid-9", id_token="u")
    )
    assert await index.families(provider="corp", sub="alice", sid="sid-1") == (plain,)
    assert await index.families(provider="corp", sub="alice", sid="sid-1") == ()  # its entry is gone
    assert await index.families(provider="corp", sub=None, sid="sid-9") == (other,)


def _service(
    fast_state: FastState, sessions: SessionStore, clock: FakeClock, database: Database
) -> OidcService:
    return OidcService(
        db=database, fast=fast_state, audit=AuditLog(database, clock=clock), sessions=sessions, clock=clock
    )


async def test_a_sign_in_the_index_can_no_longer_hold_is_ended_and_an_ended_one_holds_no_place(
    fast_state: FastState, sessions: SessionStore, clock: FakeClock, database: Database
) -> None:
    """An attack run: a first session, kept active, then 200 more provider sign-ins of the same subject
    pushed it out of the index a back-channel logout reads, and the provider's logout ended every
    session but that one. The one the index drops now ends, as the per-account session cap ends one."""
    service = _service(fast_state, sessions, clock, database)

    def signed_in(sid: str) -> CompletedSignIn:
        token = SimpleNamespace(subject="alice", sid=sid)
        return cast(CompletedSignIn, SimpleNamespace(provider="corp", token=token, id_token="t"))

    first = await _family(sessions, clock, 1)
    await service.remember(signed_in("sid-1"), family=first)
    # An ended sign-in gives its place back: a sign-out forgets it in the indexes too.
    gone = await _family(sessions, clock, 2)
    await service.remember(signed_in("sid-1"), family=gone)
    assert await service.index.forget(gone) is not None
    for n in range(199):
        await service.remember(signed_in("sid-1"), family=await _family(sessions, clock, 100 + n))
    assert len(await sessions.list_user(1)) == 1  # 200 live sign-ins: all held
    await service.remember(signed_in("sid-1"), family=await _family(sessions, clock, 400))
    assert await sessions.list_user(1) == []
    assert await service.index.get(first) is None
    ended = await service.index.families(provider="corp", sub="alice", sid="sid-1")
    assert len(ended) == 200
    assert first not in ended


async def test_a_lifetime_a_reload_lengthens_is_what_later_sign_ins_are_indexed_for(
    fast_state: FastState, sessions: SessionStore, clock: FakeClock, database: Database
) -> None:
    """A re-attack run: the index's entries lived for the lifetime read at start, and a reload that
    lengthened session.lifetime let sessions outlive them, so the provider's logout ended nothing."""
    service = _service(fast_state, sessions, clock, database)
    sessions.use(SessionSettings(idle_timeout=Duration(3600), lifetime=Duration(8 * 3600)))
    family = await _family(sessions, clock, 7)
    token = SimpleNamespace(subject="vic", sid="sid-7")
    await service.remember(
        cast(CompletedSignIn, SimpleNamespace(provider="corp", token=token, id_token="t")), family=family
    )
    clock.advance(2 * 3600)  # past the lifetime at start (one hour), within the new one
    assert await service.index.families(provider="corp", sub="vic", sid="sid-7") == (family,)


async def test_a_logout_token_id_is_accepted_once(fast_state: FastState, fast_state_peer: FastState) -> None:
    assert await OidcSignInIndex(fast_state, ttl=60).claim_token_id(provider="corp", jti="j1", ttl=60)
    assert not await OidcSignInIndex(fast_state_peer, ttl=60).claim_token_id(
        provider="corp", jti="j1", ttl=60
    )
    assert await OidcSignInIndex(fast_state, ttl=60).claim_token_id(provider="other", jti="j1", ttl=60)
