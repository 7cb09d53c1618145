"""Widgets and their actions end to end: real uvicorn, SQLite, the fake backend.

A tool streams the example counter widget; its buttons' actions reach the handlers the
workflows file declares, through ``threads.custom_action`` (streamed) and
``threads.sync_custom_action`` (JSON), and the changed widget is what a reload, even
after a restart, shows.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from chatkit.actions import Action
from chatkit.types import (
    AssistantMessageItem,
    ClientEffectEvent,
    ErrorEvent,
    NoticeEvent,
    ProgressUpdateEvent,
    ThreadItemDoneEvent,
    ThreadItemReplacedEvent,
    ThreadMetadata,
    ThreadStreamEvent,
    WidgetItem,
)
from chatkit.widgets import DynamicWidgetRoot

from chatkit_server.settings import Settings
from chatkit_server.testing.client import ChatKitHTTPError, Turn
from chatkit_server.testing.fake_backend import Reply
from chatkit_server.tools import counter_widget
from chatkit_server.workflows.actions import ActionContext, handler_events, is_action_handler
from chatkit_server.workflows.file import load_workflow_file
from tests.live import LOCAL, FakeLLM, Live, LiveFactory

WORKFLOWS = """
[backends.fake]
base_url = "{url}"

[workflows.widgets]
backend = "fake"
model = "fake-model"
tools = ["chatkit_server.tools:show_counter"]

