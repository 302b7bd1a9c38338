"""Which ``storage.url`` schemes the gateway opens, and the driver each one runs with.

One table for the config check (``settings/checks/storage.py``) and the store (``store/db.py``), so a URL
the check accepts is one the store opens, and the other way round. Operators paste libpq URLs
(``postgresql://``, ``postgres://``) out of habit; the async driver is this project's detail.
"""

from __future__ import annotations

from typing import Final

__all__ = ["DATABASE_DRIVERS", "SUPPORTED_DATABASE_URLS"]

DATABASE_DRIVERS: Final[dict[str, str]] = {
    "sqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
}
SUPPORTED_DATABASE_URLS: Final = (
    "sqlite+aiosqlite:///<path>/gateway.db or postgresql+asyncpg://user[:password]@host[:port]/dbname"
)
