"""Database: SQLite connection settings, transactions, error translation."""

from __future__ import annotations

import asyncio
import gc
import sqlite3
import threading
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import pytest
import sqlalchemy as sa
from chatkit.types import AssistantMessageItem, ThreadMetadata

from chatkit_server.context import RequestContext
from chatkit_server.errors import StoreError
from chatkit_server.store import Database, SQLStore
from chatkit_server.store import database as database_module
from chatkit_server.store.database import DEFAULT_BUSY_TIMEOUT_MS, is_cancelled_connect_leftover
from chatkit_server.store.tables import threads
from tests.conftest import DatabaseTarget, record_sql

WHEN = datetime(2025, 1, 1)


def _thread_row(thread_id: str) -> dict[str, object]:
    return {"id": thread_id, "user_id": "u", "created_at": WHEN, "data": "{}"}


async def _on_five_handles(
    first: Database,
    tmp_path: Path,
    tasks: int,
    work: Callable[[Database, int], Awaitable[None]],
) -> list[StoreError]:
    """Run ``work(handle, n)`` for each of ``tasks`` at once, spread over five handles.

    Five handles on one file stand for five server processes: within one
    process writers also queue on a lock, so only SQLite's own locking keeps
    them apart. Returns the store errors the tasks raised.
    """
    url = f"sqlite+aiosqlite:///{tmp_path / 'chatkit.db'}"
    handles = [first, *(Database.connect(url) for _ in range(4))]
    failures: list[StoreError] = []

    async def one(n: int) -> None:
        try:
            await work(handles[n % len(handles)], n)
        except StoreError as exc:
            failures.append(exc)

    try:
        async with anyio.create_task_group() as group:
            for n in range(tasks):
                group.start_soon(one, n)
    finally:
        for handle in handles[1:]:
            await handle.dispose()
    return failures


async def test_pragmas_are_set_on_every_pooled_connection(sqlite_database: Database) -> None:
    engine = sqlite_database.sync_engine

    def check() -> None:
        with ExitStack() as stack:
            # Hold several connections at once so the pool has to open new ones.
            connections = [stack.enter_context(engine.connect()) for _ in range(8)]
            for connection in connections:
                pragma = {
                    name: connection.exec_driver_sql(f"PRAGMA {name}").scalar()
                    for name in ("journal_mode", "foreign_keys", "busy_timeout", "synchronous")
                }
                assert pragma == {
                    "journal_mode": "wal",
                    "foreign_keys": 1,
                    "busy_timeout": DEFAULT_BUSY_TIMEOUT_MS,
                    "synchronous": 1,  # NORMAL
                }

    await asyncio.to_thread(check)


async def test_concurrent_read_then_write_transactions_all_succeed(
    sqlite_database: Database, tmp_path: Path
) -> None:
    # Across processes only BEGIN IMMEDIATE keeps these apart. With a
    # deferred BEGIN most of them fail at once with "database is locked":
    # each read takes a snapshot that another commit makes stale.
    async def read_then_write(handle: Database, n: int) -> None:
        async with handle.write() as session:
            await session.scalar(sa.select(sa.func.count()).select_from(threads))
            await anyio.sleep(0.005)
            await session.execute(sa.insert(threads).values(_thread_row(f"thr_{n}")))

    assert await _on_five_handles(sqlite_database, tmp_path, 50, read_then_write) == []
    async with sqlite_database.read() as session:
        assert await session.scalar(sa.select(sa.func.count()).select_from(threads)) == 50


async def test_writers_in_one_process_queue_instead_of_timing_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A writer holding the lock longer than SQLite's busy_timeout must not
    # make this process's other writers fail: they wait their turn.
    monkeypatch.setattr(database_module, "DEFAULT_BUSY_TIMEOUT_MS", 50)
    sqlite_database = Database.connect(f"sqlite+aiosqlite:///{tmp_path / 'chatkit.db'}")
    await sqlite_database.create_all()
    order: list[str] = []

    async def slow_writer() -> None:
        async with sqlite_database.write() as session:
            await session.execute(sa.insert(threads).values(_thread_row("thr_slow")))
            order.append("slow in")
            await anyio.sleep(0.3)
        order.append("slow out")

    async def quick_writer(n: int) -> None:
        await anyio.sleep(0.05)
        async with sqlite_database.write() as session:
            await session.execute(sa.insert(threads).values(_thread_row(f"thr_q{n}")))
        order.append("quick")

    try:
        async with anyio.create_task_group() as group:
            group.start_soon(slow_writer)
            for n in range(20):
                group.start_soon(quick_writer, n)
    finally:
        await sqlite_database.dispose()
    assert order[:2] == ["slow in", "slow out"]
    assert order.count("quick") == 20


