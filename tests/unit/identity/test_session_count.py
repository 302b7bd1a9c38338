"""Counting the stored sessions for the overview, on every fast-state backend."""

from __future__ import annotations

from gateway.clock import FakeClock
from gateway.identity.levels import AuthLevel, Factor, FactorUse
from gateway.identity.session_count import count_sessions
from gateway.identity.sessions import SessionStore
from gateway.settings.schema import SessionSettings
from gateway.store.fast.base import FastState
from tests.support.fast_state import FAST_STATE_REDIS_URL, MakeFastState


async def _sign_in(store: SessionStore, clock: FakeClock, user_id: int) -> None:
    await store.create(
        user_id=user_id,
        username=f"u{user_id}",
        level=AuthLevel.ONE_FACTOR,
        factors=[FactorUse(Factor.PASSWORD, clock.time())],
        roles=[],
        ip="127.0.0.1",
        user_agent="test",
        host="127.0.0.1",
    )


async def test_sessions_of_this_namespace_are_counted(
    fast_state_backend: str, fast_state: FastState, make_fast_state: MakeFastState, clock: FakeClock
) -> None:
    redis_url = FAST_STATE_REDIS_URL if fast_state_backend == "redis" else None
    if fast_state_backend == "memory":
        # Each worker's sessions live inside it: the admin process cannot count them, and says so.
        counted = await count_sessions(fast_state, redis_url=redis_url, clock=clock)
        assert counted.count is None
        assert "memory" in counted.detail
        return
    assert (await count_sessions(fast_state, redis_url=redis_url, clock=clock)).count == 0
    store = SessionStore(fast_state, SessionSettings(), clock)
    for user_id in (1, 2, 3):
        await _sign_in(store, clock, user_id)
    # Another deployment sharing the store, and other keys of this one, do not count.
    other = make_fast_state(namespace=f"{fast_state_backend}-other:")
    await _sign_in(SessionStore(other, SessionSettings(), clock), clock, 9)
    await fast_state.set("sessx", b"not a session")
    counted = await count_sessions(fast_state, redis_url=redis_url, clock=clock)
    assert counted.count == 3, counted
    if fast_state_backend == "local":
        # Expired rows the sweeper has not deleted yet are not sessions any more.
        clock.advance(float(SessionSettings().lifetime) + 1)
        assert (await count_sessions(fast_state, redis_url=redis_url, clock=clock)).count == 0
