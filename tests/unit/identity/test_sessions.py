"""SessionStore on both fast-state backends (memory and Redis): lifecycle, rotation, revocation
across replicas, expiry on a fake clock, and fail-closed behaviour when Redis is down."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec
import pytest

from gateway.clock import FakeClock
from gateway.identity.levels import AuthLevel, Factor, FactorUse
from gateway.identity.sessions import (
    REVOCATION_CHANNEL,
    TOUCH_INTERVAL,
    Session,
    SessionEnded,
    SessionStore,
    hash_session_id,
)
from gateway.settings.schema import Duration, SessionSettings
from gateway.store.fast import FastState, MemoryFastState, RedisFastState, StateUnavailable
from tests.support.fast_state import FAST_STATE_REDIS_URL, TOLERANT_TIMEOUTS, MakeFastState, TcpProxy
from tests.support.wait import wait_until_async
from tests.unit.identity.conftest import IDLE, LIFETIME

# The guarantee under test: a revocation reaches every replica's cache within this many seconds.
PROPAGATION_BOUND = 1.0


@pytest.fixture
def store(fast_state: FastState, session_settings: SessionSettings, clock: FakeClock) -> SessionStore:
    return SessionStore(fast_state, session_settings, clock)


@pytest.fixture
def replica(fast_state_peer: FastState, session_settings: SessionSettings, clock: FakeClock) -> SessionStore:
    """Another gateway replica: its own SessionStore and cache; its own Redis client when on Redis."""
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
    store: SessionStore,
    *,
    user_id: int = 7,
    family: str | None = None,
    host: str = "auth.example.com",
    level: AuthLevel = AuthLevel.ONE_FACTOR,
) -> tuple[str, Session]:
    return await store.create(
        user_id=user_id,
        username=f"user{user_id}",
        level=level,
        factors=(FactorUse(Factor.PASSWORD, 1.0),),
        roles=("staff",),
        ip="192.0.2.1",
        user_agent="pytest",
        host=host,
        family=family,
    )


async def wait_gone(store: SessionStore, session_id: str, *, bound: float = PROPAGATION_BOUND) -> float:
    """Poll until ``store.get`` refuses the id; fail if that takes longer than ``bound``."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while await store.get(session_id) is not None:
        assert loop.time() - start < bound, "revocation did not reach the replica in time"
        await asyncio.sleep(0.01)
    return loop.time() - start


# -- creation and look-up --------------------------------------------------------------------------


async def test_create_then_get(store: SessionStore, clock: FakeClock) -> None:
    session_id, session = await sign_in(store)
    assert len(session_id) == 43  # token_urlsafe(32): 256 bits
    assert session.id_hash == hashlib.sha256(session_id.encode()).hexdigest()
    assert session.created_at == session.last_seen == clock.time()
    assert session.level is AuthLevel.ONE_FACTOR
    assert session.second_factor_at is None
    assert await store.get(session_id) == session


async def test_only_the_hash_is_stored(store: SessionStore, fast_state: FastState) -> None:
    session_id, session = await sign_in(store)
    raw = await fast_state.get(f"sess:{session.id_hash}")
    assert raw is not None
    assert session_id.encode() not in raw
    assert await fast_state.get(f"sess:{session_id}") is None
    index = await fast_state.get("usess:7")
    assert index is not None
    assert session_id.encode() not in index


async def test_a_fresh_replica_reads_from_the_store(store: SessionStore, replica: SessionStore) -> None:
    session_id, session = await sign_in(store)
    assert await replica.get(session_id) == session


@pytest.mark.parametrize(
    "bad", ["", "x", "a" * 500, "not a token!", "é" * 43, "../../etc/passwd", "a\r\nb" * 10]
)
async def test_malformed_ids_are_refused(store: SessionStore, bad: str) -> None:
    assert await store.get(bad) is None


async def test_unknown_id(store: SessionStore) -> None:
    assert await store.get("A" * 43) is None


