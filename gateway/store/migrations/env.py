"""Alembic environment for the gateway schema, kept inside the package (no alembic.ini at runtime).

``gateway.store.migrate`` runs Alembic programmatically and hands over an open connection in
``config.attributes["connection"]``; that connection already holds the migration lock (SQLite
``BEGIN IMMEDIATE`` / PostgreSQL advisory lock), so everything here runs inside its transaction.
Without one (a developer driving ``alembic.command`` with ``sqlalchemy.url`` set, e.g. to
autogenerate a revision) this file opens its own engine with the gateway's connection settings.
"""

from __future__ import annotations

import asyncio
from typing import Any

from alembic import context
from alembic.autogenerate.api import AutogenContext
from sqlalchemy.engine import Connection

from gateway.schema import Base
from gateway.store.db import create_engine
from gateway.store.models import UTCDateTime

config = context.config
target_metadata = Base.metadata


def _render_item(type_: str, obj: Any, autogen_context: AutogenContext) -> str | bool:
    # Revisions must not import the models (they change after the revision is written); the column
    # type UTCDateTime is a Python-side conversion over a plain timezone-aware DateTime.
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def _options(dialect_name: str) -> dict[str, Any]:
    return {
        "target_metadata": target_metadata,
        # SQLite cannot ALTER most things; batch mode rebuilds the table (copy and rename) instead.
        "render_as_batch": dialect_name == "sqlite",
        "compare_type": True,
        "compare_server_default": True,
        "render_item": _render_item,
    }


def _run_on(connection: Connection) -> None:
    context.configure(connection=connection, **_options(connection.dialect.name))
    with context.begin_transaction():
        context.run_migrations()


async def _run_with_own_engine(url: str) -> None:
    engine = create_engine(url, pool_size=1, foreign_keys=False)  # see gateway.store.migrate._engine_for
    try:
        async with engine.begin() as connection:
            await connection.run_sync(_run_on)
    finally:
        await engine.dispose()


def _run_offline() -> None:
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("offline (--sql) mode needs sqlalchemy.url in the Alembic config")
    context.configure(url=url, literal_binds=True, **_options(url.split(":", 1)[0].split("+", 1)[0]))
    with context.begin_transaction():
        context.run_migrations()


def _run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run_on(connection)
        return
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("pass a connection in config.attributes or set sqlalchemy.url")
    asyncio.run(_run_with_own_engine(url))


if context.is_offline_mode():
    _run_offline()
else:
    _run_online()
