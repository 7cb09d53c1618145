"""AdminStore on SQLite and PostgreSQL: the operator's cross-user listings."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from chatkit.types import (
    AssistantMessageContent,
    AssistantMessageItem,
    EndOfTurnItem,
    ThreadMetadata,
)

from chatkit_server.context import RequestContext
from chatkit_server.errors import InvalidCursorError, NotFoundError
from chatkit_server.store import MAX_PAGE_SIZE, Database, SQLStore, new_id
from chatkit_server.store.admin import AdminStore
from chatkit_server.store.tables import feedback, thread_items, threads

ALICE = RequestContext(user_id="alice")
BOB = RequestContext(user_id="bob")
WHEN = datetime(2025, 3, 4, 5, 6, 7)


@pytest.fixture
def admin(database: Database) -> AdminStore:
    return AdminStore(database)


async def make_threads(store: SQLStore, *owners: RequestContext) -> list[str]:
    """One thread per owner, in that order; their ids."""
    ids = []
    for owner in owners:
        thread = ThreadMetadata(id=new_id("thr"), created_at=WHEN, title=owner.user_id)
        await store.save_thread(thread, owner)
        ids.append(thread.id)
    return ids


async def add_messages(
    store: SQLStore, thread_id: str, count: int, owner: RequestContext = ALICE
) -> list[str]:
    ids = []
    for n in range(count):
        item = AssistantMessageItem(
            id=new_id("msg"),
            thread_id=thread_id,
            created_at=WHEN,
            content=[AssistantMessageContent(text=f"message {n}")],
        )
        await store.add_thread_item(thread_id, item, owner)
        ids.append(item.id)
    return ids


async def test_threads_of_every_user_newest_first(store: SQLStore, admin: AdminStore) -> None:
    ids = await make_threads(store, ALICE, BOB, ALICE)

    page = await admin.threads()

    assert [entry.thread.id for entry in page.data] == ids[::-1]
    assert [entry.user_id for entry in page.data] == ["alice", "bob", "alice"]
    assert page.data[0].thread.title == "alice"
    assert page.has_more is False


async def test_threads_filtered_by_user_and_ascending(store: SQLStore, admin: AdminStore) -> None:
    ids = await make_threads(store, ALICE, BOB, ALICE, BOB)

    page = await admin.threads(user_id="bob", order="asc")

    assert [entry.thread.id for entry in page.data] == [ids[1], ids[3]]
    assert (await admin.threads(user_id="nobody")).data == []


@pytest.mark.parametrize("order", ["asc", "desc"])
async def test_walking_thread_pages_with_after_yields_each_once(
    store: SQLStore, admin: AdminStore, order: str
) -> None:
    ids = await make_threads(store, *[ALICE, BOB] * 5)
    expected = ids if order == "asc" else ids[::-1]

    seen: list[str] = []
    after = None
    while True:
        page = await admin.threads(limit=3, order=order, after=after)  # type: ignore[arg-type]
        seen += [entry.thread.id for entry in page.data]
        if not page.has_more:
            break
        after = seen[-1]

    assert seen == expected


@pytest.mark.parametrize("order", ["asc", "desc"])
async def test_before_gives_the_page_just_before_the_cursor(
    store: SQLStore, admin: AdminStore, order: str
) -> None:
    ids = await make_threads(store, *[ALICE] * 6)
    listing = ids if order == "asc" else ids[::-1]

    page = await admin.threads(limit=2, order=order, before=listing[4])  # type: ignore[arg-type]
    assert [entry.thread.id for entry in page.data] == listing[2:4]
    assert page.has_more is True

    first = await admin.threads(limit=2, order=order, before=listing[2])  # type: ignore[arg-type]
    assert [entry.thread.id for entry in first.data] == listing[0:2]
    assert first.has_more is False


async def test_after_and_before_bound_a_window(store: SQLStore, admin: AdminStore) -> None:
    ids = await make_threads(store, *[ALICE] * 6)

    page = await admin.threads(order="asc", after=ids[0], before=ids[4], limit=2)
    assert [entry.thread.id for entry in page.data] == ids[1:3]
    assert page.has_more is True
    rest = await admin.threads(order="asc", after=ids[2], before=ids[4], limit=2)
    assert [entry.thread.id for entry in rest.data] == [ids[3]]
    assert rest.has_more is False


async def test_unknown_or_foreign_cursor_is_rejected(store: SQLStore, admin: AdminStore) -> None:
    alice, bob = await make_threads(store, ALICE, BOB)

    with pytest.raises(InvalidCursorError):
        await admin.threads(after="thr_missing")
    with pytest.raises(InvalidCursorError):
        await admin.threads(before="thr_missing")
    # Bob's thread is not an entry of the listing of Alice's threads.
    with pytest.raises(InvalidCursorError):
        await admin.threads(user_id="alice", after=bob)
    # A known cursor at the end of the listing is an empty page, not an error.
    assert (await admin.threads(after=alice)).data == []


@pytest.mark.parametrize(("asked", "returned"), [(0, 1), (-5, 1), (10_000, MAX_PAGE_SIZE)])
async def test_limit_is_clamped(
    store: SQLStore, admin: AdminStore, database: Database, asked: int, returned: int
) -> None:
    [thread_id] = await make_threads(store, ALICE)
    async with database.write() as session:
        await session.execute(
            sa.insert(thread_items),
            [
                {
                    "thread_id": thread_id,
                    "id": f"msg_{n:05}",
                    "type": "end_of_turn",
                    "created_at": WHEN,
                    "data": EndOfTurnItem(
                        id=f"msg_{n:05}", thread_id=thread_id, created_at=WHEN
                    ).model_dump_json(),
                }
                for n in range(MAX_PAGE_SIZE + 1)
            ],
        )

    page = await admin.items(thread_id, limit=asked)

    assert len(page.data) == returned
    assert page.has_more is True


async def test_get_and_delete_any_users_thread(
    store: SQLStore, admin: AdminStore, database: Database
) -> None:
    [thread_id] = await make_threads(store, BOB)
    await add_messages(store, thread_id, 2, BOB)

    owned = await admin.thread(thread_id)
    assert (owned.thread.id, owned.user_id, owned.thread.title) == (thread_id, "bob", "bob")

    await admin.delete_thread(thread_id)

    with pytest.raises(NotFoundError):
        await admin.thread(thread_id)
    with pytest.raises(NotFoundError):
        await admin.delete_thread(thread_id)
    async with database.read() as session:
        assert await session.scalar(sa.select(sa.func.count()).select_from(threads)) == 0
        assert await session.scalar(sa.select(sa.func.count()).select_from(thread_items)) == 0


async def test_items_page_both_ways_and_filter_types(store: SQLStore, admin: AdminStore) -> None:
    [thread_id] = await make_threads(store, BOB)
    messages = await add_messages(store, thread_id, 2, BOB)
    end = EndOfTurnItem(id=new_id("msg"), thread_id=thread_id, created_at=WHEN)
    await store.add_thread_item(thread_id, end, BOB)
    messages += await add_messages(store, thread_id, 2, BOB)

    everything = await admin.items(thread_id, order="asc")
    assert [item.id for item in everything.data] == [*messages[:2], end.id, *messages[2:]]

    shown = await admin.items(thread_id, types=["assistant_message"], limit=2)
    assert [item.id for item in shown.data] == messages[:1:-1]
    assert shown.has_more is True
    rest = await admin.items(thread_id, types=["assistant_message"], limit=2, after=messages[2])
    assert [item.id for item in rest.data] == messages[1::-1]
    assert rest.has_more is False

    before = await admin.items(thread_id, order="asc", before=messages[2], limit=1)
    assert [item.id for item in before.data] == [end.id]
    assert isinstance(everything.data[0], AssistantMessageItem)


async def test_items_of_a_missing_thread_or_unknown_cursor(
    store: SQLStore, admin: AdminStore
) -> None:
    [thread_id] = await make_threads(store, ALICE)

    with pytest.raises(NotFoundError):
        await admin.items("thr_missing")
    with pytest.raises(NotFoundError):
        await admin.items("thr_missing", after="msg_missing")
    with pytest.raises(InvalidCursorError):
        await admin.items(thread_id, after="msg_missing")
    assert (await admin.items(thread_id)).data == []


async def test_feedback_of_every_user_with_filters_and_paging(
    store: SQLStore, admin: AdminStore
) -> None:
    alice_thread, bob_thread = await make_threads(store, ALICE, BOB)
    [alice_message] = await add_messages(store, alice_thread, 1)
    bob_messages = await add_messages(store, bob_thread, 2, BOB)
    await store.add_feedback(alice_thread, [alice_message], "positive", ALICE)
    await store.add_feedback(bob_thread, bob_messages, "negative", BOB)

    page = await admin.feedback()
    assert [(vote.user_id, vote.thread_id, vote.item_id, vote.kind) for vote in page.data] == [
        ("bob", bob_thread, bob_messages[1], "negative"),
        ("bob", bob_thread, bob_messages[0], "negative"),
        ("alice", alice_thread, alice_message, "positive"),
    ]
    assert all(vote.id.startswith("fb_") for vote in page.data)
    assert all(vote.created_at.tzinfo is UTC for vote in page.data)
    assert abs(page.data[0].created_at - datetime.now(UTC)).total_seconds() < 3600

    assert [vote.user_id for vote in (await admin.feedback(user_id="alice")).data] == ["alice"]
    by_thread = await admin.feedback(thread_id=bob_thread, order="asc", limit=1)
    assert [vote.item_id for vote in by_thread.data] == bob_messages[:1]
    assert by_thread.has_more is True
    after = await admin.feedback(thread_id=bob_thread, order="asc", after=by_thread.data[0].id)
    assert [vote.item_id for vote in after.data] == bob_messages[1:]
    assert (await admin.feedback(thread_id="thr_missing")).data == []


@pytest.mark.parametrize("cursor", ["fb_999999", "fb_x", "42", "fb_²", "fb_" + "9" * 30])
async def test_unknown_feedback_cursor_is_rejected(admin: AdminStore, cursor: str) -> None:
    with pytest.raises(InvalidCursorError):
        await admin.feedback(after=cursor)


async def test_deleting_a_thread_deletes_its_feedback(
    store: SQLStore, admin: AdminStore, database: Database
) -> None:
    [thread_id] = await make_threads(store, ALICE)
    [item_id] = await add_messages(store, thread_id, 1)
    await store.add_feedback(thread_id, [item_id], "positive", ALICE)

    await admin.delete_thread(thread_id)

    async with database.read() as session:
        assert await session.scalar(sa.select(sa.func.count()).select_from(feedback)) == 0
