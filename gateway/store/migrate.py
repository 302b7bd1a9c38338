"""Schema migrations: Alembic driven programmatically, over the same async engine settings as the store.

The Alembic environment lives in ``gateway/store/migrations/`` inside the package, so an installed
gateway can migrate without an ``alembic.ini`` or a source checkout.

Policy (docs/architecture.md, Processes): the embedded SQLite database upgrades itself at start; PostgreSQL, shared
by several replicas, is only ever upgraded by an operator running ``gateway migrate`` — a rolling
deploy must never have a new replica change the schema under old ones. :func:`ensure_schema` encodes
that policy.

Concurrent upgrades are serialized: on SQLite the migration transaction starts with
``BEGIN IMMEDIATE`` (the write lock is taken before the version is read); on PostgreSQL it takes a
transaction-scoped advisory lock. Either way the second runner sees the first one's result and does
nothing.
"""

from __future__ import annotations

import io
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Final

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.errors import ServiceUnavailable
from gateway.store.db import SQLITE_BEGIN_OPTION, backend_of, create_engine, store_errors

__all__ = [
    "MIGRATIONS_DIR",
    "SchemaOutdated",
    "alembic_config",
    "current_revision",
    "ensure_schema",
    "head_revision",
    "upgrade",
]

MIGRATIONS_DIR: Final = Path(__file__).resolve().with_name("migrations")

# Arbitrary, fixed key for pg_advisory_xact_lock: every gateway version must use the same one.
_PG_MIGRATION_LOCK: Final = 0x67776D6967726174  # b"gwmigrat"
# A migration may rebuild tables; a second worker starting meanwhile should wait, not fail.
_SQLITE_MIGRATION_BUSY_TIMEOUT_MS: Final = 120_000

_MIGRATE_HINT: Final = "run `gateway migrate --config FILE`"


class SchemaOutdated(ServiceUnavailable):
    """The database schema is not the one this gateway version needs (503 until migrated)."""

    status = 503
    reason = "schema-outdated"
    title = "Database schema needs migrating"
    public_message = "The gateway is being upgraded; try again in a few minutes."


def alembic_config(url: str | None = None, *, quiet: bool = False) -> Config:
    """An Alembic configuration for the packaged migrations, built without an ini file.

    Also useful to developers, e.g.
    ``command.revision(alembic_config(url), message="...", autogenerate=True)``.

    Args:
        url: Database URL placed in ``sqlalchemy.url`` (used only when no connection is passed in
            ``config.attributes["connection"]``).
        quiet: Swallow what Alembic commands print (``current``, ``history``...).

    Returns:
        The configuration.
    """
    cfg = Config(stdout=io.StringIO()) if quiet else Config()
    # Config values go through ConfigParser interpolation: a literal "%" must be doubled.
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    cfg.set_main_option("path_separator", "os")
    if url is not None:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


@contextmanager
def _alembic_logging(quiet: bool) -> Iterator[None]:
    # Alembic logs each step at INFO ("Context impl ...", "Running upgrade ..."); an application that
    # configured INFO logging would print that on every start. Raise the threshold for the duration.
    logger = logging.getLogger("alembic")
    previous = logger.level
    if quiet:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(previous)


def head_revision() -> str:
    """The newest revision shipped with this gateway.

    Raises:
        RuntimeError: The packaged migrations have no single head (a packaging bug).
    """
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise RuntimeError(f"no migrations found in {MIGRATIONS_DIR}")
    return head


def _known_revisions() -> frozenset[str]:
    script = ScriptDirectory.from_config(alembic_config())
    return frozenset(rev.revision for rev in script.walk_revisions())


@asynccontextmanager
async def _engine_for(url: str) -> AsyncIterator[AsyncEngine]:
    # One connection is all a migration needs; dispose at once so no pool outlives the call.
    # Foreign keys off on SQLite, as its own ALTER procedure prescribes (sqlite.org/lang_altertable):
    # a batch migration rebuilds a table (copy, DROP, rename), and with them on the DROP deletes every
    # row pointing at the table through ON DELETE CASCADE. Migration 0016 rebuilt ``users`` so and
    # emptied every account's TOTP, passkeys and recovery codes. _upgrade_on checks them before commit.
    engine = create_engine(url, pool_size=1, foreign_keys=False)
    try:
        yield engine
    finally:
        await engine.dispose()


