"""Server-side function tools, shown to the user while they run.

Every function tool of a workflow is wrapped by :func:`show_progress`. When the model
calls it, the user sees a ChatKit workflow task "Running current_time…" with a loading
indicator, which becomes "Ran current_time" with a one-line summary of the result (or
"current_time failed") when the tool returns. The tasks sit in the answer's workflow
item, the one a reasoning model's thought also goes to; ``stream_agent_response``
closes it when the answer text starts, so it is stored done and shows after a reload.

A workflow task rather than a ``progress_update`` event: a progress update is one
transient line that the next event replaces and that is never stored, so it cannot show
that two tools ran, nor how each ended, nor survive a reload.

The tool does not edit the workflow item itself (ChatKit's ``add_workflow_task``): tools
run in the run's task, while the events that hold the live workflow item are serialized
later, in the response task, so they would be sent with whatever a tool changed in
between (a task complete before it was shown loading, or the task of a parallel call
twice). A tool only reports a :class:`ToolProgress` through the ``AgentContext`` queue;
:func:`show_tool_tasks`, which reads the response stream after ``stream_agent_response``,
places each report in the workflow in stream order. A report that never reaches it is
an ordinary ``progress_update`` event.

A tool that raises does not end the answer: the model receives
:func:`tool_error_message` (the exception's type and message, as the tool's author wrote
them, never a traceback) and goes on; the user sees the task marked as failed, with the
exception's type only.
"""

from __future__ import annotations

import asyncio
import copy
import inspect
import json
import logging
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from agents import FunctionTool, RunContextWrapper, default_tool_error_function
from agents.tool import (
    ToolErrorFunction,
    resolve_function_tool_failure_error_function,
    set_function_tool_failure_error_function,
)
from agents.tool_context import ToolContext
from chatkit.agents import AgentContext
from chatkit.types import (
    ClientToolCallItem,
    CustomTask,
    DurationSummary,
    ProgressUpdateEvent,
    ThreadItemAddedEvent,
    ThreadItemDoneEvent,
    ThreadItemReplacedEvent,
    ThreadItemUpdatedEvent,
    ThreadStreamEvent,
    Workflow,
    WorkflowItem,
    WorkflowTaskAdded,
    WorkflowTaskUpdated,
)
from pydantic import BaseModel, Field

from chatkit_server.workflows.client_tools import PendingClientToolCall

__all__ = [
    "ERROR_DETAIL_CHARS",
    "SUMMARY_CHARS",
    "ToolProgress",
    "show_progress",
    "show_tool_tasks",
    "summarize",
    "tool_error_message",
]

logger = logging.getLogger(__name__)

SUMMARY_CHARS = 120
"""Longest result summary shown under a finished tool's task."""
ERROR_DETAIL_CHARS = 500
"""Longest exception message passed on to the model."""


class ToolProgress(ProgressUpdateEvent):
    """A tool's start or end, on its way from the tool to :func:`show_tool_tasks`.

    Serialized on its own (no :func:`show_tool_tasks` in the stream) it is a plain
    ``progress_update`` event: the extra fields are never sent.
    """

    run_id: str = Field(exclude=True)
    tool: str = Field(exclude=True)
    task: CustomTask = Field(exclude=True)
    finished: bool = Field(default=False, exclude=True)


def tool_error_message(ctx: RunContextWrapper[Any], error: Exception) -> str:
    """What the model reads when a tool raised: which tool, the exception type and message.

    The message is the one the tool's author wrote; tracebacks and chained causes stay
    in the server log.
    """
    name = ctx.tool_name if isinstance(ctx, ToolContext) else "tool"
    message = " ".join(str(error).split())
    detail = type(error).__name__ + (f": {_clip(message, ERROR_DETAIL_CHARS)}" if message else "")
    return (
        f"The tool {name!r} failed with {detail}. It produced no result: call it again "
        "with corrected arguments if they caused the error, otherwise tell the user it failed."
    )


def summarize(result: Any, limit: int = SUMMARY_CHARS) -> str:
    """A tool result as one short line for the user."""
    if isinstance(result, str):
        text = result
    elif isinstance(result, BaseModel):
        text = getattr(result, "text", None) or result.model_dump_json(exclude_none=True)
    elif isinstance(result, (dict, list, tuple)):
        text = json.dumps(result, ensure_ascii=False, default=str)
    else:
        text = str(result)
    return _clip(" ".join(text.split()), limit)


def show_progress(tool: FunctionTool) -> FunctionTool:
    """A copy of ``tool`` that reports its runs to ChatKit and survives its own errors.

    Errors: the SDK's default failure message ("An error occurred while running the
    tool") becomes :func:`tool_error_message`; a ``failure_error_function`` the tool's
    author chose is kept, and so is ``None`` (the error then ends the run, as they asked).

    Args:
        tool: A function tool, e.g. from ``agents.function_tool``; it is not modified.
    """
    configured = resolve_function_tool_failure_error_function(tool)
    formatter = tool_error_message if configured is default_tool_error_function else configured
    inner = copy.copy(tool)
    # The wrapper formats errors itself, after it has marked the task as failed.
    set_function_tool_failure_error_function(inner, None)
    outer = copy.copy(tool)
    # Failures the SDK reports on its own (a cancelled call) read the same.
    set_function_tool_failure_error_function(outer, formatter)
    outer.on_invoke_tool = _ProgressInvoker(inner, formatter)
    return outer


