"""Upstream failover through a real gateway: active health checks, passive ejection, all targets down.

Which upstream answered is read from the echo app's view of the ``Host`` header: the gateway sets it
to the target's own ``host:port`` (routes do not preserve the client's Host here).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
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
def echo() -> Iterator[Echo]:
    with run_echo() as app:
        yield app


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
