"""UpstreamPool: balancing, exclusion, passive ejection and snapshots, driven by a fake clock."""

from __future__ import annotations

import logging
from collections import Counter

import pytest

from gateway.clock import FakeClock
from gateway.errors import ServiceUnavailable
from gateway.settings.schema import ActiveHealthCheck, Duration, PassiveHealthCheck, Route
from gateway.upstream import Target, UpstreamPool

A, B, C = "http://10.0.0.1:8080", "http://10.0.0.2:8080", "http://10.0.0.3:8080"


def make_pool(
    clock: FakeClock,
    upstreams: tuple[str, ...] = (A, B, C),
    *,
    balance: str = "round_robin",
    failures: int = 3,
    ejection_time: float = 30,
) -> UpstreamPool:
    assert balance in ("round_robin", "least_outstanding")
    return UpstreamPool(
        "app",
        upstreams,
        balance=balance,  # type: ignore[arg-type]
        passive=PassiveHealthCheck(consecutive_failures=failures, ejection_time=Duration(ejection_time)),
        active=None,
        clock=clock,
    )


def pick_release(pool: UpstreamPool, n: int, *, exclude: Target | None = None) -> Counter[str]:
    counts: Counter[str] = Counter()
    for _ in range(n):
        target = pool.pick(exclude=exclude)
        counts[target.url] += 1
        pool.release(target, ok=True)
    return counts


def fail(pool: UpstreamPool, target: Target, times: int) -> None:
    for _ in range(times):
        target.outstanding += 1  # as if picked
        pool.release(target, ok=False)


# --- URL parsing -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "authority"),
    [
        ("http://app", b"app"),
        ("http://app:80", b"app"),
        ("http://app:443", b"app:443"),
        ("https://app:443/x", b"app"),
        ("https://app:8443", b"app:8443"),
        ("http://[::1]:8080", b"[::1]:8080"),
        ("http://[::1]", b"[::1]"),
    ],
)
def test_the_host_an_upstream_is_sent_is_its_own_authority(raw: str, authority: bytes) -> None:
    assert Target.from_url(raw).authority == authority


@pytest.mark.parametrize(
    ("raw", "url", "host", "port", "base_path"),
    [
        ("http://10.0.0.5:8080", "http://10.0.0.5:8080", "10.0.0.5", 8080, ""),
        ("http://app", "http://app:80", "app", 80, ""),
        ("https://app", "https://app:443", "app", 443, ""),
        ("https://app/", "https://app:443", "app", 443, ""),
        ("http://app:81/prefix/", "http://app:81", "app", 81, "/prefix"),
        ("http://app/a/b", "http://app:80", "app", 80, "/a/b"),
        ("HTTP://App.Example.COM:9000", "http://app.example.com:9000", "app.example.com", 9000, ""),
        ("http://[::1]:8080/x", "http://[::1]:8080", "::1", 8080, "/x"),
        (" http://app ", "http://app:80", "app", 80, ""),
    ],
)
def test_target_from_url(raw: str, url: str, host: str, port: int, base_path: str) -> None:
    target = Target.from_url(raw)
    assert (target.url, target.host, target.port, target.base_path) == (url, host, port, base_path)
    assert target.scheme == url.split(":", 1)[0]
    assert (target.outstanding, target.healthy, target.ejected_until, target.consecutive_failures) == (
        0,
        True,
        0.0,
        0,
    )


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "app:8080",
        "/relative",
        "ftp://app",
        "ws://app",
        "unix:///run/app.sock",
        "http://",
        "http://:8080",
        "http://user:pw@app",
        "http://user@app",
        "http://app/?q=1",
        "http://app/#frag",
        "http://app?",
        "http://app:99999",
        "http://app:0",
        "http://app:port",
    ],
)
def test_target_from_url_rejects(raw: str) -> None:
    with pytest.raises(ValueError, match="upstream URL"):
        Target.from_url(raw)


def test_available_combines_health_and_ejection() -> None:
    target = Target.from_url(A)
    assert target.available(0.0)
    target.ejected_until = 10.0
    assert not target.available(9.9)
    assert target.ejected(9.9)
    assert target.available(10.0)
    target.healthy = False
    assert not target.available(11.0)


# --- construction ------------------------------------------------------------------------------


def test_from_route(clock: FakeClock) -> None:
    check = ActiveHealthCheck(path="/healthz")
    route = Route(
        name="wiki",
        host="wiki.example.com",
        upstreams=(A, "https://10.0.0.9/base/"),
        balance="least_outstanding",
        health_check=check,
        passive_health_check=PassiveHealthCheck(consecutive_failures=2),
    )
    pool = UpstreamPool.from_route(route, clock=clock)
    assert pool.route_name == "wiki"
    assert pool.balance == "least_outstanding"
    assert pool.active is check
    assert pool.passive.consecutive_failures == 2
    assert [(t.url, t.base_path) for t in pool.targets] == [(A, ""), ("https://10.0.0.9:443", "/base")]