async def test_cache_is_bounded(
    fast_state: FastState, session_settings: SessionSettings, clock: FakeClock
) -> None:
    small = SessionStore(fast_state, session_settings, clock, cache_size=2)
    ids = [(await sign_in(small))[0] for _ in range(5)]
    assert small.cached == 2
    for session_id in ids:
        assert await small.get(session_id) is not None
    assert small.cached == 2


# -- elevation rotates the id ----------------------------------------------------------------------


async def test_elevate_rotates_id(store: SessionStore, replica: SessionStore, clock: FakeClock) -> None:
    old_id, old = await sign_in(store)
    assert await replica.get(old_id) is not None  # warm another replica's cache with the old id
    clock.advance(5)
    totp = FactorUse(Factor.TOTP, clock.time())
    async with listening(replica):
        new_id, new = await store.elevate(old_id, level=AuthLevel.TWO_FACTOR, factor=totp)
        assert new_id != old_id
        assert new.id_hash != old.id_hash
        assert new.level is AuthLevel.TWO_FACTOR
        assert new.factors == (*old.factors, totp)
        assert new.second_factor_at == clock.time()
        assert (new.family, new.user_id, new.created_at) == (old.family, old.user_id, old.created_at)
        assert await store.get(old_id) is None
        assert await store.get(new_id) == new
        await wait_gone(replica, old_id)
    assert [s.id_hash for s in await store.list_user(7)] == [new.id_hash]


async def test_a_renewed_session_leaves_its_old_sign_in_to_end_whole(
    store: SessionStore, clock: FakeClock
) -> None:
    """The re-attack run: hand-offs redeemed from a copied cookie while a password change was ending
    the other sessions kept theirs. The changing session moves to a sign-in of its own, then the old one
    ends whole: a session that joined it before is ended, a hand-off joining after fails."""
    old_id, old = await sign_in(store)
    joined_id, _ = await sign_in(store, family=old.family, host="app.example.com")  # a hand-off, before
    clock.advance(5)
    new_id, renewed = await store.renew(old_id)
    assert renewed.family != old.family
    assert (renewed.created_at, renewed.user_id, renewed.level) == (old.created_at, old.user_id, old.level)
    assert await store.get(old_id) is None
    assert await store.revoke_family(old.family) == 1
    assert await store.get(joined_id) is None
    with pytest.raises(SessionEnded):
        await sign_in(store, family=old.family, host="app.example.com")  # a hand-off, after
    assert await store.get(new_id) == renewed
    # The new sign-in ends whole too (sign-out on every host), and keeps the old one's lifetime.
    assert await store.revoke_family(renewed.family) == 1


async def test_elevate_never_lowers_the_level(store: SessionStore, clock: FakeClock) -> None:
    session_id, _ = await sign_in(store)
    session_id, _ = await store.elevate(
        session_id, level=AuthLevel.TWO_FACTOR, factor=FactorUse(Factor.TOTP, clock.time())
    )
    _, session = await store.elevate(
        session_id, level=AuthLevel.ONE_FACTOR, factor=FactorUse(Factor.PASSWORD, clock.time())
    )
    assert session.level is AuthLevel.TWO_FACTOR


async def test_demote_drops_the_second_factor_on_every_replica(
    store: SessionStore, replica: SessionStore, clock: FakeClock
) -> None:
    session_id, _ = await sign_in(store)
    session_id, two = await store.elevate(
        session_id, level=AuthLevel.TWO_FACTOR, factor=FactorUse(Factor.TOTP, clock.time())
    )
    assert await replica.get(session_id) == two  # cached on the other replica
    async with listening(replica):
        assert await store.demote(two.id_hash) is True
        deadline = asyncio.get_running_loop().time() + PROPAGATION_BOUND
        while (seen := await replica.get(session_id)) is not None and seen.level is AuthLevel.TWO_FACTOR:
            assert asyncio.get_running_loop().time() < deadline, "the replica kept the two-factor copy"
            await asyncio.sleep(0.01)
    demoted = await store.get(session_id)
    assert demoted is not None  # still signed in, same id
    assert demoted.level is AuthLevel.ONE_FACTOR
    assert demoted.second_factor_at is None
    assert [f.factor for f in demoted.factors] == [Factor.PASSWORD]
    assert await store.demote("0" * 64) is False


