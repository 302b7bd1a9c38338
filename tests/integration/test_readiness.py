"""``/.gateway/ready`` against the real production stores (PostgreSQL, Redis) and the embedded default.

PostgreSQL must run at 127.0.0.1:5432 (user ``postgres``, trust auth) and Redis at 127.0.0.1:6379; a
missing server fails these tests rather than skipping them. Each PostgreSQL test gets a database of
its own, created here and dropped afterwards. Outages are made with a TCP forwarder in front of the
real server (tests/support/tcp_proxy.py), never by stopping the server other tests share.
"""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.store.migrate import head_revision
from tests.integration.harness import (
    Echo,
    Gateway,
    add_user,
    echo_route,
    free_port,
    gateway_config,
    run_cli,
    run_gateway,
    wait_until,
)
from tests.integration.http_client import SESSION_COOKIE, browser, cookie, login
from tests.support.pg import fresh_database
from tests.support.tcp_proxy import TcpProxy

REDIS_URL = "redis://127.0.0.1:6379/0"
NOTHING_LISTENING = "redis://127.0.0.1:1/0"


@pytest.fixture
def fresh_pg_url() -> Iterator[str]:
    with _fresh_pg_database() as url:
        yield url


@contextmanager
def _fresh_pg_database() -> Iterator[str]:
    with fresh_database() as name:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"


def _ready(gw: Gateway) -> httpx.Response:
    return httpx.get(f"{gw.url}/.gateway/ready", timeout=30)


def _config(tmp: Path, echo: Echo, **overrides: Any) -> dict[str, Any]:
    return gateway_config(tmp, free_port(), [echo_route(echo)], **overrides)