@asynccontextmanager
async def _locked_transaction(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    # The lock is taken before Alembic runs, which also keeps two upgrades in one process from
    # interleaving inside Alembic's process-global ``context``/``op`` proxies.
    with store_errors("cannot connect to migrate the database"):
        conn = await engine.connect()
    try:
        if conn.dialect.name == "sqlite":
            await conn.exec_driver_sql(f"PRAGMA busy_timeout = {_SQLITE_MIGRATION_BUSY_TIMEOUT_MS}")
            await conn.commit()
            await conn.execution_options(**{SQLITE_BEGIN_OPTION: "IMMEDIATE"})
        async with conn.begin():
            if conn.dialect.name == "postgresql":
                await conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_MIGRATION_LOCK})")
            yield conn
    finally:
        await conn.close()


def _revision_of(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def _upgrade_on(connection: Connection, cfg: Config) -> str | None:
    cfg.attributes["connection"] = connection
    before = _dangling(connection)
    command.upgrade(cfg, "head")
    if broken := _dangling(connection) - before:
        tables = ", ".join(sorted({table for table, _ in broken}))
        raise RuntimeError(
            f"the migration left {len(broken)} rows pointing at nothing (in {tables}); nothing was "
            "changed: report this with the gateway's version"
        )
    return _revision_of(connection)


def _dangling(connection: Connection) -> frozenset[tuple[str, object]]:
    """On SQLite, where migrations run with foreign keys off (:func:`_engine_for`), the rows (table,
    rowid) whose references point at nothing: a migration must add none (any it finds are left as they
    were). Empty on PostgreSQL, which keeps them on and checks each statement."""
    if connection.dialect.name != "sqlite":
        return frozenset()
    return frozenset((str(row[0]), row[1]) for row in connection.exec_driver_sql("PRAGMA foreign_key_check"))


async def upgrade(url: str, *, quiet: bool = True) -> str:
    """Bring the database schema to the newest revision (no-op when already there).

    Args:
        url: Database URL (see :func:`gateway.store.db.normalize_url`).
        quiet: Keep Alembic's INFO logging and output out of the application's log.

    Returns:
        The revision the database is at afterwards (the head).

    Raises:
        StoreUnavailable: The database cannot be reached.
    """
    cfg = alembic_config(url, quiet=quiet)
    async with _engine_for(url) as engine, _locked_transaction(engine) as conn:
        with _alembic_logging(quiet):
            revision = await conn.run_sync(_upgrade_on, cfg)
    if revision is None:  # pragma: no cover - Alembic stamps the version table on every upgrade
        raise RuntimeError("upgrade finished without a revision stamped")
    return revision


async def current_revision(url: str) -> str | None:
    """The revision the database is at, or ``None`` for a database never migrated.

    Raises:
        StoreUnavailable: The database cannot be reached.
    """
    async with _engine_for(url) as engine:
        with store_errors("cannot read the schema revision"), _alembic_logging(quiet=True):
            async with engine.connect() as conn:
                return await conn.run_sync(_revision_of)


async def ensure_schema(db_url: str, *, auto: bool) -> str:
    """Make sure the schema matches this gateway before serving, per the migration policy.

    Args:
        db_url: Database URL.
        auto: Allow upgrading automatically. Honoured for SQLite only: PostgreSQL is shared by
            replicas that may still run the previous version, so only an operator upgrades it.

    Returns:
        The (head) revision the database is at.

    Raises:
        SchemaOutdated: The database is behind and may not be upgraded here, or it is at a revision
            this gateway does not know (a newer gateway migrated it).
        StoreUnavailable: The database cannot be reached.
    """
    head = head_revision()
    current = await current_revision(db_url)
    if current == head:
        return head
    if current is not None and current not in _known_revisions():
        raise SchemaOutdated(
            f"database schema is at revision {current}, which this gateway does not know "
            f"(newest known: {head}); a newer gateway version migrated it, deploy that version"
        )
    if auto and backend_of(db_url) == "sqlite":
        return await upgrade(db_url)
    found = f"its schema is at revision {current}" if current is not None else "it has no schema yet"
    raise SchemaOutdated(
        f"the database is not ready: {found}, this gateway needs revision {head}: {_MIGRATE_HINT}"
    )