async def test_elevate_unknown_session(store: SessionStore) -> None:
    with pytest.raises(SessionEnded):
        await store.elevate("B" * 43, level=AuthLevel.TWO_FACTOR, factor=FactorUse(Factor.TOTP, 0.0))


async def test_concurrent_elevations_rotate_once(store: SessionStore, clock: FakeClock) -> None:
    session_id, _ = await sign_in(store)
    factor = FactorUse(Factor.TOTP, clock.time())
    results = await asyncio.gather(
        *(store.elevate(session_id, level=AuthLevel.TWO_FACTOR, factor=factor) for _ in range(4)),
        return_exceptions=True,
    )
    winners = [r for r in results if isinstance(r, tuple)]
    assert len(winners) == 1
    assert all(isinstance(r, SessionEnded) for r in results if not isinstance(r, tuple))
    assert len(await store.list_user(7)) == 1


async def test_elevate_keeps_the_lifetime(store: SessionStore, clock: FakeClock) -> None:
    session_id, _ = await sign_in(store)
    for _ in range(3):
        clock.advance(LIFETIME / 4)
        session_id, _ = await store.elevate(
            session_id, level=AuthLevel.TWO_FACTOR, factor=FactorUse(Factor.TOTP, clock.time())
        )
    clock.advance(LIFETIME / 4 + 1)
    assert await store.get(session_id) is None


# -- revocation ------------------------------------------------------------------------------------


async def test_revoke(store: SessionStore) -> None:
    session_id, _ = await sign_in(store)
    assert await store.revoke(session_id) is True
    assert await store.get(session_id) is None
    assert await store.revoke(session_id) is False
    assert await store.list_user(7) == []


async def test_revoke_hash(store: SessionStore) -> None:
    session_id, session = await sign_in(store)
    assert await store.revoke_hash("not-a-hash") is False
    assert await store.revoke_hash(session.id_hash) is True
    assert await store.get(session_id) is None


async def test_cache_serves_a_revoked_session_without_the_broadcast(
    store: SessionStore, replica: SessionStore, clock: FakeClock
) -> None:
    """The control for the next test: without the listener, only cache_ttl bounds the staleness."""
    session_id, _ = await sign_in(store)
    assert await replica.get(session_id) is not None
    await store.revoke(session_id)
    assert await replica.get(session_id) is not None  # served from the replica's cache
    clock.advance(1.0)  # cache_ttl
    assert await replica.get(session_id) is None


async def test_revocation_reaches_another_replica_within_a_second(
    store: SessionStore, replica: SessionStore
) -> None:
    session_id, _ = await sign_in(store)
    async with listening(store, replica):
        assert await replica.get(session_id) is not None
        assert replica.cached == 1
        await store.revoke(session_id)
        # The fake clock stands still, so the cache entry never expires: only the broadcast can
        # make the replica refuse the session.
        await wait_gone(replica, session_id)
        assert replica.cached == 0


async def test_revoke_user(store: SessionStore, replica: SessionStore, clock: FakeClock) -> None:
    first, s1 = await sign_in(store)
    second, _ = await sign_in(store, host="wiki.example.com", family=s1.family)
    third, s3 = await sign_in(store)
    other_user, _ = await sign_in(store, user_id=8)
    async with listening(replica):
        for session_id in (first, second, third):
            assert await replica.get(session_id) is not None
        assert await store.revoke_user(7) == 3
        for session_id in (first, second, third):
            assert await store.get(session_id) is None
            await wait_gone(replica, session_id)
    assert await store.list_user(7) == []
    assert await store.get(other_user) is not None
    # A hand-off in flight cannot join an ended sign-in.
    for family in (s1.family, s3.family):
        with pytest.raises(SessionEnded):
            await sign_in(store, family=family, host="finance.example.com")
    assert await store.revoke_user(7) == 0


