"""The ChatKit protocol end to end: real uvicorn, real SQLite file, loopback fake backend."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import threading
import time
from typing import Any

import anyio
import httpx
import pytest
import sqlalchemy as sa
from chatkit.types import (
    AssistantMessageItem,
    ErrorEvent,
    SDKHiddenContextItem,
    ThreadItemAddedEvent,
    ThreadItemUpdatedEvent,
    UserMessageItem,
)

from chatkit_server.errors import StoreError
from chatkit_server.protocol import server as server_module
from chatkit_server.settings import Settings
from chatkit_server.store import Database, SQLStore
from chatkit_server.store.gate import Lease, RequestGate
from chatkit_server.testing.client import ChatKitHTTPError, user_input
from chatkit_server.testing.fake_backend import Reply
from tests.conftest import record_sql
from tests.live import LOCAL, FakeLLM, Live, LiveFactory


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = body["messages"]
    return messages


async def _stored_items(live: Live, thread_id: str) -> list[Any]:
    page = await live.store.load_thread_items(thread_id, None, 200, "asc", LOCAL)
    return page.data


async def test_two_turns_get_distinct_ids_and_full_history(live: Live, fake_llm: FakeLLM) -> None:
    fake_llm.backend.script(Reply.text("First answer."), Reply.text("Second answer."))

    first = await live.client.create_thread("Hello there")
    second = await live.client.add_message(first.thread_id, "Tell me more")

    assert first.assistant_text == "First answer."
    assert second.assistant_text == "Second answer."
    first_id = first.assistant_messages[0].id
    second_id = second.assistant_messages[0].id
    assert first_id != second_id
    assert "__fake_id__" not in (first_id, second_id)
    assert first_id.startswith("msg_")

    # The same id from added through updated to done, so the browser fills
    # one bubble per reply.
    streamed_ids = {
        event.item.id if isinstance(event, ThreadItemAddedEvent) else event.item_id
        for event in second.events
        if isinstance(event, (ThreadItemAddedEvent, ThreadItemUpdatedEvent))
        and (not isinstance(event, ThreadItemAddedEvent) or event.item.type == "assistant_message")
    }
    assert streamed_ids == {second_id}

    stored = await _stored_items(live, first.thread_id)
    assert [type(item) for item in stored] == [
        UserMessageItem,
        AssistantMessageItem,
        UserMessageItem,
        AssistantMessageItem,
    ]
    assert [item.id for item in stored][1::2] == [first_id, second_id]

    # The second request carries the whole conversation as plain strings.
    sent = _messages(fake_llm.backend.requests[-1].body)
    conversation = [(m["role"], m["content"]) for m in sent if m["role"] != "system"]
    assert conversation == [
        ("user", "Hello there"),
        ("assistant", "First answer."),
        ("user", "Tell me more"),
    ]
    assert sent[0]["role"] == "system"


async def test_a_message_is_answered_from_the_thread_its_lease_read(
    live: Live, fake_llm: FakeLLM
) -> None:
    fake_llm.backend.script(Reply.text("First answer."), Reply.text("Second answer."))
    first = await live.client.create_thread("Hello there")
    reads = record_sql(live.store.database, only="SELECT")
    item_reads = _item_reads(live.store.database)

    second = await live.client.add_message(first.thread_id, "Tell me more")

    assert second.assistant_text == "Second answer."
    # The thread is read by the statement that leases it and once more by
    # the ChatKit server, not a third time before the model is asked.
    thread_reads = [s for s in reads if s.startswith("SELECT threads.data FROM threads")]
    assert len(thread_reads) == 1
    # Its history too: on PostgreSQL by the lease statement itself, on
    # SQLite in the lease's job on the writer thread. The one read elsewhere
    # is ChatKit's own (the last two items, for a workflow to continue).
    elsewhere = [name for name in item_reads if not name.startswith("chatkit-sqlite-write")]
    assert len(elsewhere) == 1
    if live.store.database.dialect == "sqlite":
        assert len(item_reads) == 2
    assert "Hello there" in str(_messages(fake_llm.backend.requests[-1].body))


async def test_an_answer_streams_holding_its_lease_without_the_items_read_with_it(
    live: Live, fake_llm: FakeLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_llm.backend.script(Reply.text("First answer."), Reply.text("Second answer."))
    first = await live.client.create_thread("Hello there")
    held: list[Lease] = []
    release_as_is = server_module.release

    async def release(gate: RequestGate, lease: Lease, usage: Any = None) -> None:
        held.append(lease)
        await release_as_is(gate, lease, usage)

    monkeypatch.setattr(server_module, "release", release)
    second = await live.client.add_message(first.thread_id, "Tell me more")

    assert second.assistant_text == "Second answer."
    assert [(lease.thread_id, lease.newest_items) for lease in held] == [(first.thread_id, None)]


def _item_reads(database: Database) -> list[str]:
    """The thread each item SELECT runs on, from now on."""
    threads: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.startswith("SELECT thread_items.id, thread_items.type"):
            threads.append(threading.current_thread().name)

    sa.event.listen(database.sync_engine, "before_cursor_execute", record)
    return threads


async def test_thread_and_item_requests(live: Live, fake_llm: FakeLLM) -> None:
    fake_llm.backend.script(Reply.text("One."), Reply.text("Two."))
    a = await live.client.create_thread("first thread")
    b = await live.client.create_thread("second thread")

    listed = await live.client.call("threads.list", limit=10, order="desc")
    assert [t["id"] for t in listed["data"]] == [b.thread_id, a.thread_id]
    assert listed["has_more"] is False

    page = await live.client.call("threads.list", limit=1, order="desc")
    assert page["has_more"] is True
    rest = await live.client.call("threads.list", limit=1, order="desc", after=page["after"])
    assert [t["id"] for t in rest["data"]] == [a.thread_id]

    thread = await live.client.call("threads.get_by_id", thread_id=a.thread_id)
    assert [item["type"] for item in thread["items"]["data"]] == [
        "user_message",
        "assistant_message",
    ]

    items = await live.client.call("items.list", thread_id=a.thread_id, order="asc", limit=1)
    assert items["has_more"] is True
    assert items["data"][0]["type"] == "user_message"

    updated = await live.client.call("threads.update", thread_id=a.thread_id, title="Renamed")
    assert updated["title"] == "Renamed"
    assert (await live.client.call("threads.get_by_id", thread_id=a.thread_id))["title"] == (
        "Renamed"
    )

    assert await live.client.call("threads.delete", thread_id=a.thread_id) == {}
    with pytest.raises(ChatKitHTTPError) as missing:
        await live.client.call("threads.get_by_id", thread_id=a.thread_id)
    assert missing.value.status_code == 404
    listed = await live.client.call("threads.list")
    assert [t["id"] for t in listed["data"]] == [b.thread_id]


async def test_retry_after_item_replaces_the_answer(live: Live, fake_llm: FakeLLM) -> None:
    fake_llm.backend.script(Reply.text("Bad answer."), Reply.text("Better answer."))
    turn = await live.client.create_thread("Question?")
    user_id = turn.done_items[0].id

    retried = await live.client.stream(
        "threads.retry_after_item", thread_id=turn.thread_id, item_id=user_id
    )

    assert retried.assistant_text == "Better answer."
    stored = await _stored_items(live, turn.thread_id)
    assert [(item.type, item.id) for item in stored] == [
        ("user_message", user_id),
        ("assistant_message", retried.assistant_messages[0].id),
    ]
    conversation = [
        (m["role"], m["content"]) for m in _messages(fake_llm.backend.requests[-1].body)
    ]
    assert conversation[1:] == [("user", "Question?")]


async def test_feedback_is_persisted(live: Live, fake_llm: FakeLLM) -> None:
    turn = await live.client.create_thread("Rate me")
    answer_id = turn.assistant_messages[0].id

    await live.client.call(
        "items.feedback", thread_id=turn.thread_id, item_ids=[answer_id], kind="positive"
    )

    records = await live.store.load_feedback(turn.thread_id, LOCAL)
    assert [(r.item_id, r.kind) for r in records] == [(answer_id, "positive")]
    with pytest.raises(ChatKitHTTPError) as unknown:
        await live.client.call(
            "items.feedback", thread_id=turn.thread_id, item_ids=["msg_nope"], kind="negative"
        )
    assert unknown.value.status_code == 404


async def _wait_for(predicate: Any, seconds: float = 5.0) -> None:
    with anyio.fail_after(seconds):
        # Polling: the server persists in its own request task, which offers
        # nothing to wait on from here.
        while not await predicate():  # noqa: ASYNC110
            await anyio.sleep(0.02)


async def test_stop_persists_partial_answer_and_stops_the_backend(
    live: Live, fake_llm: FakeLLM
) -> None:
    # 20 s of answer: it ends early only if stopping reaches the backend.
    fake_llm.backend.script(Reply.text("ready"), Reply.count(1000, delay=0.02))
    turn = await live.client.create_thread("warm up")

    deltas = 0
    async with live.client.open_stream(
        "threads.add_user_message",
        thread_id=turn.thread_id,
        input=user_input("long one"),
    ) as events:
        async for event in events:
            if isinstance(event, ThreadItemUpdatedEvent):
                deltas += 1
                if deltas == 5:
                    break
    # Leaving the block closed the connection, as the browser's stop button does.

    record = await fake_llm.backend.wait_for_stream_end(timeout=5.0)
    assert record.disconnected
    assert not record.completed
    assert record.tokens_sent < 1000

    async def partial_saved() -> bool:
        items = await _stored_items(live, turn.thread_id)
        return any(isinstance(item, SDKHiddenContextItem) for item in items)

    await _wait_for(partial_saved)
    items = await _stored_items(live, turn.thread_id)
    partial = [item for item in items if isinstance(item, AssistantMessageItem)][-1]
    assert partial.content[0].text.startswith("tok0 tok1 tok2")
    assert len(partial.content[0].text.split()) < 1000

    # The thread takes the next message, and the model sees the partial answer.
    fake_llm.backend.script(Reply.text("Fine."))
    after = await live.client.add_message(turn.thread_id, "continue")
    assert after.assistant_text == "Fine."


async def test_backend_error_status_becomes_error_event(live: Live, fake_llm: FakeLLM) -> None:
    fake_llm.backend.script(Reply.text("ok"), Reply(status=503))
    turn = await live.client.create_thread("hi")

    failed = await live.client.add_message(turn.thread_id, "again")

    assert len(failed.errors) == 1
    assert "503" in (failed.errors[0].message or "")
    assert failed.errors[0].allow_retry
    fake_llm.backend.script(Reply.text("Recovered."))
    recovered = await live.client.add_message(turn.thread_id, "third")
    assert recovered.assistant_text == "Recovered."


async def test_backend_drop_mid_stream_keeps_partial_and_reports(
    live: Live, fake_llm: FakeLLM
) -> None:
    fake_llm.backend.script(Reply.count(20, drop_after=5, delay=0.05))

    turn = await live.client.create_thread("hi")

    assert len(turn.errors) == 1
    assert "middle of the answer" in (turn.errors[0].message or "")
    # What the browser saw is what was kept; the SDK may drop the deltas that
    # were still queued when the connection broke.
    assert turn.assistant_text
    assert "tok0 tok1 tok2 tok3 tok4 ".startswith(turn.assistant_text)
    stored = await _stored_items(live, turn.thread_id)
    assert [item.type for item in stored] == ["user_message", "assistant_message"]
    fake_llm.backend.script(Reply.text("Back."))
    assert (await live.client.add_message(turn.thread_id, "again")).assistant_text == "Back."


async def test_stalled_backend_times_out(live: Live, fake_llm: FakeLLM) -> None:
    # live_settings give the backend 2 s of silence at most.
    fake_llm.backend.script(Reply.count(10, stall_after=2, stall_seconds=30))

    started = time.monotonic()
    turn = await live.client.create_thread("hi")

    assert time.monotonic() - started < 10
    assert len(turn.errors) == 1
    assert "in time" in (turn.errors[0].message or "")


async def test_empty_backend_turn_is_an_error(live: Live, fake_llm: FakeLLM) -> None:
    fake_llm.backend.script(Reply(tokens=[], empty=True))

    turn = await live.client.create_thread("hi")

    assert [type(e) for e in turn.events if isinstance(e, ErrorEvent)] == [ErrorEvent]
    assert "empty" in (turn.errors[0].message or "")
    stored = await _stored_items(live, turn.thread_id)
    assert [item.type for item in stored] == ["user_message"]


async def test_backend_down_is_an_error_event(
    start_live: LiveFactory, live_settings: Settings
) -> None:
    # Bind and close a port so nothing listens there.
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    await listener.aclose()
    settings = live_settings.with_changes(llm_base_url=f"http://127.0.0.1:{port}/v1")

    async with start_live(settings) as live:
        turn = await live.client.create_thread("anyone there?")

    assert len(turn.errors) == 1
    assert "could not be reached" in (turn.errors[0].message or "")


async def test_no_backend_configured_says_what_to_set(
    start_live: LiveFactory, live_settings: Settings
) -> None:
    async with start_live(live_settings.with_changes(llm_base_url=None)) as live:
        turn = await live.client.create_thread("hi")
    assert "CHATKIT_LLM_BASE_URL" in (turn.errors[0].message or "")


async def test_restart_with_same_data_dir_keeps_everything(
    start_live: LiveFactory, live_settings: Settings, fake_llm: FakeLLM
) -> None:
    fake_llm.backend.script(Reply.text("Remember me."))
    async with start_live(live_settings) as live:
        turn = await live.client.create_thread("persist this")
        before = await live.client.call("threads.get_by_id", thread_id=turn.thread_id)

    async with start_live(live_settings) as live:
        after = await live.client.call("threads.get_by_id", thread_id=turn.thread_id)
        fake_llm.backend.script(Reply.text("Still here."))
        more = await live.client.add_message(turn.thread_id, "still there?")

    assert after == before
    assert more.assistant_text == "Still here."
    conversation = [m["content"] for m in _messages(fake_llm.backend.requests[-1].body)]
    assert conversation[1:] == ["persist this", "Remember me.", "still there?"]


async def test_fifty_concurrent_conversations_on_one_sqlite_file(
    start_live: LiveFactory, live_settings: Settings, fake_llm: FakeLLM
) -> None:
    fake_llm.backend.default = Reply.count(10, delay=0.005)
    # This is about database locking: generous backend timeouts keep a
    # loaded CI machine from turning slowness into error events (the fake
    # backend accepts its 50 connections on the server's own busy loop).
    settings = live_settings.with_changes(llm_read_timeout=30.0, llm_connect_timeout=30.0)

    async def converse(live: Live, n: int) -> tuple[int, int]:
        first = await live.client.create_thread(f"conversation {n}")
        second = await live.client.add_message(first.thread_id, "and again")
        return len(first.errors) + len(second.errors), len(second.assistant_messages)

    async with start_live(settings) as live:
        results = await asyncio.gather(*(converse(live, n) for n in range(50)))
        threads = await live.store.load_threads(200, None, "desc", LOCAL)

    assert results == [(0, 1)] * 50
    assert len(threads.data) == 50


async def test_shutdown_with_an_open_stream_is_bounded_and_keeps_the_partial(
    start_live: LiveFactory, live_settings: Settings, fake_llm: FakeLLM
) -> None:
    fake_llm.backend.script(Reply.count(500, delay=0.02))
    seen = anyio.Event()
    thread_ids: list[str] = []

    async def reader(live: Live) -> None:
        # The stream breaks when the server goes away: that is the point.
        with contextlib.suppress(httpx.HTTPError):
            await read(live)

    async def read(live: Live) -> None:
        async with live.client.open_stream(
            "threads.create",
            input={
                "content": [{"type": "input_text", "text": "long"}],
                "attachments": [],
                "inference_options": {},
            },
        ) as events:
            deltas = 0
            async for event in events:
                if hasattr(event, "thread") and not thread_ids:
                    thread_ids.append(event.thread.id)  # type: ignore[union-attr]
                if isinstance(event, ThreadItemUpdatedEvent):
                    deltas += 1
                    if deltas == 3:
                        seen.set()

    started = 0.0
    async with anyio.create_task_group() as tasks:
        async with start_live(live_settings, shutdown_timeout=1.0) as live:
            tasks.start_soon(reader, live)
            await seen.wait()
            started = time.monotonic()
        # The server is down although the stream was still open.
        assert time.monotonic() - started < 8
        tasks.cancel_scope.cancel()

    async with start_live(live_settings) as live:
        items = await _stored_items(live, thread_ids[0])
    answers = [item for item in items if isinstance(item, AssistantMessageItem)]
    assert answers
    # Three updates seen = the empty content part and two deltas.
    assert answers[0].content[0].text.startswith("tok0 tok1 ")


async def test_token_usage_is_recorded_per_answer_and_thread(live: Live, fake_llm: FakeLLM) -> None:
    fake_llm.backend.script(Reply.text("One.", usage=(11, 2)), Reply.text("Two.", usage=(20, 3)))
    first = await live.client.create_thread("hi")
    second = await live.client.add_message(first.thread_id, "again")

    usage = live.state.server.usage
    answer = await usage.for_item(first.thread_id, second.assistant_messages[0].id, LOCAL)
    totals = await usage.for_thread(first.thread_id, LOCAL)

    assert answer is not None
    assert (answer.input_tokens, answer.output_tokens, answer.model) == (20, 3, "fake-model")
    assert (totals.answers, totals.input_tokens, totals.output_tokens) == (2, 31, 5)


async def test_a_failed_message_write_is_an_error_event_and_keeps_the_thread(
    live: Live, fake_llm: FakeLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The answer asked before the message is stored is never used: a long
    # one, to see it stopped.
    fake_llm.backend.script(Reply.text("One."), Reply.count(1000, delay=0.01), Reply.text("Back."))
    first = await live.client.create_thread("Hello")
    store = live.store

    async def add_thread_item(thread_id: str, item: Any, context: Any) -> None:
        if item.type == "user_message":
            raise StoreError("disk full")
        await SQLStore.add_thread_item(store, thread_id, item, context)

    monkeypatch.setattr(store, "add_thread_item", add_thread_item)
    failed = await live.client.add_message(first.thread_id, "Lost")

    assert len(failed.errors) == 1
    assert not failed.assistant_text
    # Asked before the message was stored (what makes the first token
    # early); the write failed, so that answer was stopped before any of it
    # was used, and the backend let go.
    early = await fake_llm.backend.wait_for_stream_end(1)
    assert early.disconnected
    assert not early.completed
    stored = await _stored_items(live, first.thread_id)
    assert [item.type for item in stored] == ["user_message", "assistant_message"]

    monkeypatch.undo()
    again = await live.client.add_message(first.thread_id, "Again")
    assert again.assistant_text == "Back."


async def test_stopping_an_answer_logs_no_leftover_task_error(
    live: Live, fake_llm: FakeLLM, caplog: pytest.LogCaptureFixture
) -> None:
    fake_llm.backend.script(Reply.count(1000, delay=0.02))
    async with live.client.open_stream(
        "threads.create",
        input=user_input("long one"),
    ) as events:
        async for event in events:
            if isinstance(event, ThreadItemUpdatedEvent):
                break
    record = await fake_llm.backend.wait_for_stream_end(timeout=5.0)
    assert not record.completed
    # The leftover fetch is reported when it is collected.
    for _ in range(3):
        gc.collect()
        await asyncio.sleep(0.01)
    assert [r for r in caplog.records if "never retrieved" in r.getMessage()] == []
