"""A SQLite file's statements, run on worker threads: one hand-off per statement.

SQLite's driver blocks while it reads and writes the file, so its calls must
not run on the event loop. aiosqlite moves each call to a thread of its own,
but SQLAlchemy's adapter makes several calls per statement (a cursor, the
execution, the fetch, closing the cursor), each a hand-off to that thread and
back through the loop. Here a whole statement (execute and fetch, on a
connection of SQLAlchemy's pool that the thread keeps) is one job for a
``concurrent.futures`` thread, on SQLAlchemy's ordinary synchronous engine:
the same statements, the same pool and events, a fraction of the latency, and
one wake-up of the loop per statement instead of several
(``bench/bench_streaming.py`` measures the time to the first token, which
waits for a few statements).

Reads run on a few threads at once (WAL lets readers run beside the writer).
Writes run on one thread, in the order they were asked for: SQLite has one
writer at a time anyway. A write transaction keeps its connection from
``BEGIN IMMEDIATE`` to ``COMMIT``; if the task that owns it is cancelled or
fails, the rollback is queued on the writer thread without waiting for it,
so it runs before any later write and cannot be skipped by cancellation.

Single writes (:meth:`SQLiteThreads.write_one`, :meth:`SQLiteThreads.run_write`)
are committed in groups: the writer thread takes every such write queued
by the time it gets to them and runs them in one transaction, then hands
all their results to the event loop at once. Alone, a write is a group of
one. Under a burst the writer is what every answer waits on (500 new
threads at once queue some 1,500 writes before their first deltas), and
much of a write's time went to its own ``BEGIN``, ``COMMIT``, pool checkout
and hand-off back, each also a wait for the interpreter's lock beside a busy
event loop. Measured with ``bench/bench_streaming.py --only concurrent``
(500 new threads at once, one process, 2 cores) in one quiet half hour:
p99 stream time 12.47-12.65 s over six runs (1.25-1.27x the ideal) against
13.39-14.10 s over four runs of the build before (1.34-1.41x); the first
delta p50 2.3-2.6 s after the burst against 3.5-4.3 s. A write that fails
in a group is done again on its own, as are the others, so only it fails.
Each thread keeps its connection from one job to the next
(:meth:`SQLiteThreads._kept`); :meth:`SQLiteThreads.dispose` gives them all back.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, Final, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.engine.result import IteratorResult, SimpleResultMetaData

__all__ = ["READER_THREADS", "SQLiteThreads", "ThreadConnection"]

READER_THREADS: Final = 4
"""Threads that run reads at once (each holds a pooled connection while it runs)."""

_T = TypeVar("_T")


class ThreadConnection:
    """What the store uses of ``AsyncConnection``, each statement a job for a thread.

    Every result is fetched whole in the thread and handed back buffered,
    so it may be read after later statements.

    Args:
        run: Runs a function of a ``Connection`` on the right thread.
    """

    def __init__(self, run: Callable[[Callable[[Connection], Any]], Any]) -> None:
        self._run = run

    async def execute(
        self,
        statement: sa.Executable,
        parameters: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
    ) -> sa.Result[Any]:
        """Run ``statement`` (once per parameter set given); its result, fetched in full."""
        params: Any = None
        if isinstance(parameters, Mapping):
            params = dict(parameters)
        elif parameters:
            params = [dict(row) for row in parameters]

        def work(connection: Connection) -> Any:
            result = connection.execute(statement, params)
            if not result.returns_rows:
                result.close()
                return _no_rows
            return result.freeze()

        frozen = await self._run(work)
        result: sa.Result[Any] = frozen()
        return result

    async def scalar(
        self, statement: sa.Executable, parameters: Mapping[str, Any] | None = None
    ) -> Any:
        """The first column of the first row of ``statement``'s result."""
        return (await self.execute(statement, parameters)).scalar()

    async def scalars(
        self, statement: sa.Executable, parameters: Mapping[str, Any] | None = None
    ) -> sa.ScalarResult[Any]:
        """The first column of every row of ``statement``'s result."""
        return (await self.execute(statement, parameters)).scalars()


