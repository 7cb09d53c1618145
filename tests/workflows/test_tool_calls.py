"""Tool calls end to end: real uvicorn, SQLite, the fake backend in each server's shape.

The backend answers with a tool call streamed as vLLM (many chunks), Ollama (one chunk)
or the Responses API sends it; the server runs the tool (showing it as a workflow task)
or, for a client tool, stops with a pending call that ``threads.add_client_tool_output``
completes; the backend then receives the call and its output and answers.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from chatkit.types import (
    AssistantMessageItem,
    ClientToolCallItem,
    CustomTask,
    ThreadItemAddedEvent,
    ThreadItemDoneEvent,
    ThreadItemUpdatedEvent,
    UserMessageItem,
    WorkflowItem,
    WorkflowTaskUpdated,
)

from chatkit_server.settings import Settings
from chatkit_server.store import SQLStore
from chatkit_server.testing.client import ChatKitHTTPError, Turn
from chatkit_server.testing.fake_backend import Reply, ToolCall
from chatkit_server.testing.stack import ReplayFactory
from chatkit_server.workflows.file import load_workflow_file
from tests.live import LOCAL, FakeLLM, Live, LiveFactory

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "hand-written"

WORKFLOWS = """
[backends.fake]
base_url = "{url}"
api = "{api}"

[workflows.tools]
backend = "fake"
model = "fake-model"
tools = ["tests.workflows.test_tool_calls:order_status", "tests.workflows.test_tool_calls:explode"]

