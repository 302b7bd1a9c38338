"""The console's data from real processes: the decision sample, the replica registry, the overview.

* On the embedded default (SQLite, the node's state file) with two workers and the admin listener:
  every process is in ``replicas`` while it runs and leaves on a clean stop; the requests the workers
  authorized are in ``decision_samples``, one row per shape with its count, within a flush interval,
  and the last ones are flushed when the gateway stops.
* On two replicas sharing PostgreSQL and Redis: the overview of one replica's admin API lists the
  other replica's processes too.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.integration.harness import (
    Gateway,
    add_user,
    free_port,
    gateway_config,
    run_cli,
    run_echo,
    run_gateway,
    wait_until,
)
from tests.integration.http_client import PASSWORD, browser, login
from tests.integration.test_admin_api import Site, api, wait_admin_healthy
from tests.integration.test_signin_http import enroll_totp
from tests.support.pg import fresh_database

POLICY = """\
p, authenticated, app, /docs/*, GET, allow
p, admin, app, /*, *, allow
g, user:boss, admin
"""

# A Redis database of this module's own (see test_signin_http for why).
REDIS_URL = "redis://127.0.0.1:6379/10"


def _rows(db_path: Path, query: str) -> list[sqlite3.Row]:
    with sqlite3.connect(db_path) as conn:
        conn.row_factory = sqlite3.Row
        return conn.execute(query).fetchall()


def _samples(db_path: Path) -> dict[tuple[str, str, str, str], int]:
    counts: dict[tuple[str, str, str, str], int] = {}
    for row in _rows(db_path, "SELECT principals, route, method, path, count FROM decision_samples"):
        shape = (row["principals"], row["route"], row["method"], row["path"])
        # One row per shape and hour: a test crossing the hour sees two, summed here.
        counts[shape] = counts.get(shape, 0) + row["count"]
    return counts


def _live_replicas(db_path: Path) -> list[sqlite3.Row]:
    return _rows(db_path, "SELECT * FROM replicas ORDER BY role, pid")


def test_workers_and_the_admin_listener_report_and_the_decisions_are_sampled(tmp_path: Path) -> None:
    policy = tmp_path / "policy.csv"
    policy.write_text(POLICY)
    db_path = tmp_path / "data" / "gateway.db"
    port, admin_port = free_port(), free_port()
    with run_echo() as echo:
        routes: list[dict[str, Any]] = [
            {
                "name": "app",
                "host": "127.0.0.1",
                "upstreams": [echo.url],
                "mfa": "none",
                "public_paths": ["/public/*"],
            }
        ]
        config = gateway_config(
            tmp_path,
            port,
            routes,
            server={"workers": 2},
            session={"insecure_cookies": True},
            policy={"file": str(policy)},
            admin={"listen": f"127.0.0.1:{admin_port}"},
        )
        with run_gateway(tmp_path, config) as gw:
            wait_admin_healthy(admin_port, gw.proc)
            # Two workers and the admin listener, each one row, ready, under the package's version.
            rows = wait_until(
                lambda: (
                    (found := _live_replicas(db_path))
                    and len(found) == 3
                    and all(r["ready"] for r in found)
                    and found
                ),
                what="three ready replicas",
            )
            assert sorted(r["role"] for r in rows) == ["admin", "worker", "worker"]
            assert len({r["pid"] for r in rows}) == 3
            assert {r["version"] for r in rows} == {_version()}
            assert {(r["policy_version"], r["config_generation"]) for r in rows} == {(1, 1)}
            add_user(gw.config_path, "carol", PASSWORD)
            with browser(gw) as client:
                assert login(client, "carol").status_code in (302, 303)
                for _ in range(7):
                    assert (
                        client.get("/docs/guide", headers={"Accept": "application/json"}).status_code == 200
                    )
                for _ in range(3):
                    assert (
                        client.get("/admin/users", headers={"Accept": "application/json"}).status_code == 403
                    )
                for _ in range(4):
                    assert (
                        client.get("/public/logo", headers={"Accept": "application/json"}).status_code == 200
                    )
                expected = {
                    ("authenticated user:carol", "app", "GET", "/docs/guide"): 7,
                    ("authenticated user:carol", "app", "GET", "/admin/users"): 3,
                }
                # Flushed within the interval (10 s); public paths are decided by no policy: not sampled.
                wait_until(lambda: _samples(db_path) == expected, timeout=40, what="the sample flushed")
                # The last requests before a stop are flushed when the workers close.
                for _ in range(2):
                    assert client.get("/docs/last", headers={"Accept": "application/json"}).status_code == 200
        # After a clean stop: every process has left, and nothing noted was lost.
        assert _live_replicas(db_path) == []
        assert _samples(db_path)[("authenticated user:carol", "app", "GET", "/docs/last")] == 2


def _version() -> str:
    from importlib import metadata

    return metadata.version("gateway")


# -- two replicas on PostgreSQL and Redis ---------------------------------------------------------


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Site, Gateway]]:
    tmp = tmp_path_factory.mktemp("replicas")
    policy = tmp / "policy.csv"
    policy.write_text(POLICY)
    port_a, port_b = free_port(), free_port()
    admin_a, admin_b = free_port(), free_port()
    with fresh_database("gw_console") as name, run_echo() as echo:
        routes: list[dict[str, Any]] = [
            {"name": "app", "host": "127.0.0.1", "upstreams": [echo.url], "mfa": "none"},
        ]
        common: dict[str, Any] = {
            "public_url": f"http://127.0.0.1:{port_a}",
            "storage": {"url": f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"},
            "state": {"redis_url": REDIS_URL, "namespace": f"console{port_a}:"},
            # One keyring for the deployment: created once, shared by every replica.
            "keyring": str(tmp / "keyring.json"),
            "session": {"insecure_cookies": True},
            "policy": {"file": str(policy)},
        }
        config_a = gateway_config(
            tmp / "a", port_a, routes, admin={"listen": f"127.0.0.1:{admin_a}"}, **common
        )
        config_b = gateway_config(
            tmp / "b", port_b, routes, admin={"listen": f"127.0.0.1:{admin_b}"}, **common
        )
        (tmp / "a").mkdir()
        (tmp / "a" / "gateway.yaml").write_text(yaml.safe_dump(config_a, sort_keys=False))
        for step in (("migrate",), ("keys", "init")):
            done = run_cli(*step, "--config", str(tmp / "a" / "gateway.yaml"))
            assert done.returncode == 0, done.stdout + done.stderr
        with run_gateway(tmp / "a", config_a) as gw_a, run_gateway(tmp / "b", config_b) as gw_b:
            wait_admin_healthy(admin_a, gw_a.proc)
            wait_admin_healthy(admin_b, gw_b.proc)
            add_user(gw_a.config_path, "boss", PASSWORD)
            yield Site(gw_a, admin_a, tmp / "unused.db", policy), gw_b


def test_the_overview_of_one_replica_lists_the_other(replicas: tuple[Site, Gateway]) -> None:
    site, _other = replicas
    with browser(site.gw) as boss:
        assert login(boss, "boss").status_code in (302, 303)
        enroll_totp(boss)

        def overview() -> dict[str, Any]:
            resp = api(site, boss, "GET", "/api/overview")
            assert resp.status_code == 200, resp.text
            body: dict[str, Any] = resp.json()
            return body

        def four_live() -> list[dict[str, Any]]:
            live = [r for r in overview()["replicas"]["items"] if not r["gone"] and r["ready"]]
            return live if len(live) == 4 else []

        # Each replica's worker and admin listener: four processes, one of them the listener asked.
        live = wait_until(four_live, what="both replicas' processes listed")
        assert sorted(r["role"] for r in live) == ["admin", "admin", "worker", "worker"]
        assert len({r["id"] for r in live}) == 4
        assert [r["role"] for r in live if r["this_process"]] == ["admin"]
        body = overview()
        # Redis holds the admin's session: it is counted.
        assert body["sessions"]["count"] >= 1
        assert body["incidents"]["count"] == 0
        assert body["proposals"]["count"] == 0
        assert {c["name"]: c["ok"] for c in body["components"]} == {"database": True, "fast state": True}


def test_the_overview_needs_an_admin(replicas: tuple[Site, Gateway]) -> None:
    site, _other = replicas
    assert api(site, None, "GET", "/api/overview").status_code == 401
    add_user(site.gw.config_path, "dora", PASSWORD)
    with browser(site.gw) as dora:
        assert login(dora, "dora").status_code in (302, 303)
        assert api(site, dora, "GET", "/api/overview").status_code == 403
    with httpx.Client() as anonymous:
        page = anonymous.get(f"{site.admin_url}/", headers={"Accept": "text/html"})
        assert page.status_code == 303
