"""A throw-away PostgreSQL database on the machine's server, for tests that must not share `test`."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import asyncpg

__all__ = ["PG_ADMIN_DSN", "fresh_database"]

PG_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/test"


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


@contextmanager
def fresh_database(prefix: str = "gw_it") -> Iterator[str]:
    """Create an empty database; yield its name; drop it (connections and all) afterwards."""
    name = f"{prefix}_{secrets.token_hex(6)}"
    _admin(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