class _ProgressInvoker:
    """``on_invoke_tool`` of a :func:`show_progress` tool."""

    def __init__(self, tool: FunctionTool, formatter: ToolErrorFunction | None) -> None:
        self.tool = tool
        self.formatter = formatter

    async def __call__(self, ctx: ToolContext[Any], arguments: str) -> Any:
        name = self.tool.name
        report = _Reporter(ctx.context, name)
        await report.started()
        try:
            result = await self.tool.on_invoke_tool(ctx, arguments)
        except asyncio.CancelledError:
            # Stopped by the user or by the tool's timeout: the task must not spin forever.
            await report.finished(f"{name} did not finish", None, failed=True)
            raise
        except Exception as error:
            logger.warning("tool %s failed", name, exc_info=error)
            await report.finished(f"{name} failed", type(error).__name__, failed=True)
            if self.formatter is None:
                raise
            message = self.formatter(ctx, error)
            return await message if inspect.isawaitable(message) else message
        await report.finished(f"Ran {name}", summarize(result) or None, failed=False)
        return result


class _Reporter:
    """Sends one tool run's progress into the ChatKit stream, if there is one."""

    def __init__(self, context: Any, name: str) -> None:
        self.context = context if isinstance(context, AgentContext) else None
        self.name = name
        self.run_id = uuid.uuid4().hex

    async def started(self) -> None:
        task = CustomTask(title=f"Running {self.name}…", icon="bolt", status_indicator="loading")
        await self._send(task, finished=False)

    async def finished(self, title: str, content: str | None, *, failed: bool) -> None:
        await self._send(_finished_task(title, content, failed=failed), finished=True)

    async def _send(self, task: CustomTask, *, finished: bool) -> None:
        if self.context is None:
            return
        event = ToolProgress(
            text=task.title or "",
            icon=task.icon,
            run_id=self.run_id,
            tool=self.name,
            task=task,
            finished=finished,
        )
        await self.context.stream(event)


async def show_tool_tasks(
    context: AgentContext[Any], events: AsyncIterator[ThreadStreamEvent]
) -> AsyncIterator[ThreadStreamEvent]:
    """Place tool reports in the answer's workflow; give a client tool call its own id.

    Wrap ``stream_agent_response(context, ...)`` with this. When the stream fails, an
    open workflow is closed first, so that what the user saw is stored done.

    Args:
        context: The run's ``AgentContext``: its ``workflow_item`` is the open workflow.
        events: The events of ``stream_agent_response``.
    """
    placed: dict[str, tuple[WorkflowItem, int, str]] = {}
    try:
        async for event in events:
            if isinstance(event, ToolProgress):
                for placed_event in _place(context, placed, event):
                    yield placed_event
            elif isinstance(event, ThreadItemDoneEvent) and isinstance(
                event.item, ClientToolCallItem
            ):
                yield _with_own_call_id(context, event.item)
            else:
                yield event
    except Exception:
        # The run failed: reports still queued are never read, so a running task
        # would spin forever in the stored workflow.
        for item, index, tool in placed.values():
            if item is context.workflow_item:
                item.workflow.tasks[index] = _finished_task(f"{tool} did not finish", None)
        if context.workflow_item is not None:
            yield ThreadItemDoneEvent(item=_closed(context))
        raise


def _place(
    context: AgentContext[Any],
    placed: dict[str, tuple[WorkflowItem, int, str]],
    report: ToolProgress,
) -> list[ThreadStreamEvent]:
    task = report.task
    if not report.finished:
        item = context.workflow_item
        if item is None:
            item = WorkflowItem(
                id=context.generate_id("workflow"),
                # Naive, like every item the ChatKit SDK stamps: it subtracts
                # datetime.now() from this when it closes the workflow.
                created_at=datetime.now(),  # noqa: DTZ005
                workflow=Workflow(type="custom", tasks=[task]),
                thread_id=context.thread.id,
            )
            context.workflow_item = item
            placed[report.run_id] = (item, 0, report.tool)
            # A copy: the item itself changes with the next report, and whoever reads
            # this event must see the task as it is now, loading.
            return [ThreadItemAddedEvent(item=item.model_copy(deep=True))]
        item.workflow.tasks.append(task)
        index = len(item.workflow.tasks) - 1
        placed[report.run_id] = (item, index, report.tool)
        update = WorkflowTaskAdded(task=task, task_index=index)
        return [ThreadItemUpdatedEvent(item_id=item.id, update=update)]
    where = placed.pop(report.run_id, None)
    if where is None:
        return []
    item, index, _ = where
    item.workflow.tasks[index] = task
    if item is context.workflow_item:
        update_done = WorkflowTaskUpdated(task=task, task_index=index)
        return [ThreadItemUpdatedEvent(item_id=item.id, update=update_done)]
    # The workflow was closed (the answer started) before the tool reported back:
    # correct the stored item, which is what the browser shows too.
    return [ThreadItemReplacedEvent(item=item.model_copy(deep=True))]


def _with_own_call_id(context: AgentContext[Any], item: ClientToolCallItem) -> ThreadStreamEvent:
    pending = context.client_tool_call
    if isinstance(pending, PendingClientToolCall) and pending.call_id != item.call_id:
        item = item.model_copy(update={"call_id": pending.call_id})
    return ThreadItemDoneEvent(item=item)


def _finished_task(title: str, content: str | None, *, failed: bool = True) -> CustomTask:
    # ChatKit has no "failed" indicator: a failure is complete, with its own icon.
    icon = "info" if failed else "bolt"
    return CustomTask(title=title, content=content, icon=icon, status_indicator="complete")


def _closed(context: AgentContext[Any]) -> WorkflowItem:
    item = context.workflow_item
    assert item is not None
    context.workflow_item = None
    if item.workflow.summary is None:
        elapsed = datetime.now() - item.created_at  # noqa: DTZ005 - naive, as above
        item.workflow.summary = DurationSummary(duration=int(elapsed.total_seconds()))
    item.workflow.expanded = False
    return item


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"
