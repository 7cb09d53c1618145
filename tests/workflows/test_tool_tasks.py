"""Server-side tools shown as workflow tasks, and their failures, on a ScriptedModel."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from agents import Agent, FunctionTool, RunConfig, Runner, function_tool
from agents.testing import ScriptedModel, assistant_message, function_call
from chatkit.agents import AgentContext, stream_agent_response
from chatkit.types import (
    AssistantMessageItem,
    CustomTask,
    ProgressUpdateEvent,
    ThreadItemAddedEvent,
    ThreadItemDoneEvent,
    ThreadItemReplacedEvent,
    ThreadItemUpdatedEvent,
    ThreadStreamEvent,
    WorkflowItem,
    WorkflowTaskUpdated,
)

from chatkit_server.context import RequestContext
from chatkit_server.workflows.tool_tasks import (
    ToolProgress,
    show_progress,
    show_tool_tasks,
    summarize,
    tool_error_message,
)
from tests.scripted import chatkit_context, chatkit_events


@function_tool
def order_status(order_id: str) -> str:
    """Where an order is.

    Args:
        order_id: The order number.
    """
    return f"Order {order_id}: shipped"


@function_tool
async def slow_status(order_id: str) -> str:
    """Like order_status, but slow.

    Args:
        order_id: The order number.
    """
    await asyncio.sleep(0.05)
    return f"Order {order_id}: slow"


@function_tool
def explode(reason: str) -> str:
    """Always fails.

    Args:
        reason: Why.
    """
    raise KeyError(f"no fuse for {reason}")


@function_tool(failure_error_function=None)
def fatal(reason: str) -> str:
    """Fails, and its author wants the run to fail too.

    Args:
        reason: Why.
    """
    raise RuntimeError(reason)


@pytest.fixture
async def context(tmp_path: Path) -> AsyncIterator[AgentContext[RequestContext]]:
    async with chatkit_context(tmp_path) as agent_context:
        yield agent_context


def _agent(model: ScriptedModel, *tools: FunctionTool) -> Agent[Any]:
    return Agent(name="test", model=model, tools=[show_progress(tool) for tool in tools])


def _tasks(events: list[ThreadStreamEvent]) -> list[tuple[str, str | None, str | None]]:
    seen = []
    for event in events:
        if isinstance(event, ThreadItemAddedEvent) and isinstance(event.item, WorkflowItem):
            tasks = list(event.item.workflow.tasks)
        elif isinstance(event, ThreadItemUpdatedEvent) and isinstance(
            event.update, WorkflowTaskUpdated
        ):
            tasks = [event.update.task]
        else:
            continue
        seen += [
            (t.status_indicator, t.title, t.content) for t in tasks if isinstance(t, CustomTask)
        ]
    return seen


async def _collect(events: AsyncIterator[ThreadStreamEvent], into: list[ThreadStreamEvent]) -> None:
    async for event in events:
        into.append(event)


def _outputs(model: ScriptedModel, call: int = 1) -> list[str]:
    return [
        str(item["output"])
        for item in model.calls[call].input
        if isinstance(item, dict) and item.get("type") == "function_call_output"
    ]


async def test_a_tool_run_is_a_task_that_the_answer_closes(
    context: AgentContext[RequestContext],
) -> None:
    model = ScriptedModel(
        [
            [function_call("order_status", {"order_id": "7"}, call_id="c1")],
            [assistant_message("It shipped.")],
        ]
    )
    events = await chatkit_events(_agent(model, order_status), context)

    assert _tasks(events) == [
        ("loading", "Running order_status…", None),
        ("complete", "Ran order_status", "Order 7: shipped"),
    ]
    kinds = [
        (type(event).__name__, type(event.item).__name__)
        for event in events
        if isinstance(event, (ThreadItemAddedEvent, ThreadItemDoneEvent))
    ]
    assert kinds == [
        ("ThreadItemAddedEvent", "WorkflowItem"),
        ("ThreadItemDoneEvent", "WorkflowItem"),
        ("ThreadItemAddedEvent", "AssistantMessageItem"),
        ("ThreadItemDoneEvent", "AssistantMessageItem"),
    ]
    done = next(e.item for e in events if isinstance(e, ThreadItemDoneEvent))
    assert isinstance(done, WorkflowItem)
    assert done.workflow.summary is not None
    assert _outputs(model) == ["Order 7: shipped"]
    assert not any(type(event) is ToolProgress for event in events)
    model.assert_complete()


async def test_parallel_calls_finishing_out_of_order_keep_their_tasks(
    context: AgentContext[RequestContext],
) -> None:
    model = ScriptedModel(
        [
            [
                function_call("slow_status", {"order_id": "1"}, call_id="c1"),
                function_call("order_status", {"order_id": "2"}, call_id="c2"),
            ],
            [assistant_message("Both.")],
        ]
    )
    events = await chatkit_events(_agent(model, slow_status, order_status), context)

    [workflow] = [
        e.item
        for e in events
        if isinstance(e, ThreadItemDoneEvent) and isinstance(e.item, WorkflowItem)
    ]
    assert [(t.title, t.content) for t in workflow.workflow.tasks] == [  # type: ignore[union-attr]
        ("Ran slow_status", "Order 1: slow"),
        ("Ran order_status", "Order 2: shipped"),
    ]
    # Every task index the browser was sent names the task it updates.
    updates = [e.update for e in events if isinstance(e, ThreadItemUpdatedEvent)]
    assert sorted(
        (u.task_index, u.task.title)  # type: ignore[union-attr]
        for u in updates
        if isinstance(u, WorkflowTaskUpdated)
    ) == [(0, "Ran slow_status"), (1, "Ran order_status")]


async def test_a_raising_tool_becomes_a_readable_message_and_the_run_goes_on(
    context: AgentContext[RequestContext],
) -> None:
    model = ScriptedModel(
        [
            [function_call("explode", {"reason": "rain"}, call_id="c1")],
            [assistant_message("Sorry.")],
        ]
    )
    events = await chatkit_events(_agent(model, explode), context)

    assert _tasks(events)[-1] == ("complete", "explode failed", "KeyError")
    [output] = _outputs(model)
    assert output.startswith("The tool 'explode' failed with KeyError: 'no fuse for rain'.")
    assert "Traceback" not in output
    assert any(isinstance(e.item, AssistantMessageItem) for e in events if hasattr(e, "item"))


async def test_a_tool_meant_to_be_fatal_still_ends_the_run_with_its_task_closed(
    context: AgentContext[RequestContext],
) -> None:
    model = ScriptedModel([[function_call("fatal", {"reason": "boom"}, call_id="c1")]])
    result = Runner.run_streamed(
        _agent(model, fatal), "hi", context=context, run_config=RunConfig(tracing_disabled=True)
    )
    events: list[ThreadStreamEvent] = []
    with pytest.raises(Exception, match="boom"):
        await _collect(show_tool_tasks(context, stream_agent_response(context, result)), events)

    # What the user saw is closed, so that the store keeps it done and never spinning.
    # The run's failure may overtake the tool's report: then the task did not finish.
    assert isinstance(events[-1], ThreadItemDoneEvent)
    assert isinstance(events[-1].item, WorkflowItem)
    [task] = events[-1].item.workflow.tasks
    assert isinstance(task, CustomTask)
    assert task.status_indicator == "complete"
    assert task.title in ("fatal failed", "fatal did not finish")
    assert context.workflow_item is None


async def test_the_authors_failure_function_is_kept() -> None:
    def polite(ctx: Any, error: Exception) -> str:
        return "please retry later"

    tool = show_progress(function_tool(explode.__wrapped__, failure_error_function=polite))
    model = ScriptedModel(
        [[function_call("explode", {"reason": "x"}, call_id="c1")], [assistant_message("ok")]]
    )
    await Runner.run(
        Agent(name="t", model=model, tools=[tool]),
        "hi",
        run_config=RunConfig(tracing_disabled=True),
    )
    assert _outputs(model) == ["please retry later"]


async def test_without_a_chatkit_context_the_tool_just_runs() -> None:
    model = ScriptedModel(
        [
            [function_call("order_status", {"order_id": "3"}, call_id="c1")],
            [assistant_message("done")],
        ]
    )
    result = await Runner.run(
        _agent(model, order_status), "hi", run_config=RunConfig(tracing_disabled=True)
    )
    assert result.final_output == "done"
    assert _outputs(model) == ["Order 3: shipped"]


def test_wrapping_leaves_the_original_tool_alone() -> None:
    wrapped = show_progress(order_status)
    assert wrapped is not order_status
    assert (wrapped.name, wrapped.params_json_schema) == (
        order_status.name,
        order_status.params_json_schema,
    )
    assert order_status.on_invoke_tool is not wrapped.on_invoke_tool


def _progress(run_id: str, *, finished: bool) -> ToolProgress:
    status = "complete" if finished else "loading"
    task = CustomTask(title=f"{run_id} {status}", status_indicator=status)
    return ToolProgress(
        text=task.title or "", run_id=run_id, tool="t", task=task, finished=finished
    )


async def test_a_report_after_the_workflow_closed_replaces_the_stored_item(
    context: AgentContext[RequestContext],
) -> None:
    async def source() -> AsyncIterator[ThreadStreamEvent]:
        yield _progress("r1", finished=False)
        # What stream_agent_response does when the answer starts first.
        assert context.workflow_item is not None
        closed = context.workflow_item
        context.workflow_item = None
        yield ThreadItemDoneEvent(item=closed)
        yield _progress("r1", finished=True)

    events = [event async for event in show_tool_tasks(context, source())]

    assert isinstance(events[-1], ThreadItemReplacedEvent)
    [task] = events[-1].item.workflow.tasks  # type: ignore[union-attr]
    assert task.status_indicator == "complete"


async def test_a_stream_failure_closes_the_open_workflow(
    context: AgentContext[RequestContext],
) -> None:
    async def source() -> AsyncIterator[ThreadStreamEvent]:
        yield _progress("r1", finished=False)
        raise ConnectionError("backend gone")

    events: list[ThreadStreamEvent] = []
    with pytest.raises(ConnectionError):
        await _collect(show_tool_tasks(context, source()), events)
    assert [type(e) for e in events] == [ThreadItemAddedEvent, ThreadItemDoneEvent]
    [task] = events[-1].item.workflow.tasks  # type: ignore[union-attr]
    assert (task.status_indicator, task.title) == ("complete", "t did not finish")


def test_progress_is_a_plain_progress_update_on_the_wire() -> None:
    sent = _progress("r1", finished=False).model_dump(exclude_none=True)
    assert sent == {"type": "progress_update", "text": "r1 loading"}
    assert ProgressUpdateEvent.model_validate(sent).text == "r1 loading"


def test_summaries_are_one_short_line() -> None:
    assert summarize("a\n  b\tc") == "a b c"
    assert summarize({"temp": 21}) == '{"temp": 21}'
    long = summarize("x" * 500)
    assert len(long) == 120
    assert long.endswith("…")


def test_error_message_names_the_tool_type_and_message_only() -> None:
    class Ctx:
        pass

    try:
        raise ValueError("bad\nzone " + "z" * 1000)
    except ValueError as error:
        message = tool_error_message(Ctx(), error)  # type: ignore[arg-type]
    assert message.startswith("The tool 'tool' failed with ValueError: bad zone zzz")
    assert len(message) < 700
    assert "\n" not in message