def _first_words(statements: list[str]) -> list[str]:
    return [statement.split()[0].upper() for statement in statements]


async def test_sqlite_reads_skip_begin_and_single_writes_commit_in_groups(
    sqlite_database: Database,
) -> None:
    # Each BEGIN and COMMIT is a statement the writer thread runs; a read is
    # atomic without them, and writes queued together share one pair.
    log = record_sql(sqlite_database)
    rows = await sqlite_database.write_one(
        sa.insert(threads).values(_thread_row("thr_1")).returning(threads.c.id)
    )
    async with sqlite_database.read() as session:
        assert await session.scalar(sa.select(threads.c.id)) == "thr_1"
    assert [tuple(row) for row in rows] == [("thr_1",)]
    assert _first_words(log) == ["BEGIN", "INSERT", "SELECT"]

    del log[:]
    ids = [f"thr_{n}" for n in range(2, 22)]
    returned = await asyncio.gather(
        *(
            sqlite_database.write_one(
                sa.insert(threads).values(_thread_row(thread_id)).returning(threads.c.id)
            )
            for thread_id in ids
        )
    )
    assert [rows[0][0] for rows in returned] == ids
    assert _first_words(log).count("INSERT") == 20
    assert 1 <= _first_words(log).count("BEGIN") < 20  # grouped: fewer transactions than writes
    # Multi-statement writes keep their own IMMEDIATE transaction.
    del log[:]
    async with sqlite_database.write() as session:
        await session.execute(sa.delete(threads))
    assert _first_words(log) == ["BEGIN", "DELETE"]


async def test_a_failing_write_in_a_group_fails_alone(sqlite_database: Database) -> None:
    await sqlite_database.write_one(sa.insert(threads).values(_thread_row("thr_taken")))
    ids = ["thr_a", "thr_taken", "thr_b", "thr_c"]
    outcomes = await asyncio.gather(
        *(
            sqlite_database.write_one(sa.insert(threads).values(_thread_row(thread_id)))
            for thread_id in ids
        ),
        return_exceptions=True,
    )
    assert [isinstance(outcome, StoreError) for outcome in outcomes] == [
        False,
        True,
        False,
        False,
    ]
    async with sqlite_database.read() as session:
        stored = set((await session.scalars(sa.select(threads.c.id))).all())
    assert stored == {"thr_taken", "thr_a", "thr_b", "thr_c"}


async def test_single_writes_from_many_processes_all_succeed(
    sqlite_database: Database, tmp_path: Path
) -> None:
    # write_one issues no BEGIN IMMEDIATE: a single statement must queue on
    # SQLite's own locking across processes.
    alice = RequestContext(user_id="alice")
    thread = ThreadMetadata(id="thr_shared", created_at=WHEN)
    await SQLStore(sqlite_database).save_thread(thread, alice)

    async def add(handle: Database, n: int) -> None:
        item = AssistantMessageItem(id=f"msg_{n}", thread_id=thread.id, created_at=WHEN, content=[])
        await SQLStore(handle).add_thread_item(thread.id, item, alice)

    assert await _on_five_handles(sqlite_database, tmp_path, 100, add) == []
    page = await SQLStore(sqlite_database).load_thread_items(thread.id, None, 200, "asc", alice)
    assert len(page.data) == 100


async def test_write_one_commits_and_translates_errors(database: Database) -> None:
    await database.write_one(sa.insert(threads).values(_thread_row("thr_kept")))
    with pytest.raises(StoreError, match="conflicts with stored data"):
        await database.write_one(sa.insert(threads).values(_thread_row("thr_kept")))
    async with database.read() as session:
        ids = (await session.scalars(sa.select(threads.c.id))).all()
    assert ids == ["thr_kept"]


async def test_write_commits_and_rolls_back(database: Database) -> None:
    async with database.write() as session:
        await session.execute(sa.insert(threads).values(_thread_row("thr_kept")))

    async def fail_midway() -> None:
        async with database.write() as session:
            await session.execute(sa.insert(threads).values(_thread_row("thr_lost")))
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await fail_midway()

    async with database.read() as session:
        ids = (await session.scalars(sa.select(threads.c.id))).all()
    assert ids == ["thr_kept"]


