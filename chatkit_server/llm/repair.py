"""Repairs of the Agents SDK's raw Responses events before ChatKit converts them.

``chatkit.agents.stream_agent_response`` reads nothing of a run but
``result.stream_events()``, and turns the raw Responses events in it into
ChatKit events. :func:`repair_run` wraps a run so that those raw events are
repaired first:

* **Reasoning in either field**: ChatKit shows only
  ``response.reasoning_summary_text.*`` events as a thought. The SDK emits them
  for Chat Completions ``reasoning_content`` (llama-server, DeepSeek) but turns
  ``reasoning`` (vLLM, Ollama) into ``response.reasoning_text.*`` events, which
  is also what vLLM and llama-server send on the Responses API. Reasoning text
  is mapped to summary text, unless the item already streams a summary.
* **Linear thoughts**: ChatKit re-sends the whole thought with every
  summary delta, so a thought of N characters costs O(N²) bytes. Consecutive
  deltas are coalesced and only passed on once the held-back text has grown by
  :data:`THOUGHT_UPDATE_GROWTH` of what was already sent: the sizes of the
  updates grow geometrically, so all of them add up to at most
  ``(1 + 1/growth) * N`` characters.
* **Missing fields**: llama-server's Responses stream omits
  ``sequence_number``, ``output_index``, ``content_index``, ``logprobs`` and a
  content part's ``annotations``. The openai client builds events without
  validation, so these arrive as ``None``; the SDK's run loop never reads them,
  but ChatKit's converter does and raises. Required fields that are ``None``
  get a default here.
* **Caught up**: the SDK reads the backend in a task of its own and queues
  every event without bound. A task here takes the events as they come,
  and tells the run's :class:`~chatkit_server.pace.Pace` each time the
  consumer has taken all of them, which is when the backend may be read
  again. (Text read together is merged before the SDK sees it, in
  :mod:`chatkit_server.llm.wire`; the thought throttle above holds reasoning
  back for bytes, not for speed.)

This layer is the narrowest that works: the openai client parses llama-server's
events without complaint and the SDK consumes them without reading the missing
fields (a transport hook patching SSE JSON would have to re-encode every event),
while the reasoning mapping needs the typed events.
"""

from __future__ import annotations

import asyncio
import functools
import types
import typing
from collections.abc import AsyncIterator
from typing import Any, Literal, cast

from agents import RawResponsesStreamEvent, RunResultStreaming, StreamEvent
from openai.types.responses import (
    ResponseOutputItemAddedEvent,
    ResponseOutputItemDoneEvent,
    ResponseReasoningSummaryTextDeltaEvent,
    ResponseReasoningSummaryTextDoneEvent,
    ResponseReasoningTextDeltaEvent,
    ResponseReasoningTextDoneEvent,
    ResponseStreamEvent,
    ResponseTextDeltaEvent,
)
from pydantic import BaseModel

from chatkit_server.pace import Pace

__all__ = ["THOUGHT_UPDATE_GROWTH", "RepairedRun", "repair_run"]

THOUGHT_UPDATE_GROWTH = 0.25
"""A thought update is passed on once the held-back text reaches this share of the sent text.

Smaller means more frequent updates of a long thought and more bytes: at most
``(1 + 1/growth)`` times the thought's length in all.
"""

_Source = Literal["summary", "text"]
_SUMMARY_EVENTS = (ResponseReasoningSummaryTextDeltaEvent, ResponseReasoningSummaryTextDoneEvent)
_TEXT_EVENTS = (ResponseReasoningTextDeltaEvent, ResponseReasoningTextDoneEvent)
# Raw events whose text the user sees as it streams (an answer's or a thought's).
_SHOWN_TEXT = (
    ResponseTextDeltaEvent,
    ResponseReasoningSummaryTextDeltaEvent,
    ResponseReasoningTextDeltaEvent,
)


def repair_run(
    result: RunResultStreaming,
    *,
    thought_growth: float = THOUGHT_UPDATE_GROWTH,
    pace: Pace | None = None,
) -> RunResultStreaming:
    """``result`` with its ``stream_events()`` repaired, for ``stream_agent_response``.

    Everything else (``cancel()``, ``final_output`` ...) is the wrapped run's.

    Args:
        result: The SDK's streaming run.
        thought_growth: See :data:`THOUGHT_UPDATE_GROWTH`.
        pace: The run's pace (the one its model calls were given): told each
            time every event so far has been taken.
    """
    # A proxy, not a subclass: RunResultStreaming is a dataclass full of run
    # state that must stay in one place, the run that the caller cancels.
    return cast(RunResultStreaming, RepairedRun(result, thought_growth=thought_growth, pace=pace))


