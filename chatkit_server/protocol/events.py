"""Fix-ups between the Agents SDK's stream and what ChatKit needs.

* **Item ids**: the SDK names every assistant message from a Chat
  Completions backend ``__fake_id__`` and ChatKit reuses it as the item id,
  so each reply overwrites the previous one. Every backend-chosen id (of an
  assistant message or a client tool call, on either API) is replaced by a
  fresh store id, stable across the item's added, updated and done events.
* **Empty turns**: ``finish_reason`` is optional, so an empty or
  truncated backend stream ends quietly. A turn that produced nothing
  visible becomes an ``error`` event.
* **Backend failures**: a refused connection, an error status, a timeout or
  a stream that drops mid-answer becomes one readable ``error`` event; the
  partial answer streamed so far is completed and therefore persisted, so
  the thread stays consistent and accepts the next message.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Literal

import openai
from agents.exceptions import AgentsException
from agents.models.fake_id import FAKE_RESPONSES_ID
from chatkit.types import (
    AssistantMessageContent,
    AssistantMessageContentPartAdded,
    AssistantMessageContentPartDone,
    AssistantMessageContentPartTextDelta,
    AssistantMessageItem,
    ClientToolCallItem,
    ErrorEvent,
    HiddenContextItem,
    SDKHiddenContextItem,
    ThreadItem,
    ThreadItemAddedEvent,
    ThreadItemDoneEvent,
    ThreadItemRemovedEvent,
    ThreadItemReplacedEvent,
    ThreadItemUpdatedEvent,
    ThreadStreamEvent,
    WorkflowItem,
)

from chatkit_server.errors import StoreError, causes

__all__ = [
    "EMPTY_ANSWER_MESSAGE",
    "StreamFixer",
    "backend_error_message",
]

logger = logging.getLogger(__name__)

EMPTY_ANSWER_MESSAGE = "The model returned an empty answer. Please try again."

IdKind = Literal["message", "tool_call"]


def backend_error_message(exc: BaseException, *, mid_answer: bool = False) -> str:
    """A user-facing sentence for a failed model call; never the raw exception text.

    Args:
        exc: What the model call raised.
        mid_answer: Whether part of the answer had already arrived (a broken
            connection then means the backend dropped the stream).
    """
    if isinstance(exc, openai.APITimeoutError) and not _refused(exc):
        return "The model backend did not answer in time. Please try again."
    if isinstance(exc, openai.APIConnectionError) and not mid_answer:
        return "The model backend could not be reached. Please try again later."
    if isinstance(exc, openai.APIStatusError):
        return _context_overflow_message(exc) or (
            f"The model backend answered with an error (HTTP {exc.status_code})."
        )
    if isinstance(exc, openai.APIError):
        return "The model backend stopped in the middle of the answer. Please try again."
    if isinstance(exc, StoreError):
        return "The server could not save the conversation. Please try again."
    if isinstance(exc, AgentsException):
        return "The model's answer could not be processed. Please try again."
    return "An error occurred while generating the answer."


# How the common servers say that a request does not fit the model's context:
# llama-server "the request exceeds the available context size" (type
# exceed_context_size_error), vLLM and OpenAI "maximum context length is N
# tokens" (OpenAI's code context_length_exceeded).
_CONTEXT_OVERFLOW = re.compile(
    r"context size|context length|context window|context_length_exceeded|exceed_context_size"
)
_CONTEXT_TOKENS = re.compile(r"maximum context length is (\d+)")
_REQUESTED_TOKENS = re.compile(r"(?:requested|resulted in|has|have) (\d+)(?: input)? tokens")


def _context_overflow_message(exc: openai.APIStatusError) -> str | None:
    """The user-facing sentence for a message too long for the model, else None.

    Reads the error body the backend sent (not ``str(exc)``, which may carry
    more than the client should see); only its numbers reach the message.
    """
    body = exc.body
    fields: Mapping[str, Any] = body if isinstance(body, Mapping) else {}
    detail = str(fields.get("message") or (body if isinstance(body, str) else ""))
    marks = (
        f"{detail} {fields.get('code') or exc.code or ''} {fields.get('type') or exc.type or ''}"
    )
    if not _CONTEXT_OVERFLOW.search(marks.lower()):
        return None
    # llama-server sends the numbers as fields; vLLM and OpenAI in the sentence.
    tokens, context = fields.get("n_prompt_tokens"), fields.get("n_ctx")
    if not isinstance(context, int) and (match := _CONTEXT_TOKENS.search(detail)):
        context = int(match.group(1))
    if not isinstance(tokens, int) and (match := _REQUESTED_TOKENS.search(detail)):
        tokens = int(match.group(1))
    size = ""
    if isinstance(tokens, int) and isinstance(context, int):
        size = f" ({tokens} tokens; the model reads at most {context})"
    elif isinstance(context, int):
        size = f" (the model reads at most {context} tokens)"
    return (
        f"The message is too long for the model{size}. "
        "Please send a shorter message, or start a new thread."
    )


def _refused(exc: BaseException) -> bool:
    """Whether a socket error that is not a timeout underlies ``exc``.

    The openai client's aiohttp transport reports every connection error, a
    refused connection included, as a connect *timeout*; the socket error it
    wraps tells the two apart.
    """
    return any(
        isinstance(cause, OSError) and not isinstance(cause, TimeoutError) for cause in causes(exc)
    )


class StreamFixer:
    """Rewrites one run's ChatKit events; one instance per response.

    Args:
        new_id: Makes a fresh store id for an item of the given kind.
    """

    def __init__(self, new_id: Callable[[IdKind], str]) -> None:
        self._new_id = new_id
        self._ids: dict[str, str] = {}
        # Assistant messages that were added but are not done yet, by our id,
        # with the text received so far: completed on a backend failure.
        self._pending: dict[str, AssistantMessageItem] = {}
        self.produced_output = False
        # The last completed assistant message: usage is recorded against it.
        self.last_answer_id: str | None = None
        self._started = False

    async def fix(
        self, events: AsyncIterator[ThreadStreamEvent]
    ) -> AsyncIterator[ThreadStreamEvent]:
        """Yield ``events`` with ids remapped, ending with an error event on failure.

        Cancellation is not caught here: it propagates so that the caller
        can stop the run and the ChatKit server can persist pending items.
        """
        try:
            async for event in events:
                self._started = True
                yield self._rewrite(event)
        except Exception as exc:
            if isinstance(exc, StoreError):
                logger.error("store failed while streaming an answer: %s", exc)
            else:
                logger.warning("model backend failed: %s: %s", type(exc).__name__, exc)
            mid_answer = self._started
            for item in self._take_pending():
                yield ThreadItemDoneEvent(item=item)
            message = backend_error_message(exc, mid_answer=mid_answer)
            yield ErrorEvent(code="custom", message=message, allow_retry=True)
            return
        for item in self._take_pending():
            # An item the SDK never finished (e.g. a truncated stream): keep
            # what the user already saw.
            yield ThreadItemDoneEvent(item=item)
        if not self.produced_output:
            logger.warning("model backend returned an empty turn")
            yield ErrorEvent(code="custom", message=EMPTY_ANSWER_MESSAGE, allow_retry=True)

    def _rewrite(self, event: ThreadStreamEvent) -> ThreadStreamEvent:
        if isinstance(event, ThreadItemAddedEvent):
            item = self._with_new_id(event.item)
            if isinstance(item, AssistantMessageItem):
                self._pending[item.id] = item.model_copy(deep=True)
            return ThreadItemAddedEvent(item=item)
        if isinstance(event, ThreadItemUpdatedEvent):
            item_id = self._ids.get(event.item_id, event.item_id)
            self._track_update(item_id, event)
            return ThreadItemUpdatedEvent(item_id=item_id, update=event.update)
        if isinstance(event, ThreadItemDoneEvent):
            item = self._with_new_id(event.item, done=True)
            self._pending.pop(item.id, None)
            if isinstance(item, AssistantMessageItem) and not _has_text(item):
                # Persisting an empty assistant turn would send empty content
                # to the model on every later turn; take the bubble away.
                return ThreadItemRemovedEvent(item_id=item.id)
            self._note_output(item)
            if isinstance(item, AssistantMessageItem):
                self.last_answer_id = item.id
            return ThreadItemDoneEvent(item=item)
        if isinstance(event, ThreadItemReplacedEvent):
            item = self._with_new_id(event.item)
            self._note_output(item)
            return ThreadItemReplacedEvent(item=item)
        return event

    def _with_new_id(self, item: ThreadItem, *, done: bool = False) -> ThreadItem:
        # Assistant message and client tool call ids always come from the backend
        # (and collide on Chat Completions); other items only when the SDK
        # used its fake id.
        if (
            not isinstance(item, (AssistantMessageItem, ClientToolCallItem))
            and item.id != FAKE_RESPONSES_ID
        ):
            return item
        backend_id = item.id
        ours = self._ids.pop(backend_id, None) if done else self._ids.get(backend_id)
        if ours is None:
            kind: IdKind = "message" if isinstance(item, AssistantMessageItem) else "tool_call"
            ours = self._new_id(kind)
            if not done:
                self._ids[backend_id] = ours
        return item.model_copy(update={"id": ours})

    def _track_update(self, item_id: str, event: ThreadItemUpdatedEvent) -> None:
        item = self._pending.get(item_id)
        if item is None:
            return
        update = event.update
        if isinstance(update, (AssistantMessageContentPartAdded, AssistantMessageContentPartDone)):
            _ensure_part(item, update.content_index)
            item.content[update.content_index] = update.content.model_copy(deep=True)
        elif isinstance(update, AssistantMessageContentPartTextDelta):
            _ensure_part(item, update.content_index)
            item.content[update.content_index].text += update.delta

    def _take_pending(self) -> list[AssistantMessageItem]:
        items = [item for item in self._pending.values() if _has_text(item)]
        self._pending.clear()
        for item in items:
            self._note_output(item)
            self.last_answer_id = item.id
        return items

    def _note_output(self, item: ThreadItem) -> None:
        # A reasoning workflow or hidden context alone is not an answer.
        if not isinstance(item, (HiddenContextItem, SDKHiddenContextItem, WorkflowItem)):
            self.produced_output = True


def _has_text(item: AssistantMessageItem) -> bool:
    return any(part.text.strip() for part in item.content)


def _ensure_part(item: AssistantMessageItem, index: int) -> None:
    while len(item.content) <= index:
        item.content.append(AssistantMessageContent(text="", annotations=[]))
