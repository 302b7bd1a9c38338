"""A session's opt-out (``Session.optout``) on every fast-state backend: given at sign-in, kept through
an elevation, changed in place for every live session of one user, seen by another replica at once."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import msgspec
import pytest

from gateway.clock import FakeClock
from gateway.identity.levels import AuthLevel, Factor, FactorUse
from gateway.identity.sessions import Session, SessionStore, encode_session, hash_session_id
from gateway.settings.schema import SessionSettings
from gateway.store.fast import FastState


@pytest.fixture
def store(fast_state: FastState, session_settings: SessionSettings, clock: FakeClock) -> SessionStore:
    return SessionStore(fast_state, session_settings, clock)


@pytest.fixture
def replica(fast_state_peer: FastState, session_settings: SessionSettings, clock: FakeClock) -> SessionStore:
    return SessionStore(fast_state_peer, session_settings, clock)


@contextlib.asynccontextmanager
async def listening(*stores: SessionStore) -> AsyncIterator[None]:
    tasks = [asyncio.create_task(s.run_invalidation_listener(retry_delay=0.05)) for s in stores]
    try:
        async with asyncio.timeout(10):
            for s in stores:
                await s.wait_listening()
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def sign_in(
    store: SessionStore, *, user_id: int = 7, optout: tuple[str, ...] = (), family: str | None = None
) -> tuple[str, Session]:
    return await store.create(
        user_id=user_id,
        username=f"user{user_id}",
        level=AuthLevel.ONE_FACTOR,
        factors=(FactorUse(Factor.PASSWORD, 1.0),),
        roles=(),
        ip="192.0.2.1",
        user_agent="pytest",
        host="auth.example.com",
        family=family,
        optout=optout,
    )


async def test_a_session_stored_before_the_field_existed_still_decodes(
    store: SessionStore, fast_state: FastState
) -> None:
    session_id, session = await sign_in(store)
    old = msgspec.json.decode(encode_session(session))
    del old["optout"]
    await fast_state.set(f"sess:{session.id_hash}", msgspec.json.encode(old), ttl=60)
    store.clear_cache()
    again = await store.get(session_id)
    assert again is not None
    assert again.optout == ()


async def test_the_optout_is_given_at_sign_in_and_kept_through_an_elevation(store: SessionStore) -> None:
    session_id, session = await sign_in(store, optout=("geolocation",))
    assert session.optout == ("geolocation",)
    new_id, elevated = await store.elevate(
        session_id, level=AuthLevel.TWO_FACTOR, factor=FactorUse(Factor.TOTP, 2.0)
    )
    assert elevated.optout == ("geolocation",)
    store.clear_cache()
    stored = await store.get(new_id)
    assert stored is not None
    assert stored.optout == ("geolocation",)


async def test_set_optout_changes_every_live_session_of_the_user_and_no_other(store: SessionStore) -> None:
    first, one = await sign_in(store)
    second, _ = await sign_in(store, family=one.family)
    other, _ = await sign_in(store, user_id=8)
    assert await store.set_optout(7, ("policy_analytics",)) == 2
    store.clear_cache()
    for session_id in (first, second):
        session = await store.get(session_id)
        assert session is not None
        assert session.optout == ("policy_analytics",)
        # Nothing else changes: same id, same sign-in.
        assert session.id_hash == hash_session_id(session_id)
    untouched = await store.get(other)
    assert untouched is not None
    assert untouched.optout == ()
    # The same value again is no change.
    assert await store.set_optout(7, ("policy_analytics",)) == 0
    assert await store.set_optout(99, ("policy_analytics",)) == 0


async def test_an_ended_session_is_not_brought_back(store: SessionStore) -> None:
    session_id, _ = await sign_in(store)
    await store.revoke(session_id)
    assert await store.set_optout(7, ("geolocation",)) == 0
    assert await store.get(session_id) is None


async def test_another_replica_drops_its_cached_copy_at_once(
    store: SessionStore, replica: SessionStore
) -> None:
    session_id, _ = await sign_in(store)
    async with listening(store, replica):
        cached = await replica.get(session_id)
        assert cached is not None
        assert cached.optout == ()
        assert await store.set_optout(7, ("policy_analytics",)) == 1
        # The fake clock stands still, so the cached entry never expires: only the broadcast can
        # make the replica read the new value.
        async with asyncio.timeout(5):
            while True:
                seen = await replica.get(session_id)
                assert seen is not None
                if seen.optout == ("policy_analytics",):
                    break
                await asyncio.sleep(0.01)
