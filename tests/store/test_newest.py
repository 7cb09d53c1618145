"""The newest items kept between requests: right after every kind of write."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from chatkit_server.context import RequestContext
from chatkit_server.store import Database, SQLStore
from chatkit_server.store.newest import MAX_ROWS, NewestItems, Row
from chatkit_server.store.tables import thread_items
from tests.conftest import record_sql
from tests.store.test_sql_store import ALICE, message, new_thread


def _row(n: int, item_id: str | None = None) -> Row:
    return (item_id or f"msg_{n}", "assistant_message", f'{{"n": {n}}}', n)


class _Version:
    def __init__(self) -> None:
        self.value = 0

    def __call__(self) -> int:
        return self.value


def test_rows_are_kept_per_thread_and_user_and_follow_own_writes() -> None:
    version = _Version()
    newest = NewestItems(version)
    # As the store does: a look that misses, a read, then what it read is kept.
    assert newest.get("t", "alice", 10) is None
    newest.put("t", "alice", [_row(2), _row(1)], complete=True)

    assert newest.get("t", "bob", 10) is None
    assert newest.get("t", "alice", 10) == ([_row(2), _row(1)], False)
    assert newest.get("t", "alice", 1) == ([_row(2)], True)

    newest.written("t", "alice", _row(3))  # a new item: the newest
    newest.written("t", "alice", (*_row(1)[:2], '{"n": "edited"}', 1))  # replaced in place
    rows, _more = newest.get("t", "alice", 10) or ([], True)
    assert [r[0] for r in rows] == ["msg_3", "msg_2", "msg_1"]
    assert rows[2][2] == '{"n": "edited"}'

    # Another connection committed: nothing kept is trusted any more.
    version.value += 1
    assert newest.get("t", "alice", 10) is None


def test_an_incomplete_window_serves_only_what_it_holds() -> None:
    newest = NewestItems(_Version())
    assert newest.get("t", "alice", 2) is None
    newest.put("t", "alice", [_row(9), _row(8)], complete=False)
    assert newest.get("t", "alice", 2) == ([_row(9), _row(8)], True)
    assert newest.get("t", "alice", 3) is None
    # An item older than the window changes nothing the window holds.
    newest.written("t", "alice", _row(1, "msg_old"))
    assert newest.get("t", "alice", 2) == ([_row(9), _row(8)], True)


def test_an_untracked_change_to_a_complete_window_drops_it() -> None:
    newest = NewestItems(_Version())
    assert newest.get("t", "alice", 10) is None
    newest.put("t", "alice", [_row(9)], complete=True)
    newest.written("t", "alice", _row(1, "msg_unknown"))  # older, yet not in a complete window
    assert newest.get("t", "alice", 10) is None


def test_windows_are_bounded() -> None:
    newest = NewestItems(_Version(), threads=2)
    assert newest.get("a", "u", 1) is None
    for thread in ("a", "b", "c"):
        newest.put(thread, "u", [_row(1)], complete=True)
    assert newest.get("a", "u", 1) is None
    newest.created("d", "u")
    for n in range(MAX_ROWS + 5):
        newest.written("d", "u", _row(n))
    rows, more = newest.get("d", "u", MAX_ROWS) or ([], False)
    assert len(rows) == MAX_ROWS
    assert rows[0][3] == MAX_ROWS + 4
    assert more
    assert newest.get("d", "u", MAX_ROWS + 1) is None


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[tuple[SQLStore, Database, Path]]:
    from chatkit_server.store import upgrade_async

    path = tmp_path / "newest.sqlite"
    url = f"sqlite+aiosqlite:///{path}"
    await upgrade_async(url)
    database = Database.connect(url)
    yield SQLStore(database), database, path
    await database.dispose()


async def _texts(store: SQLStore, thread_id: str, context: RequestContext = ALICE) -> list[str]:
    return [
        item.content[0].text  # type: ignore[union-attr]
        async for item in store.newest_items(thread_id, 50, context)
    ]


async def test_the_store_serves_its_own_writes_without_reading(
    sqlite_store: tuple[SQLStore, Database, Path],
) -> None:
    store, database, _path = sqlite_store
    thread = await new_thread(store)
    for n in range(3):
        await store.add_thread_item(thread.id, message(thread.id, str(n)), ALICE)
    assert await _texts(store, thread.id) == ["2", "1", "0"]

    selects = record_sql(database, only="SELECT")
    await store.add_thread_item(thread.id, message(thread.id, "3"), ALICE)
    assert await _texts(store, thread.id) == ["3", "2", "1", "0"]
    page = await store.load_thread_items(thread.id, None, 2, "desc", ALICE)
    assert [item.content[0].text for item in page.data] == ["3", "2"]  # type: ignore[union-attr]
    assert page.has_more
    assert not [s for s in selects if "thread_items" in s]

    # Another user is not served what alice's reads kept.
    with pytest.raises(Exception, match="not found"):
        await _texts(store, thread.id, RequestContext(user_id="mallory"))


async def test_a_new_thread_needs_no_read(sqlite_store: tuple[SQLStore, Database, Path]) -> None:
    store, database, _path = sqlite_store
    thread = await new_thread(store)  # not made with generate_thread_id: read once
    assert await _texts(store, thread.id) == []
    fresh = thread.model_copy(update={"id": store.generate_thread_id(ALICE)})
    await store.save_thread(fresh, ALICE)
    selects = record_sql(database, only="SELECT")
    await store.add_thread_item(fresh.id, message(fresh.id, "first"), ALICE)
    assert await _texts(store, fresh.id) == ["first"]
    assert not [s for s in selects if "thread_items" in s]


async def test_writes_by_other_connections_are_seen(
    sqlite_store: tuple[SQLStore, Database, Path],
) -> None:
    store, database, path = sqlite_store
    thread = await new_thread(store)
    first = message(thread.id, "original")
    await store.add_thread_item(thread.id, first, ALICE)
    assert await _texts(store, thread.id) == ["original"]

    # Another process (here a plain sqlite3 connection) edits the item.
    other = sqlite3.connect(path)
    edited = first.model_copy(
        update={"content": [first.content[0].model_copy(update={"text": "edited"})]}
    )
    other.execute(
        "UPDATE thread_items SET data = ? WHERE id = ?", (edited.model_dump_json(), first.id)
    )
    other.commit()
    other.close()
    assert await _texts(store, thread.id) == ["edited"]

    # This process's own transactions run on other connections too.
    async with database.write() as session:
        await session.execute(sa.delete(thread_items).where(thread_items.c.id == first.id))
    assert await _texts(store, thread.id) == []


async def test_deletes_drop_what_was_kept(sqlite_store: tuple[SQLStore, Database, Path]) -> None:
    store, _database, _path = sqlite_store
    thread = await new_thread(store)
    items = [message(thread.id, str(n)) for n in range(3)]
    for item in items:
        await store.add_thread_item(thread.id, item, ALICE)
    assert await _texts(store, thread.id) == ["2", "1", "0"]
    await store.delete_thread_item(thread.id, items[1].id, ALICE)
    assert await _texts(store, thread.id) == ["2", "0"]
    # Re-adding an item keeps its place (the upsert keeps its seq).
    await store.add_thread_item(thread.id, items[0], ALICE)
    assert await _texts(store, thread.id) == ["2", "0"]
    await store.delete_thread(thread.id, ALICE)
    with pytest.raises(Exception, match="not found"):
        await _texts(store, thread.id)


def test_what_was_read_while_another_connection_committed_is_not_kept() -> None:
    version = _Version()
    newest = NewestItems(version)
    assert newest.get("t", "alice", 10) is None
    version.value += 1  # another process commits between the read and the keep
    newest.put("t", "alice", [_row(1)], complete=True)
    assert newest.get("t", "alice", 10) is None
    assert newest.thread("t", "alice") is None
    version.value += 1
    newest.thread_saved("t", "alice", '{"id": "t"}')
    assert newest.thread("t", "alice") is None


def test_thread_rows_are_kept_per_user_until_another_connection_commits() -> None:
    version = _Version()
    newest = NewestItems(version, threads=2)
    assert newest.thread("t", "alice") is None
    newest.thread_saved("t", "alice", '{"title": "one"}')
    assert newest.thread("t", "alice") == '{"title": "one"}'
    assert newest.thread("t", "bob") is None
    newest.thread_saved("t", "alice", '{"title": "two"}')  # saved again
    assert newest.thread("t", "alice") == '{"title": "two"}'
    newest.forget("t")  # its items changed: the row stays
    assert newest.thread("t", "alice") == '{"title": "two"}'
    newest.forget("t", thread=True)  # deleted
    assert newest.thread("t", "alice") is None
    for thread in ("a", "b", "c"):
        newest.thread_saved(thread, "u", "{}")
    assert newest.thread("a", "u") is None  # bounded
    version.value += 1
    assert newest.thread("c", "u") is None


async def test_a_thread_is_loaded_without_reading_after_its_save(
    sqlite_store: tuple[SQLStore, Database, Path],
) -> None:
    store, database, path = sqlite_store
    thread = await new_thread(store)
    await store.load_thread(thread.id, ALICE)
    thread.title = "renamed"
    await store.save_thread(thread, ALICE)

    selects = record_sql(database, only="SELECT")
    assert (await store.load_thread(thread.id, RequestContext(user_id="alice"))).title == "renamed"
    assert not [s for s in selects if "FROM threads" in s]
    with pytest.raises(Exception, match="not found"):
        await store.load_thread(thread.id, RequestContext(user_id="mallory"))

    # Another process renames it: seen at once.
    other = sqlite3.connect(path)
    other.execute(
        "UPDATE threads SET data = ? WHERE id = ?",
        (thread.model_copy(update={"title": "theirs"}).model_dump_json(), thread.id),
    )
    other.commit()
    other.close()
    assert (await store.load_thread(thread.id, ALICE)).title == "theirs"

    await store.delete_thread(thread.id, ALICE)
    with pytest.raises(Exception, match="not found"):
        await store.load_thread(thread.id, ALICE)