def _write(tmp: Path, config: dict[str, Any]) -> Path:
    import yaml

    path = tmp / "gateway.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def test_postgres_and_redis_after_migrate_are_ready(tmp_path: Path, echo: Echo, fresh_pg_url: str) -> None:
    config = _config(tmp_path, echo, storage={"url": fresh_pg_url}, state={"redis_url": REDIS_URL})
    result = run_cli("migrate", "--config", str(_write(tmp_path, config)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"revision {head_revision()}" in result.stdout
    assert "Traceback" not in result.stderr

    # A second run is a no-op at the same revision.
    again = run_cli("migrate", "--config", str(tmp_path / "gateway.yaml"))
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"revision {head_revision()}" in again.stdout

    # With PostgreSQL (several replicas) the keyring is never invented by a replica: without it,
    # serve refuses with one line saying what to do...
    refused = run_cli("serve", "--config", str(tmp_path / "gateway.yaml"))
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "gateway keys init" in refused.stderr
    assert "Traceback" not in refused.stderr
    # ...and the operator creates it once and shares it.
    created = run_cli("keys", "init", "--config", str(tmp_path / "gateway.yaml"))
    assert created.returncode == 0, created.stdout + created.stderr

    with run_gateway(tmp_path, config) as gw:
        resp = _ready(gw)
        assert resp.status_code == 200, resp.text
        report = resp.json()
        assert report["ready"] is True
        assert report["degraded"] == []
        assert report["checks"]["storage"]["ok"] is True
        assert report["checks"]["state"]["ok"] is True
        assert httpx.get(f"{gw.url}/", timeout=30).status_code == 200


@pytest.fixture(scope="module")
def unmigrated_start(tmp_path_factory: pytest.TempPathFactory, echo: Echo) -> Iterator[tuple[int, str]]:
    """Start the gateway on an empty PostgreSQL database; its exit code and output."""
    tmp = tmp_path_factory.mktemp("gw-unmigrated")
    with (
        _fresh_pg_database() as url,
        run_gateway(tmp, _config(tmp, echo, storage={"url": url}), wait=False) as gw,
    ):
        try:
            code = gw.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the gateway kept running on an unmigrated database:\n{gw.log()}")
        yield code, gw.log()


def test_serve_refuses_an_unmigrated_postgres_database(unmigrated_start: tuple[int, str]) -> None:
    code, log = unmigrated_start
    assert code != 0, log
    assert "gateway migrate" in log, log
    assert "the database is not ready: it has no schema yet" in log, log


def test_unmigrated_refusal_is_one_message_without_traceback(unmigrated_start: tuple[int, str]) -> None:
    # An operator's error, found before any worker starts: one line, no stack, no crash-loop of workers.
    code, log = unmigrated_start
    assert code == 1, log
    assert "Traceback" not in log, log
    assert "Spawning worker" not in log, log


def test_unreachable_redis_is_not_ready_but_alive(tmp_path: Path, echo: Echo) -> None:
    # A route with private paths: its requests need sessions, which live in Redis.
    config = gateway_config(
        tmp_path, free_port(), [echo_route(echo, public_paths=[])], state={"redis_url": NOTHING_LISTENING}
    )
    with run_gateway(tmp_path, config) as gw:
        resp = _ready(gw)
        assert resp.status_code == 503, resp.text
        report = resp.json()
        assert report["ready"] is False
        assert report["checks"]["state"]["ok"] is False
        assert report["checks"]["state"]["required"] is True
        assert report["checks"]["state"]["error"]
        assert "sessions" in report["degraded"]
        assert report["checks"]["storage"] == {"ok": True, "required": False}
        # Liveness is about the process, not its dependencies: restarting it would not bring Redis back.
        health = httpx.get(f"{gw.url}/.gateway/health", timeout=30)
        assert health.status_code == 200
        assert health.json() == {"status": "ok"}


def test_unreachable_redis_with_only_public_routes_is_ready_and_reported(tmp_path: Path, echo: Echo) -> None:
    # Every path public: no request here needs a session, so a load balancer should keep sending them.
    config = _config(tmp_path, echo, state={"redis_url": NOTHING_LISTENING})
    with run_gateway(tmp_path, config) as gw:
        resp = _ready(gw)
        assert resp.status_code == 200, resp.text
        report = resp.json()
        assert report["ready"] is True
        assert report["checks"]["state"]["ok"] is False
        assert report["checks"]["state"]["required"] is False
        assert "sessions" in report["degraded"]
        assert httpx.get(f"{gw.url}/", timeout=30).status_code == 200


def test_embedded_default_is_ready_with_sqlite_in_data_dir(tmp_path: Path, echo: Echo) -> None:
    config = _config(tmp_path, echo)
    assert "storage" not in config
    assert "state" not in config
    with run_gateway(tmp_path, config) as gw:
        resp = _ready(gw)
        assert resp.status_code == 200, resp.text
        report = resp.json()
        assert report["checks"]["storage"] == {"ok": True, "required": False}
        assert report["checks"]["state"]["ok"] is True
        assert report["checks"]["config"]["generation"] == 1
        assert report["degraded"] == []
        database = Path(config["data_dir"]) / "gateway.db"
        assert database.is_file()
        assert database.stat().st_size > 0


# --- a PostgreSQL outage: degraded, still ready ------------------------------------------------------


def _admin_up(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _scrape(admin_port: int) -> dict[tuple[str, str], float]:
    from prometheus_client.parser import text_string_to_metric_families

    resp = httpx.get(f"http://127.0.0.1:{admin_port}/metrics", timeout=10)
    assert resp.status_code == 200, resp.text
    found: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(resp.text):
        for sample in family.samples:
            if sample.name in ("gateway_ready", "gateway_component_up"):
                found[(sample.name, sample.labels.get("component", ""))] = sample.value
    return found


def test_a_database_outage_keeps_the_replica_ready_with_sign_in_degraded(
    tmp_path: Path, echo: Echo, fresh_pg_url: str
) -> None:
    with TcpProxy(("127.0.0.1", 5432)) as database:
        admin_port = free_port()
        config = gateway_config(
            tmp_path,
            free_port(),
            [echo_route(echo, public_paths=[])],
            storage={"url": fresh_pg_url.replace(":5432/", f":{database.port}/")},
            state={"redis_url": REDIS_URL, "namespace": f"t:ready:{secrets.token_hex(6)}:"},
            session={"insecure_cookies": True},
            admin={"listen": f"127.0.0.1:{admin_port}"},
        )
        config_path = _write(tmp_path, config)
        for command in (("migrate",), ("keys", "init")):
            done = run_cli(*command, "--config", str(config_path))
            assert done.returncode == 0, done.stdout + done.stderr
        add_user(config_path, "alice", "amber quarry lantern voyage")
        with run_gateway(tmp_path, config) as gw, browser(gw) as alice:
            assert login(alice, "alice").status_code == 302
            assert cookie(alice, SESSION_COOKIE)
            assert alice.get("/private").status_code == 200
            # The admin listener (metrics) loads its own state from the database when it starts.
            wait_until(lambda: _admin_up(admin_port), timeout=60, what="the admin listener")

            database.stop()
            statuses: list[int] = []

            def storage_down() -> dict[str, Any] | None:
                resp = _ready(gw)
                statuses.append(resp.status_code)
                report: dict[str, Any] = resp.json()
                return report if report["checks"]["storage"]["ok"] is False else None

            report = wait_until(storage_down, timeout=30, what="the database outage seen by /ready")
            # Never 503 on the way: the load balancer keeps this replica.
            assert set(statuses) == {200}, statuses
            assert report["ready"] is True
            assert "sign-in" in report["degraded"]
            assert report["checks"]["storage"]["required"] is False
            assert report["checks"]["storage"]["error"]
            assert "sign-in" in report["checks"]["storage"]["unavailable"]
            assert report["checks"]["state"]["ok"] is True
            assert report["checks"]["policy"]["ok"] is True

            # What readiness promises: signed-in traffic keeps working...
            for _ in range(5):
                assert alice.get("/private").status_code == 200
            # ...and sign-in is what is unavailable (refused, no session handed out).
            with browser(gw) as bob:
                refused = login(bob, "alice")
                assert refused.status_code == 503, refused.text
                assert cookie(bob, SESSION_COOKIE) is None

            # A client that is neither loopback nor a trusted proxy would see only the verdict; the
            # metrics (loopback) show the component down and the replica up.
            def storage_gauge_down() -> dict[tuple[str, str], float] | None:
                found = _scrape(admin_port)
                return found if found.get(("gateway_component_up", "storage")) == 0.0 else None

            gauges = wait_until(storage_gauge_down, timeout=30, what="gateway_component_up{storage} 0")
            assert gauges[("gateway_ready", "")] == 1.0
            assert gauges[("gateway_component_up", "state")] == 1.0

            database.start()
            wait_until(
                lambda: _ready(gw).json()["checks"]["storage"]["ok"] is True,
                timeout=30,
                what="the database back in /ready",
            )
            assert _ready(gw).json()["degraded"] == []
            with browser(gw) as carol:
                assert login(carol, "alice").status_code == 302
