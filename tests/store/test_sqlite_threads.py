"""SQLiteThreads: a SQLite file's statements on worker threads, through Database."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from chatkit_server.errors import StoreError
from chatkit_server.store import Database
from chatkit_server.store.sqlite_threads import READER_THREADS


def _can_take_write_lock(path: Path) -> bool:
    probe = sqlite3.connect(path, timeout=2.0, isolation_level=None)
    try:
        probe.execute("BEGIN IMMEDIATE")
        probe.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        probe.close()


@pytest.fixture
async def sqlite_file(tmp_path: Path) -> Any:
    path = tmp_path / "chatkit.db"
    database = Database.connect(f"sqlite+aiosqlite:///{path}")
    await database.create_all()
    try:
        yield database, path
    finally:
        await database.dispose()


async def test_a_write_cancelled_while_it_begins_leaves_no_lock_behind(
    sqlite_file: tuple[Database, Path],
) -> None:
    database, path = sqlite_file
    beginning, proceed = threading.Event(), threading.Event()

    # Holds the writer thread just before the first BEGIN IMMEDIATE.
    @sa.event.listens_for(database.sync_engine, "begin", insert=True)
    def _hold(_conn: Any) -> None:
        if not beginning.is_set():
            beginning.set()
            proceed.wait(10)

    async def write() -> None:
        async with database.write() as statements:
            await statements.execute(sa.text("SELECT 1"))

    task = asyncio.create_task(write())
    assert await asyncio.to_thread(beginning.wait, 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The writer thread opens the transaction now, for a task that no longer
    # wants it. Left open, it would hold the write lock until the garbage
    # collector happened to close its connection.
    proceed.set()

    assert await asyncio.to_thread(_can_take_write_lock, path)
    async with database.write() as statements:
        await statements.execute(sa.text("SELECT 1"))


async def test_a_write_cancelled_while_its_commit_waits_commits_and_frees_the_lock(
    sqlite_file: tuple[Database, Path],
) -> None:
    database, path = sqlite_file
    await database.write_one(sa.text("CREATE TABLE notes (body TEXT)"))
    held, release = threading.Event(), threading.Event()

    # Holds the writer thread on the statement that says so.
    @sa.event.listens_for(database.sync_engine, "before_cursor_execute")
    def _hold(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "'hold'" in statement:
            held.set()
            release.wait(10)

    body_done = asyncio.Event()
    side: list[asyncio.Task[Any]] = []

    async def write() -> None:
        async with database.write() as statements:
            await statements.execute(sa.text("INSERT INTO notes VALUES ('kept')"))
            # Busy the writer thread, so that the commit queues behind it.
            side.append(asyncio.create_task(statements.execute(sa.text("SELECT 'hold'"))))
            await asyncio.to_thread(held.wait, 10)
            body_done.set()

    task = asyncio.create_task(write())
    await body_done.wait()
    # The commit is queued now (the block ended in the same step).
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    release.set()
    await side[0]

    # A queued commit that was cancelled would never run: its connection
    # would keep the write lock and the row would be lost.
    assert await asyncio.to_thread(_can_take_write_lock, path)
    async with database.read() as statements:
        rows = (await statements.execute(sa.text("SELECT body FROM notes"))).all()
    assert [row.body for row in rows] == ["kept"]


async def test_a_write_after_a_transaction_is_queued_on_the_writer_without_the_event_loop(
    sqlite_file: tuple[Database, Path],
) -> None:
    database, _path = sqlite_file
    await database.write_one(sa.text("CREATE TABLE notes (body TEXT)"))
    held, release, written = threading.Event(), threading.Event(), threading.Event()

    def transaction(connection: Any) -> None:
        connection.execute(sa.text("INSERT INTO notes VALUES ('first')"))
        held.set()
        release.wait(10)

    @sa.event.listens_for(database.sync_engine, "after_cursor_execute")
    def _seen(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "'second'" in statement:
            written.set()

    first = asyncio.create_task(database.run_write(transaction))
    assert await asyncio.to_thread(held.wait, 10)
    second = asyncio.create_task(database.write_one(sa.text("INSERT INTO notes VALUES ('second')")))
    for _ in range(5):
        await asyncio.sleep(0)  # the second write is handed to the writer thread
    release.set()
    # The event loop is busy (as under load): the second write must not need
    # a turn of it to follow the transaction on the writer thread.
    assert written.wait(5)
    await first
    await second
    async with database.read() as statements:
        rows = (await statements.execute(sa.text("SELECT body FROM notes"))).all()
    assert [row.body for row in rows] == ["first", "second"]


async def test_single_writes_keep_one_connection_between_groups(
    sqlite_file: tuple[Database, Path],
) -> None:
    database, _path = sqlite_file
    await database.write_one(sa.text("CREATE TABLE notes (body TEXT UNIQUE)"))
    checkouts: list[str] = []

    @sa.event.listens_for(database.sync_engine, "checkout")
    def _checkout(*_args: Any) -> None:
        checkouts.append(threading.current_thread().name)

    for body in ("a", "b", "c"):
        await database.write_one(sa.text(f"INSERT INTO notes VALUES ('{body}')"))
    with pytest.raises(StoreError):
        await database.write_one(sa.text("INSERT INTO notes VALUES ('a')"))
    await database.write_one(sa.text("INSERT INTO notes VALUES ('d')"))

    # The writer thread's connection from the first write on, a failed
    # group's rollback included: none of these took one from the pool.
    assert checkouts == []
    async with database.read() as statements:
        rows = (await statements.execute(sa.text("SELECT body FROM notes ORDER BY body"))).all()
    assert [row.body for row in rows] == ["a", "b", "c", "d"]


async def test_reads_keep_one_connection_per_thread(sqlite_file: tuple[Database, Path]) -> None:
    database, _path = sqlite_file
    checkouts: list[str] = []

    @sa.event.listens_for(database.sync_engine, "checkout")
    def _checkout(*_args: Any) -> None:
        checkouts.append(threading.current_thread().name)

    async def read() -> int:
        async with database.read() as statements:
            return int(await statements.scalar(sa.text("SELECT 1")))

    assert await asyncio.gather(*(read() for _ in range(40))) == [1] * 40
    with pytest.raises(StoreError):
        async with database.read() as statements:
            await statements.execute(sa.text("SELECT * FROM no_such_table"))
    assert await read() == 1

    # At most one per reader thread, a failed statement's included.
    assert len(checkouts) == len(set(checkouts)) <= READER_THREADS


async def test_dispose_gives_every_kept_connection_back(tmp_path: Path) -> None:
    database = Database.connect(f"sqlite+aiosqlite:///{tmp_path / 'chatkit.db'}")
    await database.create_all()
    await database.write_one(sa.text("CREATE TABLE notes (body TEXT)"))
    async with database.read() as statements:
        await statements.execute(sa.text("SELECT * FROM notes"))
    pool = database.sync_engine.pool
    assert isinstance(pool, sa.pool.QueuePool)
    assert pool.checkedout() >= 2  # the writer's and a reader's, kept

    await database.dispose()

    assert pool.checkedout() == 0
    assert _can_take_write_lock(tmp_path / "chatkit.db")