async def test_revoke_family(store: SessionStore) -> None:
    auth_id, auth = await sign_in(store)
    wiki_id, wiki = await sign_in(store, family=auth.family, host="wiki.example.com")
    other_id, _ = await sign_in(store)
    assert wiki.family == auth.family
    assert await store.revoke_family(auth.family) == 2
    assert await store.get(auth_id) is None
    assert await store.get(wiki_id) is None
    assert await store.get(other_id) is not None
    assert [s.host for s in await store.list_user(7)] == ["auth.example.com"]
    assert await store.revoke_family(auth.family) == 0
    with pytest.raises(SessionEnded):
        await sign_in(store, family=auth.family)


async def test_revoke_others(store: SessionStore) -> None:
    mine, me = await sign_in(store)
    others = [(await sign_in(store))[0] for _ in range(3)]
    stranger, _ = await sign_in(store, user_id=9)
    assert await store.revoke_others(mine, 7) == 3
    assert await store.get(mine) == me
    for session_id in others:
        assert await store.get(session_id) is None
    assert await store.get(stranger) is not None


# -- families --------------------------------------------------------------------------------------


async def test_joining_a_family_keeps_the_sign_in_time(store: SessionStore, clock: FakeClock) -> None:
    _, auth = await sign_in(store)
    clock.advance(1000)
    wiki_id, wiki = await sign_in(store, family=auth.family, host="wiki.example.com")
    assert wiki.created_at == auth.created_at
    assert wiki.last_seen == clock.time()
    clock.advance(LIFETIME - 1000 + 1)
    assert await store.get(wiki_id) is None


async def test_family_of_another_user(store: SessionStore) -> None:
    _, session = await sign_in(store, user_id=1)
    with pytest.raises(ValueError, match="another user"):
        await sign_in(store, user_id=2, family=session.family)


async def test_unknown_family(store: SessionStore) -> None:
    with pytest.raises(SessionEnded):
        await sign_in(store, family="made-up-family")


# -- time: idle timeout, lifetime, touch -----------------------------------------------------------


async def test_idle_timeout(store: SessionStore, clock: FakeClock) -> None:
    session_id, _ = await sign_in(store)
    clock.advance(IDLE - 1)
    assert await store.get(session_id) is not None
    clock.advance(2)
    assert await store.get(session_id) is None


async def test_idle_timeout_applies_to_cached_sessions(store: SessionStore, clock: FakeClock) -> None:
    session_id, _ = await sign_in(store)
    clock.advance(IDLE - 0.5)
    assert await store.get(session_id) is not None  # cached now
    clock.advance(0.6)  # still inside cache_ttl, but past the idle timeout
    assert await store.get(session_id) is None


async def test_touch_extends_idle_timeout(store: SessionStore, clock: FakeClock) -> None:
    session_id, _ = await sign_in(store)
    clock.advance(IDLE - 100)
    session = await store.get(session_id)
    assert session is not None
    await store.touch(session_id, session)
    clock.advance(IDLE - 100)
    assert await store.get(session_id) is not None


async def test_lifetime_ends_an_active_session(store: SessionStore, clock: FakeClock) -> None:
    session_id, _ = await sign_in(store)
    start = clock.time()
    while clock.time() < start + LIFETIME - 1000:
        clock.advance(900)
        session = await store.get(session_id)
        assert session is not None
        await store.touch(session_id, session)
    clock.advance(1000)
    assert await store.get(session_id) is None


async def test_touch_is_rate_limited(store: SessionStore, fast_state: FastState, clock: FakeClock) -> None:
    session_id, created = await sign_in(store)
    key = f"sess:{created.id_hash}"
    original = await fast_state.get(key)

    clock.advance(TOUCH_INTERVAL / 2)
    session = await store.get(session_id)
    assert session is not None
    await store.touch(session_id, session)
    assert await fast_state.get(key) == original  # no write

    clock.advance(TOUCH_INTERVAL / 2 + 1)
    session = await store.get(session_id)
    assert session is not None
    await store.touch(session_id, session)
    stored = await fast_state.get(key)
    assert stored is not None
    assert stored != original
    assert msgspec.json.decode(stored, type=Session).last_seen == clock.time()
    touched = await store.get(session_id)
    assert touched is not None
    assert touched.last_seen == clock.time()  # the cache holds the touched version

    clock.advance(10)
    session = await store.get(session_id)
    assert session is not None
    await store.touch(session_id, session)
    assert await fast_state.get(key) == stored  # within the interval again: no write


