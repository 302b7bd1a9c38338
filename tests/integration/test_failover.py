"""Upstream failover through a real gateway: active health checks, passive ejection, all targets down,
hung targets (response and connect timeouts), readmission by the active check, probation.

Which upstream answered is read from the echo app's view of the ``Host`` header: the gateway sets it
to the target's own ``host:port`` (routes do not preserve the client's Host here). A hung target is
a socket that accepts connections and never answers (the tripwire); a target that cannot even be
connected to is a socket whose accept queue is full, so the kernel drops connection attempts.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.harness import (
    Echo,
    Gateway,
    echo_route,
    free_port,
    gateway_config,
    run_echo,
    run_gateway,
    run_tripwire,
    stop,
    wait_until,
)

ACTIVE_CHECK = {
    "path": "/",
    "interval": "1s",
    "timeout": "500ms",
    "healthy_threshold": 1,
    "unhealthy_threshold": 1,
}


def _get(gw: Gateway, path: str = "/", host: str = "127.0.0.1") -> httpx.Response:
    # A new client per request: a fresh connection, as an independent user would make.
    return httpx.get(f"{gw.url}{path}", headers={"Host": host}, timeout=30)


def _served_by(resp: httpx.Response) -> str:
    """The upstream ``host:port`` that answered."""
    return str(dict(json.loads(resp.text)["headers"])["host"])


def _targets(gw: Gateway, route: str) -> dict[str, dict[str, Any]]:
    resp = httpx.get(f"{gw.url}/.gateway/ready", timeout=30)
    return {row["url"]: row for row in resp.json()["checks"]["upstreams"][route]}


def test_active_health_check_takes_a_stopped_upstream_out_and_back(tmp_path: Path) -> None:
    with run_echo() as first:
        second_port = free_port()
        second_url = f"http://127.0.0.1:{second_port}"
        second_host = f"127.0.0.1:{second_port}"
        route = echo_route(
            first,
            upstreams=[first.url, second_url],
            health_check=dict(ACTIVE_CHECK),
            # Passive ejection is pushed out of the way: this test is about the active check alone.
            passive_health_check={"consecutive_failures": 1000, "ejection_time": "30s"},
        )
        config = gateway_config(tmp_path, free_port(), [route])
        with run_echo(second_port) as second, run_gateway(tmp_path, config) as gw:
            seen = {_served_by(_get(gw)) for _ in range(6)}
            assert seen == {f"127.0.0.1:{first.port}", second_host}

            stop(second.proc)
            # While the second one is down (before and after the check notices), no request fails: a
            # refused connection is retried on the other target, and the check takes it out of rotation.
            for _ in range(10):
                resp = _get(gw)
                assert resp.status_code == 200, resp.text
                assert _served_by(resp) == f"127.0.0.1:{first.port}"
            wait_until(
                lambda: _targets(gw, "echo")[second_url]["healthy"] is False,
                timeout=30,
                what="the stopped upstream marked unhealthy",
            )
            assert _targets(gw, "echo")[first.url]["healthy"] is True
            for _ in range(10):
                resp = _get(gw)
                assert resp.status_code == 200, resp.text
                assert _served_by(resp) == f"127.0.0.1:{first.port}"
            # The gateway stays ready: one unhealthy target is not a reason to leave the load balancer.
            assert httpx.get(f"{gw.url}/.gateway/ready", timeout=30).status_code == 200

            with run_echo(second_port):
                wait_until(
                    lambda: _targets(gw, "echo")[second_url]["healthy"] is True,
                    timeout=30,
                    what="the restarted upstream marked healthy",
                )
                wait_until(
                    lambda: _served_by(_get(gw)) == second_host,
                    timeout=30,
                    what="the restarted upstream back in rotation",
                )
                statuses = [_get(gw).status_code for _ in range(6)]
                assert statuses == [200] * 6


@pytest.fixture(scope="module")
def dead_urls() -> list[str]:
    """Loopback URLs with nothing listening (connections are refused at once)."""
    ports: set[int] = set()
    while len(ports) < 3:
        ports.add(free_port())
    return [f"http://127.0.0.1:{port}" for port in sorted(ports)]


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, echo: Echo, dead_urls: list[str]) -> Iterator[Gateway]:
    """One gateway, one route per scenario (told apart by Host), no active checks."""
    tmp = tmp_path_factory.mktemp("gw-failover")
    # Separate dicts per route: yaml.safe_dump would write a shared one as an alias, which the gateway refuses.
    passive = {"consecutive_failures": 2, "ejection_time": "30s"}
    routes = [
        echo_route(
            echo,
            name="half",
            host="half.test",
            upstreams=[echo.url, dead_urls[0]],
            passive_health_check=dict(passive),
        ),
        echo_route(
            echo, name="down", host="down.test", upstreams=dead_urls[1:], passive_health_check=passive
        ),
    ]
    with run_gateway(tmp, gateway_config(tmp, free_port(), routes)) as gateway:
        yield gateway


def test_passive_ejection_without_active_checks(gw: Gateway, echo: Echo, dead_urls: list[str]) -> None:
    dead = dead_urls[0]

    def ejected() -> bool:
        resp = _get(gw, host="half.test")
        assert resp.status_code == 200, resp.text
        assert _served_by(resp) == f"127.0.0.1:{echo.port}"
        return bool(_targets(gw, "half")[dead]["ejected"])

    wait_until(ejected, timeout=30, interval=0, what="the dead upstream ejected")
    rows = _targets(gw, "half")
    assert rows[dead]["consecutive_failures"] >= 2
    assert rows[dead]["healthy"] is True  # no active check: only the passive verdict applies
    assert rows[echo.url]["ejected"] is False
    for _ in range(6):
        resp = _get(gw, host="half.test")
        assert resp.status_code == 200
        assert _served_by(resp) == f"127.0.0.1:{echo.port}"
    # Still ejected afterwards: requests meanwhile all went to the live target.
    assert _targets(gw, "half")[dead]["ejected"] is True


def test_all_upstreams_down_gives_502_then_503_once_ejected(gw: Gateway, dead_urls: list[str]) -> None:
    statuses = [_get(gw, host="down.test").status_code]

    def next_is_503() -> bool:
        statuses.append(_get(gw, host="down.test").status_code)
        return statuses[-1] == 503

    wait_until(
        next_is_503,
        timeout=30,
        interval=0,
        what="503 once every target is ejected",
    )
    # Connection refused on every target: 502 (each request tries two targets, each failure counts).
    assert statuses[0] == 502, statuses
    first_503 = statuses.index(503)
    assert set(statuses[:first_503]) == {502}, statuses
    assert first_503 == 2, statuses  # two failures per target eject both after the second request
    for _ in range(3):
        assert _get(gw, host="down.test").status_code == 503
    rows = _targets(gw, "down")
    assert all(row["ejected"] for row in rows.values()), rows
    resp = _get(gw, host="down.test")
    assert resp.headers["content-type"].startswith("application/json")


# --- recovery: readmission by the active check, timeouts, probation -----------------------------------


@contextmanager
def blackhole() -> Iterator[str]:
    """A loopback URL whose connection attempts time out: its accept queue is full and never drained."""
    with ExitStack() as stack:
        server = stack.enter_context(socket.socket())
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        port = server.getsockname()[1]
        for _ in range(3):
            filler = stack.enter_context(socket.socket())
            filler.setblocking(False)
            with suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
        yield f"http://127.0.0.1:{port}"


def test_active_check_readmits_an_ejected_target_long_before_ejection_time(tmp_path: Path) -> None:
    with run_echo() as first:
        second_port = free_port()
        second_url = f"http://127.0.0.1:{second_port}"
        route = echo_route(
            first,
            upstreams=[first.url, second_url],
            # The active check never calls the stopped target unhealthy here (threshold 1000): it is
            # out only through the passive ejection, which lasts far longer than this test may run.
            health_check={**ACTIVE_CHECK, "unhealthy_threshold": 1000},
            passive_health_check={"consecutive_failures": 1, "ejection_time": "600s"},
        )
        config = gateway_config(tmp_path, free_port(), [route])
        with run_echo(second_port) as second, run_gateway(tmp_path, config) as gw:
            stop(second.proc)

            def second_ejected() -> bool:
                resp = _get(gw)  # refused on the second target, retried on the first
                assert resp.status_code == 200, resp.text
                return bool(_targets(gw, "echo")[second_url]["ejected"])

            wait_until(second_ejected, timeout=30, interval=0, what="the stopped upstream ejected")
            assert _targets(gw, "echo")[second_url]["healthy"] is True
            with run_echo(second_port):
                # Within a few 1 s check intervals, not the 600 s ejection time.
                wait_until(
                    lambda: _served_by(_get(gw)) == f"127.0.0.1:{second_port}",
                    timeout=60,
                    what="the restarted upstream readmitted by the active check",
                )
                assert _targets(gw, "echo")[second_url]["ejected"] is False
                assert "readmitted by the active health check" in gw.log()
                assert {_get(gw).status_code for _ in range(6)} == {200}


@pytest.fixture(scope="module")
def timeouts_gw(
    tmp_path_factory: pytest.TempPathFactory, echo: Echo
) -> Iterator[tuple[Gateway, dict[str, str]]]:
    """A gateway whose routes each pair the live echo app with a target that never answers in time."""
    tmp = tmp_path_factory.mktemp("gw-timeouts")
    with run_tripwire() as hung, run_tripwire() as hung_briefly, blackhole() as unreachable:
        fast = {"connect": "500ms", "response": "1s"}
        routes = [
            # A hung target, ejected for longer than the test: the timeouts alone must take it out.
            echo_route(
                echo,
                name="hung",
                host="hung.test",
                upstreams=[echo.url, hung.url],
                timeouts=dict(fast),
                passive_health_check={"consecutive_failures": 2, "ejection_time": "600s"},
            ),
            # The same with a short ejection, to see it come back on probation.
            echo_route(
                echo,
                name="probation",
                host="probation.test",
                upstreams=[echo.url, hung_briefly.url],
                timeouts=dict(fast),
                passive_health_check={"consecutive_failures": 2, "ejection_time": "5s"},
            ),
            echo_route(
                echo,
                name="unreachable",
                host="unreachable.test",
                upstreams=[echo.url, unreachable],
                timeouts=dict(fast),
                passive_health_check={"consecutive_failures": 2, "ejection_time": "600s"},
            ),
        ]
        targets = {"hung": hung.url, "probation": hung_briefly.url, "unreachable": unreachable}
        with run_gateway(tmp, gateway_config(tmp, free_port(), routes)) as gateway:
            yield gateway, targets


def _eject_by_timeouts(gw: Gateway, route: str, target: str) -> list[int]:
    """Send requests one at a time until ``target`` is ejected; their statuses."""
    statuses: list[int] = []

    def ejected() -> bool:
        resp = _get(gw, host=f"{route}.test")
        statuses.append(resp.status_code)
        return bool(_targets(gw, route)[target]["ejected"])

    wait_until(ejected, timeout=60, interval=0, what=f"the silent target of {route} ejected")
    return statuses


def test_a_hung_target_is_ejected_after_consecutive_response_timeouts(
    timeouts_gw: tuple[Gateway, dict[str, str]], echo: Echo
) -> None:
    gw, targets = timeouts_gw
    statuses = _eject_by_timeouts(gw, "hung", targets["hung"])
    # Every request the hung target took waited for timeouts.response and was a 504; the second one
    # in a row ejected it (the echo app's 200s in between do not reset the hung target's count).
    assert statuses.count(504) == 2, statuses
    assert set(statuses) == {200, 504}, statuses
    row = _targets(gw, "hung")[targets["hung"]]
    assert row["consecutive_failures"] >= 2
    for _ in range(8):
        resp = _get(gw, host="hung.test")
        assert resp.status_code == 200, resp.text
        assert _served_by(resp) == f"127.0.0.1:{echo.port}"


def test_a_target_that_cannot_be_connected_to_is_ejected_and_requests_go_elsewhere(
    timeouts_gw: tuple[Gateway, dict[str, str]], echo: Echo
) -> None:
    gw, targets = timeouts_gw
    statuses = _eject_by_timeouts(gw, "unreachable", targets["unreachable"])
    # Nothing was sent to it, so each GET that timed out connecting was retried on the echo app.
    assert set(statuses) == {200}, statuses
    assert _targets(gw, "unreachable")[targets["unreachable"]]["consecutive_failures"] >= 2
    assert f"upstream {targets['unreachable']} ejected" in gw.log()


def test_a_returning_hung_target_holds_one_request_not_its_share(
    timeouts_gw: tuple[Gateway, dict[str, str]],
) -> None:
    gw, targets = timeouts_gw
    target = targets["probation"]
    _eject_by_timeouts(gw, "probation", target)
    # Reading the state ends an expired ejection: the target is back, on probation.
    wait_until(
        lambda: _targets(gw, "probation")[target]["probation"] is True,
        timeout=60,
        what="the ejection over and the target on probation",
    )
    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(lambda _: _get(gw, host="probation.test").status_code, range(8)))
    # Round robin would have sent it half of these, each held for the response timeout; on probation
    # it gets one, whose timeout ejects it again at once.
    assert sorted(statuses) == [200] * 7 + [504], statuses
    assert _targets(gw, "probation")[target]["ejected"] is True
