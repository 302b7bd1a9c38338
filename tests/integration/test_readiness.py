"""``/.gateway/ready`` against the real production stores (PostgreSQL, Redis) and the embedded default.

PostgreSQL must run at 127.0.0.1:5432 (user ``postgres``, trust auth) and Redis at 127.0.0.1:6379; a
missing server fails these tests rather than skipping them. Each PostgreSQL test gets a database of
its own, created here and dropped afterwards.
"""

from __future__ import annotations

import asyncio
import secrets
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from gateway.store.migrate import head_revision
from tests.integration.harness import (
    Echo,
    Gateway,
    echo_route,
    free_port,
    gateway_config,
    run_cli,
    run_echo,
    run_gateway,
)

PG_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/test"
REDIS_URL = "redis://127.0.0.1:6379/0"
NOTHING_LISTENING = "redis://127.0.0.1:1/0"


def _admin(sql: str) -> None:
    async def run() -> None:
        # CREATE/DROP DATABASE cannot run in a transaction; asyncpg's execute() autocommits.
        conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    # Its own loop in a thread: safe whether or not an event loop is running in this thread.
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, run()).result()


@pytest.fixture
def fresh_pg_url() -> Iterator[str]:
    with _fresh_pg_database() as url:
        yield url


@contextmanager
def _fresh_pg_database() -> Iterator[str]:
    name = f"gw_it_{secrets.token_hex(6)}"
    _admin(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    finally:
        _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def echo() -> Iterator[Echo]:
    with run_echo() as app:
        yield app


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
        assert report["checks"]["storage"] == {"ok": True}
        assert report["checks"]["state"] == {"ok": True}
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


def test_unmigrated_refusal_is_one_message_without_traceback(unmigrated_start: tuple[int, str]) -> None:
    # An operator's error, found before any worker starts: one line, no stack, no crash-loop of workers.
    code, log = unmigrated_start
    assert code == 1, log
    assert "Traceback" not in log, log
    assert "Spawning worker" not in log, log


def test_unreachable_redis_is_not_ready_but_alive(tmp_path: Path, echo: Echo) -> None:
    config = _config(tmp_path, echo, state={"redis_url": NOTHING_LISTENING})
    with run_gateway(tmp_path, config) as gw:
        resp = _ready(gw)
        assert resp.status_code == 503, resp.text
        report = resp.json()
        assert report["ready"] is False
        assert report["checks"]["state"]["ok"] is False
        assert report["checks"]["state"]["error"]
        assert report["checks"]["storage"] == {"ok": True}
        # Liveness is about the process, not its dependencies: restarting it would not bring Redis back.
        health = httpx.get(f"{gw.url}/.gateway/health", timeout=30)
        assert health.status_code == 200
        assert health.json() == {"status": "ok"}


def test_embedded_default_is_ready_with_sqlite_in_data_dir(tmp_path: Path, echo: Echo) -> None:
    config = _config(tmp_path, echo)
    assert "storage" not in config
    assert "state" not in config
    with run_gateway(tmp_path, config) as gw:
        resp = _ready(gw)
        assert resp.status_code == 200, resp.text
        report = resp.json()
        assert report["checks"]["storage"] == {"ok": True}
        assert report["checks"]["state"] == {"ok": True}
        assert report["checks"]["config"]["generation"] == 1
        database = Path(config["data_dir"]) / "gateway.db"
        assert database.is_file()
        assert database.stat().st_size > 0
