"""Relational-store fixtures (a plugin, see ``tests/conftest.py``): one ``database_url`` parametrized
over SQLite and PostgreSQL, for every suite that stores rows.

PostgreSQL must be running at 127.0.0.1:5432 (user ``postgres``, trust auth, database ``test``); a
missing server is an error, not a skip, so CI cannot pass without exercising it.

Isolation: each pytest session creates its own ``gw_test_<random hex>`` database (parallel runs and
leftovers from crashed runs never collide) and drops it at the end; each test starts from an empty
``public`` schema in it, so "blank database" tests really are blank.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import asyncpg
import pytest

from gateway.store.db import Database, default_sqlite_url
from gateway.store.migrate import upgrade
from tests.support.pg import fresh_database

__all__ = ["database", "database_url", "migrated_url", "pg_database"]

PG_HOST = "127.0.0.1"
PG_PORT = 5432


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """Name of a PostgreSQL database private to this pytest session, dropped afterwards."""
    with fresh_database("gw_test") as name:
        yield name


def _reset_pg_schema(name: str) -> None:
    async def reset() -> None:
        conn = await asyncpg.connect(f"postgresql://postgres@{PG_HOST}:{PG_PORT}/{name}", timeout=5)
        try:
            await conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
        finally:
            await conn.close()

    # Its own loop in a worker thread: fixtures may be set up while a test's event loop is already
    # running, where asyncio.run() is not allowed.
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, reset()).result()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """URL of an empty (never migrated) database, once per backend."""
    if request.param == "sqlite":
        return default_sqlite_url(tmp_path)
    # Requested lazily so SQLite-only selections (-k sqlite) need no PostgreSQL.
    name: str = request.getfixturevalue("pg_database")
    _reset_pg_schema(name)
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