async def test_driver_errors_become_store_errors_without_sql(database: Database) -> None:
    async with database.write() as session:
        await session.execute(sa.insert(threads).values(_thread_row("thr_1")))
    with pytest.raises(StoreError, match="conflicts with stored data") as caught:
        async with database.write() as session:
            await session.execute(sa.insert(threads).values(_thread_row("thr_1")))
    assert "INSERT" not in str(caught.value)
    assert isinstance(caught.value.__cause__, sa.exc.IntegrityError)


async def test_missing_schema_is_explained(database_target: DatabaseTarget) -> None:
    database = database_target.connect()  # no tables created
    try:
        with pytest.raises(StoreError, match="schema is missing") as caught:
            await SQLStore(database).load_thread("thr_1", RequestContext())
        assert "SELECT" not in str(caught.value)
    finally:
        await database.dispose()


async def test_unreachable_server_is_a_store_error() -> None:
    database = Database.connect("postgresql+asyncpg://nobody:secret@127.0.0.1:1/none")
    try:
        with pytest.raises(StoreError, match="cannot reach the database"):
            await database.ping()
        assert "secret" not in database.describe()
        assert database.dialect == "postgresql"
    finally:
        await database.dispose()


async def test_connect_creates_the_sqlite_directory(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "chatkit.db"
    database = Database.connect(f"sqlite+aiosqlite:///{path}")
    try:
        await database.ping()
        assert path.is_file()
        assert database.dialect == "sqlite"
    finally:
        await database.dispose()


async def test_a_write_blocked_by_another_process_waits_off_the_event_loop(
    sqlite_database: Database, tmp_path: Path
) -> None:
    other = sqlite3.connect(tmp_path / "chatkit.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    write = asyncio.create_task(
        sqlite_database.write_one(sa.insert(threads).values(_thread_row("thr_mine")))
    )
    for _ in range(20):
        await asyncio.sleep(0.01)
    # The loop ran on while the write waited: a statement blocking the loop
    # would have finished (or failed after the busy timeout) before this.
    assert not write.done()
    other.execute("COMMIT")
    other.close()

    await asyncio.wait_for(write, 10)

    async with sqlite_database.read() as session:
        assert await session.scalar(sa.select(threads.c.id)) == "thr_mine"


async def test_a_write_locked_out_past_the_busy_timeout_is_a_store_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(database_module, "DEFAULT_BUSY_TIMEOUT_MS", 200)
    sqlite_database = Database.connect(f"sqlite+aiosqlite:///{tmp_path / 'chatkit.db'}")
    await sqlite_database.create_all()
    other = sqlite3.connect(tmp_path / "chatkit.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StoreError, match="busy"):
            await sqlite_database.write_one(sa.insert(threads).values(_thread_row("thr_late")))
        other.execute("ROLLBACK")
        # Nothing was written, and the next write goes through.
        await sqlite_database.write_one(sa.insert(threads).values(_thread_row("thr_next")))
        async with sqlite_database.read() as session:
            ids = (await session.execute(sa.select(threads.c.id))).scalars().all()
        assert ids == ["thr_next"]
    finally:
        other.close()
        await sqlite_database.dispose()


async def test_sqlite_store_statements_run_off_the_event_loop_thread(
    sqlite_database: Database,
) -> None:
    # Disk I/O and lock waits on the loop's thread would stall every stream.
    seen: list[tuple[int, str]] = []

    def trace(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append((threading.get_ident(), statement))

    sa.event.listen(sqlite_database.sync_engine, "before_cursor_execute", trace)
    store = SQLStore(sqlite_database)
    alice = RequestContext(user_id="alice")
    thread = ThreadMetadata(id="thr_traced", created_at=WHEN)
    await store.save_thread(thread, alice)
    item = AssistantMessageItem(id="msg_1", thread_id=thread.id, created_at=WHEN, content=[])
    await store.add_thread_item(thread.id, item, alice)
    assert await store.load_thread(thread.id, alice) == thread
    assert [row async for row in store.newest_rows(thread.id, 10, alice)] == [
        ("assistant_message", item.model_dump_json())
    ]

    statements = [statement.split()[:3] for _thread, statement in seen]
    assert ["INSERT", "INTO", "threads"] in statements
    assert ["INSERT", "INTO", "thread_items"] in statements
    assert len([words for words in statements if words[0] == "SELECT"]) >= 2
    assert threading.get_ident() not in {ident for ident, _statement in seen}


async def test_an_in_memory_database_reads_beside_an_open_transaction() -> None:
    # One connection for everything: a read must neither join nor end the
    # transaction that is open on it.
    database = Database.connect("sqlite+aiosqlite://")
    await database.create_all()
    try:
        async with database.write() as session:
            await session.execute(sa.insert(threads).values(_thread_row("thr_1")))

            async def count() -> int:
                async with database.read() as reader:
                    value: int = await reader.scalar(
                        sa.select(sa.func.count()).select_from(threads)
                    )
                return value

            reading = asyncio.create_task(count())
            await asyncio.sleep(0.05)
            await session.execute(sa.insert(threads).values(_thread_row("thr_2")))
        assert await reading == 2
        async with database.read() as session:
            ids = (await session.execute(sa.select(threads.c.id))).scalars().all()
        assert sorted(ids) == ["thr_1", "thr_2"]
    finally:
        await database.dispose()


# --- A PostgreSQL connect cancelled midway -----------------------------------------------

_LOST = "unexpected connection_lost() call"


async def cancelled_connect_reports(handler: Callable[[dict[str, Any]], object]) -> int:
    """Cancel asyncpg connects at every early step; how many asyncio error reports followed.

    The "server" takes the connection and never answers asyncpg's TLS probe.
    Each report goes to ``handler`` (with the loop's handler restored after).
    """
    import asyncpg

    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    reports = 0

    def report(_loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        nonlocal reports
        reports += 1
        handler(context)

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    loop.set_exception_handler(report)
    try:
        # The window is a few turns of the loop after the connect starts.
        for turns in range(16):
            task = asyncio.create_task(
                asyncpg.connect(host="127.0.0.1", port=port, user="x", database="x", timeout=5)
            )
            for _ in range(turns):
                await asyncio.sleep(0)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.sleep(0.01)
            gc.collect()
            await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(previous)
        server.close()
        await server.wait_closed()
    return reports


async def test_asyncpg_still_leaves_a_failed_tls_probe_when_a_connect_is_cancelled() -> None:
    # When this fails, asyncpg cleans up after itself: the app's loop handler
    # no longer needs is_cancelled_connect_leftover.
    seen: list[dict[str, Any]] = []

    await cancelled_connect_reports(seen.append)

    assert seen, "no report: asyncpg no longer leaves the probe's future behind"
    assert all(is_cancelled_connect_leftover(report) for report in seen), seen


def test_other_reports_are_not_taken_for_a_cancelled_connect() -> None:
    never = "Future exception was never retrieved"
    assert not is_cancelled_connect_leftover({"message": never, "exception": ConnectionError()})
    assert not is_cancelled_connect_leftover(
        {"message": "Task was destroyed", "exception": ConnectionError(_LOST)}
    )
    assert not is_cancelled_connect_leftover({"message": never, "exception": OSError(_LOST)})


@pytest.mark.postgres
async def test_a_connection_the_server_ended_is_replaced_on_checkout(
    postgres_database_url: str,
) -> None:
    database = Database.connect(postgres_database_url)
    admin = Database.connect(postgres_database_url)
    try:
        async with database.read() as statements:
            pid = await statements.scalar(sa.text("SELECT pg_backend_pid()"))
        # The pooled connection's session is ended, as by a server restart.
        async with admin.read() as statements:
            assert await statements.scalar(sa.text(f"SELECT pg_terminate_backend({int(pid)})"))
        await asyncio.sleep(0.5)  # the closed socket reaches the driver

        async with database.read() as statements:
            again = await statements.scalar(sa.text("SELECT pg_backend_pid()"))
        assert again != pid
    finally:
        await database.dispose()
        await admin.dispose()


@pytest.mark.postgres
async def test_postgres_keeps_its_connections_between_bursts(postgres_database_url: str) -> None:
    database = Database.connect(postgres_database_url, pool_size=12)
    connects: list[object] = []
    sa.event.listen(database.sync_engine, "connect", lambda *_: connects.append(None))
    backends: set[int] = set()

    async def hold() -> None:
        async with database.read() as statements:
            # Long enough that every pooled connection is out at once.
            await statements.execute(sa.text("SELECT pg_sleep(0.1)"))
            backends.add(int(await statements.scalar(sa.text("SELECT pg_backend_pid()"))))

    try:
        for _ in range(2):
            await asyncio.gather(*(hold() for _ in range(20)))
            # Twelve connections in all: the other statements waited for
            # one, and none was opened for a moment and closed on return
            # (a burst beyond the pool's size used to open its overflow
            # anew every time).
            assert len(connects) == 12
        assert len(backends) == 12
    finally:
        await database.dispose()


async def test_only_postgresql_runs_statements_on_the_event_loop(database: Database) -> None:
    # The server holds an answer's writes for a burst's models only where
    # statements compete with the burst's for the loop (protocol/arrivals.py).
    assert database.statements_on_loop == (database.dialect == "postgresql")
