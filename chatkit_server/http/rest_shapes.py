"""The JSON shapes of the REST API: ChatKit SDK objects as OpenAI's ChatKit API shows them.

The shapes are those of ``openai.types.beta.chatkit`` (what
``openai.AsyncOpenAI().beta.chatkit`` parses). Threads map one to one:
``ThreadMetadata`` + its owner -> ``chatkit.thread``, with ``status`` kept
(``active``, or ``locked``/``closed`` with their ``reason``).

Thread items (``chatkit.types.ThreadItem``) -> ``chatkit.thread_item``:

========================  ==============================================================
SDK item                  REST item
========================  ==============================================================
``UserMessageItem``       ``chatkit.user_message``: ``input_text`` parts (a tag becomes
                          its text), then the quoted text as a ``quoted_text`` part;
                          attachments as ``ChatKitAttachment``; ``inference_options``
                          (``null`` when neither model nor tool choice is set)
``AssistantMessageItem``  ``chatkit.assistant_message``: ``output_text`` parts; URL and
                          file annotations (entity annotations have no REST form and
                          are left out)
``WidgetItem``            ``chatkit.widget``: the widget as a JSON string, as the
                          ChatKit server sends it (aliases, no nulls)
``ClientToolCallItem``    ``chatkit.client_tool_call``: arguments and output as JSON
                          strings; ``pending`` -> ``in_progress``
``TaskItem``              ``chatkit.task``: a thought -> ``thought``, anything else ->
                          ``custom``; ``heading`` = the task's title, ``summary`` = its
                          content (a search: its queries)
``WorkflowItem``          ``chatkit.task_group``: its tasks, each mapped as above
========================  ==============================================================

Items with no REST equivalent are not listed at all (the store filters them
out, see :data:`REST_ITEM_TYPES`, so pages stay full): end of turn, hidden
context (both kinds), generated images and structured inputs.

Times are Unix seconds. The SDK stamps threads and items with a naive
``datetime.now()``, local time, so a naive value is read as local time.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Final, TypeVar

from chatkit.types import (
    Annotation,
    AssistantMessageItem,
    Attachment,
    ClientToolCallItem,
    CustomTask,
    FileSource,
    ImageAttachment,
    SearchTask,
    Task,
    TaskItem,
    ThoughtTask,
    ThreadItem,
    URLSource,
    UserMessageItem,
    WidgetItem,
    WorkflowItem,
)

from chatkit_server.store.admin import FeedbackVote, OwnedThread
from chatkit_server.store.usage import UsageTotals

__all__ = [
    "REST_ITEM_TYPES",
    "feedback_object",
    "item_object",
    "list_object",
    "thread_object",
    "unix_seconds",
    "usage_object",
]

REST_ITEM_TYPES: Final = frozenset(
    {"user_message", "assistant_message", "widget", "client_tool_call", "task", "workflow"}
)
"""The SDK item types (``ThreadItem.type``) the REST API lists."""

_T = TypeVar("_T")


def unix_seconds(value: datetime) -> int:
    """``value`` as Unix seconds; a naive value is local time (the SDK's ``datetime.now()``)."""
    return int(value.timestamp())


def list_object(
    entries: Sequence[_T], has_more: bool, present: Callable[[_T], dict[str, Any]]
) -> dict[str, Any]:
    """A page as the ``openai`` client's cursor pages expect it (it pages with ``last_id``)."""
    data = [present(entry) for entry in entries]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }


def thread_object(owned: OwnedThread) -> dict[str, Any]:
    """A ``chatkit.thread``."""
    thread = owned.thread
    status: dict[str, Any] = {"type": thread.status.type}
    if thread.status.type != "active":
        status["reason"] = thread.status.reason
    return {
        "id": thread.id,
        "object": "chatkit.thread",
        "created_at": unix_seconds(thread.created_at),
        "status": status,
        "title": thread.title,
        "user": owned.user_id,
    }


