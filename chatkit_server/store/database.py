"""The database handle, its connections, and the SQLite settings that make it safe.

PostgreSQL runs through SQLAlchemy's async API on asyncpg. A SQLite file runs
on SQLAlchemy's synchronous engine, one statement per job for a worker
thread (:mod:`.sqlite_threads`): disk I/O and waiting for another process's
lock never hold up the event loop, and a statement costs one hand-off to its
thread. Both give the store the same few methods (:class:`Statements`).

SQLite needs four things on every connection, not once per file:
``journal_mode=WAL`` (readers never block the writer), ``busy_timeout`` (wait
for a lock instead of failing at once), ``foreign_keys=ON`` (without it every
``ON DELETE CASCADE`` silently does nothing) and ``synchronous=NORMAL`` (safe
with WAL, and much faster than FULL). A ``connect`` event sets them.

Write transactions must also start with ``BEGIN IMMEDIATE``. With the default
deferred ``BEGIN`` a transaction that reads and then writes holds a read
snapshot; if another connection committed meanwhile, SQLite refuses the
upgrade to a write lock with "database is locked" at once, without waiting
out ``busy_timeout``. ``IMMEDIATE`` takes the write lock up front, so writers
queue instead. The driver's own transaction handling is switched off
(``isolation_level = None``) and a ``begin`` event issues our BEGIN; write
transactions run on an ``execution_options`` copy of the engine that shares
its pool and asks for ``IMMEDIATE``.

Reads issue no ``BEGIN`` at all, on either database, nor do single-statement
writes on PostgreSQL: one statement is atomic on its own, and a ``BEGIN``
and a ``COMMIT`` would be two more round trips around every single-row
statement. So the statements of one read may see different data, on both
databases alike. On SQLite, single writes queued together are committed
together, in one ``BEGIN IMMEDIATE`` transaction of the writer thread
(:mod:`chatkit_server.store.sqlite_threads`).

SQLite has one writer at a time. This process's writers queue in order
before they reach the writer thread; left to SQLite's busy handler they
would poll, and under load some would wait past ``busy_timeout`` and fail
with "database is locked". ``busy_timeout`` still covers other processes on
the same file.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final, Protocol, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    create_async_engine,
)
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection, StaticPool

from chatkit_server.errors import StoreError
from chatkit_server.store.sqlite_threads import READER_THREADS, SQLiteThreads
from chatkit_server.store.tables import metadata

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_BUSY_TIMEOUT_MS",
    "DEFAULT_POOL_RECYCLE",
    "DEFAULT_POOL_SIZE",
    "DISK_FULL_HOLD_SECONDS",
    "Database",
    "Statements",
    "create_engine",
    "for_writes",
    "is_cancelled_connect_leftover",
]

# What asyncpg's TLS probe sets on a future nobody waits for any more (below).
_LOST_CONNECT: Final = "unexpected connection_lost() call"


def is_cancelled_connect_leftover(report: Mapping[str, Any]) -> bool:
    """Whether an asyncio error report is a PostgreSQL connect that was cancelled midway.

    asyncpg first asks the server whether it speaks TLS (its default
    ``ssl`` mode, "prefer"). A connect cancelled between opening the socket
    and that answer (a stopped answer whose write needed a new connection)
    closes the socket, and the probe's future is failed with
    ``ConnectionError`` after its waiter is gone: asyncio reports "Future
    exception was never retrieved" when it is collected. Nothing was lost;
    the pool connects again for the next write.
    """
    exception = report.get("exception")
    return (
        isinstance(exception, ConnectionError)
        and str(exception) == _LOST_CONNECT
        and str(report.get("message", "")).startswith("Future exception was never retrieved")
    )


DEFAULT_BUSY_TIMEOUT_MS: Final = 5000
DEFAULT_POOL_SIZE: Final = 30
"""PostgreSQL connections a process keeps open (``CHATKIT_DATABASE_POOL_SIZE``).