async def test_a_session_in_use_never_idles_out_under_a_short_idle_timeout(
    fast_state: FastState, clock: FakeClock
) -> None:
    """An attack run: with idle_timeout 20s, a client asking every 5 s was signed out 20 s after its
    sign-in, as last_seen was written once a minute. Under a timeout shorter than two minutes, it is
    written every half timeout; a session left alone still ends on time."""
    store = SessionStore(
        fast_state, SessionSettings(idle_timeout=Duration(20), lifetime=Duration(3600)), clock
    )
    session_id, _ = await sign_in(store)
    for _ in range(24):  # two minutes of a request every 5 s
        clock.advance(5)
        session = await store.get(session_id)
        assert session is not None, clock.time()
        await store.touch(session_id, session)
    clock.advance(21)
    assert await store.get(session_id) is None


async def test_touch_never_resurrects(store: SessionStore, fast_state: FastState, clock: FakeClock) -> None:
    session_id, session = await sign_in(store)
    await store.revoke(session_id)
    clock.advance(TOUCH_INTERVAL + 1)
    await store.touch(session_id, session)
    assert await fast_state.get(f"sess:{session.id_hash}") is None
    assert await store.get(session_id) is None


async def test_list_user_prunes_ended_sessions(
    store: SessionStore, fast_state: FastState, clock: FakeClock
) -> None:
    _, first = await sign_in(store)
    clock.advance(100)
    _, second = await sign_in(store)
    clock.advance(IDLE - 50)  # first is idle past the timeout, second is not
    assert [s.id_hash for s in await store.list_user(7)] == [second.id_hash]
    index = await fast_state.get("usess:7")
    assert index is not None
    assert msgspec.json.decode(index) == [second.id_hash]
    assert first.id_hash not in index.decode()


async def test_list_user_most_recent_first(store: SessionStore, clock: FakeClock) -> None:
    first_id, _ = await sign_in(store)
    clock.advance(10)
    await sign_in(store)
    clock.advance(TOUCH_INTERVAL + 1)
    session = await store.get(first_id)
    assert session is not None
    await store.touch(first_id, session)
    sessions = await store.list_user(7)
    assert [s.id_hash for s in sessions] == [hash_session_id(first_id), sessions[1].id_hash]


# -- the invalidation listener ---------------------------------------------------------------------


async def test_listener_clears_the_cache_when_messages_were_dropped(
    session_settings: SessionSettings, clock: FakeClock
) -> None:
    # In process only: there, two publications back to back are deterministically delivered before
    # the listener runs, so the one-message buffer must drop the first.
    state = MemoryFastState(subscription_buffer=1)
    store = SessionStore(state, session_settings, clock)
    try:
        async with listening(store):
            session_id, _ = await sign_in(store)
            assert store.cached == 1
            await state.publish(REVOCATION_CHANNEL, b"0" * 64)
            await state.publish(REVOCATION_CHANNEL, b"1" * 64)
            async with asyncio.timeout(5):
                while store.cached:
                    await asyncio.sleep(0.01)
            assert await store.get(session_id) is not None  # still valid: read again from the state
    finally:
        await state.close()


