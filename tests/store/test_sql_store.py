"""SQLStore on SQLite and PostgreSQL (see the ``store`` fixture in tests/conftest.py)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa
from chatkit.actions import ActionConfig
from chatkit.server import ChatKitServer, NonStreamingResult
from chatkit.store import NotFoundError as ChatKitNotFoundError
from chatkit.types import (
    ActiveStatus,
    Annotation,
    AssistantMessageContent,
    AssistantMessageItem,
    AttachmentCreateParams,
    ClientToolCallItem,
    CustomTask,
    DurationSummary,
    EndOfTurnItem,
    FileAttachment,
    GeneratedImage,
    GeneratedImageItem,
    HiddenContextItem,
    ImageAttachment,
    InferenceOptions,
    LockedStatus,
    Page,
    SDKHiddenContextItem,
    StructuredInputAnswer,
    StructuredInputFreeform,
    StructuredInputItem,
    TaskItem,
    ThoughtTask,
    Thread,
    ThreadItem,
    ThreadMetadata,
    ThreadStreamEvent,
    URLSource,
    UserMessageItem,
    UserMessageTagContent,
    UserMessageTextContent,
    WidgetItem,
    Workflow,
    WorkflowItem,
)
from chatkit.widgets import (
    Button,
    Card,
    DynamicWidgetRoot,
    ListView,
    ListViewItem,
    Text,
    WidgetTemplate,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chatkit_server.context import RequestContext, SessionLimits
from chatkit_server.errors import InvalidCursorError, NotFoundError, StoreError
from chatkit_server.store import MAX_PAGE_SIZE, Database, SQLStore, decode_item, new_id
from chatkit_server.store.tables import attachments, feedback, thread_items, threads
from tests.conftest import DatabaseTarget, record_sql

ALICE = RequestContext(user_id="alice")
MALLORY = RequestContext(user_id="mallory")
# Naive, like the SDK's datetime.now(); microseconds must survive.
WHEN = datetime(2025, 3, 4, 5, 6, 7, 891011)


def thread_meta(**changes: Any) -> ThreadMetadata:
    return ThreadMetadata(id=new_id("thr"), created_at=WHEN).model_copy(update=changes)


async def new_thread(store: SQLStore, context: RequestContext = ALICE) -> ThreadMetadata:
    thread = thread_meta(title="hello")
    await store.save_thread(thread, context)
    return thread


async def listed_thread(store: SQLStore, context: RequestContext = ALICE) -> ThreadMetadata:
    """A thread with its first message: from then on ``threads.list`` shows it."""
    thread = await new_thread(store, context)
    await store.add_thread_item(thread.id, message(thread.id), context)
    return thread


def message(thread_id: str, text: str = "hi", item_id: str | None = None) -> AssistantMessageItem:
    return AssistantMessageItem(
        id=item_id or new_id("msg"),
        thread_id=thread_id,
        created_at=WHEN,
        content=[AssistantMessageContent(text=text)],
    )


async def add_messages(
    store: SQLStore, thread_id: str, count: int, context: RequestContext = ALICE
) -> list[str]:
    ids = []
    for n in range(count):
        item = message(thread_id, f"message {n}")
        await store.add_thread_item(thread_id, item, context)
        ids.append(item.id)
    return ids


async def item_ids(store: SQLStore, thread_id: str, order: str = "asc") -> list[str]:
    page = await store.load_thread_items(thread_id, None, MAX_PAGE_SIZE, order, ALICE)
    return [item.id for item in page.data]


# -- every item kind round-trips -------------------------------------------------

WIDGET = WidgetTemplate(
    {
        "version": "1.0",
        "name": "greeting",
        "template": '{"type": "Card", "size": "sm", "children": '
        '[{"type": "Text", "value": "{{ name }}"}, {"type": "Button", "label": "Go"}]}',
    }
)


def _items(thread_id: str) -> dict[str, ThreadItem]:
    base: dict[str, Any] = {"thread_id": thread_id, "created_at": WHEN}
    attachment = FileAttachment(id=new_id("atc"), name="a.txt", mime_type="text/plain")
    return {
        "user_message": UserMessageItem(
            id=new_id("msg"),
            content=[
                UserMessageTextContent(text="hello"),
                UserMessageTagContent(id="t1", text="@ada", data={"k": [1, 2]}),
            ],
            attachments=[attachment],
            quoted_text="quoted",
            inference_options=InferenceOptions(model="m"),
            **base,
        ),
        "assistant_message": AssistantMessageItem(
            id=new_id("msg"),
            content=[
                AssistantMessageContent(
                    text="see source",
                    annotations=[
                        Annotation(source=URLSource(title="t", url="https://e.com"), index=3)
                    ],
                )
            ],
            **base,
        ),
        "hidden_context": HiddenContextItem(
            id=new_id("msg"), content={"nested": ["any", 1, None]}, **base
        ),
        "sdk_hidden_context": SDKHiddenContextItem(
            id=new_id("shcx"), content="The user cancelled the stream.", **base
        ),
        "workflow": WorkflowItem(
            id=new_id("wf"),
            workflow=Workflow(
                type="reasoning",
                tasks=[ThoughtTask(content="thinking"), CustomTask(title="step")],
                summary=DurationSummary(duration=4),
                expanded=True,
            ),
            **base,
        ),
        "client_tool_call": ClientToolCallItem(
            id=new_id("tc"),
            call_id="call_1",
            name="get_weather",
            arguments={"city": "Paris", "days": [1, 2]},
            status="completed",
            output={"temp": 21.5},
            **base,
        ),
        "widget": WidgetItem(id=new_id("msg"), widget=WIDGET.build({"name": "Ada"}), **base),
        # Built from the SDK's named classes: loads as Card, not as a generic root.
        "widget_card": WidgetItem(
            id=new_id("msg"),
            widget=Card(
                size="sm",
                children=[
                    Text(id="t", value="Ada"),
                    Button(label="Go", onClickAction=ActionConfig(type="go", payload={"n": 1})),
                ],
            ),
            **base,
        ),
        "widget_list": WidgetItem(
            id=new_id("msg"),
            widget=ListView(children=[ListViewItem(children=[Text(value="one")])], limit=3),
            **base,
        ),
        "task": TaskItem(id=new_id("tsk"), task=CustomTask(title="t", content="c"), **base),
        "generated_image": GeneratedImageItem(
            id=new_id("msg"), image=GeneratedImage(id="img", url="https://e.com/i.png"), **base
        ),
        "structured_input": StructuredInputItem(
            id=new_id("msg"), inputs=[StructuredInputFreeform(id="q1", question="Why?")], **base
        ),
        "end_of_turn": EndOfTurnItem(id=new_id("msg"), **base),
    }


@pytest.mark.parametrize("kind", list(_items("thr_x")))
async def test_item_round_trip(store: SQLStore, kind: str) -> None:
    thread = await new_thread(store)
    item = _items(thread.id)[kind]
    await store.add_thread_item(thread.id, item, ALICE)

    loaded = await store.load_item(thread.id, item.id, ALICE)
    listed = (await store.load_thread_items(thread.id, None, 10, "asc", ALICE)).data

    assert type(loaded) is type(item)
    assert loaded == item
    assert listed == [item]
    assert loaded.model_dump_json() == item.model_dump_json()


async def test_widgets_load_as_the_class_they_were_saved_as(store: SQLStore) -> None:
    thread = await new_thread(store)
    items = _items(thread.id)
    for kind in ("widget", "widget_card", "widget_list"):
        await store.add_thread_item(thread.id, items[kind], ALICE)

    listed = (await store.load_thread_items(thread.id, None, 10, "asc", ALICE)).data
    widgets = [item.widget for item in listed if isinstance(item, WidgetItem)]

    assert [type(widget) for widget in widgets] == [DynamicWidgetRoot, Card, ListView]
    # The template's widget keeps what the named classes would drop.
    extra = WidgetItem(
        id=new_id("msg"),
        thread_id=thread.id,
        created_at=WHEN,
        widget=DynamicWidgetRoot.model_validate(
            {"type": "Card", "vendorField": {"x": 1}, "children": [{"type": "Text", "value": "v"}]}
        ),
    )
    await store.add_thread_item(thread.id, extra, ALICE)
    loaded = await store.load_item(thread.id, extra.id, ALICE)
    assert isinstance(loaded, WidgetItem)
    assert type(loaded.widget) is DynamicWidgetRoot
    assert loaded == extra


async def test_naive_datetimes_come_back_naive_and_equal(store: SQLStore) -> None:
    thread = await new_thread(store)
    await store.add_thread_item(thread.id, message(thread.id), ALICE)

    loaded_thread = await store.load_thread(thread.id, ALICE)
    (item,) = (await store.load_thread_items(thread.id, None, 10, "asc", ALICE)).data

    for value in (loaded_thread.created_at, item.created_at):
        assert value.tzinfo is None
        assert value == WHEN


async def test_aware_datetimes_keep_their_offset(store: SQLStore) -> None:
    aware = datetime(2025, 1, 1, 12, tzinfo=timezone(timedelta(hours=2)))
    thread = thread_meta(created_at=aware)
    await store.save_thread(thread, ALICE)
    item = message(thread.id).model_copy(update={"created_at": aware})
    await store.add_thread_item(thread.id, item, ALICE)

    assert (await store.load_thread(thread.id, ALICE)).created_at.utcoffset() == timedelta(hours=2)
    assert (await store.load_item(thread.id, item.id, ALICE)).created_at == aware


# -- threads ---------------------------------------------------------------------


async def test_thread_round_trip_and_update(store: SQLStore) -> None:
    thread = thread_meta(
        title="t",
        status=LockedStatus(reason="done"),
        allowed_image_domains=["e.com"],
        metadata={"k": "v"},
    )
    await store.save_thread(thread, ALICE)
    assert await store.load_thread(thread.id, ALICE) == thread

    thread.title = "renamed"
    thread.status = ActiveStatus()
    await store.save_thread(thread, ALICE)
    assert await store.load_thread(thread.id, ALICE) == thread


async def test_the_thread_a_request_makes_is_stored_naming_its_workflow(store: SQLStore) -> None:
    made, other, named = thread_meta(), thread_meta(), thread_meta(metadata={"workflow": "alpha"})
    creating = replace(ALICE, workflow_id="expert", new_thread_id=made.id)
    for thread in (made, other, named):
        await store.save_thread(thread, creating)

    assert (await store.load_thread(made.id, ALICE)).metadata == {"workflow": "expert"}
    assert made.metadata == {}  # the caller's object is left as it was
    assert (await store.load_thread(other.id, ALICE)).metadata == {}
    assert (await store.load_thread(named.id, ALICE)).metadata == {"workflow": "alpha"}
    # Saved again as the ChatKit server holds it (without the key): still named.
    made.title = "Later"
    await store.save_thread(made, creating)
    assert (await store.load_thread(made.id, ALICE)).metadata == {"workflow": "expert"}


async def test_saving_a_full_thread_drops_its_items(store: SQLStore, database: Database) -> None:
    meta = thread_meta()
    full = Thread(**meta.model_dump(), items=Page(data=[message(meta.id)], has_more=True))
    await store.save_thread(full, ALICE)

    loaded = await store.load_thread(full.id, ALICE)
    assert type(loaded) is ThreadMetadata
    assert loaded == meta
    assert await item_ids(store, full.id) == []
    async with database.read() as session:
        data = await session.scalar(sa.select(threads.c.data).where(threads.c.id == full.id))
    assert "items" not in json.loads(data)


async def test_a_thread_is_listed_once_it_holds_an_item(store: SQLStore) -> None:
    # threads.create stores the thread, then its first message: a crash
    # between the two must not leave an empty thread in the listing.
    empty = await new_thread(store)
    assert (await store.load_threads(10, None, "desc", ALICE)).data == []
    with pytest.raises(InvalidCursorError):
        await store.load_threads(10, empty.id, "desc", ALICE)
    # It can still be loaded by id (the client may hold it from thread.created).
    assert (await store.load_thread(empty.id, ALICE)).id == empty.id

    await store.add_thread_item(empty.id, message(empty.id), ALICE)
    assert [t.id for t in (await store.load_threads(10, None, "desc", ALICE)).data] == [empty.id]


async def test_updating_a_thread_keeps_its_position(store: SQLStore) -> None:
    first, second, third = [await listed_thread(store) for _ in range(3)]
    second.title = "changed"
    await store.save_thread(second, ALICE)

    page = await store.load_threads(10, None, "asc", ALICE)
    assert [t.id for t in page.data] == [first.id, second.id, third.id]


async def test_thread_pages_in_both_orders(store: SQLStore) -> None:
    ids = [(await listed_thread(store)).id for _ in range(5)]

    for order, expected in (("asc", ids), ("desc", ids[::-1])):
        page = await store.load_threads(2, None, order, ALICE)
        assert ([t.id for t in page.data], page.has_more, page.after) == (
            expected[:2],
            True,
            expected[1],
        )
        page = await store.load_threads(2, page.after, order, ALICE)
        assert [t.id for t in page.data] == expected[2:4]
        assert page.has_more
        page = await store.load_threads(2, page.after, order, ALICE)
        # The last page has no cursor (as in the SDK's stores): none leads nowhere.
        assert ([t.id for t in page.data], page.has_more, page.after) == (
            expected[4:],
            False,
            None,
        )
        page = await store.load_threads(2, expected[4], order, ALICE)
        assert (page.data, page.has_more, page.after) == ([], False, None)


async def test_delete_thread_cascades(store: SQLStore, database: Database) -> None:
    thread = await new_thread(store)
    kept = await new_thread(store)
    [item_id] = await add_messages(store, thread.id, 1)
    await add_messages(store, kept.id, 1)
    attachment = FileAttachment(
        id=new_id("atc"), name="a", mime_type="text/plain", thread_id=thread.id
    )
    await store.save_attachment(attachment, ALICE)
    await store.add_feedback(thread.id, [item_id], "negative", ALICE)

    await store.delete_thread(thread.id, ALICE)

    with pytest.raises(NotFoundError):
        await store.load_thread(thread.id, ALICE)
    with pytest.raises(NotFoundError):
        await store.load_attachment(attachment.id, ALICE)
    # Rows, not just the API: a disabled foreign key leaves orphans behind.
    async with database.read() as session:
        for table in (thread_items, attachments, feedback):
            count = await session.scalar(
                sa.select(sa.func.count()).where(table.c.thread_id == thread.id)
            )
            assert count == 0, table.name
    assert len(await item_ids(store, kept.id)) == 1


async def test_delete_missing_thread_raises(store: SQLStore) -> None:
    with pytest.raises(NotFoundError):
        await store.delete_thread("thr_missing", ALICE)


# -- items -----------------------------------------------------------------------


async def test_item_pages_in_both_orders(store: SQLStore) -> None:
    thread = await new_thread(store)
    ids = await add_messages(store, thread.id, 5)

    for order, expected in (("asc", ids), ("desc", ids[::-1])):
        seen: list[str] = []
        after = None
        pages = []
        while True:
            page = await store.load_thread_items(thread.id, after, 2, order, ALICE)
            pages.append((len(page.data), page.has_more))
            seen += [item.id for item in page.data]
            assert page.after == (page.data[-1].id if page.has_more else None)
            if not page.has_more:
                break
            after = page.after
        assert seen == expected
        assert pages == [(2, True), (2, True), (1, False)]


async def test_exact_last_page_has_no_more(store: SQLStore) -> None:
    thread = await new_thread(store)
    ids = await add_messages(store, thread.id, 4)

    page = await store.load_thread_items(thread.id, ids[1], 2, "asc", ALICE)
    assert ([i.id for i in page.data], page.has_more) == (ids[2:], False)
    page = await store.load_thread_items(thread.id, ids[-1], 2, "asc", ALICE)
    assert (page.data, page.has_more, page.after) == ([], False, None)


async def test_hidden_context_items_are_listed(store: SQLStore) -> None:
    thread = await new_thread(store)
    hidden = HiddenContextItem(id=new_id("msg"), thread_id=thread.id, created_at=WHEN, content=1)
    sdk = SDKHiddenContextItem(id=new_id("shcx"), thread_id=thread.id, created_at=WHEN, content="x")
    for item in (message(thread.id), hidden, sdk):
        await store.add_thread_item(thread.id, item, ALICE)

    page = await store.load_thread_items(thread.id, None, 10, "asc", ALICE)
    assert [type(i) for i in page.data] == [
        AssistantMessageItem,
        HiddenContextItem,
        SDKHiddenContextItem,
    ]


async def test_order_is_insertion_not_created_at(store: SQLStore) -> None:
    thread = await new_thread(store)
    later = message(thread.id).model_copy(update={"created_at": WHEN + timedelta(days=1)})
    earlier = message(thread.id).model_copy(update={"created_at": WHEN - timedelta(days=1)})
    await store.add_thread_item(thread.id, later, ALICE)
    await store.add_thread_item(thread.id, earlier, ALICE)

    assert await item_ids(store, thread.id) == [later.id, earlier.id]


@pytest.mark.parametrize("method", ["add_thread_item", "save_item"])
async def test_upsert_replaces_in_place(store: SQLStore, method: str) -> None:
    thread = await new_thread(store)
    ids = await add_messages(store, thread.id, 3)
    upsert: Callable[..., Any] = getattr(store, method)

    await upsert(thread.id, message(thread.id, "edited", item_id=ids[1]), ALICE)
    fresh = message(thread.id, "new")
    await upsert(thread.id, fresh, ALICE)

    assert await item_ids(store, thread.id) == [*ids, fresh.id]
    edited = await store.load_item(thread.id, ids[1], ALICE)
    assert isinstance(edited, AssistantMessageItem)
    assert edited.content[0].text == "edited"


def _question(thread_id: str, item_id: str) -> StructuredInputItem:
    return StructuredInputItem(
        id=item_id,
        thread_id=thread_id,
        created_at=WHEN,
        inputs=[StructuredInputFreeform(id="q1", question="Why?")],
    )


async def test_adding_a_pending_question_again_keeps_its_answer(store: SQLStore) -> None:
    # The resume path: the run that asked is answered (save_item), then the
    # resumed run emits the same item, still pending, once more.
    thread = await new_thread(store)
    asked = _question(thread.id, new_id("msg"))
    await store.add_thread_item(thread.id, asked, ALICE)
    answered = asked.model_copy(deep=True)
    answered.inputs[0].answer = StructuredInputAnswer(values=["because"])
    answered.status = "answered"
    await store.save_item(thread.id, answered, ALICE)

    await store.add_thread_item(thread.id, asked, ALICE)

    assert await store.load_item(thread.id, asked.id, ALICE) == answered
    # A settled add over a settled item still replaces it, and save_item always does.
    skipped = asked.model_copy(update={"status": "skipped"})
    await store.add_thread_item(thread.id, skipped, ALICE)
    assert await store.load_item(thread.id, asked.id, ALICE) == skipped
    await store.save_item(thread.id, asked, ALICE)
    assert await store.load_item(thread.id, asked.id, ALICE) == asked


async def test_adding_an_unfinished_workflow_again_keeps_the_finished_one(
    store: SQLStore,
) -> None:
    thread = await new_thread(store)
    running = WorkflowItem(
        id=new_id("wf"),
        thread_id=thread.id,
        created_at=WHEN,
        workflow=Workflow(type="custom", tasks=[CustomTask(title="step")]),
    )
    await store.add_thread_item(thread.id, running, ALICE)
    finished = running.model_copy(deep=True)
    finished.workflow.summary = DurationSummary(duration=3)
    await store.add_thread_item(thread.id, finished, ALICE)  # the SDK re-adds on end

    await store.add_thread_item(thread.id, running, ALICE)

    assert await store.load_item(thread.id, running.id, ALICE) == finished
    assert await item_ids(store, thread.id) == [running.id]


async def test_adding_a_pending_client_tool_call_again_keeps_its_output(
    store: SQLStore,
) -> None:
    thread = await new_thread(store)
    pending = ClientToolCallItem(
        id=new_id("tc"), thread_id=thread.id, created_at=WHEN, call_id="c", name="f", arguments={}
    )
    await store.add_thread_item(thread.id, pending, ALICE)
    completed = pending.model_copy(update={"status": "completed", "output": {"ok": True}})
    await store.save_item(thread.id, completed, ALICE)

    await store.add_thread_item(thread.id, pending, ALICE)

    assert await store.load_item(thread.id, pending.id, ALICE) == completed


async def test_guarded_add_in_another_users_thread_looks_missing(store: SQLStore) -> None:
    thread = await new_thread(store)
    with pytest.raises(NotFoundError):
        await store.add_thread_item(thread.id, _question(thread.id, new_id("msg")), MALLORY)
    with pytest.raises(NotFoundError):
        await store.add_thread_item("thr_missing", _question("thr_missing", "msg_x"), ALICE)


async def test_same_item_id_in_two_threads_is_two_items(store: SQLStore) -> None:
    one, two = await new_thread(store), await new_thread(store)
    await store.add_thread_item(one.id, message(one.id, "one", item_id="msg_same"), ALICE)
    await store.add_thread_item(two.id, message(two.id, "two", item_id="msg_same"), ALICE)

    loaded = await store.load_item(one.id, "msg_same", ALICE)
    assert isinstance(loaded, AssistantMessageItem)
    assert loaded.content[0].text == "one"


async def test_delete_item_and_missing_item_is_a_no_op(store: SQLStore) -> None:
    thread = await new_thread(store)
    ids = await add_messages(store, thread.id, 3)

    await store.delete_thread_item(thread.id, ids[1], ALICE)
    await store.delete_thread_item(thread.id, ids[1], ALICE)
    await store.delete_thread_item(thread.id, "msg_never", ALICE)

    assert await item_ids(store, thread.id) == [ids[0], ids[2]]
    with pytest.raises(NotFoundError):
        await store.load_item(thread.id, ids[1], ALICE)


async def test_item_operations_on_a_missing_thread_raise(store: SQLStore) -> None:
    with pytest.raises(NotFoundError):
        await store.add_thread_item("thr_missing", message("thr_missing"), ALICE)
    with pytest.raises(NotFoundError):
        await store.delete_thread_item("thr_missing", "msg_x", ALICE)
    with pytest.raises(NotFoundError):
        await store.load_thread_items("thr_missing", None, 10, "asc", ALICE)


@pytest.mark.parametrize(("asked", "returned"), [(0, 1), (-5, 1), (1, 1), (10_000, MAX_PAGE_SIZE)])
async def test_limit_is_clamped(store: SQLStore, asked: int, returned: int) -> None:
    thread = await new_thread(store)
    await add_messages(store, thread.id, MAX_PAGE_SIZE + 1 if asked > MAX_PAGE_SIZE else 2)

    page = await store.load_thread_items(thread.id, None, asked, "asc", ALICE)
    assert len(page.data) == returned
    assert page.has_more
    threads_page = await store.load_threads(asked, None, "asc", ALICE)
    assert len(threads_page.data) == 1


async def test_unknown_cursor_is_rejected(store: SQLStore) -> None:
    thread, other = await new_thread(store), await new_thread(store)
    [other_item] = await add_messages(store, other.id, 1)

    for cursor in ("msg_never", other_item):
        with pytest.raises(InvalidCursorError):
            await store.load_thread_items(thread.id, cursor, 10, "asc", ALICE)
    with pytest.raises(InvalidCursorError):
        await store.load_threads(10, "thr_never", "desc", ALICE)
    assert issubclass(InvalidCursorError, StoreError)


async def test_unknown_order_is_a_programming_error(store: SQLStore) -> None:
    with pytest.raises(ValueError, match="order"):
        await store.load_threads(10, None, "newest", ALICE)


# -- pagination properties -------------------------------------------------------

PROPERTY_SETTINGS = settings(
    max_examples=15,
    deadline=None,
    # The store is shared by the examples; each one works in a fresh user's data.
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@PROPERTY_SETTINGS
@given(count=st.integers(0, 9), order=st.sampled_from(["asc", "desc"]), data=st.data())
async def test_walking_item_pages_yields_each_item_once(
    store: SQLStore, count: int, order: str, data: st.DataObject
) -> None:
    user = RequestContext(user_id=new_id("usr"))
    thread = await new_thread(store, user)
    ids = await add_messages(store, thread.id, count, user)
    expected = ids if order == "asc" else ids[::-1]

    seen: list[str] = []
    after = None
    while True:
        limit = data.draw(st.integers(1, 4), label="limit")
        page = await store.load_thread_items(thread.id, after, limit, order, user)
        assert len(page.data) <= limit
        seen += [item.id for item in page.data]
        assert page.has_more == (len(seen) < count)
        if not page.has_more:
            break
        after = page.after
    assert seen == expected


@PROPERTY_SETTINGS
@given(count=st.integers(0, 7), order=st.sampled_from(["asc", "desc"]), data=st.data())
async def test_walking_thread_pages_yields_each_thread_once(
    store: SQLStore, count: int, order: str, data: st.DataObject
) -> None:
    user = RequestContext(user_id=new_id("usr"))
    ids = [(await listed_thread(store, user)).id for _ in range(count)]
    expected = ids if order == "asc" else ids[::-1]

    seen: list[str] = []
    after = None
    while True:
        limit = data.draw(st.integers(1, 4), label="limit")
        page = await store.load_threads(limit, after, order, user)
        seen += [thread.id for thread in page.data]
        assert page.has_more == (len(seen) < count)
        if not page.has_more:
            break
        after = page.after
    assert seen == expected


# -- attachments -----------------------------------------------------------------


async def test_create_file_and_image_attachments(store: SQLStore) -> None:
    file = await store.create_attachment(
        AttachmentCreateParams(name="a.pdf", size=10, mime_type="application/pdf"), ALICE
    )
    # Links point where the request reached the server, when its context says.
    addressed = replace(ALICE, base_url="https://chat.example.com/")
    image = await store.create_attachment(
        AttachmentCreateParams(name="p.png", size=20, mime_type="image/png"), addressed
    )

    assert isinstance(file, FileAttachment)
    assert file.id.startswith("atc_")
    assert len(file.id) == 36
    assert file.upload_descriptor is not None
    assert file.upload_descriptor.method == "POST"
    assert str(file.upload_descriptor.url) == (
        f"http://127.0.0.1:8000/chatkit/attachments/{file.id}/upload"
    )
    assert file.metadata == {"size": 10}
    assert isinstance(image, ImageAttachment)
    assert str(image.preview_url).startswith(
        f"https://chat.example.com/chatkit/attachments/{image.id}/"
    )
    with pytest.raises(NotFoundError):  # creating stores nothing; the server saves it
        await store.load_attachment(file.id, ALICE)


async def test_attachment_round_trip_update_and_delete(store: SQLStore) -> None:
    thread = await new_thread(store)
    attachment = await store.create_attachment(
        AttachmentCreateParams(name="p.png", size=20, mime_type="image/png"), ALICE
    )
    await store.save_attachment(attachment, ALICE)
    assert await store.load_attachment(attachment.id, ALICE) == attachment

    attached = attachment.model_copy(update={"thread_id": thread.id, "upload_descriptor": None})
    await store.save_attachment(attached, ALICE)
    assert await store.load_attachment(attachment.id, ALICE) == attached

    await store.delete_attachment(attachment.id, ALICE)
    await store.delete_attachment(attachment.id, ALICE)  # already gone: fine
    with pytest.raises(NotFoundError):
        await store.load_attachment(attachment.id, ALICE)


class _Server(ChatKitServer[RequestContext]):
    def respond(
        self, thread: Any, input_user_message: Any, context: Any
    ) -> AsyncIterator[ThreadStreamEvent]:
        raise NotImplementedError


async def test_base_server_create_and_delete_attachment(store: SQLStore) -> None:
    server = _Server(store=store, attachment_store=store)
    create = {
        "type": "attachments.create",
        "params": {"name": "n.txt", "size": 3, "mime_type": "text/plain"},
    }
    result = await server.process(json.dumps(create), ALICE)
    assert isinstance(result, NonStreamingResult)
    attachment_id = json.loads(result.json)["id"]
    assert (await store.load_attachment(attachment_id, ALICE)).name == "n.txt"

    delete = {"type": "attachments.delete", "params": {"attachment_id": attachment_id}}
    await server.process(json.dumps(delete), ALICE)  # deletes twice, must not fail
    with pytest.raises(NotFoundError):
        await store.load_attachment(attachment_id, ALICE)


# -- feedback --------------------------------------------------------------------


async def test_feedback_is_recorded(store: SQLStore) -> None:
    thread = await new_thread(store)
    ids = await add_messages(store, thread.id, 3)

    await store.add_feedback(thread.id, [ids[0], ids[2]], "positive", ALICE)
    await store.add_feedback(thread.id, [ids[1]], "negative", ALICE)

    records = await store.load_feedback(thread.id, ALICE)
    assert [(r.item_id, r.kind) for r in records] == [
        (ids[0], "positive"),
        (ids[2], "positive"),
        (ids[1], "negative"),
    ]
    assert all(r.thread_id == thread.id for r in records)
    assert all(r.created_at.tzinfo is None for r in records)
    now = datetime.now(UTC).replace(tzinfo=None)
    assert all(abs(now - r.created_at) < timedelta(minutes=1) for r in records)


async def test_feedback_on_an_unknown_item_records_nothing(store: SQLStore) -> None:
    thread = await new_thread(store)
    [item_id] = await add_messages(store, thread.id, 1)

    with pytest.raises(NotFoundError):
        await store.add_feedback(thread.id, [item_id, "msg_never"], "positive", ALICE)
    with pytest.raises(ValueError, match="kind"):
        await store.add_feedback(thread.id, [item_id], "meh", ALICE)  # type: ignore[arg-type]
    assert await store.load_feedback(thread.id, ALICE) == []


# -- ownership -------------------------------------------------------------------


async def test_another_users_thread_looks_missing(store: SQLStore) -> None:
    thread = await new_thread(store)
    [item_id] = await add_messages(store, thread.id, 1)
    await store.add_feedback(thread.id, [item_id], "positive", ALICE)
    tid = thread.id

    attempts: dict[str, Callable[[str], Any]] = {
        "load_thread": lambda t: store.load_thread(t, MALLORY),
        "delete_thread": lambda t: store.delete_thread(t, MALLORY),
        "load_thread_items": lambda t: store.load_thread_items(t, None, 10, "asc", MALLORY),
        "add_thread_item": lambda t: store.add_thread_item(t, message(t, "x"), MALLORY),
        "save_item": lambda t: store.save_item(t, message(t, "x", item_id=item_id), MALLORY),
        "load_item": lambda t: store.load_item(t, item_id, MALLORY),
        "delete_thread_item": lambda t: store.delete_thread_item(t, item_id, MALLORY),
        "add_feedback": lambda t: store.add_feedback(t, [item_id], "negative", MALLORY),
        "load_feedback": lambda t: store.load_feedback(t, MALLORY),
    }
    for name, attempt in attempts.items():
        with pytest.raises(NotFoundError) as foreign:
            await attempt(tid)
        with pytest.raises(NotFoundError) as missing:
            await attempt("thr_missing")
        assert isinstance(foreign.value, ChatKitNotFoundError)
        assert str(foreign.value) == str(missing.value).replace("thr_missing", tid), name

    # Saving under a free id creates Mallory's own thread; under Alice's, nothing.
    with pytest.raises(NotFoundError, match=f"^Thread {tid} not found$"):
        await store.save_thread(thread_meta(id=tid, title="pwned"), MALLORY)

    # Nothing changed for the owner.
    assert await store.load_thread(tid, ALICE) == thread
    assert await item_ids(store, tid) == [item_id]
    loaded = await store.load_item(tid, item_id, ALICE)
    assert isinstance(loaded, AssistantMessageItem)
    assert loaded.content[0].text == "message 0"
    assert [r.kind for r in await store.load_feedback(tid, ALICE)] == ["positive"]
    assert (await store.load_threads(10, None, "desc", MALLORY)).data == []
    with pytest.raises(InvalidCursorError):
        await store.load_threads(10, tid, "desc", MALLORY)
    # A valid cursor does not open another user's thread either.
    with pytest.raises(NotFoundError):
        await store.load_thread_items(tid, item_id, 10, "desc", MALLORY)


async def test_another_users_attachment_looks_missing(store: SQLStore) -> None:
    thread = await new_thread(store)
    attachment = FileAttachment(id=new_id("atc"), name="a", mime_type="text/plain")
    await store.save_attachment(attachment, ALICE)

    for attachment_id in (attachment.id, "atc_missing"):
        with pytest.raises(NotFoundError, match=f"^Attachment {attachment_id} not found$"):
            await store.load_attachment(attachment_id, MALLORY)
    with pytest.raises(NotFoundError):
        await store.save_attachment(attachment.model_copy(update={"name": "pwned"}), MALLORY)
    await store.delete_attachment(attachment.id, MALLORY)  # silently nothing
    # Mallory cannot attach her own file to Alice's thread either.
    hers = FileAttachment(id=new_id("atc"), name="m", mime_type="text/plain", thread_id=thread.id)
    with pytest.raises(NotFoundError):
        await store.save_attachment(hers, MALLORY)

    assert await store.load_attachment(attachment.id, ALICE) == attachment
    with pytest.raises(NotFoundError):
        await store.load_attachment(hers.id, MALLORY)


# -- ids -------------------------------------------------------------------------


def test_generated_ids_are_long_and_prefixed(store: SQLStore) -> None:
    thread = thread_meta()
    assert store.generate_thread_id(ALICE).startswith("thr_")
    assert store.generate_attachment_id("image/png", ALICE).startswith("atc_")
    for kind, prefix in (
        ("message", "msg_"),
        ("tool_call", "tc_"),
        ("sdk_hidden_context", "shcx_"),
    ):
        value = store.generate_item_id(kind, thread, ALICE)  # type: ignore[arg-type]
        assert value.startswith(prefix)
        assert len(value) == len(prefix) + 32


# -- reads are plain queries ------------------------------------------------------


async def test_reads_see_what_another_process_wrote(
    store: SQLStore, database_target: DatabaseTarget
) -> None:
    # Nothing read is kept between calls: a second handle on the same
    # database (another worker process) changes what the next read returns.
    thread = await new_thread(store)
    await store.add_thread_item(thread.id, message(thread.id, "one"), ALICE)
    assert (await store.load_thread(thread.id, ALICE)).title == "hello"
    assert len([row async for row in store.newest_rows(thread.id, 10, ALICE)]) == 1

    other = database_target.connect()
    try:
        elsewhere = SQLStore(other)
        await elsewhere.save_thread(thread.model_copy(update={"title": "renamed"}), ALICE)
        await elsewhere.add_thread_item(thread.id, message(thread.id, "two"), ALICE)
    finally:
        await other.dispose()

    assert (await store.load_thread(thread.id, ALICE)).title == "renamed"
    newest = [item async for item in store.newest_items(thread.id, 10, ALICE)]
    assert [item.content[0].text for item in newest] == ["two", "one"]  # type: ignore[union-attr]


async def test_newest_items_walks_back_in_pages_and_stops_anywhere(
    store: SQLStore, database: Database
) -> None:
    thread = await new_thread(store)
    for number in range(7):
        await store.add_thread_item(thread.id, message(thread.id, str(number)), ALICE)
    selects = record_sql(database, only="SELECT")

    walked = [item async for item in store.newest_items(thread.id, 10, ALICE, page_size=3)]
    assert [item.content[0].text for item in walked] == list("6543210")  # type: ignore[union-attr]
    assert len(selects) == 3  # pages of 3, 3 and 1

    capped = [item async for item in store.newest_items(thread.id, 4, ALICE, page_size=3)]
    assert len(capped) == 4

    # Stopped after the first item: no further page is read.
    del selects[:]
    newest = store.newest_items(thread.id, 100, ALICE, page_size=3)
    first = await anext(newest)
    await newest.aclose()
    assert first.id == walked[0].id
    assert len(selects) == 1

    rows = [row async for row in store.newest_rows(thread.id, 2, ALICE)]
    assert [decode_item(*row) for row in rows] == walked[:2]

    with pytest.raises(NotFoundError):
        _ = [item async for item in store.newest_items(thread.id, 10, MALLORY)]


# -- a session's history and upload limits -------------------------------------


@pytest.mark.parametrize("order", ["asc", "desc"])
@pytest.mark.parametrize("recent", [1, 3, 10])
async def test_recent_threads_pages_only_the_newest(
    store: SQLStore, order: str, recent: int
) -> None:
    made = [(await listed_thread(store)).id for _ in range(5)]
    await listed_thread(store, MALLORY)  # another user's threads never count
    limited = RequestContext(user_id="alice", limits=SessionLimits(recent_threads=recent))

    seen: list[str] = []
    after = None
    while True:
        page = await store.load_threads(2, after, order, limited)
        seen += [thread.id for thread in page.data]
        if not page.has_more:
            break
        after = page.after

    newest = made[-recent:]
    assert seen == (newest[::-1] if order == "desc" else newest)


async def test_history_off_lists_nothing(store: SQLStore) -> None:
    await new_thread(store)
    for limits in (SessionLimits(history=False), SessionLimits(recent_threads=0)):
        page = await store.load_threads(
            10, None, "desc", RequestContext(user_id="alice", limits=limits)
        )
        assert page.data == []
        assert not page.has_more


async def test_count_attachments_counts_the_users_since_a_time(store: SQLStore) -> None:
    start = int(datetime.now(UTC).timestamp()) - 1
    for name in ("a.txt", "b.txt"):
        attachment = await store.create_attachment(
            AttachmentCreateParams(name=name, size=1, mime_type="text/plain"), ALICE
        )
        await store.save_attachment(attachment, ALICE)
    assert await store.count_attachments(since=start, context=ALICE) == 2
    assert await store.count_attachments(since=start + 3600, context=ALICE) == 0
    assert await store.count_attachments(since=start, context=MALLORY) == 0