def item_object(item: ThreadItem) -> dict[str, Any]:
    """A ``chatkit.thread_item`` of one of the :data:`REST_ITEM_TYPES`.

    Raises:
        ValueError: The item has no REST form (the store should not have listed it).
    """
    base = {
        "id": item.id,
        "object": "chatkit.thread_item",
        "created_at": unix_seconds(item.created_at),
        "thread_id": item.thread_id,
    }
    if isinstance(item, UserMessageItem):
        return {**base, "type": "chatkit.user_message", **_user_message(item)}
    if isinstance(item, AssistantMessageItem):
        content = [
            {
                "type": "output_text",
                "text": part.text,
                "annotations": [
                    shown for shown in map(_annotation, part.annotations) if shown is not None
                ],
            }
            for part in item.content
        ]
        return {**base, "type": "chatkit.assistant_message", "content": content}
    if isinstance(item, WidgetItem):
        widget = item.widget.model_dump_json(by_alias=True, exclude_none=True)
        return {**base, "type": "chatkit.widget", "widget": widget}
    if isinstance(item, ClientToolCallItem):
        return {
            **base,
            "type": "chatkit.client_tool_call",
            "call_id": item.call_id,
            "name": item.name,
            "arguments": json.dumps(item.arguments),
            "output": None if item.output is None else json.dumps(item.output, default=str),
            "status": "completed" if item.status == "completed" else "in_progress",
        }
    if isinstance(item, TaskItem):
        task_type, heading, summary = _task(item.task)
        return {
            **base,
            "type": "chatkit.task",
            "task_type": task_type,
            "heading": heading,
            "summary": summary,
        }
    if isinstance(item, WorkflowItem):
        tasks = []
        for task in item.workflow.tasks:
            task_type, heading, summary = _task(task)
            tasks.append({"type": task_type, "heading": heading, "summary": summary})
        return {**base, "type": "chatkit.task_group", "tasks": tasks}
    raise ValueError(f"{item.type} items have no REST form")


def _user_message(item: UserMessageItem) -> dict[str, Any]:
    # A tag (an @-mention) has no REST form of its own: it reads as its text.
    content = [{"type": "input_text", "text": part.text} for part in item.content]
    if item.quoted_text:
        content.append({"type": "quoted_text", "text": item.quoted_text})
    options = item.inference_options
    inference_options = (
        None
        if options.model is None and options.tool_choice is None
        else {
            "model": options.model,
            "tool_choice": None if options.tool_choice is None else {"id": options.tool_choice.id},
        }
    )
    return {
        "content": content,
        "attachments": [_attachment(attachment) for attachment in item.attachments],
        "inference_options": inference_options,
    }


def _attachment(attachment: Attachment) -> dict[str, Any]:
    preview = attachment.preview_url if isinstance(attachment, ImageAttachment) else None
    return {
        "id": attachment.id,
        "type": attachment.type,
        "name": attachment.name,
        "mime_type": attachment.mime_type,
        "preview_url": None if preview is None else str(preview),
    }


def _annotation(annotation: Annotation) -> dict[str, Any] | None:
    source = annotation.source
    if isinstance(source, URLSource):
        return {"type": "url", "source": {"type": "url", "url": source.url}}
    if isinstance(source, FileSource):
        return {"type": "file", "source": {"type": "file", "filename": source.filename}}
    return None  # an entity: no REST form


def _task(task: Task) -> tuple[str, str | None, str | None]:
    """``(type, heading, summary)`` of a task."""
    if isinstance(task, ThoughtTask):
        return "thought", task.title, task.content
    if isinstance(task, SearchTask):
        return "custom", task.title or task.title_query, ", ".join(task.queries) or None
    if isinstance(task, CustomTask):
        return "custom", task.title, task.content
    return "custom", task.title, None  # a file or image task has only a title


def feedback_object(vote: FeedbackVote) -> dict[str, Any]:
    """A ``chatkit.feedback`` (an extension: the OpenAI API lists no feedback)."""
    return {
        "id": vote.id,
        "object": "chatkit.feedback",
        "thread_id": vote.thread_id,
        "item_id": vote.item_id,
        "user": vote.user_id,
        "kind": vote.kind,
        "created_at": unix_seconds(vote.created_at),
    }


def usage_object(totals: UsageTotals) -> dict[str, Any]:
    """A ``chatkit.usage`` (an extension): token totals of a thread or of a user."""
    return {
        "object": "chatkit.usage",
        "user": totals.user_id,
        "thread_id": totals.thread_id,
        "answers": totals.answers,
        "requests": totals.requests,
        "input_tokens": totals.input_tokens,
        "output_tokens": totals.output_tokens,
        "total_tokens": totals.total_tokens,
    }