async def test_listener_clears_the_cache_after_a_lost_connection(
    fast_tcp_proxy: Callable[..., Awaitable[TcpProxy]],
    fast_namespace: str,
    session_settings: SessionSettings,
    clock: FakeClock,
) -> None:
    proxy = await fast_tcp_proxy()
    state = RedisFastState.from_url(
        f"redis://127.0.0.1:{proxy.port}/0",
        namespace=fast_namespace,
        reconnect_backoff=(0.05, 0.2),
        **TOLERANT_TIMEOUTS,
    )
    store = SessionStore(state, session_settings, clock, cache_ttl=0.2)
    try:
        async with listening(store):
            session_id, _ = await sign_in(store)
            assert store.cached == 1
            proxy.drop()  # anything published while the subscription is down would be lost
            async with asyncio.timeout(10):
                while store.cached:
                    await asyncio.sleep(0.02)
            assert await store.get(session_id) is not None
    finally:
        await state.close()
        await _delete_namespace(fast_namespace)


async def test_listener_survives_an_unavailable_store(
    make_fast_state: MakeFastState, session_settings: SessionSettings, clock: FakeClock
) -> None:
    state = make_fast_state()
    store = SessionStore(state, session_settings, clock)
    await state.close()
    attempts = 0
    subscribe = state.subscribe

    def counting(channel: str) -> Any:
        nonlocal attempts
        attempts += 1
        return subscribe(channel)

    state.subscribe = counting  # type: ignore[method-assign]
    task = asyncio.create_task(store.run_invalidation_listener(retry_delay=0.01))
    # Survival shows as retries: three attempts to subscribe, each refused, and the task still runs.
    await wait_until_async(lambda: attempts >= 3, what="three subscription attempts")
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


# -- fail closed -----------------------------------------------------------------------------------


async def test_get_raises_when_redis_is_down(session_settings: SessionSettings, clock: FakeClock) -> None:
    state = RedisFastState.from_url("redis://127.0.0.1:1/0", connect_timeout=0.2, op_timeout=0.2)
    store = SessionStore(state, session_settings, clock)
    try:
        with pytest.raises(StateUnavailable):
            await store.get("C" * 43)
        with pytest.raises(StateUnavailable):
            await sign_in(store)
    finally:
        await state.close()


async def test_get_raises_after_the_store_closed(
    store: SessionStore, fast_state: FastState, clock: FakeClock
) -> None:
    session_id, _ = await sign_in(store)
    clock.advance(2)  # past cache_ttl: the next look-up must ask the store
    await fast_state.close()
    with pytest.raises(StateUnavailable):
        await store.get(session_id)


async def _delete_namespace(namespace: str) -> None:
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(FAST_STATE_REDIS_URL)
    try:
        keys = [k async for k in client.scan_iter(match=f"{namespace}*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


async def test_too_many_sessions_end_the_least_recent(
    store: SessionStore, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("gateway.identity.sessions._MAX_USER_SESSIONS", 3)
    ids = []
    for _ in range(5):
        ids.append((await sign_in(store))[0])
        clock.advance(1)
    assert len(await store.list_user(7)) == 3
    assert [await store.get(i) is not None for i in ids] == [False, False, True, True, True]


async def test_a_password_alone_never_ends_a_fully_signed_in_session(
    store: SessionStore, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An attack run: 200 sign-ins with a stolen password, never passing the second factor, ended the
    owner's session through the per-account cap. Sessions owing a step go first; a sign-in never ends
    one that signed in more strongly: it ends itself."""
    monkeypatch.setattr("gateway.identity.sessions._MAX_USER_SESSIONS", 3)
    owner, _ = await sign_in(store, level=AuthLevel.TWO_FACTOR)
    clock.advance(1)
    partial = []
    for _ in range(5):
        partial.append((await sign_in(store, level=AuthLevel.ONE_FACTOR))[0])
        clock.advance(1)
    assert await store.get(owner) is not None
    assert [await store.get(i) is not None for i in partial] == [False, False, False, True, True]
    # With the cap full of stronger sessions, a password-only sign-in ends itself.
    for _ in range(2):
        await sign_in(store, level=AuthLevel.TWO_FACTOR)
        clock.advance(1)
    with pytest.raises(SessionEnded, match="sign out of some"):
        await sign_in(store, level=AuthLevel.ONE_FACTOR)
    assert await store.get(owner) is not None
    assert len(await store.list_user(7)) == 3
