"""The async engine, its sessions, and the SQLite settings that make it safe.

SQLite needs four things on every connection, not once per file:
``journal_mode=WAL`` (readers never block the writer), ``busy_timeout`` (wait
for a lock instead of failing at once), ``foreign_keys=ON`` (without it every
``ON DELETE CASCADE`` silently does nothing) and ``synchronous=NORMAL`` (safe
with WAL, and much faster than FULL).

Write transactions must also start with ``BEGIN IMMEDIATE``. With the default
deferred ``BEGIN`` a transaction that reads and then writes holds a read
snapshot; if another connection committed meanwhile, SQLite refuses the
upgrade to a write lock with "database is locked" at once, without waiting
out ``busy_timeout``. ``IMMEDIATE`` takes the write lock up front, so writers
queue instead. The driver's own transaction handling is switched off
(``isolation_level = None``) and a ``begin`` event issues our BEGIN; write
sessions run on an ``execution_options`` copy of the engine that shares its
pool and asks for ``IMMEDIATE``.

Reads and single-statement writes on SQLite issue no ``BEGIN`` at all: one
statement is atomic on its own, and a write statement takes the write lock
before it reads (waiting out ``busy_timeout``), so it cannot fail the way a
read-then-write transaction does. Every statement through aiosqlite is a
trip to its thread (about 0.1 ms here, see :mod:`._aiosqlite`, which makes it
one trip per statement), and ``BEGIN``/``COMMIT`` were half of a single-row
read (measured: 1.0 ms with them, 0.6 ms without).

Reads and single-statement writes on a SQLite file run on the event loop's
own thread, on a connection of their own (:class:`_LoopConnection`). Such a
statement takes SQLite tens of microseconds, while a trip to aiosqlite's
thread waits for the loop twice and for the GIL; and this process's writers
queue one after another, so with hundreds of streams each write waited for
the ones before it to make their trips (measured: 500 new conversations took
11 s to store their first messages). Nothing on that connection may block the
loop: it has no busy timeout, and a statement that finds the database locked
(another process holding a lock it needs) is tried again after short pauses
while the loop runs on, for up to ``busy_timeout``. It never checkpoints
the WAL itself; a checkpoint runs through aiosqlite every
:data:`CHECKPOINT_EVERY` writes. Transactions (:meth:`Database.write`) and
in-memory databases stay on aiosqlite.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final, TypeVar, cast

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, Engine, FrozenResult, make_url
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    create_async_engine,
)
from sqlalchemy.pool import StaticPool

from ..errors import StoreError
from ._aiosqlite import one_trip_dbapi
from .tables import metadata

__all__ = [
    "CHECKPOINT_EVERY",
    "DEFAULT_BUSY_TIMEOUT_MS",
    "DEFAULT_MAX_OVERFLOW",
    "DEFAULT_POOL_RECYCLE",
    "DEFAULT_POOL_SIZE",
    "Database",
    "create_engine",
    "for_writes",
]

DEFAULT_BUSY_TIMEOUT_MS: Final = 5000
DEFAULT_POOL_SIZE: Final = 10
DEFAULT_MAX_OVERFLOW: Final = 20
# Recycle before common server and proxy idle timeouts drop the socket.
DEFAULT_POOL_RECYCLE: Final = 1800

# Execution option read by the ``begin`` hook: "IMMEDIATE" for writers.
_BEGIN_OPTION: Final = "chatkit_sqlite_begin"
CHECKPOINT_EVERY: Final = 1000
"""Writes on the event loop's connection between two WAL checkpoints (run off the loop)."""

logger = logging.getLogger(__name__)