@pytest.mark.parametrize(
    ("upstreams", "message"),
    [
        ((), "no upstreams"),
        ((A, "http://10.0.0.1:8080/"), "duplicate upstream"),
        ((A, "gopher://x"), "upstream URL"),
    ],
)
def test_invalid_pools(clock: FakeClock, upstreams: tuple[str, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_pool(clock, upstreams)


def test_negative_passive_settings_rejected(clock: FakeClock) -> None:
    with pytest.raises(ValueError, match="must not be negative"):
        make_pool(clock, failures=-1)


# --- balancing ---------------------------------------------------------------------------------


def test_round_robin_distribution(clock: FakeClock) -> None:
    pool = make_pool(clock)
    assert pick_release(pool, 1000) == {A: 334, B: 333, C: 333}
    assert all(t.outstanding == 0 for t in pool.targets)


def test_round_robin_order_is_rotation(clock: FakeClock) -> None:
    pool = make_pool(clock)
    order = [pool.pick().url for _ in range(6)]
    assert order == [A, B, C, A, B, C]
    assert [t.outstanding for t in pool.targets] == [2, 2, 2]


def test_round_robin_skips_unavailable(clock: FakeClock) -> None:
    pool = make_pool(clock)
    pool.targets[1].healthy = False
    assert pick_release(pool, 1000) == {A: 500, C: 500}


def test_single_target(clock: FakeClock) -> None:
    pool = make_pool(clock, (A,))
    assert pick_release(pool, 10) == {A: 10}


def test_least_outstanding_prefers_idle_targets(clock: FakeClock) -> None:
    pool = make_pool(clock, balance="least_outstanding")
    a, b, c = pool.targets
    # Requests held on A (two) and B (one): new requests fill the gaps before anyone gets a third.
    a.outstanding, b.outstanding = 2, 1
    assert pool.pick() is c
    first_tie = pool.pick()
    assert first_tie in (b, c)  # B and C tie at 1
    assert pool.pick() in (b, c)
    assert first_tie.outstanding == 2
    assert [t.outstanding for t in pool.targets] == [2, 2, 2]
    assert {pool.pick().url for _ in range(3)} == {A, B, C}
    assert [t.outstanding for t in pool.targets] == [3, 3, 3]


def test_least_outstanding_follows_held_requests(clock: FakeClock) -> None:
    pool = make_pool(clock, balance="least_outstanding")
    a, b, c = pool.targets
    slow = [pool.pick() for _ in range(3)]  # one long request on each
    assert {t.url for t in slow} == {A, B, C}
    # B finishes; it is now the only target with nothing in flight, so it gets the next requests.
    pool.release(b, ok=True)
    assert pool.pick() is b
    # All tie again at 1: the next three spread over all three targets.
    assert {pool.pick().url for _ in range(3)} == {A, B, C}
    assert [a.outstanding, b.outstanding, c.outstanding] == [2, 2, 2]


def test_least_outstanding_ties_spread(clock: FakeClock) -> None:
    pool = make_pool(clock, balance="least_outstanding")
    assert pick_release(pool, 1000) == {A: 334, B: 333, C: 333}


def test_least_outstanding_skips_unavailable(clock: FakeClock) -> None:
    pool = make_pool(clock, balance="least_outstanding")
    a, b, c = pool.targets
    b.outstanding = 5
    a.healthy = False  # idle but unhealthy: must not win
    assert pool.pick() is c
    assert pool.pick() is c  # 1 < 5


def test_release_never_goes_negative(clock: FakeClock) -> None:
    pool = make_pool(clock)
    target = pool.targets[0]
    pool.release(target, ok=True)
    assert target.outstanding == 0


# --- exclude (retry on another target) ---------------------------------------------------------


@pytest.mark.parametrize("balance", ["round_robin", "least_outstanding"])
def test_exclude_picks_another_target(clock: FakeClock, balance: str) -> None:
    pool = make_pool(clock, balance=balance)
    for _ in range(20):
        first = pool.pick()
        pool.release(first, ok=False)
        retry = pool.pick(exclude=first)
        assert retry is not first
        pool.release(retry, ok=True)


def test_exclude_only_available_target_raises(clock: FakeClock) -> None:
    pool = make_pool(clock, (A, B))
    pool.targets[1].healthy = False
    first = pool.pick()
    with pytest.raises(ServiceUnavailable, match="no other upstream target of route app"):
        pool.pick(exclude=first)
    # Without the exclusion the same target is still there for the caller to choose.
    assert pool.pick() is first


def test_exclude_single_target_pool(clock: FakeClock) -> None:
    pool = make_pool(clock, (A,))
    with pytest.raises(ServiceUnavailable):
        pool.pick(exclude=pool.targets[0])


# --- passive ejection --------------------------------------------------------------------------


def test_ejection_after_consecutive_failures_and_return(clock: FakeClock) -> None:
    pool = make_pool(clock, failures=3, ejection_time=30)
    a = pool.targets[0]
    fail(pool, a, 2)
    assert a.available(clock.monotonic())
    fail(pool, a, 1)
    assert a.ejected_until == clock.monotonic() + 30
    assert pick_release(pool, 100) == {B: 50, C: 50}
    clock.advance(29.9)
    assert A not in pick_release(pool, 100)
    clock.advance(0.1)
    assert pick_release(pool, 300) == {A: 100, B: 100, C: 100}
    assert a.ejected_until == 0


def test_success_resets_failure_count(clock: FakeClock) -> None:
    pool = make_pool(clock, failures=3)
    a = pool.targets[0]
    fail(pool, a, 2)
    a.outstanding += 1
    pool.release(a, ok=True)
    assert a.consecutive_failures == 0
    fail(pool, a, 2)
    assert a.available(clock.monotonic())


def test_half_open_return_reejects_on_first_failure(clock: FakeClock) -> None:
    pool = make_pool(clock, failures=3, ejection_time=30)
    a = pool.targets[0]
    fail(pool, a, 3)
    clock.advance(30)
    assert pool.pick(exclude=pool.targets[2]) in (a, pool.targets[1])
    assert a.available(clock.monotonic())
    fail(pool, a, 1)  # one failure on return is enough
    assert a.ejected(clock.monotonic())
    clock.advance(30)
    a.outstanding += 1
    pool.release(a, ok=True)  # one success closes the circuit fully
    fail(pool, a, 2)
    assert a.available(clock.monotonic())


def test_straggler_failure_does_not_extend_ejection(clock: FakeClock) -> None:
    pool = make_pool(clock, failures=2, ejection_time=30)
    a = pool.targets[0]
    fail(pool, a, 2)
    deadline = a.ejected_until
    clock.advance(10)
    fail(pool, a, 1)  # a request that was in flight when A was ejected
    assert a.ejected_until == deadline


def test_a_returning_target_gets_one_request_at_a_time_until_it_answers(clock: FakeClock) -> None:
    pool = make_pool(clock, failures=2, ejection_time=30)
    a = pool.targets[0]
    fail(pool, a, 2)
    clock.advance(30)
    # A still-hung target would hold every request sent to it until the response timeout: on
    # probation it holds only the first one.
    held = [pool.pick() for _ in range(9)]
    assert [t.url for t in held].count(A) == 1
    assert pool.snapshot()[0]["probation"] is True
    pool.responded(a)  # its response head arrived: alive
    assert pool.snapshot()[0]["probation"] is False
    more = [pool.pick() for _ in range(9)]
    assert [t.url for t in more].count(A) == 3
    for target in held + more:
        pool.release(target, ok=True)


def test_a_single_target_on_probation_refuses_a_second_request(clock: FakeClock) -> None:
    pool = make_pool(clock, (A,), failures=1, ejection_time=5)
    a = pool.targets[0]
    fail(pool, a, 1)
    clock.advance(5)
    trial = pool.pick()
    with pytest.raises(ServiceUnavailable):
        pool.pick()
    pool.release(trial, ok=False)  # the trial timed out: ejected again at once
    assert a.ejected(clock.monotonic())
    assert not pool.any_available()


def test_an_answer_that_stalls_after_the_head_still_counts_towards_ejection(clock: FakeClock) -> None:
    pool = make_pool(clock, (A,), failures=3, ejection_time=30)
    a = pool.targets[0]
    for _ in range(3):
        assert pool.pick() is a
        pool.responded(a)  # the head came...
        pool.release(a, ok=False)  # ...then the body stopped: a response timeout
    assert a.ejected(clock.monotonic())


def test_readmit_ends_only_the_ejection_it_was_given(clock: FakeClock) -> None:
    pool = make_pool(clock, failures=1, ejection_time=30)
    a, b = pool.targets[0], pool.targets[1]
    assert pool.ejection_in_force(a) == 0
    assert pool.readmit(a, ejection=0) is False  # nothing in force
    fail(pool, a, 1)
    first = pool.ejection_in_force(a)
    assert first
    assert pool.readmit(a, ejection=first + 1) is False  # some other ejection
    assert a.ejected(clock.monotonic())
    assert pool.readmit(a, ejection=first) is True
    assert not a.ejected(clock.monotonic())
    assert a.probation
    assert pool.readmit(a, ejection=first) is False  # already over
    fail(pool, a, 1)  # the probation request fails: a new ejection at the same instant
    assert pool.ejection_in_force(a) != first
    assert pool.readmit(a, ejection=first) is False  # an older pass does not end a newer ejection
    assert a.ejected(clock.monotonic())
    # An expired ejection needs no readmission.
    fail(pool, b, 1)
    expired = pool.ejection_in_force(b)
    clock.advance(30)
    assert pool.readmit(b, ejection=expired) is False
    assert pool.ejection_in_force(b) == 0


def test_readmission_does_not_override_an_unhealthy_verdict(clock: FakeClock) -> None:
    pool = make_pool(clock, failures=1, ejection_time=30)
    a = pool.targets[0]
    fail(pool, a, 1)
    pool.set_health(a, healthy=False)
    assert pool.readmit(a, ejection=pool.ejection_in_force(a)) is True
    assert A not in pick_release(pool, 10)


def test_all_ejected_raises_service_unavailable(clock: FakeClock) -> None:
    pool = make_pool(clock, failures=1, ejection_time=5)
    for target in pool.targets:
        fail(pool, target, 1)
    with pytest.raises(ServiceUnavailable, match="all upstream targets of route app are down") as info:
        pool.pick()
    assert info.value.status == 503
    assert not pool.any_available()
    assert all(t.outstanding == 0 for t in pool.targets)  # a failed pick holds nothing
    clock.advance(5)
    assert pool.any_available()
    assert pool.pick() in pool.targets


def test_all_unhealthy_raises_service_unavailable(clock: FakeClock) -> None:
    pool = make_pool(clock)
    for target in pool.targets:
        pool.set_health(target, healthy=False)
    with pytest.raises(ServiceUnavailable):
        pool.pick()
    pool.set_health(pool.targets[1], healthy=True)
    assert pick_release(pool, 5) == {B: 5}


def test_expired_ejection_does_not_override_unhealthy(clock: FakeClock) -> None:
    pool = make_pool(clock, failures=1, ejection_time=5)
    a = pool.targets[0]
    fail(pool, a, 1)
    pool.set_health(a, healthy=False)
    clock.advance(5)
    assert A not in pick_release(pool, 10)


@pytest.mark.parametrize(("failures", "ejection_time"), [(0, 30), (3, 0)])
def test_passive_ejection_disabled(clock: FakeClock, failures: int, ejection_time: float) -> None:
    pool = make_pool(clock, failures=failures, ejection_time=ejection_time)
    a = pool.targets[0]
    fail(pool, a, 50)
    assert a.ejected_until == 0
    assert a.available(clock.monotonic())


def test_transitions_are_logged(clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gateway.upstream")
    pool = make_pool(clock, failures=1, ejection_time=5)
    a = pool.targets[0]
    fail(pool, a, 1)
    clock.advance(5)
    pool.pick()
    pool.set_health(a, healthy=False)
    pool.set_health(a, healthy=False)  # no change, no log
    pool.set_health(a, healthy=True)
    records = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "gateway.upstream"]
    assert records == [
        (logging.WARNING, f"route app: upstream {A} ejected for 5s after 1 consecutive failures"),
        (logging.INFO, f"route app: upstream {A} returns after ejection (on probation)"),
        (logging.WARNING, f"route app: upstream {A} is unhealthy"),
        (logging.INFO, f"route app: upstream {A} is healthy again"),
    ]


# --- snapshot ----------------------------------------------------------------------------------


def test_snapshot(clock: FakeClock) -> None:
    pool = make_pool(clock, failures=2, ejection_time=10)
    a, b, c = pool.targets
    fail(pool, a, 2)
    pool.set_health(b, healthy=False)
    held = pool.pick()
    assert held is c
    assert pool.snapshot() == [
        {
            "url": A,
            "healthy": True,
            "ejected": True,
            "probation": False,
            "outstanding": 0,
            "consecutive_failures": 2,
        },
        {
            "url": B,
            "healthy": False,
            "ejected": False,
            "probation": False,
            "outstanding": 0,
            "consecutive_failures": 0,
        },
        {
            "url": C,
            "healthy": True,
            "ejected": False,
            "probation": False,
            "outstanding": 1,
            "consecutive_failures": 0,
        },
    ]
    clock.advance(10)
    assert pool.snapshot()[0]["ejected"] is False
    assert a.ejected_until == 0
