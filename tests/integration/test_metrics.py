"""Prometheus metrics from a real gateway: two data-plane workers, the admin listener, Redis.

Every worker counts in its own process; ``GET /metrics`` on the admin listener must report the exact
sums. Requests are sent on fresh connections until both workers have answered some (the worker that
answered each one is known from /proc), so the totals really are sums over processes. Observers run
just after a response is sent, so the scrape is polled until the counts arrive, then compared exactly.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.integration.harness import (
    Gateway,
    add_user,
    free_port,
    gateway_config,
    http_get_on_fresh_connection,
    run_echo,
    run_gateway,
    wait_until,
)
from tests.integration.http_client import PASSWORD, browser, login

# A Redis database no other test module uses, and a namespace of this run: sessions_active counts keys.
REDIS_URL = "redis://127.0.0.1:6379/12"

Samples = list[tuple[str, dict[str, str], float]]


@dataclass
class Site:
    gw: Gateway
    admin_port: int

    def scrape(self) -> Samples:
        from prometheus_client.parser import text_string_to_metric_families

        response = httpx.get(f"http://127.0.0.1:{self.admin_port}/metrics", timeout=10)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("text/plain")
        return [
            (s.name, s.labels, s.value)
            for family in text_string_to_metric_families(response.text)
            for s in family.samples
        ]


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of every sample of ``name`` whose labels include ``labels``."""
    return sum(v for n, lab, v in samples if n == name and labels.items() <= lab.items())


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("metrics")
    namespace = f"t:metrics:{secrets.token_hex(6)}:"
    port, admin_port = free_port(), free_port()
    with run_echo() as echo:
        route = {
            "name": "app",
            "host": "127.0.0.1",
            "path": "/",
            "upstreams": [echo.url],
            "public_paths": ["/public/*"],
            "mfa": "none",
        }
        config = gateway_config(
            tmp,
            port,
            [route],
            admin={"listen": f"127.0.0.1:{admin_port}"},
            server={"workers": 2},
            state={"redis_url": REDIS_URL, "namespace": namespace},
            session={"insecure_cookies": True},
            # Locked at the second failure in a row; the back-off only starts after the first failure.
            regulation={"free_attempts": 1, "max_failures": 2, "lock_time": "15m"},
        )
        try:
            with run_gateway(tmp, config) as gw:
                wait_until(lambda: _admin_up(admin_port), what="admin listener")
                yield Site(gw, admin_port)
        finally:
            client = redis.Redis.from_url(REDIS_URL)
            keys = list(client.scan_iter(match=f"{namespace}*", count=1000))
            if keys:
                client.delete(*keys)
            client.close()


def _admin_up(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_counts_are_exact_sums_over_both_workers(site: Site) -> None:
    public_served: dict[int, int] = {}
    sent = 0
    while (len(public_served) < 2 or sent < 20) and sent < 400:
        status, _, _, pid = http_get_on_fresh_connection(site.gw.port, "/public/page")
        assert status == 200
        public_served[pid] = public_served.get(pid, 0) + 1
        sent += 1
    assert len(public_served) == 2, f"one worker answered every request: {public_served}"

    refused = 0
    for _ in range(5):
        status, _, _, _ = http_get_on_fresh_connection(site.gw.port, "/private")
        assert status in (302, 401)
        refused += 1

    add_user(site.gw.config_path, "ann", PASSWORD)
    add_user(site.gw.config_path, "bob", PASSWORD)
    allowed = 0
    with browser(site.gw) as client:
        assert login(client, "ann", "wrong password").status_code == 401
        assert login(client, "ann").status_code == 302
        for _ in range(3):
            assert client.get("/private").status_code == 200
            allowed += 1
    with browser(site.gw) as client:
        login(client, "bob", "wrong password")
        login(client, "bob", "wrong again")  # the second failure in a row locks bob

    def arrived() -> Samples | None:
        samples = site.scrape()
        requests = total(samples, "gateway_requests_total", route="app")
        return samples if requests >= sent + refused + allowed else None

    samples = wait_until(arrived, what="request counts in /metrics")
    assert total(samples, "gateway_requests_total", route="app", decision="public", status="2xx") == sent
    assert total(samples, "gateway_requests_total", route="app", decision="unauthenticated") == refused
    assert total(samples, "gateway_requests_total", route="app", decision="allow", status="2xx") == allowed
    assert total(samples, "gateway_requests_total", route="app") == sent + refused + allowed
    assert total(samples, "gateway_request_duration_seconds_count", route="app") == sent + refused + allowed
    # Public requests are proxied without an authorization decision; allowed ones have both.
    assert total(samples, "gateway_upstream_duration_seconds_count", route="app") == sent + allowed
    assert total(samples, "gateway_authz_duration_seconds_count") == allowed
    assert total(samples, "gateway_authz_cache_lookups_total") == allowed

    assert total(samples, "gateway_signins_total", method="password", outcome="failure") == 3
    assert total(samples, "gateway_signins_total", method="password", outcome="success") == 1
    assert total(samples, "gateway_account_locks_total") == 1
    assert total(samples, "gateway_sessions_active") == 1
    assert total(samples, "gateway_policy_version") >= 1


def test_metrics_need_no_session_but_are_not_on_the_data_plane(site: Site) -> None:
    assert site.scrape()  # from the loopback, without any cookie
    response = httpx.get(f"{site.gw.url}/metrics", timeout=10)
    assert b"gateway_requests_total" not in response.content


def test_the_metric_files_live_under_data_dir(site: Site) -> None:
    config: dict[str, Any] = site.gw.config
    directory = Path(config["data_dir"]) / "metrics" / config["listen"].replace(":", "_")
    assert sorted(p.name.split("_")[0] for p in directory.glob("*.db"))
