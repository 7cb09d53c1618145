"""The store's SQL: ownership in the statement, keyset pages, cursors."""

from __future__ import annotations

from datetime import datetime

import pytest
from chatkit.types import InferenceOptions, ThreadMetadata, UserMessageItem, UserMessageTextContent

from chatkit_server.context import RequestContext
from chatkit_server.errors import InvalidCursorError, NotFoundError
from chatkit_server.store import Database, SQLStore
from chatkit_server.store.statements import MAX_PAGE_SIZE, check_cursor, page, require_thread
from chatkit_server.store.tables import threads

ALICE = RequestContext(user_id="alice")
BOB = RequestContext(user_id="bob")
WHEN = datetime(2026, 1, 1, 12, 0)


async def _threads(store: SQLStore, count: int) -> list[str]:
    """Threads of alice's, each with a first message (a thread is listed from then on)."""
    ids = [f"thr_{n:03d}" for n in range(count)]
    for thread_id in ids:
        await store.save_thread(ThreadMetadata(id=thread_id, created_at=WHEN), ALICE)
        await store.add_thread_item(thread_id, _first_message(thread_id), ALICE)
    return ids


def _first_message(thread_id: str) -> UserMessageItem:
    return UserMessageItem(
        id=f"msg_{thread_id}",
        thread_id=thread_id,
        created_at=WHEN,
        content=[UserMessageTextContent(text="hi")],
        inference_options=InferenceOptions(),
    )


async def test_a_page_is_keyset_ordered_and_says_whether_more_follow(
    database: Database, store: SQLStore
) -> None:
    ids = await _threads(store, 5)
    scope = {"user_id": ALICE.user_id}
    async with database.read() as session:
        first, more = await page(session, threads, scope, None, 2, "asc")
        second, _ = await page(session, threads, scope, first[-1].id, 2, "asc")
        last, at_end = await page(session, threads, scope, ids[1], 10, "desc")
        foreign, _ = await page(session, threads, {"user_id": BOB.user_id}, None, 10, "asc")

    assert ([row.id for row in first], more) == (ids[:2], True)
    assert [row.id for row in second] == ids[2:4]
    assert ([row.id for row in last], at_end) == ([ids[0]], False)
    assert foreign == []


async def test_a_page_never_holds_more_than_the_maximum(
    database: Database, store: SQLStore
) -> None:
    await _threads(store, MAX_PAGE_SIZE + 2)
    async with database.read() as session:
        rows, more = await page(session, threads, {"user_id": "alice"}, None, 10_000, "asc")
    assert (len(rows), more) == (MAX_PAGE_SIZE, True)


async def test_ownership_and_cursors_are_checked_in_the_statement(
    database: Database, store: SQLStore
) -> None:
    [thread_id] = await _threads(store, 1)
    async with database.read() as session:
        await require_thread(session, thread_id, ALICE)
        with pytest.raises(NotFoundError):
            await require_thread(session, thread_id, BOB)
        await check_cursor(session, threads, {"user_id": "alice"}, thread_id)
        with pytest.raises(InvalidCursorError):
            await check_cursor(session, threads, {"user_id": "bob"}, thread_id)
