"""The relational store: one async engine and session factory over SQLite (embedded) or PostgreSQL.

Two backends run the same code (see docs/architecture.md, Processes):

* ``sqlite+aiosqlite:///<abs path>/gateway.db`` — the single-node default. Several worker processes
  share the one file, so every connection turns on WAL (readers never block the writer), foreign keys
  (off by default in SQLite) and a busy timeout (a writer waits for the lock instead of failing).
* ``postgresql+asyncpg://user@host/db`` — production with several replicas. Connections are
  pre-pinged (a restarted server must not surface as a 500 on the next request) and connecting
  gives up quickly, so a readiness probe reports the outage instead of hanging. TLS follows libpq's
  ``sslmode`` family in the URL (``?sslmode=verify-full&sslrootcert=/etc/gateway/pg-ca.pem``, see
  ``pg_tls.py``); a refused server certificate is named as such in the error.

Driver errors never leave this package raw: :meth:`Database.ping` converts them at the boundary to
:class:`StoreUnavailable`, a 503.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

from sqlalchemy import event, text
from sqlalchemy.engine import URL, AdaptedConnection, Connection, make_url
from sqlalchemy.exc import ArgumentError, DataError, DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

from gateway.errors import BadRequest, ServiceUnavailable
from gateway.settings.database_url import DATABASE_DRIVERS, SUPPORTED_DATABASE_URLS
from gateway.store.pg_tls import split_tls, ssl_argument, warn_unverified
from gateway.store.private import create_private
from gateway.store.tls import verification_failure

if TYPE_CHECKING:
    from gateway.settings.schema import Settings

__all__ = [
    "PING_TIMEOUT_S",
    "SQLITE_BEGIN_OPTION",
    "Backend",
    "Database",
    "StoreUnavailable",
    "backend_of",
    "configured_url",
    "create_engine",
    "default_sqlite_url",
    "normalize_url",
    "store_errors",
]

Backend = Literal["sqlite", "postgresql"]


#: Connection execution option naming the SQLite ``BEGIN`` mode (``"DEFERRED"`` or ``"IMMEDIATE"``).
#: Migrations use ``IMMEDIATE`` so that two workers starting at once serialize on the write lock
#: *before* either reads the schema version, instead of both trying to create the same tables.
SQLITE_BEGIN_OPTION: Final = "sqlite_begin"

SQLITE_BUSY_TIMEOUT_MS: Final = 5_000
_WAL_RETRY_S: Final = 0.02
POSTGRES_CONNECT_TIMEOUT_S: Final = 3.0
PING_TIMEOUT_S: Final = 5.0

# What a driver can throw at us when the database is down, locked, or misconfigured. ``OSError``
# covers refused connections and asyncpg's connect timeout (``TimeoutError`` is an ``OSError``),
# which SQLAlchemy does not wrap because they are raised before a DBAPI connection exists.
_DRIVER_ERRORS: Final = (DBAPIError, PoolTimeoutError, OSError)

logger = logging.getLogger("gateway.store")


class StoreUnavailable(ServiceUnavailable):
    """The relational store cannot be reached or refused the query (503)."""

    reason = "store-unavailable"
    title = "Storage unavailable"
    public_message = "Sign-in is unavailable right now; try again in a minute."


def default_sqlite_url(data_dir: str | Path) -> str:
    """The embedded database URL for a data directory.

    Args:
        data_dir: Directory holding the gateway's state; made absolute so the URL does not depend on
            the working directory of whichever worker process opens it.

    Returns:
        ``sqlite+aiosqlite:///<absolute data_dir>/gateway.db``.
    """
    path = Path(data_dir).expanduser().resolve() / "gateway.db"
    return f"sqlite+aiosqlite:///{path.as_posix()}"


def configured_url(settings: Settings) -> str:
    """The database every process of a deployment opens: ``storage.url``, or the embedded SQLite file."""
    return settings.storage.url or default_sqlite_url(settings.data_dir)


def normalize_url(url: str | URL) -> URL:
    """Parse a database URL and pin it to the async driver this gateway uses.

    Args:
        url: ``sqlite[+aiosqlite]:///path`` or ``postgres[ql][+asyncpg]://...``.

    Returns:
        The parsed URL with drivername ``sqlite+aiosqlite`` or ``postgresql+asyncpg``.

    Raises:
        ValueError: The scheme is not supported, the URL is malformed, or it names an in-memory
            SQLite database.
    """
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ValueError(f"malformed database URL; supported: {SUPPORTED_DATABASE_URLS}") from exc
    driver = DATABASE_DRIVERS.get(parsed.drivername)
    if driver is None:
        raise ValueError(
            f"unsupported database URL scheme {parsed.drivername!r}; supported: {SUPPORTED_DATABASE_URLS}"
        )
    parsed = parsed.set(drivername=driver)
    if driver == "sqlite+aiosqlite" and parsed.database in (None, "", ":memory:"):
        # Each worker process would get its own private, empty database and lose it on exit.
        raise ValueError(
            f"in-memory SQLite is not supported, give a file path; supported: {SUPPORTED_DATABASE_URLS}"
        )
    return parsed


def backend_of(url: str | URL) -> Backend:
    """Which backend a database URL selects (raises ``ValueError`` like :func:`normalize_url`)."""
    return "sqlite" if normalize_url(url).drivername.startswith("sqlite") else "postgresql"


def create_engine(
    url: str | URL, *, pool_size: int = 10, echo: bool = False, foreign_keys: bool = True
) -> AsyncEngine:
    """Create an async engine with this gateway's per-backend connection settings.

    Used by :meth:`Database.open` and by the migration runner, so both see identical connections
    (WAL, foreign keys, busy timeout on SQLite; pre-ping and fast connect timeout on PostgreSQL).

    Args:
        url: Database URL (see :func:`normalize_url`).
        pool_size: Connections kept open per process.
        echo: Log every SQL statement (debugging only: statements may carry personal data).
        foreign_keys: On SQLite, enforce foreign keys (always on PostgreSQL). Only the migration runner
            turns them off (``gateway.store.migrate``), and checks them before it commits.

    Returns:
        A new engine; the caller disposes it.

    Raises:
        ValueError: The URL is not supported (:func:`normalize_url`).
        ConfigError: Its TLS parameters are invalid or their files cannot be loaded.
    """
    parsed = normalize_url(url)
    if parsed.drivername == "sqlite+aiosqlite":
        engine = create_async_engine(parsed, echo=echo, pool_size=pool_size)
        _install_sqlite_hooks(engine, foreign_keys=foreign_keys)
        return engine
    # libpq's sslmode/sslrootcert/sslcert/sslkey become asyncpg's ssl argument (gateway.store.pg_tls).
    parsed, tls = split_tls(parsed)
    warn_unverified(parsed, tls)
    engine = create_async_engine(
        parsed,
        echo=echo,
        pool_size=pool_size,
        pool_pre_ping=True,
        # Every check-then-write under an advisory lock (the audit chain, signing keys, names) reads
        # after taking the lock, which sees others' commits only at READ COMMITTED. A database whose
        # default is REPEATABLE READ took the snapshot at the lock statement itself: a re-attack run got
        # 23 of 25 names held by a person and a service account at once. So it is set, not inherited.
        isolation_level="READ COMMITTED",
        connect_args={
            "timeout": POSTGRES_CONNECT_TIMEOUT_S,
            "ssl": ssl_argument(tls),
            # Lets a DBA tell gateway connections apart in pg_stat_activity.
            "server_settings": {"application_name": "gateway"},
        },
    )
    if tls.crl is not None:

        @event.listens_for(engine.sync_engine, "do_connect")
        def _read_the_crl_again(_dialect: Any, _record: Any, _args: Any, params: dict[str, Any]) -> None:
            # A revocation list is replaced before it expires: read it for every new connection, as
            # libpq does, so an updated list applies (and an expired one fails) without a restart.
            params["ssl"] = ssl_argument(tls)

    return engine


def _install_sqlite_hooks(engine: AsyncEngine, *, foreign_keys: bool) -> None:
    database = engine.url.database
    if database and database != ":memory:" and not database.startswith("file:"):
        path = Path(database)

        @event.listens_for(engine.sync_engine, "do_connect", once=True)
        def _private_file(*_args: Any) -> None:
            # Before SQLite first opens (and may create) the file: 0600, never the umask's 0644 that lets
            # every local user read the password hashes and the audit trail (gateway.store.private).
            if path.parent.is_dir():
                create_private(path)

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        # Take transaction control away from the sqlite3 module: its legacy mode never BEGINs before
        # SELECT or DDL, which breaks SAVEPOINT, transactional migrations and repeatable reads.
        # The "begin" hook below emits BEGIN instead (SQLAlchemy's documented recipe).
        try:
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            try:
                # busy_timeout first: everything after it may wait on a lock another worker holds.
                cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
                _enable_wal(dbapi_connection, cursor)
                # NORMAL is durable across application crashes in WAL mode; only an OS crash or
                # power loss can drop the last commits: the usual trade for not fsyncing every write.
                cursor.execute("PRAGMA synchronous = NORMAL")
                cursor.execute(f"PRAGMA foreign_keys = {'ON' if foreign_keys else 'OFF'}")
                # Deleted rows are overwritten, not left in free pages: an erased person's hash, email
                # and addresses must not stay readable in the file (an attack run found them in a
                # build without SQLITE_SECURE_DELETE compiled in; the default depends on the build).
                cursor.execute("PRAGMA secure_delete = ON")
            finally:
                cursor.close()
        except BaseException:
            # The pool does not close a connection whose setup failed; an open aiosqlite connection
            # keeps its worker thread, which later fails against a closed event loop.
            dbapi_connection.close()
            raise

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get(SQLITE_BEGIN_OPTION, "DEFERRED")
        if mode not in ("DEFERRED", "IMMEDIATE"):
            raise ValueError(f"{SQLITE_BEGIN_OPTION} must be DEFERRED or IMMEDIATE, not {mode!r}")
        conn.exec_driver_sql(f"BEGIN {mode}")


def _enable_wal(dbapi_connection: AdaptedConnection, cursor: Any) -> None:
    # WAL is a property of the file, so only the very first start has to switch it. That switch
    # needs the file to itself, and when several workers try at once SQLite answers "database is
    # locked" at once instead of using the busy handler (it would deadlock), so retry here.
    cursor.execute("PRAGMA journal_mode")
    if cursor.fetchone()[0] == "wal":
        return
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
        # Sleep on the event loop, not the thread: the lock holder may be a coroutine of this process.
        dbapi_connection.run_async(lambda _driver_connection: asyncio.sleep(_WAL_RETRY_S))


def _describe(exc: BaseException) -> str:
    # DBAPIError's own str() carries the SQL and a link to the SQLAlchemy docs; the driver's message
    # is what an operator needs. Neither includes the password from the URL.
    cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    refused = verification_failure(exc)
    if refused is not None:
        # Not an outage: waiting will not help, the CA or the host name in storage.url is wrong.
        return (
            f"TLS verification of the PostgreSQL server failed: {refused}; check sslrootcert (the CA"
            " that issued the server's certificate) and that the host in storage.url is a name the"
            " certificate carries"
        )
    return f"{type(cause).__name__}: {cause}".rstrip(": ")


def _refused_value(exc: BaseException) -> bool:
    # SQLSTATE class 22 ("data exception": out of range, invalid text representation, ...) is the
    # database refusing a value it was given, not failing; asyncpg reports it (also its own
    # client-side int32 check) as a plain DBAPIError whose ``orig`` carries the SQLSTATE. SQLite's
    # driver raises OverflowError for an integer beyond 64 bits before the query runs.
    if isinstance(exc, DataError | OverflowError):
        return True
    orig = exc.orig if isinstance(exc, DBAPIError) else None
    return str(getattr(orig, "sqlstate", "") or "").startswith("22")


@contextmanager
def store_errors(what: str) -> Iterator[None]:
    """Convert driver errors raised inside the block to :class:`StoreUnavailable`.

    Args:
        what: Short description of the operation, prefixed to the message.

    Raises:
        StoreUnavailable: A driver, pool or socket error occurred.
        BadRequest: The database refused a value of the request (a 400, not an outage); the
            driver's text goes to the log only, as it names tables, columns and values.
    """
    try:
        yield
    except (*_DRIVER_ERRORS, OverflowError) as exc:
        if _refused_value(exc):
            logger.warning("%s: the database refused a value: %s", what, _describe(exc))
            raise BadRequest("The request contains a value out of range; nothing was changed.") from exc
        raise StoreUnavailable(f"{what}: {_describe(exc)}") from exc


class Database:
    """An open relational store: engine, session factory and health check.

    Open one per process with :meth:`open` and :meth:`close` it on shutdown. Sessions do not expire
    objects on commit, because in async code a lazy refresh on attribute access would be hidden I/O.
    """

    __slots__ = ("_backend", "_engine", "_sessions", "_writers")

    def __init__(self, engine: AsyncEngine, backend: Backend) -> None:
        """Wrap an engine made by :func:`create_engine`; prefer :meth:`open`."""
        self._engine = engine
        self._backend: Backend = backend
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)
        # SQLite, WAL: a transaction that reads and then writes cannot upgrade its snapshot once
        # another connection has committed since its first read; SQLite answers "database is
        # locked" at once (no busy wait), so such units of work take the write lock when they begin.
        writer = (
            engine.execution_options(**{SQLITE_BEGIN_OPTION: "IMMEDIATE"}) if backend == "sqlite" else engine
        )
        self._writers = async_sessionmaker(writer, expire_on_commit=False)

    @classmethod
    def open(cls, url: str, *, pool_size: int = 10, echo: bool = False) -> Database:
        """Create the engine for ``url``. Does not connect yet; call :meth:`ping` to check.

        Args:
            url: ``sqlite+aiosqlite:///...`` or ``postgresql+asyncpg://...``
                (plain ``sqlite://`` and ``postgresql://`` are accepted too).
            pool_size: Connections kept open per process.
            echo: Log every SQL statement (debugging only).

        Returns:
            The database handle.

        Raises:
            ValueError: The URL scheme is not supported.
        """
        return cls(create_engine(url, pool_size=pool_size, echo=echo), backend_of(url))

    @property
    def engine(self) -> AsyncEngine:
        """The underlying engine (for migrations and low-level checks)."""
        return self._engine

    @property
    def backend(self) -> Backend:
        """``"sqlite"`` or ``"postgresql"``."""
        return self._backend

    @asynccontextmanager
    async def session(self, *, write: bool = False) -> AsyncIterator[AsyncSession]:
        """A session for one unit of work.

        Commit explicitly with ``await session.commit()``; anything uncommitted is rolled back when
        the block exits, so an exception never leaves half a change behind.

        Args:
            write: The unit reads and then writes what it read (SQLite: ``BEGIN IMMEDIATE``, so a
                concurrent commit makes it wait its turn instead of failing). A unit whose first
                statement writes does not need it.

        Yields:
            A fresh :class:`~sqlalchemy.ext.asyncio.AsyncSession`.
        """
        async with (self._writers if write else self._sessions)() as session:
            yield session

    async def ping(self) -> None:
        """Check that the database answers a trivial query (readiness probe).

        Bounded by :data:`PING_TIMEOUT_S` overall, so a hung server fails the probe rather than the
        probe hanging; a caller wanting a tighter bound wraps the call in ``asyncio.timeout``.

        Raises:
            StoreUnavailable: The database cannot be reached, refused the query, or was too slow.
        """
        with store_errors(f"{self._backend} database unavailable"):
            async with asyncio.timeout(PING_TIMEOUT_S), self._engine.connect() as conn:
                await conn.execute(text("SELECT 1"))

    async def drop_old_pages(self) -> None:
        """After a deletion that must leave no trace (an erasure): on SQLite, write the log back into
        the file and empty it (``wal_checkpoint(TRUNCATE)``), as the WAL file keeps old copies of the
        changed pages until it is reused (an attack run read an erased person's password hash and
        addresses in ``gateway.db-wal``). A checkpoint that readers hold back is left to SQLite's next;
        PostgreSQL reclaims dead rows by its own VACUUM.
        """
        if self._backend != "sqlite":
            return
        with store_errors("cannot checkpoint the database"):
            async with self._engine.connect() as conn:
                await conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")

    async def close(self) -> None:
        """Close all pooled connections. The handle must not be used afterwards."""
        await self._engine.dispose()