class RepairedRun:
    """A streaming run whose raw Responses events are repaired; one per run.

    Args:
        result: The SDK's streaming run; other attributes are looked up on it.
        thought_growth: See :data:`THOUGHT_UPDATE_GROWTH`.
        pace: See :func:`repair_run`.
    """

    def __init__(
        self,
        result: RunResultStreaming,
        *,
        thought_growth: float = THOUGHT_UPDATE_GROWTH,
        pace: Pace | None = None,
    ) -> None:
        if thought_growth <= 0:
            raise ValueError("thought_growth must be positive")
        self.result = result
        self._pace = pace
        self._fields = _FieldFiller()
        self._reasoning_source: dict[str, _Source] = {}
        self._thoughts = _ThoughtCoalescer(thought_growth)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.result, name)

    async def stream_events(self) -> AsyncIterator[StreamEvent]:
        """The run's events, with the raw Responses events repaired."""
        thoughts = self._thoughts
        try:
            async for event in self._taken():
                if not isinstance(event, RawResponsesStreamEvent):
                    for held in thoughts.flush():
                        yield RawResponsesStreamEvent(data=held)
                    yield event
                    continue
                data = self._as_summary(self._fields.fill(event.data))
                repaired = thoughts.feed(data)
                if isinstance(data, ResponseOutputItemAddedEvent):
                    # Chat Completions names every item of every model call
                    # __fake_id__: a new item starts its reasoning afresh.
                    self._reasoning_source.pop(data.item.id or "", None)
                    thoughts.forget(data.item.id or "")
                for fixed in repaired:
                    yield event if fixed is event.data else RawResponsesStreamEvent(data=fixed)
        except Exception:
            # The thought seen so far still reaches the user before the error.
            for held in thoughts.flush():
                yield RawResponsesStreamEvent(data=held)
            raise
        for held in thoughts.flush():
            yield RawResponsesStreamEvent(data=held)

    async def _taken(self) -> AsyncIterator[StreamEvent]:
        """The run's events, taken by a task as they come (see the module notes).

        The pace is told the consumer caught up whenever every event taken so
        far has been passed on.
        """
        queue: asyncio.Queue[tuple[StreamEvent | None, BaseException | None]] = asyncio.Queue()

        pace = self._pace

        async def take() -> None:
            try:
                async for event in self.result.stream_events():
                    queue.put_nowait((event, None))
                    if pace is not None:
                        pace.queued(
                            text=isinstance(event, RawResponsesStreamEvent)
                            and isinstance(event.data, _SHOWN_TEXT)
                        )
            except Exception as exc:
                queue.put_nowait((None, exc))
                return
            except BaseException as exc:
                # Cancelled from inside the run: the consumer must not wait forever.
                queue.put_nowait((None, exc))
                raise
            queue.put_nowait((None, None))

        taker = asyncio.ensure_future(take())
        try:
            while True:
                if pace is not None and queue.empty():
                    # Everything read so far has been taken: the backend
                    # reader may read again (see chatkit_server.pace).
                    pace.caught_up()
                event, failure = await queue.get()
                if event is None:
                    if failure is not None:
                        raise failure
                    return
                yield event
        finally:
            # Cancelling the taker cancels its read of the run (the SDK then
            # stops the run); it is not awaited, so a consumer that is being
            # cancelled is not held up.
            taker.cancel()
            taker.add_done_callback(_retrieve)

    def _as_summary(self, data: ResponseStreamEvent) -> ResponseStreamEvent:
        if isinstance(data, _SUMMARY_EVENTS + _TEXT_EVENTS):
            # An item that streams both (a summary of its own reasoning text) is
            # shown by its summary, whichever comes first: both would interleave.
            source: _Source = "summary" if isinstance(data, _SUMMARY_EVENTS) else "text"
            self._reasoning_source.setdefault(data.item_id, source)
        if self._reasoning_source.get(getattr(data, "item_id", None) or "") != "text":
            return data
        if isinstance(data, ResponseReasoningTextDeltaEvent):
            return ResponseReasoningSummaryTextDeltaEvent.model_construct(
                type="response.reasoning_summary_text.delta",
                delta=data.delta,
                item_id=data.item_id,
                output_index=data.output_index,
                summary_index=data.content_index,
                sequence_number=data.sequence_number,
            )
        if isinstance(data, ResponseReasoningTextDoneEvent):
            return ResponseReasoningSummaryTextDoneEvent.model_construct(
                type="response.reasoning_summary_text.done",
                text=data.text,
                item_id=data.item_id,
                output_index=data.output_index,
                summary_index=data.content_index,
                sequence_number=data.sequence_number,
            )
        return data


def _retrieve(task: asyncio.Future[None]) -> None:
    # A failure after the consumer left has no one to go to.
    if not task.cancelled():
        task.exception()