[workflows.widgets.actions]
"counter.add" = "chatkit_server.tools:add_to_counter"
"counter.reset" = "chatkit_server.tools:reset_counter"
"test.ask" = "tests.workflows.test_actions:ask_the_agent"
"test.ask_twice" = "tests.workflows.test_actions:ask_twice"
"test.signal" = "tests.workflows.test_actions:signal"
"test.append" = "tests.workflows.test_actions:append_card"
"test.fail" = "tests.workflows.test_actions:fail"
"test.rename" = "tests.workflows.test_actions:rename"
"test.hang" = "tests.workflows.test_actions:hang"
"test.slow_answer" = "tests.workflows.test_actions:slow_answer"
"""


async def ask_the_agent(action: ActionContext) -> AsyncIterator[ThreadStreamEvent]:
    yield action.hidden_context(f"The user pressed {action.action.payload['button']}.")
    async for event in action.respond():
        yield event


async def ask_twice(action: ActionContext) -> AsyncIterator[ThreadStreamEvent]:
    for _ in range(2):
        async for event in action.respond():
            yield event


async def signal(action: ActionContext) -> list[ThreadStreamEvent]:
    return [
        action.progress("Working…"),
        action.client_effect("confetti", {"amount": 3}),
        action.notice("Saved.", level="info", title="Done"),
    ]


async def append_card(action: ActionContext) -> AsyncIterator[ThreadStreamEvent]:
    yield action.add_widget(counter_widget("Appended", 7))
    yield action.add_message("Here is another counter.")


async def fail(action: ActionContext) -> None:
    raise RuntimeError("secret internal detail")


async def rename(action: ActionContext) -> None:
    action.thread.title = str(action.action.payload)


async def hang(action: ActionContext) -> AsyncIterator[ThreadStreamEvent]:
    yield action.add_message("Started.")
    await anyio.sleep_forever()
    yield action.add_message("Never.")  # pragma: no cover


async def slow_answer(action: ActionContext) -> AsyncIterator[ThreadStreamEvent]:
    # The answer takes longer than the handler's own time: it must not count.
    async for event in action.respond():
        yield event
    yield action.notice("Answered.")


@pytest.fixture
def widget_settings(tmp_path: Path, live_settings: Settings, fake_llm: FakeLLM) -> Settings:
    path = tmp_path / "workflows.toml"
    path.write_text(WORKFLOWS.format(url=fake_llm.v1))
    return live_settings.with_changes(
        workflows_path=path, workflows_file=load_workflow_file(path, {})
    )


async def _counter_thread(live: Live, fake_llm: FakeLLM) -> tuple[str, WidgetItem]:
    """A thread whose answer ran the example tool: the counter is shown at 0."""
    fake_llm.backend.script(
        Reply.tool_call("show_counter", {"label": "Cups"}), Reply.text("There you go.")
    )
    turn = await live.client.create_thread("Count my cups")
    assert not turn.errors
    [widget] = [item for item in turn.done_items if isinstance(item, WidgetItem)]
    return turn.thread_id, widget


def _count_text(widget: Any) -> str:
    raw = widget.model_dump(mode="json", exclude_none=True)
    return str(raw["children"][1]["value"])


async def _action(live: Live, thread_id: str, item_id: str | None, **action: Any) -> Turn:
    return await live.client.stream(
        "threads.custom_action", thread_id=thread_id, item_id=item_id, action=action
    )


async def _stored_widget(live: Live, thread_id: str, item_id: str) -> WidgetItem:
    page = await live.client.call("items.list", thread_id=thread_id, limit=50, order="asc")
    [raw] = [item for item in page["data"] if item["id"] == item_id]
    return WidgetItem.model_validate(raw)


async def test_a_tool_streams_a_widget_that_is_kept(
    live_factory_widgets: Live, fake_llm: FakeLLM
) -> None:
    live = live_factory_widgets
    thread_id, widget = await _counter_thread(live, fake_llm)

    assert _count_text(widget.widget) == "Count: 0"
    assert widget.copy_text == "Cups: 0"
    stored = await live.store.load_item(thread_id, widget.id, LOCAL)
    assert isinstance(stored, WidgetItem)
    assert type(stored.widget) is DynamicWidgetRoot
    assert stored.widget == counter_widget("Cups", 0)
    # The tool's result reached the model, which answered after it.
    tool_output = fake_llm.backend.requests[-1].body["messages"][-1]
    assert tool_output["role"] == "tool"
    assert "Cups" in tool_output["content"]


@pytest.fixture
async def live_factory_widgets(
    start_live: LiveFactory, widget_settings: Settings
) -> AsyncIterator[Live]:
    async with start_live(widget_settings) as running:
        yield running


async def test_a_streamed_action_replaces_the_widget_and_a_restart_shows_it(
    start_live: LiveFactory, widget_settings: Settings, fake_llm: FakeLLM
) -> None:
    async with start_live(widget_settings) as live:
        thread_id, widget = await _counter_thread(live, fake_llm)
        [button] = [
            child
            for child in widget.widget.model_dump(mode="json")["children"][2]["children"]
            if child["label"] == "Add one"
        ]
        turn = await _action(live, thread_id, widget.id, **button["onClickAction"])

        assert not turn.errors
        assert any(isinstance(event, ProgressUpdateEvent) for event in turn.events)
        [replaced] = [e for e in turn.events if isinstance(e, ThreadItemReplacedEvent)]
        assert replaced.item.id == widget.id
        assert _count_text(replaced.item.widget) == "Count: 1"  # type: ignore[union-attr]

        # The next press carries the new widget's payload.
        again = replaced.item.widget.model_dump(mode="json")["children"][2]["children"][0]  # type: ignore[union-attr]
        await _action(live, thread_id, widget.id, **again["onClickAction"])

    async with start_live(widget_settings) as live:
        stored = await _stored_widget(live, thread_id, widget.id)
        assert _count_text(stored.widget) == "Count: 2"
        assert stored.copy_text == "Cups: 2"
        thread = await live.client.call("threads.get_by_id", thread_id=thread_id)
        [shown] = [item for item in thread["items"]["data"] if item["id"] == widget.id]
        assert shown["widget"]["children"][1]["value"] == "Count: 2"


async def test_a_sync_action_answers_the_updated_item_and_keeps_it(
    live_factory_widgets: Live, fake_llm: FakeLLM
) -> None:
    live = live_factory_widgets
    thread_id, widget = await _counter_thread(live, fake_llm)
    await _action(
        live, thread_id, widget.id, type="counter.add", payload={"label": "Cups", "count": 4}
    )

    answer = await live.client.call(
        "threads.sync_custom_action",
        thread_id=thread_id,
        item_id=widget.id,
        action={"type": "counter.reset", "payload": {"label": "Cups", "count": 5}},
    )

    assert answer["updated_item"]["id"] == widget.id
    assert answer["updated_item"]["widget"]["children"][1]["value"] == "Count: 0"
    stored = await _stored_widget(live, thread_id, widget.id)
    assert _count_text(stored.widget) == "Count: 0"


async def test_an_action_can_run_the_agent_with_what_was_pressed(
    live_factory_widgets: Live, fake_llm: FakeLLM
) -> None:
    live = live_factory_widgets
    thread_id, widget = await _counter_thread(live, fake_llm)
    fake_llm.backend.script(Reply.text("You pressed yes."))

    turn = await _action(live, thread_id, widget.id, type="test.ask", payload={"button": "yes"})

    assert not turn.errors
    assert turn.assistant_text == "You pressed yes."
    sent = fake_llm.backend.requests[-1].body["messages"]
    assert "The user pressed yes." in sent[-1]["content"]
    # The hidden context is kept for later turns but never shown.
    assert not any(
        isinstance(event, ThreadItemDoneEvent) and event.item.type == "hidden_context_item"
        for event in turn.events
    )
    page = await live.client.call("items.list", thread_id=thread_id, limit=50, order="asc")
    assert [item["type"] for item in page["data"]][-1] == "assistant_message"


async def test_each_answer_of_an_action_has_its_usage_recorded(
    live_factory_widgets: Live, fake_llm: FakeLLM
) -> None:
    live = live_factory_widgets
    thread_id, _ = await _counter_thread(live, fake_llm)
    fake_llm.backend.script(
        Reply.text("First.", usage=(11, 2)), Reply.text("Second.", usage=(20, 3))
    )

    turn = await _action(live, thread_id, None, type="test.ask_twice")

    assert not turn.errors
    usage = live.state.server.usage
    first, second = turn.assistant_messages
    assert (await usage.for_item(thread_id, first.id, LOCAL)) is not None
    recorded = await usage.for_item(thread_id, second.id, LOCAL)
    assert recorded is not None
    assert (recorded.input_tokens, recorded.output_tokens) == (20, 3)


async def test_handlers_send_progress_effects_notices_and_new_items(
    live_factory_widgets: Live, fake_llm: FakeLLM
) -> None:
    live = live_factory_widgets
    thread_id, _ = await _counter_thread(live, fake_llm)

    signals = await _action(live, thread_id, None, type="test.signal")
    appended = await _action(live, thread_id, None, type="test.append")

    kinds = [type(event) for event in signals.events]
    assert ProgressUpdateEvent in kinds
    assert NoticeEvent in kinds
    assert ClientEffectEvent in kinds
    [effect] = [e for e in signals.events if isinstance(e, ClientEffectEvent)]
    assert (effect.name, effect.data) == ("confetti", {"amount": 3})
    new_items = [e.item for e in appended.events if isinstance(e, ThreadItemDoneEvent)]
    assert [type(item) for item in new_items] == [WidgetItem, AssistantMessageItem]
    page = await live.client.call("items.list", thread_id=thread_id, limit=50, order="desc")
    assert [item["id"] for item in page["data"][:2]] == [new_items[1].id, new_items[0].id]


async def test_unknown_and_failing_actions_are_clear_errors(
    live_factory_widgets: Live, fake_llm: FakeLLM
) -> None:
    live = live_factory_widgets
    thread_id, widget = await _counter_thread(live, fake_llm)

    unknown = await _action(live, thread_id, widget.id, type="nope")
    failed = await _action(live, thread_id, widget.id, type="test.fail")

    [error] = unknown.errors
    assert isinstance(error, ErrorEvent)
    assert error.message is not None
    assert "'nope'" in error.message
    [error] = failed.errors
    assert error.message == "The action 'test.fail' failed."
    for action_type, status in (("nope", 400), ("test.fail", 502)):
        with pytest.raises(ChatKitHTTPError) as refused:
            await live.client.call(
                "threads.sync_custom_action",
                thread_id=thread_id,
                item_id=widget.id,
                action={"type": action_type},
            )
        assert refused.value.status_code == status
        assert "secret" not in str(refused.value.body)
    # The widget is as it was.
    stored = await _stored_widget(live, thread_id, widget.id)
    assert _count_text(stored.widget) == "Count: 0"


async def test_the_default_workflow_has_no_actions(live: Live) -> None:
    turn = await live.client.create_thread("hi")
    unknown = await _action(live, turn.thread_id, None, type="counter.add")
    [error] = unknown.errors
    assert error.message is not None
    assert "'default'" in error.message


async def test_a_thread_a_handler_renames_is_saved_in_both_modes(
    live_factory_widgets: Live, fake_llm: FakeLLM
) -> None:
    live = live_factory_widgets
    thread_id, _ = await _counter_thread(live, fake_llm)

    await _action(live, thread_id, None, type="test.rename", payload="Streamed")
    streamed = await live.client.call("threads.get_by_id", thread_id=thread_id)
    await live.client.call(
        "threads.sync_custom_action",
        thread_id=thread_id,
        action={"type": "test.rename", "payload": "Synced"},
    )
    synced = await live.client.call("threads.get_by_id", thread_id=thread_id)

    assert (streamed["title"], synced["title"]) == ("Streamed", "Synced")


async def test_the_workflows_listing_names_the_action_types(live_factory_widgets: Live) -> None:
    async with httpx.AsyncClient() as http:
        listed = (await http.get(live_factory_widgets.url + "/chatkit/workflows")).json()
    [workflow] = listed["data"]
    assert workflow["actions"] == [
        "counter.add", "counter.reset", "test.append", "test.ask", "test.ask_twice",
        "test.fail", "test.hang", "test.rename", "test.signal", "test.slow_answer",
    ]  # fmt: skip


# -- ActionContext on its own ------------------------------------------------------


def _context(live: Live, **changes: Any) -> ActionContext:
    return ActionContext(
        action=Action[str, Any](type="t", payload=None),
        sender=None,
        thread=ThreadMetadata(id="thr_1", created_at=datetime(2026, 1, 1)),
        request_context=LOCAL,
        store=live.store,
        **changes,
    )


async def _nothing(action: ActionContext) -> None:
    return None


async def test_what_an_action_context_refuses(live: Live) -> None:
    with pytest.raises(ValueError, match="no sender widget"):
        _context(live).replace_widget(counter_widget("x", 1))
    with pytest.raises(RuntimeError, match="cannot run the agent"):
        _context(live, sync=True).respond()
    assert [event async for event in handler_events(_nothing, _context(live))] == []
    assert not is_action_handler(counter_widget)
    assert is_action_handler(_nothing)
    assert is_action_handler(append_card)


async def test_a_handler_that_hangs_ends_within_its_time_and_keeps_what_it_added(
    start_live: LiveFactory, widget_settings: Settings, fake_llm: FakeLLM
) -> None:
    async with start_live(widget_settings.with_changes(action_max_seconds=0.5)) as live:
        thread_id, widget = await _counter_thread(live, fake_llm)

        streamed = await _action(live, thread_id, widget.id, type="test.hang")
        with pytest.raises(ChatKitHTTPError) as synced:
            await live.client.call(
                "threads.sync_custom_action",
                thread_id=thread_id,
                item_id=widget.id,
                action={"type": "test.hang"},
            )

        [error] = streamed.errors
        assert error.message is not None
        assert "did not finish in time" in error.message
        assert synced.value.status_code == 504
        assert "CHATKIT_ACTION_MAX_SECONDS" in str(synced.value.body)
        # Each run's first message was kept, whole; the thread answers on.
        page = await live.client.call("items.list", thread_id=thread_id, limit=50, order="asc")
        started = [item for item in page["data"] if item["type"] == "assistant_message"][-2:]
        assert [item["content"][0]["text"] for item in started] == ["Started.", "Started."]
        fake_llm.backend.script(Reply.text("Still here."))
        after = await live.client.add_message(thread_id, "hello?")
        assert after.assistant_text == "Still here."


async def test_an_answer_a_handler_runs_does_not_use_up_the_handlers_time(
    start_live: LiveFactory, widget_settings: Settings, fake_llm: FakeLLM
) -> None:
    async with start_live(widget_settings.with_changes(action_max_seconds=0.5)) as live:
        thread_id, widget = await _counter_thread(live, fake_llm)
        fake_llm.backend.script(Reply.count(12, delay=0.1))  # 1.2 s of answer

        turn = await _action(live, thread_id, widget.id, type="test.slow_answer")

    assert not turn.errors
    assert turn.assistant_text.split() == [f"tok{n}" for n in range(12)]
    assert any(isinstance(event, NoticeEvent) for event in turn.events)
