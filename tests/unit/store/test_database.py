"""The relational store and its migrations, on SQLite and PostgreSQL alike (real servers, no mocks)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError, StatementError

from gateway.errors import GatewayError, ServiceUnavailable
from gateway.schema import Base
from gateway.store.db import (
    Database,
    StoreUnavailable,
    backend_of,
    create_engine,
    default_sqlite_url,
    normalize_url,
    store_errors,
)
from gateway.store.migrate import (
    SchemaOutdated,
    alembic_config,
    current_revision,
    ensure_schema,
    head_revision,
    upgrade,
)
from gateway.store.models import Instance, KvSetting

UNREACHABLE_PG = "postgresql+asyncpg://postgres@127.0.0.1:1/test"
T0 = datetime(2025, 3, 30, 0, 59, 59, 123456, tzinfo=UTC)


async def _on_connection(url: str, fn: Any, *, foreign_keys: bool = True) -> Any:
    engine = create_engine(url, pool_size=1, foreign_keys=foreign_keys)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(fn)
    finally:
        await engine.dispose()


def _table_names(conn: Connection) -> set[str]:
    return set(sa.inspect(conn).get_table_names())


# --- URLs -------------------------------------------------------------------------------------------


def test_default_sqlite_url_is_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert default_sqlite_url("data") == f"sqlite+aiosqlite:///{tmp_path.resolve()}/data/gateway.db"
    assert backend_of(default_sqlite_url("data")) == "sqlite"


@pytest.mark.parametrize(
    ("given", "driver"),
    [
        ("sqlite+aiosqlite:////srv/gw/gateway.db", "sqlite+aiosqlite"),
        ("sqlite:////srv/gw/gateway.db", "sqlite+aiosqlite"),
        ("postgresql+asyncpg://gw@db/gw", "postgresql+asyncpg"),
        ("postgresql://gw@db/gw", "postgresql+asyncpg"),
        ("postgres://gw@db/gw", "postgresql+asyncpg"),
    ],
)
def test_normalize_url_pins_async_driver(given: str, driver: str) -> None:
    assert normalize_url(given).drivername == driver


@pytest.mark.parametrize(
    ("given", "complaint"),
    [
        ("mysql+aiomysql://gw@db/gw", "unsupported database URL scheme 'mysql+aiomysql'"),
        ("postgresql+psycopg://gw@db/gw", "unsupported database URL scheme 'postgresql+psycopg'"),
        ("sqlite+pysqlite:////srv/gw.db", "unsupported database URL scheme 'sqlite+pysqlite'"),
        ("sqlite+aiosqlite://", "in-memory SQLite is not supported"),
        ("sqlite+aiosqlite:///:memory:", "in-memory SQLite is not supported"),
        ("not a url", "malformed database URL"),
    ],
)
def test_unsupported_urls_are_rejected_with_what_is_supported(given: str, complaint: str) -> None:
    with pytest.raises(ValueError, match="supported: sqlite\\+aiosqlite:///") as info:
        Database.open(given)
    assert complaint in str(info.value)


# --- migrations ---------------------------------------------------------------------------------------


async def test_blank_database_has_no_revision(database_url: str) -> None:
    assert await current_revision(database_url) is None


async def test_upgrade_creates_schema_and_reports_head(database_url: str) -> None:
    assert await upgrade(database_url) == head_revision()
    assert await current_revision(database_url) == head_revision()
    tables = await _on_connection(database_url, _table_names)
    assert {"instance", "kv_settings", "alembic_version"} <= tables


async def test_upgrade_twice_is_a_no_op(database_url: str) -> None:
    await upgrade(database_url)
    assert await upgrade(database_url) == head_revision()

    def versions(conn: Connection) -> list[str]:
        return list(conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalars())

    assert await _on_connection(database_url, versions) == [head_revision()]


async def test_concurrent_upgrades_serialize(database_url: str) -> None:
    # Several workers starting at once on a blank database: exactly one creates the tables, the
    # others wait for its lock and then find nothing to do (no "table already exists").
    results = await asyncio.gather(*(upgrade(database_url) for _ in range(4)))
    assert results == [head_revision()] * 4


async def test_downgrade_to_base_removes_everything(migrated_url: str) -> None:
    def downgrade(conn: Connection) -> None:
        cfg = alembic_config(quiet=True)
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "base")
        conn.commit()

    await _on_connection(migrated_url, downgrade)
    assert await current_revision(migrated_url) is None
    assert await _on_connection(migrated_url, _table_names) == {"alembic_version"}


def _to_revision(conn: Connection, revision: str) -> None:
    cfg = alembic_config(quiet=True)
    cfg.attributes["connection"] = conn
    command.upgrade(cfg, revision)
    conn.commit()


def _a_row_in_each_table_pointing_at_users(conn: Connection) -> list[str]:
    """One account, and one row in every table whose foreign key points at it (every NOT NULL column
    filled by its type: 1 for integers, so every reference names the account)."""
    fill = {int: 1, str: "x", bytes: b"x", bool: False, datetime: T0}
    meta = sa.MetaData()
    meta.reflect(conn)
    children = [
        t for t in meta.sorted_tables if any(fk.column.table.name == "users" for fk in t.foreign_keys)
    ]
    for table in [meta.tables["users"], *children]:
        values = {
            c.name: fill[c.type.python_type]
            for c in table.columns
            if not c.nullable and c.server_default is None
        }
        conn.execute(table.insert().values(**values))
    conn.commit()
    return [t.name for t in children]


async def test_an_upgrade_keeps_every_row_pointing_at_a_table_it_rebuilds(database_url: str) -> None:
    """Migration 0016 rebuilt users on SQLite (copy, DROP, rename) with foreign keys on: the DROP's
    implicit delete cascaded and emptied every account's TOTP, passkeys, recovery codes, consent
    records and identity links. 0017 rebuilds it again."""

    def at_0015(conn: Connection) -> list[str]:
        _to_revision(conn, "0015")
        return _a_row_in_each_table_pointing_at_users(conn)

    children = await _on_connection(database_url, at_0015)
    assert {"totp_credentials", "webauthn_credentials", "recovery_codes", "identity_links"} <= set(children)
    await upgrade(database_url)

    def counts(conn: Connection) -> dict[str, int]:
        return {
            t: conn.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar_one() for t in ["users", *children]
        }

    assert await _on_connection(database_url, counts) == dict.fromkeys(["users", *children], 1)


async def test_a_migration_that_leaves_rows_pointing_at_nothing_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Foreign keys are off while SQLite migrates (so a rebuilt table takes no rows with it); a
    migration that orphans rows is refused before it commits, and the database stays as it was."""
    url = default_sqlite_url(tmp_path)

    def at_0015(conn: Connection) -> None:
        _to_revision(conn, "0015")
        _a_row_in_each_table_pointing_at_users(conn)

    await _on_connection(url, at_0015)
    real = command.upgrade

    def upgrade_and_orphan(cfg: Any, revision: str) -> None:
        real(cfg, revision)
        cfg.attributes["connection"].exec_driver_sql("DELETE FROM users")

    monkeypatch.setattr("gateway.store.migrate.command.upgrade", upgrade_and_orphan)
    with pytest.raises(RuntimeError, match=r"rows pointing at nothing .*totp_credentials"):
        await upgrade(url)
    assert await current_revision(url) == "0015"

    def users(conn: Connection) -> int:
        return int(conn.execute(sa.text("SELECT count(*) FROM users")).scalar_one())

    assert await _on_connection(url, users) == 1