def create_engine(
    url: str | URL,
    *,
    echo: bool = False,
    connect_args: Mapping[str, Any] | None = None,
    enforce_foreign_keys: bool = True,
) -> AsyncEngine:
    """Create an async engine with this server's connection settings.

    For a SQLite file, the file's directory is created if missing.

    Args:
        url: A ``sqlite+aiosqlite://`` or ``postgresql+asyncpg://`` URL.
        echo: Log every SQL statement.
        connect_args: Extra keyword arguments for the driver's ``connect``
            (for asyncpg, e.g. ``{"server_settings": {"search_path": "s"}}``).
        enforce_foreign_keys: Turn SQLite's foreign keys on. Only migrations
            turn it off: rebuilding a table in batch mode drops the old one,
            and with foreign keys on that drop would cascade into its
            children.
    """
    parsed = make_url(url)
    _ensure_sqlite_directory(parsed)
    kwargs: dict[str, Any] = {"echo": echo, "connect_args": dict(connect_args or {})}
    if not _is_sqlite_memory(parsed):  # in-memory SQLite has a single-connection pool
        kwargs.update(pool_size=DEFAULT_POOL_SIZE, max_overflow=DEFAULT_MAX_OVERFLOW)
    if parsed.get_backend_name() == "sqlite" and parsed.get_driver_name() == "aiosqlite":
        kwargs["module"] = one_trip_dbapi()
    if parsed.get_backend_name() == "postgresql":
        # A server restart or an idle-dropping proxy leaves dead sockets in
        # the pool: test each on checkout and retire old ones.
        kwargs.update(pool_pre_ping=True, pool_recycle=DEFAULT_POOL_RECYCLE)
    engine = create_async_engine(parsed, **kwargs)
    if engine.dialect.name == "sqlite":
        _install_sqlite_hooks(engine, enforce_foreign_keys=enforce_foreign_keys)
    return engine


def for_writes(engine: AsyncEngine) -> AsyncEngine:
    """Return a copy of ``engine``, sharing its pool, for write transactions.

    On SQLite its transactions start with ``BEGIN IMMEDIATE``; elsewhere it
    behaves like ``engine``.
    """
    return engine.execution_options(**{_BEGIN_OPTION: "IMMEDIATE"})


def _install_sqlite_hooks(
    engine: AsyncEngine | Engine,
    *,
    enforce_foreign_keys: bool,
    busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS,
    extra_pragmas: tuple[str, ...] = (),
) -> None:
    pragmas = (
        # busy_timeout first: switching to WAL itself needs a lock.
        f"PRAGMA busy_timeout = {busy_timeout_ms}",
        "PRAGMA journal_mode = WAL",
        f"PRAGMA foreign_keys = {'ON' if enforce_foreign_keys else 'OFF'}",
        "PRAGMA synchronous = NORMAL",
        *extra_pragmas,
    )
    sync_engine = engine.sync_engine if isinstance(engine, AsyncEngine) else engine

    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # The driver would otherwise issue its own deferred BEGIN before DML
        # (and none before SELECT or DDL); the begin hook below replaces it.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            for pragma in pragmas:
                cursor.execute(pragma)
        finally:
            cursor.close()

    @event.listens_for(sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get(_BEGIN_OPTION)
        if mode != "NONE":  # NONE: each statement commits on its own
            conn.exec_driver_sql("BEGIN IMMEDIATE" if mode == "IMMEDIATE" else "BEGIN")


def _is_sqlite_memory(url: URL) -> bool:
    if url.get_backend_name() != "sqlite":
        return False
    return url.database in (None, "", ":memory:") or url.query.get("mode") == "memory"


def _ensure_sqlite_directory(url: URL) -> None:
    if url.get_backend_name() != "sqlite" or _is_sqlite_memory(url):
        return
    database = url.database or ""
    if database.startswith("file:") or url.query.get("uri"):
        return  # a URI names its own location
    Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)


_T = TypeVar("_T")
_LOCKED: Final = object()  # what _LoopConnection.run returns when SQLite is busy
# Pauses between tries of a locked-out statement: short, as locks are held
# for tens of microseconds per statement.
_FIRST_RETRY_PAUSE: Final = 0.0005
_LAST_RETRY_PAUSE: Final = 0.005


def _rows(result: sa.CursorResult[Any]) -> Sequence[sa.Row[Any]]:
    return result.all() if result.returns_rows else []


def _frozen(result: sa.CursorResult[Any]) -> FrozenResult[Any]:
    return result.freeze()


def _scalar(result: sa.CursorResult[Any]) -> Any:
    return result.scalar()