All of them are kept, none opened for a moment and closed again: under
load, SQLAlchemy's "overflow" connections beyond the pool size were closed
as soon as their statement was done and opened again for the next one,
and a connect costs more than the statement it is for (TCP, the TLS probe,
start-up and authentication, the driver's type set-up). With 10 kept and
20 overflowing, 500 new threads at once (``bench/bench_streaming.py --only
sessions-concurrent``) ended at 1.56x the ideal stream time (1.72x with a
session each); with 30 kept, at 1.31-1.35x (1.40-1.44x).
"""
# Recycle before common server and proxy idle timeouts drop the socket.
DEFAULT_POOL_RECYCLE: Final = 1800
DISK_FULL_HOLD_SECONDS: Final = 30.0
"""How long a write that failed for lack of space marks the database full (see ``disk_full``)."""

# Execution option read by the ``begin`` hook: "IMMEDIATE" for write
# transactions, "NONE" for single statements (no BEGIN at all).
_BEGIN_OPTION: Final = "chatkit_sqlite_begin"


def create_engine(
    url: str | URL,
    *,
    echo: bool = False,
    connect_args: Mapping[str, Any] | None = None,
    enforce_foreign_keys: bool = True,
    pool_size: int = DEFAULT_POOL_SIZE,
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
        pool_size: Connections kept open, and the most open at once (see
            :data:`DEFAULT_POOL_SIZE`); a statement waits for a free one.
    """
    parsed = make_url(url)
    _ensure_sqlite_directory(parsed)
    kwargs: dict[str, Any] = {"echo": echo, "connect_args": dict(connect_args or {})}
    if not _is_sqlite_memory(parsed):  # in-memory SQLite has a single-connection pool
        kwargs.update(pool_size=pool_size, max_overflow=0)
    if parsed.get_backend_name() == "postgresql":
        # Retire old sockets before idle-dropping proxies do.
        kwargs.update(pool_recycle=DEFAULT_POOL_RECYCLE)
    engine = create_async_engine(parsed, **kwargs)
    if engine.dialect.name == "sqlite":
        _install_sqlite_hooks(engine, enforce_foreign_keys=enforce_foreign_keys)
    else:
        event.listen(engine.sync_engine, "checkout", _replace_closed_connection)
    return engine


def _replace_closed_connection(
    dbapi_connection: Any, record: ConnectionPoolEntry, proxy: PoolProxiedConnection
) -> None:
    """Pool checkout: a connection the database server has closed is replaced.

    A restarted server (or one that ended the session) closes its end of the
    socket, which the driver notices as it happens: asking it costs no round
    trip. The pool's own ``pool_pre_ping`` sends one on every checkout, and
    with each single statement on a connection of its own that doubled the
    round trips (``bench/bench_streaming.py --only sessions-concurrent``:
    p99 1.57x the ideal with it, 1.44x without). A connection lost without
    its socket closing fails its statement once and is replaced; a ping
    would have waited as long for it.
    """
    is_closed = getattr(record.driver_connection, "is_closed", None)
    if callable(is_closed) and is_closed():
        # The pool's documented way to say "this one is dead, take another".
        raise sa.exc.DisconnectionError("the database server closed this connection")


def for_writes(engine: AsyncEngine) -> AsyncEngine:
    """Return a copy of ``engine``, sharing its pool, for write transactions.

    On SQLite its transactions start with ``BEGIN IMMEDIATE``; elsewhere it
    behaves like ``engine``.
    """
    return engine.execution_options(**{_BEGIN_OPTION: "IMMEDIATE"})


_T = TypeVar("_T")

Parameters = Mapping[str, Any] | Sequence[Mapping[str, Any]] | None
"""A statement's bind parameters: one set, or one per row (executemany)."""


class Statements(Protocol):
    """What the store runs its statements on: an ``AsyncConnection``, or its SQLite twin."""

    async def execute(
        self, statement: sa.Executable, parameters: Parameters = None
    ) -> sa.Result[Any]:
        """Run a statement; its result."""

    async def scalar(
        self, statement: sa.Executable, parameters: Mapping[str, Any] | None = None
    ) -> Any:
        """The first column of the first row."""

    async def scalars(
        self, statement: sa.Executable, parameters: Mapping[str, Any] | None = None
    ) -> sa.ScalarResult[Any]:
        """The first column of every row."""


def _install_sqlite_hooks(engine: AsyncEngine | Engine, *, enforce_foreign_keys: bool) -> None:
    pragmas = (
        # busy_timeout first: switching to WAL itself needs a lock.
        f"PRAGMA busy_timeout = {DEFAULT_BUSY_TIMEOUT_MS}",
        "PRAGMA journal_mode = WAL",
        f"PRAGMA foreign_keys = {'ON' if enforce_foreign_keys else 'OFF'}",
        "PRAGMA synchronous = NORMAL",
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


def _sqlite_threads(url: URL, *, echo: bool) -> SQLiteThreads:
    """The worker threads and synchronous engine of a SQLite database (any driver named)."""
    memory = _is_sqlite_memory(url)
    kwargs: dict[str, Any] = {
        "echo": echo,
        # Connections move between the worker threads (one at a time).
        "connect_args": {"check_same_thread": False},
    }
    if memory:
        kwargs["poolclass"] = StaticPool  # every connection would be a new database
    else:
        kwargs.update(pool_size=READER_THREADS + 1, max_overflow=READER_THREADS)
    engine = sa.create_engine(url.set(drivername="sqlite+pysqlite"), **kwargs)
    _install_sqlite_hooks(engine, enforce_foreign_keys=True)
    return SQLiteThreads(
        engine,
        statements=engine.execution_options(**{_BEGIN_OPTION: "NONE"}),
        transactions=engine.execution_options(**{_BEGIN_OPTION: "IMMEDIATE"}),
        single_connection=memory,
    )


class Database:
    """The database the store works in: its connections and units of work.

    Use :meth:`connect` to build one; call :meth:`dispose` when done (the app
    lifespan does).

    Attributes:
        dialect: ``"sqlite"`` or ``"postgresql"``.
    """

    def __init__(self, url: str | URL, *, echo: bool = False, **engine_kwargs: Any) -> None:
        """Prefer :meth:`connect`; ``engine_kwargs`` go to :func:`create_engine`."""
        parsed = make_url(url)
        _ensure_sqlite_directory(parsed)
        self.url = parsed
        # When a write last failed for lack of space.
        self._disk_full_at: float | None = None
        self.dialect: str = parsed.get_backend_name()
        self._sqlite: SQLiteThreads | None = None
        self._engine: AsyncEngine | None = None
        if self.dialect == "sqlite":
            self._sqlite = _sqlite_threads(parsed, echo=echo)
        else:
            self._engine = create_engine(parsed, echo=echo, **engine_kwargs)
            # Core connections, not ORM sessions: the store only runs Core
            # statements and has no use for a session's identity map and
            # unit of work, which it would pay for on every request.
            self._write_engine = for_writes(self._engine)
            # Single statements (every read, and write_one) outside a
            # transaction: PostgreSQL runs each atomically on its own, and
            # the BEGIN and COMMIT (or ROLLBACK) around it would be two more
            # round trips, each a wake-up of the event loop.
            self._single = self._engine.execution_options(isolation_level="AUTOCOMMIT")

    @classmethod
    def connect(
        cls,
        url: str,
        *,
        echo: bool = False,
        connect_args: Mapping[str, Any] | None = None,
        pool_size: int | None = None,
    ) -> Database:
        """Create a database handle for ``url`` (no connection is opened yet).

        For a SQLite file, the file's directory is created if missing.

        Args:
            url: A ``sqlite+aiosqlite://`` (or ``sqlite://``) or ``postgresql+asyncpg://`` URL.
            echo: Log every SQL statement.
            connect_args: Extra keyword arguments for the PostgreSQL driver's ``connect``.
            pool_size: PostgreSQL connections kept open (default :data:`DEFAULT_POOL_SIZE`).
        """
        return cls(
            url,
            echo=echo,
            connect_args=connect_args,
            pool_size=pool_size or DEFAULT_POOL_SIZE,
        )

    @property
    def disk_full(self) -> bool:
        """Whether a write failed for lack of space in the last :data:`DISK_FULL_HOLD_SECONDS`.

        Later writes that succeed do not clear it: on a full disk small
        writes may still fit where a message does not. It fades by itself, so
        a server that gets no writes (a health check took it out of
        rotation) comes back once space was freed; if it was not, the next
        write that fails says so again.
        """
        full_at = self._disk_full_at
        return full_at is not None and time.monotonic() - full_at < DISK_FULL_HOLD_SECONDS

    @property
    def statements_on_loop(self) -> bool:
        """Whether statements run on the event loop's thread, from a shared pool (PostgreSQL).

        SQLite's run on threads of their own (see the module notes).
        """
        return self._sqlite is None

    @property
    def sqlite_path(self) -> Path | None:
        """The SQLite database's file (``None``: PostgreSQL, or SQLite in memory)."""
        if self.dialect != "sqlite" or _is_sqlite_memory(self.url) or not self.url.database:
            return None
        return Path(self.url.database)

    def _write_failed(self, exc: BaseException) -> StoreError:
        if _is_disk_full(exc):
            if self._disk_full_at is None:
                logger.error("the database's disk is full: writes fail until space is freed")
            self._disk_full_at = time.monotonic()
        return _translate(exc)

    @property
    def sync_engine(self) -> Engine:
        """The synchronous engine underneath (for event listeners)."""
        if self._sqlite is not None:
            return self._sqlite.engine
        assert self._engine is not None
        return self._engine.sync_engine

    @asynccontextmanager
    async def read(self) -> AsyncIterator[Statements]:
        """Statements for a unit of work that only reads.

        On SQLite each statement runs on its own, so two queries of one unit
        may see different data: the store's reads are one query each, and a
        second one only explains an empty answer (missing thread, unknown
        cursor).

        Raises:
            StoreError: The database failed (driver errors are translated).
        """
        try:
            if self._sqlite is not None:
                async with self._sqlite.read() as statements:
                    yield statements
                return
            async with self._single.connect() as connection:
                yield connection
        except (sa.exc.SQLAlchemyError, OSError) as exc:
            raise _translate(exc) from exc

    async def write_one(
        self, statement: sa.Executable, parameters: Mapping[str, Any] | None = None
    ) -> Sequence[sa.Row[Any]]:
        """Run one write statement, committed on success; return its rows (``RETURNING``).

        Cheaper than :meth:`write`: on SQLite it is committed with the other
        single writes queued by then (see the module notes), on PostgreSQL
        it needs no ``BEGIN`` and ``COMMIT``; still queued behind this
        process's other writers.

        Raises:
            StoreError: The database failed (driver errors are translated).
        """
        params = dict(parameters) if parameters else None
        if self._sqlite is not None:
            return await self.write_together(
                lambda connection: _rows(connection.execute(statement, params))
            )
        try:
            async with self._single.connect() as connection:
                return _rows(await connection.execute(statement, params))
        except (sa.exc.SQLAlchemyError, OSError) as exc:
            raise self._write_failed(exc) from exc

    async def write_together(self, work: Callable[[Connection], _T]) -> _T:
        """Run ``work``'s statements (synchronous) committed together: all or none.

        On SQLite as cheaply as :meth:`write_one`: one job of the writer's
        next group commit. On PostgreSQL in a transaction of its own, each
        statement a round trip (a single statement, with data-modifying
        CTEs, is the way to spend one).

        Raises:
            StoreError: The database failed (driver errors are translated).
        """
        if self._sqlite is None:
            return await self.run_write(work)
        try:
            return await self._sqlite.write_one(work)
        except (sa.exc.SQLAlchemyError, OSError) as exc:
            raise self._write_failed(exc) from exc

    @asynccontextmanager
    async def write(self) -> AsyncIterator[Statements]:
        """Statements for a unit of work that writes: committed on success.

        On SQLite it starts with ``BEGIN IMMEDIATE`` (see the module notes).

        Raises:
            StoreError: The database failed (driver errors are translated).
        """
        try:
            if self._sqlite is not None:
                async with self._sqlite.write() as statements:
                    yield statements
            else:
                # begin(): commit when the block succeeds, roll back when it raises.
                async with self._write_engine.begin() as connection:
                    yield connection
        except (sa.exc.SQLAlchemyError, OSError) as exc:
            raise self._write_failed(exc) from exc

    async def run_write(self, work: Callable[[Connection], _T]) -> _T:
        """Run ``work`` (synchronous statements) in one write transaction.

        On SQLite that is one hand-off to the writer thread for all of
        ``work``'s statements; on PostgreSQL each statement is still a round
        trip of its own (one statement is the way to spend one).

        Raises:
            StoreError: The database failed (driver errors are translated).
        """
        try:
            if self._sqlite is not None:
                result = await self._sqlite.run_write(work)
            else:
                async with self._write_engine.begin() as connection:
                    result = await connection.run_sync(work)
        except (sa.exc.SQLAlchemyError, OSError) as exc:
            raise self._write_failed(exc) from exc
        return result

    async def ping(self) -> None:
        """Run a trivial query, for health checks.

        Raises:
            StoreError: The database cannot be reached or does not answer.
        """
        async with self.read() as session:
            await session.execute(sa.text("SELECT 1"))

    def describe(self) -> str:
        """The database URL for logs, with any password hidden."""
        return self.url.render_as_string(hide_password=True)

    async def create_all(self) -> None:
        """Create the tables directly from the metadata. For tests only.

        Real databases get their schema from the Alembic migrations
        (:func:`chatkit_server.store.migrate.upgrade`), which also record the
        schema version.
        """
        if self._sqlite is not None:
            await self._sqlite.run_write(metadata.create_all)
            return
        assert self._engine is not None
        async with self._engine.begin() as conn:
            await conn.run_sync(metadata.create_all)

    async def dispose(self) -> None:
        """Close every pooled connection (and stop a SQLite database's threads)."""
        if self._sqlite is not None:
            self._sqlite.dispose()
        if self._engine is not None:
            await self._engine.dispose()


def _rows(result: sa.CursorResult[Any]) -> Sequence[sa.Row[Any]]:
    return result.all() if result.returns_rows else []


def _is_disk_full(exc: BaseException) -> bool:
    """Whether a driver error says the database ran out of space.

    SQLite: SQLITE_FULL ("database or disk is full"); PostgreSQL: SQLSTATE
    53100 (disk_full, "could not extend file ... No space left on device");
    either: the operating system's ENOSPC.
    """
    original = getattr(exc, "orig", None) or exc
    if isinstance(original, OSError) and original.errno == errno.ENOSPC:
        return True
    if getattr(original, "sqlstate", None) == "53100":
        return True
    detail = str(original).lower()
    return "disk is full" in detail or "no space left on device" in detail


def _translate(exc: BaseException) -> StoreError:
    """Turn a driver error into a StoreError whose message holds no SQL."""
    detail = str(getattr(exc, "orig", None) or exc).lower()
    if _is_disk_full(exc):
        message = "the database's disk is full"
    elif isinstance(exc, sa.exc.IntegrityError):
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