class _ThoughtCoalescer:
    """Holds back reasoning summary deltas so a thought costs O(N) bytes, not O(N²)."""

    def __init__(self, growth: float) -> None:
        self.growth = growth
        self._held: ResponseReasoningSummaryTextDeltaEvent | None = None
        self._text: list[str] = []
        self._held_chars = 0
        self._sent_chars: dict[tuple[str, int], int] = {}

    def feed(self, data: ResponseStreamEvent) -> list[ResponseStreamEvent]:
        """The events to pass on now, in order, for the next raw event."""
        if isinstance(data, ResponseReasoningSummaryTextDeltaEvent):
            key = (data.item_id, data.summary_index)
            out = self.flush() if self._key != key else []
            self._held = data
            self._text.append(data.delta)
            self._held_chars += len(data.delta)
            if self._held_chars >= self.growth * self._sent_chars.get(key, 0):
                out += self.flush()
            return out
        if isinstance(data, ResponseReasoningSummaryTextDoneEvent) and self._key == (
            data.item_id,
            data.summary_index,
        ):
            # The done event carries the whole text, which ChatKit shows as is.
            self._drop()
            return [data]
        return [*self.flush(), data]

    def flush(self) -> list[ResponseStreamEvent]:
        """The held-back text as one delta event, if any."""
        held = self._held
        if held is None:
            return []
        key = (held.item_id, held.summary_index)
        self._sent_chars[key] = self._sent_chars.get(key, 0) + self._held_chars
        merged = (
            held if len(self._text) == 1 else held.model_copy(update={"delta": "".join(self._text)})
        )
        self._drop()
        return [merged]

    def forget(self, item_id: str) -> None:
        """Count the item's next thought from zero (a new item with a reused id)."""
        for key in [key for key in self._sent_chars if key[0] == item_id]:
            del self._sent_chars[key]

    @property
    def _key(self) -> tuple[str, int] | None:
        return None if self._held is None else (self._held.item_id, self._held.summary_index)

    def _drop(self) -> None:
        self._held, self._text, self._held_chars = None, [], 0


class _FieldFiller:
    """Gives required fields that a backend left out a sensible value."""

    def __init__(self) -> None:
        self._next_sequence = 0
        self._output_index: dict[str, int] = {}

    def fill(self, data: ResponseStreamEvent) -> ResponseStreamEvent:
        """``data``, or a copy of it with its missing required fields filled."""
        if data.type == "response.created":
            # Each model call of a run (one per tool round) numbers its output anew.
            self._output_index.clear()
        sequence = getattr(data, "sequence_number", None)
        if isinstance(sequence, int):
            self._next_sequence = sequence + 1
        if isinstance(data, (ResponseOutputItemAddedEvent, ResponseOutputItemDoneEvent)):
            item_id = getattr(data.item, "id", None) or ""
            index: int | None = data.output_index
            if index is None:
                index = self._output_index.get(item_id, len(self._output_index))
            self._output_index.setdefault(item_id, index)
        elif (
            type(data) is ResponseTextDeltaEvent
            and getattr(data, "logprobs", None) == []
            and all(getattr(data, name, None) is not None for name in _required(type(data)))
        ):
            # The SDK's own text delta (one per token from Chat Completions):
            # every required field there and no logprobs, so no nested model
            # to walk and nothing to fill.
            return data
        return cast(ResponseStreamEvent, self._fill_model(data, data))

    def _fill_model(self, model: BaseModel, event: BaseModel) -> BaseModel:
        updates: dict[str, Any] = {}
        for name, required, is_list in _fields(type(model)):
            value = getattr(model, name, None)
            if value is None:
                if required:
                    default = self._default(name, is_list, event)
                    if default is not None:
                        updates[name] = default
            elif isinstance(value, BaseModel):
                fixed = self._fill_model(value, event)
                if fixed is not value:
                    updates[name] = fixed
            elif isinstance(value, list) and any(isinstance(v, BaseModel) for v in value):
                items = [
                    self._fill_model(v, event) if isinstance(v, BaseModel) else v for v in value
                ]
                if any(new is not old for new, old in zip(items, value, strict=True)):
                    updates[name] = items
        return model.model_copy(update=updates) if updates else model

    def _default(self, name: str, is_list: bool, event: BaseModel) -> Any:
        if name == "sequence_number":
            self._next_sequence += 1
            return self._next_sequence - 1
        if name == "output_index":
            item = getattr(event, "item", None)
            item_id = getattr(item, "id", None) or getattr(event, "item_id", None) or ""
            return self._output_index.get(item_id, 0)
        if name in ("content_index", "summary_index"):
            # llama-server sends one part per item, the first.
            return 0
        return [] if is_list else None


@functools.cache
def _fields(model: type[BaseModel]) -> tuple[tuple[str, bool, bool], ...]:
    """(name, required, is a list) of each field; cached, as this runs for every delta."""
    return tuple(
        (
            name,
            not _allows_none(field.annotation),
            typing.get_origin(_unwrap(field.annotation)) is list,
        )
        for name, field in model.model_fields.items()
    )


@functools.cache
def _required(model: type[BaseModel]) -> tuple[str, ...]:
    """The names of the required fields of ``model`` (see :func:`_fields`)."""
    return tuple(name for name, required, _is_list in _fields(model) if required)


def _unwrap(annotation: Any) -> Any:
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation


def _allows_none(annotation: Any) -> bool:
    annotation = _unwrap(annotation)
    if annotation is None or annotation is type(None) or annotation is Any:
        return True
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return any(_allows_none(arg) for arg in typing.get_args(annotation))
    return False