class _LoopConnection:
    """A SQLite file's connection for single statements run on the event loop's thread.

    See the module notes. Writes use it only while holding this process's
    write lock; reads at any time (each statement runs to completion before
    the loop moves on, so they never interleave).
    """

    def __init__(self, url: URL) -> None:
        engine = sa.create_engine(
            url.set(drivername="sqlite+pysqlite"),
            poolclass=StaticPool,
            # Made and used on the loop's thread only; the flag only lets
            # dispose() close it from wherever shutdown runs.
            connect_args={"check_same_thread": False},
        )
        _install_sqlite_hooks(
            engine,
            enforce_foreign_keys=True,
            busy_timeout_ms=0,
            extra_pragmas=("PRAGMA wal_autocheckpoint = 0",),
        )
        self.engine = engine.execution_options(**{_BEGIN_OPTION: "NONE"})
        # Kept open: checking a connection out of the pool and back in for
        # every statement cost about a third of each statement's CPU.
        self._connection: Connection | None = None

    def run(
        self,
        statement: sa.Executable,
        parameters: Mapping[str, Any] | None,
        consume: Callable[[sa.CursorResult[Any]], _T],
    ) -> _T | object:
        """``consume(result)`` of the statement, or ``_LOCKED`` (then nothing was done)."""
        connection = self._open()
        try:
            result = connection.execute(statement, dict(parameters) if parameters else None)
            value = consume(result)
        except sa.exc.OperationalError as exc:
            connection.rollback()
            code = getattr(exc.orig, "sqlite_errorcode", None)
            if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                return _LOCKED
            raise
        except BaseException:
            connection.rollback()
            raise
        connection.commit()
        return value

    def data_version(self) -> int:
        """SQLite's ``data_version``: moves when another connection commits."""
        connection = self._open()
        # The driver's connection directly: a pragma needs no statement
        # compilation, and this is read before every cached history.
        dbapi = connection.connection.dbapi_connection
        assert dbapi is not None
        value: int = dbapi.execute("PRAGMA data_version").fetchone()[0]
        return value

    def _open(self) -> Connection:
        """The kept connection, (re)opened if it is not usable."""
        connection = self._connection
        if connection is None or connection.invalidated or connection.closed:
            connection = self._connection = self.engine.connect()
        return connection

    def dispose(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
        self.engine.dispose()


class _LoopSession:
    """What the store's reads use of ``AsyncConnection``, run on the loop's connection.

    Each result is read in full before it is returned, so a result may be
    used after later statements, as with aiosqlite's buffered results.
    """

    def __init__(self, database: Database) -> None:
        self._database = database

    async def execute(
        self, statement: sa.Executable, parameters: Mapping[str, Any] | None = None
    ) -> sa.Result[Any]:
        frozen = await self._database._run_inline(statement, parameters, _frozen)
        return frozen()

    async def scalar(
        self, statement: sa.Executable, parameters: Mapping[str, Any] | None = None
    ) -> Any:
        return await self._database._run_inline(statement, parameters, _scalar)

    async def scalars(
        self, statement: sa.Executable, parameters: Mapping[str, Any] | None = None
    ) -> sa.ScalarResult[Any]:
        return (await self.execute(statement, parameters)).scalars()


class Database:
    """An async engine and the sessions the store works in.

    Use :meth:`connect` to build one; call :meth:`dispose` when done (the app
    lifespan does).

    Attributes:
        engine: The SQLAlchemy async engine (one pool for readers and writers).
        dialect: ``"sqlite"`` or ``"postgresql"``.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        """Wrap an engine made by :func:`create_engine`; prefer :meth:`connect`."""
        self.engine = engine
        self.dialect: str = engine.dialect.name
        # Core connections, not ORM sessions: the store only runs Core
        # statements, and a session's bookkeeping cost about a millisecond
        # per unit of work (measured on every request's thread lookup).
        self._write_engine = for_writes(engine)
        self._statement_engine = engine.execution_options(**{_BEGIN_OPTION: "NONE"})
        # SQLite has one writer at a time. Queueing this process's writers
        # here is fair and free; leaving them to SQLite's busy handler makes
        # them poll, and under load some wait past busy_timeout and fail with
        # "database is locked". busy_timeout still covers other processes.
        self._write_lock = asyncio.Lock() if self.dialect == "sqlite" else None
        self._loop: _LoopConnection | None = None
        url = engine.url
        if url.get_driver_name() == "aiosqlite" and not _is_sqlite_memory(url):
            self._loop = _LoopConnection(url)
        self._checkpoint: asyncio.Task[None] | None = None
        self._writes_since_checkpoint = 0

    @classmethod
    def connect(
        cls,
        url: str,
        *,
        echo: bool = False,
        connect_args: Mapping[str, Any] | None = None,
    ) -> Database:
        """Create a database handle for ``url`` (no connection is opened yet).

        For a SQLite file, the file's directory is created if missing.

        Args:
            url: A ``sqlite+aiosqlite://`` or ``postgresql+asyncpg://`` URL.
            echo: Log every SQL statement.
            connect_args: Extra keyword arguments for the driver's ``connect``.
        """
        return cls(create_engine(url, echo=echo, connect_args=connect_args))

    @property
    def data_version(self) -> Callable[[], int] | None:
        """For a SQLite file: reads SQLite's count of commits by other connections.

        The statements of :meth:`read` and :meth:`write_one` run on a
        connection of their own; the count moves when any other connection
        (a :meth:`write` transaction, another process) commits, so what was
        read on it and kept is still current while the count stays put.
        ``None`` for other databases.
        """
        return None if self._loop is None else self._loop.data_version

    @property
    def sync_engines(self) -> tuple[Engine, ...]:
        """Every engine this database runs statements on, for event listeners (logs, tests)."""
        engines = (self.engine.sync_engine,)
        return engines if self._loop is None else (*engines, self._loop.engine)

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A connection for a unit of work that only reads.

        On SQLite each statement runs on its own, so two queries of one unit
        may see different data: the store's reads are one query each, and a
        second one only explains an empty answer (missing thread, unknown
        cursor).

        Raises:
            StoreError: The database failed (driver errors are translated).
        """
        try:
            if self._loop is not None:
                # Not an AsyncConnection, but the part of one the store uses.
                yield cast(AsyncConnection, _LoopSession(self))
                return
            async with self._statement_engine.connect() as connection:
                yield connection
        except (sa.exc.SQLAlchemyError, OSError) as exc:
            raise _translate(exc) from exc

    async def _run_inline(
        self,
        statement: sa.Executable,
        parameters: Mapping[str, Any] | None,
        consume: Callable[[sa.CursorResult[Any]], _T],
    ) -> _T:
        """``consume`` the statement's result, run on the loop's connection.

        While another process holds a lock the statement needs, it is tried
        again after short pauses (the loop runs meanwhile), for up to the
        busy timeout. SQLite's own busy handler would sleep up to 100 ms
        between tries, holding up every writer of this process meanwhile:
        with two workers on one file that made streams twice as slow.

        Raises:
            StoreError: Still locked after the busy timeout.
        """
        assert self._loop is not None
        clock = asyncio.get_running_loop()
        deadline = clock.time() + DEFAULT_BUSY_TIMEOUT_MS / 1000
        pause = _FIRST_RETRY_PAUSE
        while True:
            value = self._loop.run(statement, parameters, consume)
            if value is not _LOCKED:
                return cast(_T, value)
            if clock.time() + pause > deadline:
                raise StoreError("the database is busy: try again")
            await asyncio.sleep(pause)
            pause = min(pause * 2, _LAST_RETRY_PAUSE)

    async def write_one(
        self, statement: sa.Executable, parameters: Mapping[str, Any] | None = None
    ) -> Sequence[sa.Row[Any]]:
        """Run one write statement, committed on success; return its rows (``RETURNING``).

        Cheaper than :meth:`write` on SQLite (no ``BEGIN IMMEDIATE`` and
        ``COMMIT``, see the module notes); still queued behind this process's
        other writers.

        Raises:
            StoreError: The database failed (driver errors are translated).
        """
        if self._write_lock is None:
            async with self._transaction(self.engine) as session:
                return await _all_rows(session, statement, parameters)
        async with self._write_lock:
            if self._loop is None:
                async with self._transaction(self._statement_engine) as session:
                    return await _all_rows(session, statement, parameters)
            try:
                rows = await self._run_inline(statement, parameters, _rows)
            except (sa.exc.SQLAlchemyError, OSError) as exc:
                raise _translate(exc) from exc
            self._checkpoint_now_and_then()
            return rows

    def _checkpoint_now_and_then(self) -> None:
        self._writes_since_checkpoint += 1
        if self._writes_since_checkpoint < CHECKPOINT_EVERY or self._checkpoint is not None:
            return
        self._writes_since_checkpoint = 0
        self._checkpoint = asyncio.get_running_loop().create_task(self._run_checkpoint())

    async def _run_checkpoint(self) -> None:
        try:
            # PASSIVE: copies what it can without waiting for readers or writers.
            async with self._statement_engine.connect() as connection:
                await connection.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")
        except (sa.exc.SQLAlchemyError, OSError) as exc:
            logger.warning("SQLite WAL checkpoint failed (%s); the next one retries", exc)
        finally:
            self._checkpoint = None

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A session for a unit of work that writes: committed on success.

        On SQLite it starts with ``BEGIN IMMEDIATE`` (see the module notes).

        Raises:
            StoreError: The database failed (driver errors are translated).
        """
        if self._write_lock is None:
            async with self._transaction(self._write_engine) as session:
                yield session
            return
        async with self._write_lock, self._transaction(self._write_engine) as session:
            yield session

    @asynccontextmanager
    async def _transaction(self, engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
        try:
            # begin(): commit when the block succeeds, roll back when it raises.
            async with engine.begin() as connection:
                yield connection
        except (sa.exc.SQLAlchemyError, OSError) as exc:
            raise _translate(exc) from exc

    async def ping(self) -> None:
        """Run a trivial query, for health checks.

        Raises:
            StoreError: The database cannot be reached or does not answer.
        """
        async with self.read() as session:
            await session.execute(sa.text("SELECT 1"))

    def describe(self) -> str:
        """The database URL for logs, with any password hidden."""
        return self.engine.url.render_as_string(hide_password=True)

    async def create_all(self) -> None:
        """Create the tables directly from the metadata. For tests only.

        Real databases get their schema from the Alembic migrations
        (:func:`chatkit_server.store.migrate.upgrade`), which also record the
        schema version.
        """
        async with self.engine.begin() as conn:
            await conn.run_sync(metadata.create_all)

    async def dispose(self) -> None:
        """Close every pooled connection."""
        if self._checkpoint is not None:
            await asyncio.wait([self._checkpoint])
        if self._loop is not None:
            self._loop.dispose()
        await self.engine.dispose()


async def _all_rows(
    session: AsyncConnection, statement: sa.Executable, parameters: Mapping[str, Any] | None
) -> Sequence[sa.Row[Any]]:
    result = await session.execute(statement, dict(parameters) if parameters else None)
    return result.all() if result.returns_rows else []


def _translate(exc: BaseException) -> StoreError:
    """Turn a driver error into a StoreError whose message holds no SQL."""
    detail = str(getattr(exc, "orig", None) or exc).lower()
    if isinstance(exc, sa.exc.IntegrityError):
        message = "the change conflicts with stored data (a duplicate key or a missing parent)"
    elif "no such table" in detail or ("relation" in detail and "does not exist" in detail):
        message = "the database schema is missing: run `chatkit-server migrate`"
    elif "database is locked" in detail or "database is busy" in detail:
        message = "the database is busy: try again"
    elif isinstance(exc, sa.exc.TimeoutError):
        message = "timed out waiting for a free database connection"
    elif isinstance(exc, OSError) or (
        isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated
    ):
        message = "cannot reach the database"
    else:
        message = f"database error ({type(getattr(exc, 'orig', None) or exc).__name__})"
    return StoreError(message)
