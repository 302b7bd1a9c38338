"""Fixtures for the relational store: one ``database_url`` parametrized over SQLite and PostgreSQL.

Imported explicitly by the test modules that need them (``tests/unit/store/conftest.py`` belongs to the
fast-state tests). PostgreSQL must be running at 127.0.0.1:5432 (user ``postgres``, trust auth, database
``test``); a missing server is an error, not a skip, so CI cannot pass without exercising it.

Isolation: each pytest session creates its own ``gw_test_<random hex>`` database (parallel runs and
leftovers from crashed runs never collide) and drops it at the end; each test starts from an empty
``public`` schema in it, so "blank database" tests really are blank.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from gateway.store.db import Database, default_sqlite_url
from gateway.store.migrate import upgrade

__all__ = ["PG_ADMIN_DSN", "database", "database_url", "migrated_url", "pg_database"]

PG_HOST = "127.0.0.1"
PG_PORT = 5432
PG_ADMIN_DSN = f"postgresql://postgres@{PG_HOST}:{PG_PORT}/test"


def _run(coro: Coroutine[Any, Any, None]) -> None:
    # Admin work runs on its own loop in a worker thread: fixtures may be set up while a test's event
    # loop is already running, where asyncio.run() is not allowed.
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, coro).result()


async def _admin(sql: str) -> None:
    # CREATE/DROP DATABASE cannot run inside a transaction; asyncpg's execute() autocommits.
    conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """Name of a PostgreSQL database private to this pytest session, dropped afterwards."""
    name = f"gw_test_{secrets.token_hex(6)}"
    _run(_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield name
    finally:
        # FORCE ends connections a failed test may have leaked, so the drop cannot hang or fail.
        _run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _reset_pg_schema(name: str) -> None:
    conn = await asyncpg.connect(f"postgresql://postgres@{PG_HOST}:{PG_PORT}/{name}", timeout=5)
    try:
        await conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
    finally:
        await conn.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """URL of an empty (never migrated) database, once per backend."""
    if request.param == "sqlite":
        return default_sqlite_url(tmp_path)
    # Requested lazily so SQLite-only selections (-k sqlite) need no PostgreSQL.
    name: str = request.getfixturevalue("pg_database")
    _run(_reset_pg_schema(name))
    return f"postgresql+asyncpg://postgres@{PG_HOST}:{PG_PORT}/{name}"


@pytest.fixture
async def migrated_url(database_url: str) -> str:
    """URL of a database upgraded to the head revision."""
    await upgrade(database_url)
    return database_url


@pytest.fixture
async def database(migrated_url: str) -> AsyncIterator[Database]:
    """An open :class:`Database` on a migrated schema; closed (engine disposed) afterwards."""
    db = Database.open(migrated_url, pool_size=2)
    try:
        yield db
    finally:
        await db.close()
