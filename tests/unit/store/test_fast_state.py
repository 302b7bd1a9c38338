"""The fast-state contract, run against the in-process store and a real Redis (plus Sentinel, Cluster)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable

import pytest
import redis.asyncio

from gateway.clock import FakeClock
from gateway.errors import ServiceUnavailable
from gateway.store.fast import (
    FastState,
    MemoryFastState,
    RedisFastState,
    RedisMode,
    RedisTarget,
    StateUnavailable,
    Subscription,
    open_fast_state,
    parse_redis_url,
)
from gateway.store.fast.url import build_client
from tests.support.fast_state import (
    FAST_STATE_REDIS_URL,
    TOLERANT_TIMEOUTS,
    FastStateServer,
    MakeFastState,
    TcpProxy,
    Tick,
)
from tests.support.wait import wait_until_async

# A hang guard, not a speed assertion: anything slower than this is a bug, not a slow machine.
BOUND = 10.0


async def eventually_none(state: FastState, key: str, tick: Tick) -> None:
    """Let time pass until ``key`` is gone; fail if it never goes."""
    for _ in range(200):
        if await state.get(key) is None:
            return
        await tick(0.05)
    pytest.fail(f"{key} never expired")


async def next_message(subscription: Subscription) -> bytes:
    return await asyncio.wait_for(anext(subscription), BOUND)


# -- get / set -------------------------------------------------------------------------------------


async def test_satisfies_the_protocol(fast_state: FastState) -> None:
    assert isinstance(fast_state, FastState)
    async with fast_state.subscribe("proto") as subscription:
        assert isinstance(subscription, Subscription)


async def test_get_missing_is_none(fast_state: FastState) -> None:
    assert await fast_state.get("nope") is None


@pytest.mark.parametrize("value", [b"v", b"", b"\x00\xff" * 100, bytes(range(256))])
async def test_set_then_get_round_trips_bytes(fast_state: FastState, value: bytes) -> None:
    assert await fast_state.set("k", value) is True
    assert await fast_state.get("k") == value


async def test_set_overwrites(fast_state: FastState) -> None:
    await fast_state.set("k", b"one")
    await fast_state.set("k", b"two")
    assert await fast_state.get("k") == b"two"


async def test_only_if_absent_refuses_an_existing_key(fast_state: FastState) -> None:
    assert await fast_state.set("k", b"first", only_if_absent=True) is True
    assert await fast_state.set("k", b"second", only_if_absent=True) is False
    assert await fast_state.get("k") == b"first"


async def test_only_if_absent_succeeds_once_the_key_expired(fast_state: FastState, fast_tick: Tick) -> None:
    await fast_state.set("k", b"old", ttl=0.3)
    await eventually_none(fast_state, "k", fast_tick)
    assert await fast_state.set("k", b"new", only_if_absent=True) is True
    assert await fast_state.get("k") == b"new"


async def test_only_if_absent_concurrently_has_one_winner(fast_state: FastState) -> None:
    results = await asyncio.gather(
        *(fast_state.set("claim", str(i).encode(), only_if_absent=True) for i in range(50))
    )
    assert results.count(True) == 1


async def test_ttl_expires_only_that_key(fast_state: FastState, fast_tick: Tick) -> None:
    await fast_state.set("short", b"s", ttl=0.3)
    await fast_state.set("long", b"l", ttl=600)
    await fast_state.set("forever", b"f")
    await eventually_none(fast_state, "short", fast_tick)
    assert await fast_state.get("long") == b"l"
    assert await fast_state.get("forever") == b"f"


async def test_set_without_ttl_clears_an_earlier_ttl(fast_state: FastState, fast_tick: Tick) -> None:
    await fast_state.set("k", b"v", ttl=0.2)
    # Written after k with the same TTL: once it is gone, k's old TTL has run out too.
    await fast_state.set("witness", b"w", ttl=0.2)
    await fast_state.set("k", b"v")
    await eventually_none(fast_state, "witness", fast_tick)
    assert await fast_state.get("k") == b"v"


@pytest.mark.parametrize("ttl", [0, -1, -0.5])
async def test_non_positive_ttl_is_a_caller_bug(fast_state: FastState, ttl: float) -> None:
    with pytest.raises(ValueError, match="ttl must be a positive"):
        await fast_state.set("k", b"v", ttl=ttl)
    with pytest.raises(ValueError, match="ttl must be a positive"):
        await fast_state.compare_and_set("k", None, b"v", ttl=ttl)
    with pytest.raises(ValueError, match="window must be a positive"):
        await fast_state.incr_window("k", window=ttl)


# -- delete / take ---------------------------------------------------------------------------------


async def test_delete_counts_existing_keys(fast_state: FastState, fast_tick: Tick) -> None:
    await fast_state.set("a", b"1")
    await fast_state.set("b", b"2")
    await fast_state.set("gone", b"3", ttl=0.2)
    await eventually_none(fast_state, "gone", fast_tick)
    assert await fast_state.delete("a", "b", "missing", "gone", "a") == 2
    assert await fast_state.get("a") is None
    assert await fast_state.get("b") is None
    assert await fast_state.delete() == 0
    assert await fast_state.delete("a") == 0


async def test_take_is_single_use(fast_state: FastState) -> None:
    await fast_state.set("code", b"123456", ttl=60)
    assert await fast_state.take("code") == b"123456"
    assert await fast_state.take("code") is None
    assert await fast_state.get("code") is None


async def test_take_of_an_expired_key_is_none(fast_state: FastState, fast_tick: Tick) -> None:
    await fast_state.set("code", b"x", ttl=0.2)
    await eventually_none(fast_state, "code", fast_tick)
    assert await fast_state.take("code") is None


async def test_take_under_concurrent_takers_has_exactly_one_winner(
    fast_state: FastState, fast_state_peer: FastState
) -> None:
    await fast_state.set("challenge", b"nonce", ttl=60)
    takers = [(fast_state if i % 2 else fast_state_peer).take("challenge") for i in range(100)]
    results = await asyncio.gather(*takers)
    assert [r for r in results if r is not None] == [b"nonce"]


# -- incr_window -----------------------------------------------------------------------------------


async def test_incr_window_counts_and_adds_amount(fast_state: FastState) -> None:
    assert await fast_state.incr_window("hits", window=60) == 1
    assert await fast_state.incr_window("hits", window=60) == 2
    assert await fast_state.incr_window("hits", window=60, amount=5) == 7
    assert await fast_state.get("hits") == b"7"


async def test_incr_window_is_atomic_under_concurrency(
    fast_state: FastState, fast_state_peer: FastState
) -> None:
    increments = [(fast_state if i % 2 else fast_state_peer).incr_window("c", window=60) for i in range(200)]
    results = await asyncio.gather(*increments)
    assert sorted(results) == list(range(1, 201))
    assert await fast_state.get("c") == b"200"


async def test_incr_window_resets_after_the_window(fast_state: FastState, fast_tick: Tick) -> None:
    for _ in range(3):
        await fast_state.incr_window("w", window=0.3)
    await eventually_none(fast_state, "w", fast_tick)
    assert await fast_state.incr_window("w", window=0.3) == 1


async def test_later_increments_do_not_extend_the_window(fast_state: FastState, fast_tick: Tick) -> None:
    # Hammer the counter more often than the window: a sliding expiry would never let it reset.
    counts = []
    for _ in range(200):
        counts.append(await fast_state.incr_window("w", window=0.3))
        if len(counts) > 1 and counts[-1] == 1:
            break
        await fast_tick(0.05)
    assert counts[-1] == 1
    assert max(counts) > 1


async def test_incr_window_on_a_counter_written_without_ttl_adds_one(
    fast_state: FastState, fast_tick: Tick
) -> None:
    await fast_state.set("c", b"10")
    assert await fast_state.incr_window("c", window=0.3) == 11
    await eventually_none(fast_state, "c", fast_tick)


async def test_incr_window_on_a_non_counter_fails_closed(fast_state: FastState) -> None:
    await fast_state.set("c", b"not a number")
    with pytest.raises(StateUnavailable):
        await fast_state.incr_window("c", window=60)


# -- compare_and_set -------------------------------------------------------------------------------


async def test_compare_and_set_creates_only_when_absent(fast_state: FastState) -> None:
    assert await fast_state.compare_and_set("k", None, b"v1") is True
    assert await fast_state.compare_and_set("k", None, b"v2") is False
    assert await fast_state.get("k") == b"v1"


async def test_compare_and_set_replaces_only_the_expected_value(fast_state: FastState) -> None:
    await fast_state.set("k", b"v1")
    assert await fast_state.compare_and_set("k", b"other", b"v2") is False
    assert await fast_state.get("k") == b"v1"
    assert await fast_state.compare_and_set("k", b"v1", b"v2") is True
    assert await fast_state.get("k") == b"v2"


async def test_compare_and_set_expecting_a_missing_value_fails(fast_state: FastState) -> None:
    assert await fast_state.compare_and_set("k", b"v1", b"v2") is False
    assert await fast_state.get("k") is None


async def test_compare_and_set_to_none_deletes(fast_state: FastState) -> None:
    await fast_state.set("k", b"v")
    assert await fast_state.compare_and_set("k", b"v", None) is True
    assert await fast_state.get("k") is None
    assert await fast_state.compare_and_set("k", None, None) is True  # absent stays absent


async def test_compare_and_set_distinguishes_empty_from_absent(fast_state: FastState) -> None:
    await fast_state.set("k", b"")
    assert await fast_state.compare_and_set("k", None, b"x") is False
    assert await fast_state.compare_and_set("k", b"", b"x") is True


async def test_compare_and_set_applies_ttl(fast_state: FastState, fast_tick: Tick) -> None:
    assert await fast_state.compare_and_set("k", None, b"v", ttl=0.3) is True
    await eventually_none(fast_state, "k", fast_tick)


async def test_compare_and_set_has_one_winner_under_concurrency(
    fast_state: FastState, fast_state_peer: FastState
) -> None:
    await fast_state.set("k", b"v0")
    attempts = [
        (fast_state if i % 2 else fast_state_peer).compare_and_set("k", b"v0", f"w{i}".encode())
        for i in range(100)
    ]
    results = await asyncio.gather(*attempts)
    assert results.count(True) == 1
    winner = results.index(True)
    assert await fast_state.get("k") == f"w{winner}".encode()


async def test_compare_and_set_retry_loop_loses_no_update(
    fast_state: FastState, fast_state_peer: FastState
) -> None:
    async def increment(state: FastState) -> None:
        while True:
            current = await state.get("n")
            new = str(int(current or b"0") + 1).encode()
            if await state.compare_and_set("n", current, new):
                return

    await asyncio.gather(*(increment(fast_state if i % 2 else fast_state_peer) for i in range(50)))
    assert await fast_state.get("n") == b"50"


# -- publish / subscribe ---------------------------------------------------------------------------


async def test_publish_reaches_a_subscriber_on_another_replica(
    fast_state: FastState, fast_state_peer: FastState
) -> None:
    async with fast_state_peer.subscribe("invalidate") as subscription:
        for i in range(5):
            await fast_state.publish("invalidate", f"m{i}".encode())
        assert [await next_message(subscription) for _ in range(5)] == [b"m0", b"m1", b"m2", b"m3", b"m4"]


async def test_publish_reaches_every_subscriber(fast_state: FastState, fast_state_peer: FastState) -> None:
    async with fast_state.subscribe("ch") as first, fast_state_peer.subscribe("ch") as second:
        await fast_state.publish("ch", b"hello")
        assert await next_message(first) == b"hello"
        assert await next_message(second) == b"hello"


async def test_publish_without_subscribers_is_fine(fast_state: FastState) -> None:
    await fast_state.publish("nobody", b"x")


async def test_subscriber_only_sees_its_channel(fast_state: FastState) -> None:
    async with fast_state.subscribe("a") as subscription:
        await fast_state.publish("b", b"not for a")
        await fast_state.publish("a", b"for a")
        assert await next_message(subscription) == b"for a"


async def test_close_ends_iteration_and_stops_delivery(fast_state: FastState) -> None:
    subscription = fast_state.subscribe("ch")
    await subscription.wait_ready()
    received: list[bytes] = []

    async def consume() -> None:
        async for message in subscription:
            received.append(message)

    consumer = asyncio.create_task(consume())
    await fast_state.publish("ch", b"one")
    await wait_until_async(lambda: received, timeout=BOUND, what="the first message")
    await subscription.close()
    await asyncio.wait_for(consumer, BOUND)  # iteration ended
    await fast_state.publish("ch", b"two")
    assert received == [b"one"]
    await subscription.close()  # idempotent
    with pytest.raises(StateUnavailable):
        await subscription.wait_ready()


async def test_slow_subscriber_drops_oldest_without_blocking_publishers(
    make_fast_state: MakeFastState,
) -> None:
    state = make_fast_state(subscription_buffer=4)
    async with state.subscribe("ch") as subscription:
        for i in range(10):
            await state.publish("ch", str(i).encode())
        # The Redis reader runs in the background: wait until it has seen all ten.
        await wait_until_async(lambda: subscription.dropped >= 6, timeout=BOUND, what="six dropped")
        assert subscription.dropped == 6
        assert [await next_message(subscription) for _ in range(4)] == [b"6", b"7", b"8", b"9"]
        assert subscription.interruptions == 0


async def test_iterating_a_subscription_receives_messages(fast_state: FastState) -> None:
    subscription = fast_state.subscribe("ch")
    await subscription.wait_ready()
    await fast_state.publish("ch", b"x")
    async for message in subscription:
        assert message == b"x"
        break
    await subscription.close()


# -- namespaces, lifecycle -------------------------------------------------------------------------


async def test_namespaces_isolate_keys_and_channels(
    fast_state_backend: str, make_fast_state: MakeFastState, fast_namespace: str
) -> None:
    mine = make_fast_state(namespace=fast_namespace + "a:")
    theirs = make_fast_state(namespace=fast_namespace + "b:")
    await mine.set("k", b"mine")
    assert await theirs.get("k") is None
    await theirs.set("k", b"theirs")
    assert await mine.get("k") == b"mine"
    assert await mine.incr_window("c", window=60) == 1
    assert await theirs.incr_window("c", window=60) == 1
    async with theirs.subscribe("ch") as subscription:
        await mine.publish("ch", b"not for you")
        await theirs.publish("ch", b"marker")
        assert await next_message(subscription) == b"marker"


async def test_ping_answers(fast_state: FastState) -> None:
    await fast_state.ping()


async def test_closed_state_fails_closed(make_fast_state: MakeFastState) -> None:
    state = make_fast_state()
    subscription = state.subscribe("ch")
    await state.close()
    await state.close()  # idempotent
    with pytest.raises(StopAsyncIteration):
        await anext(subscription)
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: state.get("k"),
        lambda: state.set("k", b"v"),
        lambda: state.delete("k"),
        lambda: state.take("k"),
        lambda: state.incr_window("k", window=1),
        lambda: state.compare_and_set("k", None, b"v"),
        lambda: state.publish("ch", b"m"),
        state.ping,
    ]
    for call in calls:
        with pytest.raises(StateUnavailable):
            await call()
    with pytest.raises(StateUnavailable):
        state.subscribe("ch")


def test_state_unavailable_is_a_503() -> None:
    error = StateUnavailable("redis down")
    assert isinstance(error, ServiceUnavailable)
    assert error.status == 503
    assert error.reason == "state-unavailable"


async def test_open_fast_state_picks_the_backend(fast_namespace: str) -> None:
    memory = open_fast_state(None)
    assert isinstance(memory, MemoryFastState)
    await memory.close()
    shared = open_fast_state(FAST_STATE_REDIS_URL, namespace=fast_namespace, op_timeout=5.0)
    assert isinstance(shared, RedisFastState)
    assert shared.namespace == fast_namespace
    await shared.ping()
    await shared.close()
    with pytest.raises(ValueError, match="expected redis://"):
        open_fast_state("http://example.com")


# -- in-process specifics --------------------------------------------------------------------------


async def test_memory_ttl_boundary_follows_the_injected_clock(fast_clock: FakeClock) -> None:
    state = MemoryFastState(clock=fast_clock)
    await state.set("k", b"v", ttl=10)
    fast_clock.advance(9.999)
    assert await state.get("k") == b"v"
    fast_clock.advance(0.001)
    assert await state.get("k") is None
    await state.close()


async def test_memory_window_starts_at_the_first_increment(fast_clock: FakeClock) -> None:
    state = MemoryFastState(clock=fast_clock)
    assert await state.incr_window("w", window=10) == 1
    fast_clock.advance(9)
    assert await state.incr_window("w", window=10) == 2
    fast_clock.advance(1)
    assert await state.incr_window("w", window=10) == 1
    await state.close()


async def test_memory_sweep_purges_expired_keys_in_bounded_batches(fast_clock: FakeClock) -> None:
    state = MemoryFastState(clock=fast_clock, sweep_interval=1, sweep_batch=100)
    for i in range(250):
        await state.set(f"k{i}", b"v", ttl=5)
    await state.set("keep", b"v")
    assert len(state) == 251
    fast_clock.advance(6)
    await state.get("keep")  # any call may run the due sweep; one sweep removes one batch
    assert len(state) == 151
    for _ in range(2):
        fast_clock.advance(1)
        await state.get("keep")
    assert len(state) == 1
    await state.close()


async def test_memory_refreshing_a_key_does_not_grow_memory(fast_clock: FakeClock) -> None:
    state = MemoryFastState(clock=fast_clock)
    for _ in range(10_000):
        await state.set("session", b"v", ttl=3600)
    assert len(state) == 1
    assert len(state._expiries) < 100  # stale heap entries are compacted away
    await state.close()


async def test_memory_forgotten_subscription_is_released(fast_clock: FakeClock) -> None:
    import gc

    state = MemoryFastState(clock=fast_clock)
    state.subscribe("ch")  # dropped on the floor without close()
    gc.collect()
    await state.publish("ch", b"x")
    assert not state._subscribers.get("ch")
    await state.close()


def test_memory_rejects_nonsense_limits() -> None:
    with pytest.raises(ValueError, match=">= 1"):
        MemoryFastState(subscription_buffer=0)


# -- Redis specifics: namespacing on the wire, failing closed, reconnecting ------------------------


async def test_redis_keys_carry_the_namespace(
    fast_namespace: str, fast_redis_raw: redis.asyncio.Redis
) -> None:
    state = RedisFastState.from_url(FAST_STATE_REDIS_URL, namespace=fast_namespace, **TOLERANT_TIMEOUTS)
    try:
        await state.set("k", b"v", ttl=60)
        await state.incr_window("c", window=30)
        assert await fast_redis_raw.get(f"{fast_namespace}k") == b"v"
        assert 0 < await fast_redis_raw.pttl(f"{fast_namespace}k") <= 60_000
        assert 0 < await fast_redis_raw.pttl(f"{fast_namespace}c") <= 30_000
    finally:
        await state.close()
        await _cleanup(fast_namespace)


DEAD_URL = "redis://127.0.0.1:1/0"


async def test_unreachable_redis_fails_closed(fast_namespace: str) -> None:
    state = RedisFastState.from_url(DEAD_URL, namespace=fast_namespace, ready_timeout=0.5)
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: state.get("k"),
        lambda: state.set("k", b"v", ttl=1),
        lambda: state.delete("k"),
        lambda: state.take("k"),
        lambda: state.incr_window("k", window=1),
        lambda: state.compare_and_set("k", None, b"v"),
        lambda: state.publish("ch", b"m"),
        state.ping,
    ]
    for call in calls:
        with pytest.raises(StateUnavailable) as caught:
            await asyncio.wait_for(call(), BOUND)
        assert caught.value.status == 503
    with pytest.raises(StateUnavailable):
        async with state.subscribe("ch"):
            pass
    await state.close()


async def test_hung_redis_times_out_into_state_unavailable(
    fast_tcp_proxy: Callable[..., Awaitable[TcpProxy]], fast_namespace: str
) -> None:
    proxy = await fast_tcp_proxy(silent=True)
    state = RedisFastState.from_url(
        f"redis://127.0.0.1:{proxy.port}/0", namespace=fast_namespace, op_timeout=0.2, retries=0
    )
    for call in (lambda: state.get("k"), lambda: state.set("k", b"v"), state.ping):
        with pytest.raises(StateUnavailable):
            await asyncio.wait_for(call(), BOUND)
    await state.close()


async def test_redis_recovers_after_connections_drop(
    fast_tcp_proxy: Callable[..., Awaitable[TcpProxy]], fast_namespace: str
) -> None:
    proxy = await fast_tcp_proxy()
    url = f"redis://127.0.0.1:{proxy.port}/0"
    state = RedisFastState.from_url(
        url, namespace=fast_namespace, reconnect_backoff=(0.05, 0.2), **TOLERANT_TIMEOUTS
    )
    publisher = RedisFastState.from_url(FAST_STATE_REDIS_URL, namespace=fast_namespace, **TOLERANT_TIMEOUTS)
    try:
        await state.set("k", b"v", ttl=60)
        async with state.subscribe("ch") as subscription:
            proxy.drop()
            # The pooled connection died with the proxy's: one retry reconnects transparently.
            assert await state.get("k") == b"v"
            # Messages published while the subscription was down are lost; keep publishing until one
            # arrives through the re-established subscription.
            received = None
            for _ in range(200):
                await publisher.publish("ch", b"after")
                try:
                    received = await asyncio.wait_for(anext(subscription), 0.05)
                    break
                except TimeoutError:
                    continue
            assert received == b"after"
            assert subscription.interruptions >= 1
            assert proxy.connections >= 3
    finally:
        await state.close()
        await publisher.close()
        await _cleanup(fast_namespace)


async def _cleanup(namespace: str) -> None:
    client = redis.asyncio.Redis.from_url(FAST_STATE_REDIS_URL)
    keys = [k async for k in client.scan_iter(match=f"{namespace}*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


# -- URL parsing -----------------------------------------------------------------------------------

S, SE, C = RedisMode.STANDALONE, RedisMode.SENTINEL, RedisMode.CLUSTER

GOOD_URLS = [
    ("redis://localhost", RedisTarget(S, "", (("localhost", 6379),))),
    ("redis://localhost:6380/2", RedisTarget(S, "", (("localhost", 6380),), db=2)),
    ("redis://localhost?db=3", RedisTarget(S, "", (("localhost", 6379),), db=3)),
    ("redis://:s%40cret@h:1/0", RedisTarget(S, "", (("h", 1),), password="s@cret")),
    ("redis://user:pw@h", RedisTarget(S, "", (("h", 6379),), username="user", password="pw")),
    ("rediss://h:6380", RedisTarget(S, "", (("h", 6380),), tls=True)),
    ("redis://[::1]:7000", RedisTarget(S, "", (("::1", 7000),))),
    ("unix:///run/redis.sock", RedisTarget(S, "", unix_path="/run/redis.sock")),
    ("unix://:pw@/run/redis.sock?db=4", RedisTarget(S, "", unix_path="/run/redis.sock", db=4, password="pw")),
    (
        "redis+sentinel://s1:26379,s2:26380/mymaster",
        RedisTarget(SE, "", (("s1", 26379), ("s2", 26380)), service_name="mymaster"),
    ),
    (
        "redis+sentinel://:pw@s1,s2/mymaster/3",
        RedisTarget(SE, "", (("s1", 26379), ("s2", 26379)), service_name="mymaster", db=3, password="pw"),
    ),
    (
        "rediss+sentinel://s1/m?sentinel_password=spw",
        RedisTarget(SE, "", (("s1", 26379),), service_name="m", tls=True, sentinel_password="spw"),
    ),
    ("redis+cluster://n1:7000,n2:7001", RedisTarget(C, "", (("n1", 7000), ("n2", 7001)))),
    ("redis+cluster://n1:7000/", RedisTarget(C, "", (("n1", 7000),))),
    ("rediss+cluster://:pw@n1:7000", RedisTarget(C, "", (("n1", 7000),), tls=True, password="pw")),
    ("REDIS://h", RedisTarget(S, "", (("h", 6379),))),
]


@pytest.mark.parametrize(("url", "expected"), GOOD_URLS, ids=[u for u, _ in GOOD_URLS])
def test_parse_good_urls(url: str, expected: RedisTarget) -> None:
    assert parse_redis_url(url) == dataclasses.replace(expected, url=url)


BAD_URLS = [
    ("localhost:6379", "missing scheme"),
    ("http://h", "unknown scheme 'http'"),
    ("redis://", "missing host"),
    ("redis://h:notaport", "port 'notaport'"),
    ("redis://h:0", "port '0'"),
    ("redis://h:70000", "port '70000'"),
    ("redis://h/x", "database 'x'"),
    ("redis://h1,h2", "takes one host"),
    ("unix://", "missing socket path"),
    ("redis+sentinel://s1,s2", "needs /service_name"),
    ("redis+sentinel://s1/m/x", "database 'x'"),
    ("redis+sentinel://s1/m/1/extra", "needs /service_name"),
    ("redis+sentinel://s1,,s2/m", "missing host"),
    ("redis+sentinel://s1/m?timeout=3", "unsupported option"),
    ("redis+cluster://n1:7000/1", "only database 0"),
    ("redis+cluster://n1:7000?x=1", "unsupported option"),
    ("redis+cluster://[::1:7000", "malformed IPv6"),
]


@pytest.mark.parametrize(("url", "message"), BAD_URLS, ids=[u for u, _ in BAD_URLS])
def test_parse_bad_urls_says_what_is_expected(url: str, message: str) -> None:
    with pytest.raises(ValueError, match="expected redis://") as caught:
        parse_redis_url(url)
    assert message in str(caught.value)


def test_passwords_stay_out_of_reprs_and_errors() -> None:
    target = parse_redis_url("redis+sentinel://u:hunter2@s1/m?sentinel_password=hunter3")
    assert "hunter" not in repr(target)
    assert "hunter2" not in target.redacted()
    assert target.redacted().startswith("redis+sentinel://u:***@s1")
    with pytest.raises(ValueError, match=r"invalid Redis URL") as caught:
        parse_redis_url("redis://:hunter2@h:bad")
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "client_type"),
    [
        (FAST_STATE_REDIS_URL, "Redis"),
        ("redis+cluster://127.0.0.1:7000", "RedisCluster"),
        ("redis+sentinel://127.0.0.1:26379/m", "Redis"),
    ],
)
async def test_build_client_makes_the_right_client(url: str, client_type: str) -> None:
    client, sentinel = build_client(parse_redis_url(url), connect_timeout=0.25, op_timeout=0.5)
    assert type(client).__name__ == client_type
    assert (sentinel is not None) == url.startswith("redis+sentinel")
    await client.aclose()
    if sentinel is not None:
        await sentinel.aclose()


# -- real Sentinel and Cluster ---------------------------------------------------------------------


async def exercise_topology(url: str, namespace: str) -> None:
    """The contract's essentials through a topology, with two replicas (two clients)."""
    first = RedisFastState.from_url(url, namespace=namespace, **TOLERANT_TIMEOUTS)
    second = RedisFastState.from_url(url, namespace=namespace, **TOLERANT_TIMEOUTS)
    try:
        await first.ping()
        keys = [f"k{i}" for i in range(20)]  # spread over many slots in a cluster
        for key in keys:
            assert await first.set(key, key.encode(), ttl=60) is True
        assert [await second.get(key) for key in keys] == [key.encode() for key in keys]
        assert await second.delete(*keys) == 20
        await first.set("code", b"c", ttl=60)
        takes = await asyncio.gather(*(s.take("code") for s in (first, second) * 20))
        assert [t for t in takes if t is not None] == [b"c"]
        counts = await asyncio.gather(*(s.incr_window("n", window=60) for s in (first, second) * 50))
        assert sorted(counts) == list(range(1, 101))
        assert await first.compare_and_set("cas", None, b"1") is True
        assert await second.compare_and_set("cas", b"1", b"2") is True
        assert await first.compare_and_set("cas", b"1", b"3") is False
        await first.set("short", b"s", ttl=0.3)

        async def expired() -> bool:
            return await second.get("short") is None

        await wait_until_async(expired, timeout=BOUND, interval=0.05, what="the short key expired")
        async with second.subscribe("bus") as subscription:
            await first.publish("bus", b"hello")
            assert await next_message(subscription) == b"hello"
        await first.delete("n", "cas")
    finally:
        await first.close()
        await second.close()


@pytest.mark.peer
async def test_real_sentinel(fast_sentinel_server: FastStateServer, fast_namespace: str) -> None:
    try:
        await exercise_topology(fast_sentinel_server.url, fast_namespace)
    finally:
        await _cleanup(fast_namespace)


@pytest.mark.peer
async def test_real_cluster(fast_cluster_server: FastStateServer, fast_namespace: str) -> None:
    await exercise_topology(fast_cluster_server.url, fast_namespace)