async def test_the_single_credentials_issuer_becomes_a_row_and_back(database_url: str) -> None:
    """0017 moves users.credentials_issued_by into credential_issuers (which keeps every issuer), and
    its downgrade puts one back."""
    users = (
        "INSERT INTO users (id, username, display_name, disabled, must_change_password, roles, "
        "created_at, updated_at{}) VALUES ({}, '{}', '', false, false, '', '2026-12-06', '2026-12-06'{})"
    )

    def at_0016(conn: Connection) -> None:
        _to_revision(conn, "0016")
        conn.execute(sa.text(users.format("", 1, "boss", "")))
        conn.execute(sa.text(users.format(", credentials_issued_by", 2, "carol", ", 1")))
        conn.commit()

    def issuers(conn: Connection) -> list[tuple[int, int]]:
        rows = conn.execute(sa.text("SELECT user_id, issuer_id FROM credential_issuers"))
        return [(int(r[0]), int(r[1])) for r in rows]

    await _on_connection(database_url, at_0016)
    await upgrade(database_url)
    assert await _on_connection(database_url, issuers) == [(2, 1)]

    def back(conn: Connection) -> list[tuple[int, int | None]]:
        conn.execute(sa.text(users.format("", 3, "second", "")))
        conn.execute(sa.text("INSERT INTO credential_issuers (user_id, issuer_id) VALUES (2, 3)"))
        conn.commit()
        cfg = alembic_config(quiet=True)
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0016")
        conn.commit()
        rows = conn.execute(sa.text("SELECT id, credentials_issued_by FROM users ORDER BY id"))
        return [(int(r[0]), r[1]) for r in rows]

    # As the migration runner does (gateway.store.migrate._engine_for): foreign keys off on SQLite.
    assert await _on_connection(database_url, back, foreign_keys=False) == [(1, None), (2, 1), (3, None)]