[[workflows.tools.client_tools]]
name = "pick_color"
description = "Ask the user to pick a color."
[workflows.tools.client_tools.parameters]
type = "object"
properties = {{ hint = {{ type = "string" }} }}
required = ["hint"]
"""

# name: (API, Reply options)
SHAPES: dict[str, tuple[str, dict[str, Any]]] = {
    "vllm": ("chat_completions", {"tool_call_shape": "vllm"}),
    "ollama": ("chat_completions", {"tool_call_shape": "ollama"}),
    "responses": ("responses", {}),
}


def order_status(order_id: str) -> str:
    """Where an order is.

    Args:
        order_id: The order number.
    """
    return f"Order {order_id}: shipped"


def explode(reason: str) -> str:
    """A tool whose author's error message should reach the model.

    Args:
        reason: Why it fails.
    """
    raise ValueError(f"the fuse is wet ({reason})")


@pytest.fixture(params=list(SHAPES))
def shape(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def settings_for(
    tmp_path: Path, live_settings: Settings, fake_llm: FakeLLM
) -> Any:  # a factory: shape name -> Settings
    def make(shape: str) -> Settings:
        path = tmp_path / "workflows.toml"
        path.write_text(WORKFLOWS.format(url=fake_llm.v1, api=SHAPES[shape][0]))
        return live_settings.with_changes(
            workflows_path=path, workflows_file=load_workflow_file(path, {})
        )

    return make


def _call(name: str, arguments: dict[str, Any], shape: str) -> Reply:
    return Reply.tool_call(name, arguments, **SHAPES[shape][1])


def _sent_call_and_output(body: dict[str, Any], api: str) -> tuple[dict[str, Any], Any]:
    """The last tool call the backend was sent and its output, in a neutral shape."""
    if api == "responses":
        call, output = body["input"][-2:]
        assert (call["type"], output["type"]) == ("function_call", "function_call_output")
        assert output["call_id"] == call["call_id"]
        return (
            {"id": call["call_id"], "name": call["name"], "arguments": call["arguments"]},
            output["output"],
        )
    assistant, tool = body["messages"][-2:]
    assert (assistant["role"], tool["role"]) == ("assistant", "tool")
    [tool_call] = assistant["tool_calls"]
    assert tool["tool_call_id"] == tool_call["id"]
    function = tool_call["function"]
    return (
        {"id": tool_call["id"], "name": function["name"], "arguments": function["arguments"]},
        tool["content"],
    )


def _tasks_seen(turn: Turn) -> list[tuple[str, str | None, str | None]]:
    """(status, title, content) of every custom task the browser was sent, in order."""
    seen = []
    for event in turn.events:
        if isinstance(event, ThreadItemAddedEvent) and isinstance(event.item, WorkflowItem):
            tasks = event.item.workflow.tasks
        elif isinstance(event, ThreadItemUpdatedEvent) and isinstance(
            event.update, WorkflowTaskUpdated
        ):
            tasks = [event.update.task]
        else:
            continue
        seen += [
            (task.status_indicator, task.title, task.content)
            for task in tasks
            if isinstance(task, CustomTask)
        ]
    return seen


async def _stored(live: Live, thread_id: str) -> list[Any]:
    return (await live.store.load_thread_items(thread_id, None, 100, "asc", LOCAL)).data


async def test_server_tool_shows_as_a_task_and_its_output_reaches_the_model(
    chatkit_replay: ReplayFactory, shape: str
) -> None:
    # Replayed from tests/fixtures/hand-written/tools-<shape> (scripts/record-fixtures).
    api = SHAPES[shape][0]
    workflows = WORKFLOWS.format(url="{backend_url}", api=api)
    async with chatkit_replay(FIXTURES / f"tools-{shape}", workflows=workflows) as stack:
        turn = await stack.client.create_thread("Where is order 42?")

        assert turn.errors == []
        assert turn.assistant_text == "Order 42 has shipped."
        # Loading while it runs, then complete with the result, in one workflow item.
        assert _tasks_seen(turn) == [
            ("loading", "Running order_status…", None),
            ("complete", "Ran order_status", "Order 42: shipped"),
        ]
        [workflow] = [item for item in turn.done_items if isinstance(item, WorkflowItem)]
        [answer] = turn.assistant_messages
        order = [item.id for item in turn.done_items if item.id in (workflow.id, answer.id)]
        assert order == [workflow.id, answer.id]

        # The second request carries the assistant's call and the tool's output.
        assert stack.replay is not None
        first, second = (request.body for request in stack.replay.received)
        call, output = _sent_call_and_output(second, api)
        assert (call["name"], call["arguments"]) == ("order_status", '{"order_id": "42"}')
        assert output == "Order 42: shipped"
        if shape == "vllm":
            assert call["id"].startswith("chatcmpl-tool-")
        elif shape == "ollama":
            assert call["id"].startswith("call_")
            assert len(call["id"]) == 13
        assert first["tools"]

        # Stored done, with the finished task, and the thread takes the next turn.
        store: SQLStore = stack.app.state.chatkit.store
        stored = (await store.load_thread_items(turn.thread_id, None, 100, "asc", LOCAL)).data
        assert [type(item) for item in stored] == [
            UserMessageItem,
            WorkflowItem,
            AssistantMessageItem,
        ]
        [task] = stored[1].workflow.tasks
        assert (task.status_indicator, task.content) == ("complete", "Order 42: shipped")
        again = await stack.client.add_message(turn.thread_id, "Thanks")
        assert (again.errors, again.assistant_text) == ([], "You're welcome.")


async def test_parallel_tool_calls_get_one_task_each(
    start_live: LiveFactory, settings_for: Any, fake_llm: FakeLLM
) -> None:
    calls = [
        ToolCall("order_status", '{"order_id": "1"}'),
        ToolCall("order_status", '{"order_id": "2"}'),
    ]
    fake_llm.backend.script(Reply(tool_calls=calls), Reply.text("Both shipped."))
    async with start_live(settings_for("vllm")) as live:
        turn = await live.client.create_thread("Orders 1 and 2?")

    assert turn.errors == []
    [workflow] = [item for item in turn.done_items if isinstance(item, WorkflowItem)]
    assert [(t.status_indicator, t.content) for t in workflow.workflow.tasks] == [  # type: ignore[union-attr]
        ("complete", "Order 1: shipped"),
        ("complete", "Order 2: shipped"),
    ]
    tool_messages = [
        m for m in fake_llm.backend.requests[-1].body["messages"] if m["role"] == "tool"
    ]
    assert [m["content"] for m in tool_messages] == ["Order 1: shipped", "Order 2: shipped"]


async def test_a_tool_call_streamed_slowly_in_many_chunks_is_run(
    start_live: LiveFactory, settings_for: Any, fake_llm: FakeLLM, shape: str
) -> None:
    # Each chunk comes in a read of its own, and each read waits until the
    # answer's consumer took what the last one gave (chatkit_server.pace):
    # the call is still read to its end, run, and answered.
    slow = Reply.tool_call(
        "order_status",
        {"order_id": "7"},
        tokens=["Let ", "me ", "look."],
        delay=0.03,
        **SHAPES[shape][1],
    )
    fake_llm.backend.script(slow, Reply.text("It shipped."))
    async with start_live(settings_for(shape)) as live:
        turn = await asyncio.wait_for(live.client.create_thread("Order 7?"), 20)

    assert turn.errors == []
    assert "It shipped." in turn.assistant_text
    [workflow] = [item for item in turn.done_items if isinstance(item, WorkflowItem)]
    [task] = workflow.workflow.tasks
    assert (task.status_indicator, task.content) == ("complete", "Order 7: shipped")  # type: ignore[union-attr]


async def test_a_failing_tool_is_a_message_to_the_model_and_the_answer_goes_on(
    start_live: LiveFactory, settings_for: Any, fake_llm: FakeLLM
) -> None:
    fake_llm.backend.script(
        _call("explode", {"reason": "rain"}, "vllm"), Reply.text("Sorry, that did not work.")
    )
    async with start_live(settings_for("vllm")) as live:
        turn = await live.client.create_thread("Try it")

    assert turn.errors == []
    assert turn.assistant_text == "Sorry, that did not work."
    assert _tasks_seen(turn)[-1] == ("complete", "explode failed", "ValueError")
    _, output = _sent_call_and_output(fake_llm.backend.requests[-1].body, "chat_completions")
    assert "'explode' failed with ValueError: the fuse is wet (rain)" in output
    assert "Traceback" not in output
    assert "test_tool_calls.py" not in output


async def test_client_tool_waits_for_the_browser_across_a_restart(
    start_live: LiveFactory, settings_for: Any, fake_llm: FakeLLM, shape: str
) -> None:
    api = SHAPES[shape][0]
    settings = settings_for(shape)
    fake_llm.backend.script(_call("pick_color", {"hint": "warm"}, shape))
    async with start_live(settings) as live:
        turn = await live.client.create_thread("Pick a color for me")

        assert turn.errors == []
        call = turn.done_items[-1]
        assert isinstance(call, ClientToolCallItem)
        assert (call.status, call.name, call.arguments) == (
            "pending",
            "pick_color",
            {"hint": "warm"},
        )
        # A fresh store id on both APIs, never the backend's (trap 1).
        assert call.id.startswith("tc_")
        assert call.id not in fake_llm.backend.streams[0].item_ids
        assert len(fake_llm.backend.requests) == 1  # the run stopped at the call
        stored = await _stored(live, turn.thread_id)
        assert stored[-1] == call

    fake_llm.backend.script(Reply.text("Red it is."))
    async with start_live(settings) as live:
        resumed = await live.client.stream(
            "threads.add_client_tool_output", thread_id=turn.thread_id, result={"color": "red"}
        )
        assert resumed.errors == []
        assert resumed.assistant_text == "Red it is."

        sent, output = _sent_call_and_output(fake_llm.backend.requests[-1].body, api)
        assert sent == {"id": call.call_id, "name": "pick_color", "arguments": '{"hint": "warm"}'}
        assert output == '{"color": "red"}'
        stored = await _stored(live, turn.thread_id)
        assert [item.type for item in stored] == [
            "user_message",
            "client_tool_call",
            "assistant_message",
        ]
        assert (stored[1].id, stored[1].status, stored[1].output) == (
            call.id,
            "completed",
            {"color": "red"},
        )

        with pytest.raises(ChatKitHTTPError) as again:
            await live.client.stream(
                "threads.add_client_tool_output", thread_id=turn.thread_id, result={}
            )
        assert again.value.status_code == 409


async def test_client_tool_after_a_server_tool_keeps_one_workflow(
    start_live: LiveFactory, settings_for: Any, fake_llm: FakeLLM
) -> None:
    fake_llm.backend.script(
        _call("order_status", {"order_id": "9"}, "ollama"),
        _call("pick_color", {"hint": "for order 9"}, "ollama"),
        Reply.text("Blue, then."),
    )
    async with start_live(settings_for("ollama")) as live:
        turn = await live.client.create_thread("Color for order 9?")
        assert isinstance(turn.done_items[-1], ClientToolCallItem)
        resumed = await live.client.stream(
            "threads.add_client_tool_output", thread_id=turn.thread_id, result="blue"
        )
        stored = await _stored(live, turn.thread_id)

    assert resumed.errors == []
    # The workflow stays open while the browser works, and closes when the answer starts.
    [done] = [
        e.item
        for e in resumed.events
        if isinstance(e, ThreadItemDoneEvent) and isinstance(e.item, WorkflowItem)
    ]
    assert [type(item) for item in stored] == [
        UserMessageItem,
        WorkflowItem,
        ClientToolCallItem,
        AssistantMessageItem,
    ]
    assert stored[1].id == done.id
    assert stored[1].workflow.summary is not None


async def test_tool_choice_can_force_a_client_tool_once(
    start_live: LiveFactory, settings_for: Any, fake_llm: FakeLLM
) -> None:
    fake_llm.backend.script(_call("pick_color", {"hint": "any"}, "vllm"), Reply.text("Green."))
    async with start_live(settings_for("vllm")) as live:
        turn = await live.client.create_thread(
            "Pick one", inference_options={"tool_choice": {"id": "pick_color"}}
        )
        forced = fake_llm.backend.requests[-1].body
        await live.client.stream(
            "threads.add_client_tool_output", thread_id=turn.thread_id, result="green"
        )
        resumed = fake_llm.backend.requests[-1].body

    assert forced["tool_choice"] == {"type": "function", "function": {"name": "pick_color"}}
    # Resuming must not force the tool again, or the model would loop on it.
    assert resumed.get("tool_choice") in (None, "auto")