class SQLiteThreads:
    """Runs a SQLite database's units of work on threads (see the module notes).

    Args:
        engine: A synchronous engine on the database, with its connection
            events installed; single statements on ``statements`` run
            without ``BEGIN``, transactions on ``transactions`` start their own.
        statements: ``engine`` as single statements use it.
        transactions: ``engine`` as write transactions use it.
        single_connection: The database is in memory (one connection): reads
            run on the writer thread too.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        statements: Engine,
        transactions: Engine,
        single_connection: bool = False,
    ) -> None:
        self.engine = engine
        self._statements = statements
        self._transactions = transactions
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="chatkit-sqlite-write")
        # None: the one connection is the writer's, and reads queue there too.
        self._readers = (
            None
            if single_connection
            else ThreadPoolExecutor(READER_THREADS, thread_name_prefix="chatkit-sqlite-read")
        )
        # Held while a write transaction is open: its statements are sent to
        # the writer thread one by one, and no other write may come between
        # them there (it would wait on the transaction's lock, on the very
        # thread the transaction needs).
        self._transaction_lock = asyncio.Lock()
        self._group: list[tuple[Callable[[Connection], Any], asyncio.Future[Any]]] = []
        self._group_lock = threading.Lock()
        self._group_scheduled = False
        # Each thread's connections, by engine (see _kept), and all of them, to close.
        self._thread_connections = threading.local()
        self._every_kept: list[Connection] = []
        self._kept_lock = threading.Lock()

    async def _on(self, executor: ThreadPoolExecutor, function: Callable[[], _T]) -> _T:
        return await asyncio.get_running_loop().run_in_executor(executor, function)

    def _kept(self, engine: Engine) -> Connection:
        """The calling thread's connection on ``engine``, kept from one job to the next.

        Taking a connection from the pool for every statement or group and
        giving it back touches more code than a small job's statements; on
        a server that was idle for a moment (one user's next message, say),
        none of it is in the processor's caches any more, and it costs
        several times what it does in a busy loop: a fifth of a lease's time
        before its model is asked. The writer's connection for groups is
        never in a transaction while one of :meth:`write` is open (they take
        turns), and :meth:`dispose` gives every kept connection back.
        """
        kept: dict[Engine, Connection] | None = getattr(self._thread_connections, "kept", None)
        if kept is None:
            kept = self._thread_connections.kept = {}
        connection = kept.get(engine)
        if connection is None:
            connection = kept[engine] = engine.connect()
            with self._kept_lock:
                self._every_kept.append(connection)
        return connection

    def _statement(self, work: Callable[[Connection], _T]) -> _T:
        connection = self._kept(self._statements)
        # No BEGIN is sent (see Database): this only ends the statement for
        # SQLAlchemy, which would otherwise keep it open until the next one.
        with connection.begin():
            return work(connection)

    @asynccontextmanager
    async def read(self) -> AsyncIterator[ThreadConnection]:
        """Statements that only read, each on its own (no transaction)."""
        readers = self._readers
        if readers is None:
            # The one connection may be inside a write transaction, which a
            # read would join (and end, when the pool resets it): wait for it.
            yield ThreadConnection(self._read_on_writer)
            return
        yield ThreadConnection(
            lambda work: self._on(readers, functools.partial(self._statement, work))
        )

    async def _after_transaction(self, queue: Callable[[], asyncio.Future[_T]]) -> _T:
        """Queue a job for the writer thread (``queue``), after any open transaction."""
        if not self._transaction_lock.locked():
            return await queue()
        async with self._transaction_lock:
            # Queued on the thread before the lock goes to the next writer.
            pending = queue()
        return await pending

    async def _read_on_writer(self, work: Callable[[Connection], _T]) -> _T:
        """Run ``work`` (a read) as a job of the writer thread, after any open transaction."""
        job = functools.partial(self._statement, work)
        return await self._after_transaction(
            lambda: asyncio.get_running_loop().run_in_executor(self._writer, job)
        )

    async def _grouped(self, work: Callable[[Connection], _T]) -> _T:
        """Run ``work`` in the writer's next group commit, after any open transaction."""
        return await self._after_transaction(lambda: self._join_group(work))

    def _join_group(self, work: Callable[[Connection], _T]) -> asyncio.Future[_T]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_T] = loop.create_future()
        with self._group_lock:
            self._group.append((work, future))
            if self._group_scheduled:
                return future
            self._group_scheduled = True
        try:
            self._writer.submit(self._commit_group, loop)
        except RuntimeError:  # the writer is shut down (the app is stopping)
            with self._group_lock:
                self._group.clear()
                self._group_scheduled = False
            raise
        return future

    def _commit_group(self, loop: asyncio.AbstractEventLoop) -> None:
        """On the writer thread: every queued write in one transaction, then their results."""
        with self._group_lock:
            group, self._group = self._group, []
            self._group_scheduled = False
        # As an executor skips a job whose waiter is gone (a stopped request).
        group = [(work, future) for work, future in group if not future.cancelled()]
        if not group:
            return
        outcomes: list[_Outcome] = []
        failed_in_work = False
        try:
            connection = self._kept(self._transactions)
            with connection.begin():
                for work, future in group:
                    try:
                        value = work(connection)
                    except Exception:
                        failed_in_work = True
                        raise
                    outcomes.append((future, value, None))
        except Exception as exc:
            if failed_in_work and len(group) > 1:
                # One write failed (a conflict, say): the others were rolled
                # back with it and are done again, each on its own, so that
                # only the failing one fails.
                outcomes = [_alone(self._transactions, work, future) for work, future in group]
            else:
                # BEGIN or COMMIT failed (the file is locked past busy_timeout,
                # the disk is full): that is every write's answer, at once.
                outcomes = [(future, None, exc) for _work, future in group]
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
            loop.call_soon_threadsafe(_settle, outcomes)

    async def write_one(self, work: Callable[[Connection], _T]) -> _T:
        """Run ``work`` (a statement, or a few: all or none) committed, in the writer's next group.

        It goes to the writer thread at once, unless a transaction is open:
        the thread runs what it is given in order, so consecutive writes do
        not each wait for the event loop to hand over a lock (with hundreds
        of streams, a turn of the loop takes a while).
        """
        return await self._grouped(work)

    @asynccontextmanager
    async def write(self) -> AsyncIterator[ThreadConnection]:
        """A write transaction (``BEGIN IMMEDIATE``), committed when the block succeeds."""
        async with self._transaction_lock:
            connection = await self._begin_on_writer()
            try:
                yield ThreadConnection(
                    lambda work: self._on(self._writer, functools.partial(work, connection))
                )
            except BaseException:
                # Queued, not awaited: it runs before any later write even
                # when this task is being cancelled.
                self._end_soon(connection)
                raise
            # Shielded: a commit cancelled while still queued would never run,
            # and its connection would keep the write lock.
            commit = self._writer.submit(_end, connection, commit=True)
            await asyncio.shield(asyncio.wrap_future(commit))

    def _end_soon(self, connection: Connection) -> None:
        try:
            self._writer.submit(_end, connection, commit=False)
        except RuntimeError:
            # The writer is shut down (dispose ran while this transaction was
            # open): roll back here rather than leave the lock held.
            _end(connection, commit=False)

    async def _begin_on_writer(self) -> Connection:
        """Open a write transaction on the writer thread; never leave one behind.

        A task cancelled while it waits here (a stopped answer, the app
        shutting down its upkeep) no longer takes the connection, but the
        thread may still open the transaction: it would hold the database's
        write lock until the garbage collector closed the connection, and
        every other writer, in this process or another, would fail with
        "database is locked". It is rolled back as soon as it is open.
        """
        job = self._writer.submit(self._begin)
        try:
            return await asyncio.wrap_future(job)
        except asyncio.CancelledError:
            # Cancelling the wrapper cancelled a job still queued. One already
            # running is ended by the writer thread the moment it returns,
            # before the thread's next job (a write queued behind it would
            # otherwise wait on its lock); one already done, here and now.
            job.add_done_callback(_end_unclaimed)
            raise

    def _begin(self) -> Connection:
        connection = self._transactions.connect()
        try:
            connection.begin()
        except BaseException:
            connection.close()
            raise
        return connection

    async def run_write(self, work: Callable[[Connection], _T]) -> _T:
        """Run ``work`` on the writer thread, all of it committed or none (e.g. DDL).

        Queued like :meth:`write_one` (and committed in the same groups): only
        an open :meth:`write` block (whose statements are jobs of their own)
        must be waited for. Holding the lock until the job was done made every
        write queue behind every transaction for a turn of the event loop
        each: in a burst of 500 new threads (each admitted by one), messages
        waited seconds to be stored.
        """
        return await self._grouped(work)

    def dispose(self) -> None:
        """Wait for the threads to finish their jobs, then close every connection."""
        if self._readers is not None:
            self._readers.shutdown(wait=True)
        self._writer.shutdown(wait=True)
        # Every thread is done: the connections they kept go back.
        with self._kept_lock:
            kept, self._every_kept = self._every_kept, []
        for connection in kept:
            connection.close()
        self.engine.dispose()


_Outcome = tuple[asyncio.Future[Any], Any, BaseException | None]


def _alone(
    engine: Engine, work: Callable[[Connection], Any], future: asyncio.Future[Any]
) -> _Outcome:
    """``work`` in a transaction of its own: its outcome for ``future``."""
    try:
        with engine.begin() as connection:
            return future, work(connection), None
    except Exception as exc:
        return future, None, exc


def _settle(outcomes: list[_Outcome]) -> None:
    """On the event loop: hand each write's waiter its result or its error."""
    for future, value, failure in outcomes:
        if future.cancelled():
            continue
        if failure is not None:
            future.set_exception(failure)
        else:
            future.set_result(value)


def _no_rows() -> sa.Result[Any]:
    """The result of a statement that returns no rows (what a frozen one would give)."""
    return IteratorResult(SimpleResultMetaData([]), iter(()))


def _end_unclaimed(job: Future[Connection]) -> None:
    """Roll back the transaction a cancelled :meth:`SQLiteThreads.write` opened."""
    if not job.cancelled() and job.exception() is None:
        _end(job.result(), commit=False)


def _end(connection: Connection, *, commit: bool) -> None:
    try:
        if commit:
            connection.commit()
        else:
            connection.rollback()
    finally:
        connection.close()