async def test_models_match_migrated_schema(migrated_url: str) -> None:
    # Catches a model change shipped without its migration (and a migration that drifts from models).
    def diff(conn: Connection) -> list[Any]:
        context = MigrationContext.configure(
            conn, opts={"compare_type": True, "compare_server_default": True}
        )
        return list(compare_metadata(context, Base.metadata))

    assert await _on_connection(migrated_url, diff) == []


async def test_upgrade_is_quiet(
    database_url: str, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    await upgrade(database_url)
    assert [r for r in caplog.records if r.name.startswith("alembic")] == []
    assert capsys.readouterr().out == ""
    assert logging.getLogger("alembic").level == logging.NOTSET  # threshold restored afterwards


# --- ensure_schema --------------------------------------------------------------------------------------


async def test_ensure_schema_auto(database_url: str) -> None:
    if backend_of(database_url) == "sqlite":
        assert await ensure_schema(database_url, auto=True) == head_revision()
        assert await current_revision(database_url) == head_revision()
        return
    # PostgreSQL is shared by replicas of mixed versions during a deploy: never self-upgraded.
    with pytest.raises(SchemaOutdated) as info:
        await ensure_schema(database_url, auto=True)
    assert "run `gateway migrate --config FILE`" in str(info.value)
    assert "it has no schema yet" in str(info.value)
    assert isinstance(info.value, GatewayError)
    assert await current_revision(database_url) is None


async def test_ensure_schema_refuses_without_auto(database_url: str) -> None:
    with pytest.raises(SchemaOutdated, match="run `gateway migrate --config FILE`"):
        await ensure_schema(database_url, auto=False)
    assert await current_revision(database_url) is None


async def test_ensure_schema_accepts_migrated_database(migrated_url: str) -> None:
    assert await ensure_schema(migrated_url, auto=False) == head_revision()


async def test_ensure_schema_refuses_unknown_revision(migrated_url: str) -> None:
    def stamp_future(conn: Connection) -> None:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '9999'"))
        conn.commit()

    await _on_connection(migrated_url, stamp_future)
    with pytest.raises(SchemaOutdated, match="does not know"):
        await ensure_schema(migrated_url, auto=True)


# --- models -----------------------------------------------------------------------------------------------


async def test_round_trip_through_models(database: Database) -> None:
    async with database.session() as session:
        session.add(Instance(id=1, created_at=T0, schema_note="created by tests"))
        session.add(KvSetting(key="signing-key", value="k2", updated_at=T0))
        await session.commit()

    async with database.session() as session:
        instance = await session.get(Instance, 1)
        setting = await session.get(KvSetting, "signing-key")
    assert instance is not None
    assert (instance.created_at, instance.schema_note) == (T0, "created by tests")
    assert setting is not None
    assert (setting.value, setting.updated_at) == ("k2", T0)


async def test_uncommitted_work_is_rolled_back(database: Database) -> None:
    async with database.session() as session:
        session.add(KvSetting(key="draft", value="x", updated_at=T0))
        await session.flush()
    async with database.session() as session:
        assert await session.get(KvSetting, "draft") is None


async def test_timestamps_come_back_aware_utc(database: Database) -> None:
    # Written in another zone, across a DST change in Europe: same instant, reported in UTC.
    cest = timezone(timedelta(hours=2))
    written = datetime(2025, 3, 30, 3, 30, 0, 654321, tzinfo=cest)
    async with database.session() as session:
        session.add(KvSetting(key="tz", value="v", updated_at=written))
        await session.commit()
    async with database.session() as session:
        read = (await session.execute(sa.select(KvSetting.updated_at))).scalar_one()
    assert read.tzinfo is UTC
    assert read == written
    assert read == datetime(2025, 3, 30, 1, 30, 0, 654321, tzinfo=UTC)


async def test_naive_timestamps_are_refused(database: Database) -> None:
    async with database.session() as session:
        session.add(KvSetting(key="naive", value="v", updated_at=datetime(2025, 1, 1)))
        with pytest.raises(StatementError, match="naive datetime"):
            await session.commit()


async def test_instance_is_a_single_row(database: Database) -> None:
    async with database.session() as session:
        session.add(Instance(id=2, created_at=T0, schema_note="second"))
        with pytest.raises(IntegrityError):
            await session.commit()


# --- connections and health -------------------------------------------------------------------------------


async def test_ping_on_good_database(database: Database) -> None:
    await database.ping()


async def test_sqlite_connections_are_set_up_for_several_processes(tmp_path: Path) -> None:
    db = Database.open(default_sqlite_url(tmp_path))
    try:
        async with db.engine.connect() as conn:
            pragmas = {
                name: (await conn.exec_driver_sql(f"PRAGMA {name}")).scalar_one()
                for name in ("journal_mode", "foreign_keys", "busy_timeout")
            }
    finally:
        await db.close()
    assert pragmas == {"journal_mode": "wal", "foreign_keys": 1, "busy_timeout": 5000}


async def test_sqlite_savepoints_nest_inside_the_transaction(database: Database) -> None:
    # Only true with SQLAlchemy emitting BEGIN itself (sqlite3's legacy mode breaks SAVEPOINT).
    async with database.session() as session:
        session.add(KvSetting(key="outer", value="1", updated_at=T0))
        async with session.begin_nested():
            session.add(KvSetting(key="inner", value="1", updated_at=T0))
        await session.rollback()
    async with database.session() as session:
        assert (await session.execute(sa.select(sa.func.count()).select_from(KvSetting))).scalar_one() == 0


async def _read_then_write_after_a_commit_between(database: Database, *, write: bool) -> None:
    """Read a row, let another connection commit, then write what was read."""
    async with database.session() as session:
        session.add(KvSetting(key="counter", value="0", updated_at=T0))
        await session.commit()

    async def other_writer() -> None:
        async with database.session() as session:
            session.add(KvSetting(key="other", value="x", updated_at=T0))
            await session.commit()

    async with database.session(write=write) as session:
        row = await session.get(KvSetting, "counter")
        assert row is not None
        # With the write lock taken at BEGIN the other writer waits for this unit to end.
        other = asyncio.create_task(other_writer())
        await asyncio.sleep(0.2)
        row.value = str(int(row.value) + 1)
        with store_errors("counter"):
            await session.commit()
    await other


async def test_a_read_then_write_unit_waits_its_turn_with_write(tmp_path: Path) -> None:
    db = Database.open(default_sqlite_url(tmp_path))
    try:
        await upgrade(default_sqlite_url(tmp_path))
        await _read_then_write_after_a_commit_between(db, write=True)
        async with db.session() as session:
            counter = await session.get(KvSetting, "counter")
            assert counter is not None
            assert counter.value == "1"
            assert await session.get(KvSetting, "other") is not None
    finally:
        await db.close()


async def test_a_plain_read_then_write_unit_fails_on_sqlite_when_another_commits_between(
    tmp_path: Path,
) -> None:
    # Why write=True exists: SQLite cannot upgrade a stale read snapshot and says "locked" at once.
    db = Database.open(default_sqlite_url(tmp_path))
    try:
        await upgrade(default_sqlite_url(tmp_path))
        with pytest.raises(StoreUnavailable, match="locked"):
            await _read_then_write_after_a_commit_between(db, write=False)
    finally:
        await db.close()


async def test_ping_on_unreachable_postgres_fails_fast() -> None:
    db = Database.open(UNREACHABLE_PG)
    started = time.monotonic()
    try:
        with pytest.raises(StoreUnavailable) as info:
            await db.ping()
    finally:
        await db.close()
    assert time.monotonic() - started < 5
    assert isinstance(info.value, ServiceUnavailable)
    assert info.value.status == 503
    assert "postgresql database unavailable" in str(info.value)


async def test_ping_on_unopenable_sqlite_file(tmp_path: Path) -> None:
    db = Database.open(default_sqlite_url(tmp_path / "missing" / "dir"))
    try:
        with pytest.raises(StoreUnavailable, match="sqlite database unavailable"):
            await db.ping()
    finally:
        await db.close()
        # aiosqlite stops the worker thread of a failed connect without waiting for it; if this
        # test's loop closed first, the thread would raise "Event loop is closed" into a later test
        # (omnilib/aiosqlite#241). Harmless in a long-lived server; here, let it finish first.
        for thread in threading.enumerate():
            if "_connection_worker_thread" in thread.name:
                thread.join(timeout=5)


async def test_migrations_on_unreachable_postgres_raise_store_unavailable() -> None:
    with pytest.raises(StoreUnavailable):
        await current_revision(UNREACHABLE_PG)
    with pytest.raises(StoreUnavailable):
        await upgrade(UNREACHABLE_PG)
    with pytest.raises(StoreUnavailable):
        await ensure_schema(UNREACHABLE_PG, auto=True)
