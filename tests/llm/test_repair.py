"""Raw Responses event repairs (reasoning, long thoughts, missing fields), without a network.

Events go through :func:`repair_run` and then ChatKit's own ``stream_agent_response``,
so each test shows what the user would see.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Iterable
from datetime import datetime
from typing import Any, cast

import pytest
from agents import RawResponsesStreamEvent, RunResultStreaming, StreamEvent
from chatkit.agents import AgentContext, stream_agent_response
from chatkit.types import (
    AssistantMessageItem,
    Page,
    ThoughtTask,
    ThreadItem,
    ThreadItemDoneEvent,
    ThreadItemUpdatedEvent,
    ThreadMetadata,
    ThreadStreamEvent,
    WorkflowItem,
    WorkflowTaskAdded,
    WorkflowTaskUpdated,
)
from openai._models import construct_type
from openai.types.responses import (
    ResponseContentPartAddedEvent,
    ResponseOutputItemAddedEvent,
    ResponseOutputItemDoneEvent,
    ResponseOutputMessage,
    ResponseOutputText,
    ResponseReasoningItem,
    ResponseReasoningSummaryTextDeltaEvent,
    ResponseReasoningSummaryTextDoneEvent,
    ResponseReasoningTextDeltaEvent,
    ResponseReasoningTextDoneEvent,
    ResponseStreamEvent,
    ResponseTextDeltaEvent,
    ResponseTextDoneEvent,
)
from openai.types.responses.response_reasoning_item import Content, Summary

from chatkit_server.llm.repair import RepairedRun, repair_run

NOW = datetime(2026, 1, 1)
RS, MSG = "rs_1", "msg_backend"


class _Run:
    """Stands in for RunResultStreaming: what stream_agent_response reads of a run."""

    def __init__(self, events: Iterable[ResponseStreamEvent], error: Exception | None = None):
        self.events, self.error = list(events), error
        self.cancelled = False

    async def stream_events(self) -> AsyncIterator[StreamEvent]:
        for event in self.events:
            yield RawResponsesStreamEvent(data=event)
            # One event at a time, as a backend streams while the server keeps up.
            await asyncio.sleep(0)
        if self.error is not None:
            raise self.error

    def cancel(self) -> None:
        self.cancelled = True


class _Store:
    """The three store calls stream_agent_response makes."""

    def __init__(self) -> None:
        self._ids = itertools.count()

    def generate_item_id(self, kind: str, thread: ThreadMetadata, context: Any) -> str:
        return f"{kind}_{next(self._ids)}"

    async def load_thread_items(self, *args: Any) -> Page[ThreadItem]:
        return Page()

    async def add_thread_item(self, *args: Any) -> None:
        pass


def _run(events: Iterable[ResponseStreamEvent], error: Exception | None = None) -> Any:
    return cast(RunResultStreaming, _Run(events, error))


async def _repaired(events: Iterable[ResponseStreamEvent]) -> list[Any]:
    run = RepairedRun(_run(events))
    return [
        event.data
        async for event in run.stream_events()
        if isinstance(event, RawResponsesStreamEvent)
    ]


async def _chatkit(
    events: Iterable[ResponseStreamEvent], *, repair: bool = True
) -> list[ThreadStreamEvent]:
    context = AgentContext[None](
        thread=ThreadMetadata(id="thr_1", created_at=NOW),
        store=cast(Any, _Store()),
        request_context=None,
    )
    result = repair_run(_run(events)) if repair else _run(events)
    # ChatKit mutates a streaming thought after yielding it: copy what was sent.
    return [event.model_copy(deep=True) async for event in stream_agent_response(context, result)]


def _thoughts(events: list[ThreadStreamEvent]) -> list[str]:
    done = [e.item for e in events if isinstance(e, ThreadItemDoneEvent)]
    workflows = [item for item in done if isinstance(item, WorkflowItem)]
    return [t.content for w in workflows for t in w.workflow.tasks if isinstance(t, ThoughtTask)]


def _answer(events: list[ThreadStreamEvent]) -> str:
    done = [e.item for e in events if isinstance(e, ThreadItemDoneEvent)]
    messages = [item for item in done if isinstance(item, AssistantMessageItem)]
    return "".join(part.text for message in messages for part in message.content)


def _reasoning_added() -> ResponseOutputItemAddedEvent:
    item = ResponseReasoningItem(id=RS, type="reasoning", summary=[], content=[])
    return ResponseOutputItemAddedEvent(
        type="response.output_item.added", item=item, output_index=0, sequence_number=0
    )


def _summary_delta(text: str, index: int = 0) -> ResponseReasoningSummaryTextDeltaEvent:
    return ResponseReasoningSummaryTextDeltaEvent(
        type="response.reasoning_summary_text.delta",
        delta=text,
        item_id=RS,
        output_index=0,
        summary_index=index,
        sequence_number=1,
    )


def _text_delta(text: str) -> ResponseReasoningTextDeltaEvent:
    return ResponseReasoningTextDeltaEvent(
        type="response.reasoning_text.delta",
        delta=text,
        item_id=RS,
        output_index=0,
        content_index=0,
        sequence_number=1,
    )


def _reasoning_done(thought: str) -> list[ResponseStreamEvent]:
    item = ResponseReasoningItem(
        id=RS, type="reasoning", summary=[], content=[Content(type="reasoning_text", text=thought)]
    )
    return [
        ResponseReasoningTextDoneEvent(
            type="response.reasoning_text.done",
            text=thought,
            item_id=RS,
            output_index=0,
            content_index=0,
            sequence_number=2,
        ),
        ResponseOutputItemDoneEvent(
            type="response.output_item.done", item=item, output_index=0, sequence_number=3
        ),
    ]


def _message(text: str) -> list[ResponseStreamEvent]:
    part = ResponseOutputText(type="output_text", text="", annotations=[], logprobs=[])
    where: dict[str, Any] = {"item_id": MSG, "output_index": 1, "content_index": 0}
    item = ResponseOutputMessage(
        id=MSG, type="message", role="assistant", status="in_progress", content=[]
    )
    done = item.model_copy(
        update={"status": "completed", "content": [part.model_copy(update={"text": text})]}
    )
    return [
        ResponseOutputItemAddedEvent(
            type="response.output_item.added", item=item, output_index=1, sequence_number=4
        ),
        ResponseContentPartAddedEvent(
            type="response.content_part.added", part=part, sequence_number=5, **where
        ),
        ResponseTextDeltaEvent(
            type="response.output_text.delta", delta=text, logprobs=[], sequence_number=6, **where
        ),
        ResponseTextDoneEvent(
            type="response.output_text.done", text=text, logprobs=[], sequence_number=7, **where
        ),
        ResponseOutputItemDoneEvent(
            type="response.output_item.done", item=done, output_index=1, sequence_number=8
        ),
    ]


async def test_reasoning_text_is_shown_as_the_thought() -> None:
    # vLLM's and llama-server's Responses reasoning, and the SDK's mapping of a
    # Chat Completions `reasoning` field.
    events: list[ResponseStreamEvent] = [
        _reasoning_added(),
        _text_delta("Let me "),
        _text_delta("see."),
    ]
    events += _reasoning_done("Let me see.") + _message("Hi.")

    out = await _chatkit(events)

    assert _thoughts(out) == ["Let me see."]
    assert _answer(out) == "Hi."


async def test_a_summary_wins_over_reasoning_text_of_the_same_item() -> None:
    events: list[ResponseStreamEvent] = [
        _reasoning_added(),
        _summary_delta("Short."),
        _text_delta("Long raw chain."),
    ]
    events += [
        ResponseReasoningSummaryTextDoneEvent(
            type="response.reasoning_summary_text.done",
            text="Short.",
            item_id=RS,
            output_index=0,
            summary_index=0,
            sequence_number=2,
        ),
        *_message("Hi."),
    ]

    out = await _chatkit(events)

    assert _thoughts(out) == ["Short."]
    shown = [
        e.update.task.content
        for e in out
        if isinstance(e, ThreadItemUpdatedEvent)
        and isinstance(e.update, (WorkflowTaskAdded, WorkflowTaskUpdated))
        and isinstance(e.update.task, ThoughtTask)
    ]
    assert shown == ["Short.", "Short."]


async def test_long_thought_costs_linear_bytes() -> None:
    deltas = [f"w{i:03d} " for i in range(2000)]
    thought = "".join(deltas)
    events = [_reasoning_added(), *(_summary_delta(d) for d in deltas), *_message("Done.")]

    repaired = await _repaired(events)
    out = await _chatkit(events)

    merged = [e for e in repaired if isinstance(e, ResponseReasoningSummaryTextDeltaEvent)]
    assert "".join(e.delta for e in merged) == thought
    assert 5 < len(merged) < 100
    assert _thoughts(out) == [thought]
    total = sum(len(event.model_dump_json()) for event in out)
    # Re-sent per delta, the thought alone would be about 2000 * 11 kB / 2 = 11 MB.
    assert total < 8 * len(thought) + 10_000


async def test_a_held_back_thought_is_sent_before_anything_else() -> None:
    events = [_reasoning_added(), _summary_delta("a" * 100), _summary_delta("b"), *_message("Hi")]

    repaired = await _repaired(events)

    kinds = [(e.type, getattr(e, "delta", None)) for e in repaired[:4]]
    assert kinds == [
        ("response.output_item.added", None),
        ("response.reasoning_summary_text.delta", "a" * 100),
        ("response.reasoning_summary_text.delta", "b"),
        ("response.output_item.added", None),
    ]


async def test_a_new_item_with_a_reused_id_streams_its_thought_at_once() -> None:
    # Chat Completions: every model call of a run (one per tool round) names its
    # reasoning __fake_id__; the second thought must not wait on the first's size.
    first = [_reasoning_added(), _summary_delta("a" * 1000), *_message("Calling.")]
    second = [_reasoning_added(), _summary_delta("c"), _summary_delta("d")]

    repaired = await _repaired(first + second)

    deltas = [e.delta for e in repaired if isinstance(e, ResponseReasoningSummaryTextDeltaEvent)]
    assert deltas == ["a" * 1000, "c", "d"]


async def test_a_held_back_thought_is_sent_before_a_failure() -> None:
    run = RepairedRun(
        _run([_reasoning_added(), _summary_delta("a" * 100), _summary_delta("b")], RuntimeError())
    )
    seen: list[Any] = []

    async def drain() -> None:
        async for event in run.stream_events():
            assert isinstance(event, RawResponsesStreamEvent)
            seen.append(event.data)

    with pytest.raises(RuntimeError):
        await drain()
    assert "".join(getattr(e, "delta", "") for e in seen) == "a" * 100 + "b"


def _llama_server_events() -> list[ResponseStreamEvent]:
    # As llama-server sends them (tools/server/server-task.cpp), parsed the way the
    # openai client parses a stream: constructed, not validated.
    raw: list[dict[str, Any]] = [
        {"type": "response.created", "response": {"id": "r", "object": "response"}},
        {
            "type": "response.output_item.added",
            "item": {"id": RS, "summary": [], "type": "reasoning", "content": []},
        },
        {"type": "response.reasoning_text.delta", "delta": "Hm, ", "item_id": RS},
        {"type": "response.reasoning_text.delta", "delta": "yes.", "item_id": RS},
        {
            "type": "response.output_item.added",
            "item": {
                "content": [],
                "id": MSG,
                "role": "assistant",
                "status": "in_progress",
                "type": "message",
            },
        },
        {
            "type": "response.content_part.added",
            "item_id": MSG,
            "part": {"type": "output_text", "text": ""},
        },
        {"type": "response.output_text.delta", "item_id": MSG, "delta": "Hello"},
        {"type": "response.output_text.done", "item_id": MSG, "text": "Hello"},
        {
            "type": "response.output_item.done",
            "item": {
                "type": "message",
                "status": "completed",
                "id": MSG,
                "role": "assistant",
                "content": [{"type": "output_text", "text": "Hello", "annotations": []}],
            },
        },
    ]
    return [
        cast(ResponseStreamEvent, construct_type(value=e, type_=ResponseStreamEvent)) for e in raw
    ]


async def test_fields_llama_server_leaves_out_are_filled() -> None:
    repaired = await _repaired(_llama_server_events())

    for event in repaired[1:]:
        # Everything but the response stubs now validates strictly.
        type(event).model_validate(event.model_dump())
    assert [e.sequence_number for e in repaired] == list(range(len(repaired)))
    added = [e for e in repaired if isinstance(e, ResponseOutputItemAddedEvent)]
    assert [e.output_index for e in added] == [0, 1]
    assert isinstance(repaired[-1], ResponseOutputItemDoneEvent)
    assert repaired[-1].output_index == 1


async def test_llama_server_stream_reaches_chatkit_whole() -> None:
    out = await _chatkit(_llama_server_events())

    assert _thoughts(out) == ["Hm, yes."]
    assert _answer(out) == "Hello"


async def test_well_formed_events_pass_unchanged() -> None:
    events = [_reasoning_added(), _summary_delta("x"), *_message("Hi.")]
    events[0] = events[0].model_copy(
        update={
            "item": ResponseReasoningItem(
                id=RS, type="reasoning", summary=[Summary(type="summary_text", text="x")]
            )
        }
    )

    repaired = await _repaired(events)

    assert all(new is old for new, old in zip(repaired, events, strict=True))


def test_the_repaired_run_is_still_the_run() -> None:
    run = _Run([])
    repaired = repair_run(cast(RunResultStreaming, run))

    repaired.cancel()

    assert run.cancelled
    with pytest.raises(ValueError, match="positive"):
        RepairedRun(cast(RunResultStreaming, run), thought_growth=0)


class _BurstRun(_Run):
    """A run whose events all arrive at once, as when the consumer fell behind."""

    async def stream_events(self) -> AsyncIterator[StreamEvent]:
        for event in self.events:
            yield RawResponsesStreamEvent(data=event)
        if self.error is not None:
            raise self.error


def _text(delta: str, seq: int) -> Any:
    return ResponseTextDeltaEvent.model_construct(
        type="response.output_text.delta",
        item_id=MSG,
        output_index=0,
        content_index=0,
        delta=delta,
        logprobs=[],
        sequence_number=seq,
    )


async def test_a_text_delta_missing_a_field_is_still_filled() -> None:
    # Built leniently, as the client builds what a backend sent: no
    # sequence_number and no content_index, but logprobs present.
    raw = {
        "type": "response.output_text.delta",
        "item_id": MSG,
        "output_index": 0,
        "delta": "Hi",
        "logprobs": [],
    }
    event = cast(ResponseStreamEvent, construct_type(value=raw, type_=ResponseStreamEvent))
    assert isinstance(event, ResponseTextDeltaEvent)

    (repaired,) = await _repaired([event])

    assert repaired is not event
    assert isinstance(repaired, ResponseTextDeltaEvent)
    assert (repaired.sequence_number, repaired.content_index) == (0, 0)
    ResponseTextDeltaEvent.model_validate(repaired.model_dump())


async def test_text_deltas_pass_one_by_one() -> None:
    run = RepairedRun(_run([_text("a", 1), _text("b", 2), _text("c", 3)]))
    out = [event.data.delta async for event in run.stream_events()]
    assert out == ["a", "b", "c"]


async def test_text_that_arrived_before_a_failure_comes_before_it() -> None:
    failure = RuntimeError("backend dropped")
    run = RepairedRun(cast(RunResultStreaming, _BurstRun([_text("a", 1), _text("b", 2)], failure)))
    seen: list[str] = []

    async def read() -> None:
        async for event in run.stream_events():
            seen.append(event.data.delta)

    with pytest.raises(RuntimeError, match="backend dropped"):
        await read()
    assert seen == ["a", "b"]


async def test_leaving_early_stops_reading_the_run() -> None:
    reading: list[str] = []

    class Endless(_Run):
        async def stream_events(self) -> AsyncIterator[StreamEvent]:
            try:
                while True:
                    yield RawResponsesStreamEvent(data=_text("x", 1))
                    await asyncio.sleep(0.001)
            finally:
                reading.append("stopped")

    events = RepairedRun(cast(RunResultStreaming, Endless([]))).stream_events()
    async with contextlib.aclosing(events):
        await anext(events)
    for _ in range(10):
        await asyncio.sleep(0)
    assert reading == ["stopped"]


async def test_a_run_cancelled_from_inside_does_not_leave_the_consumer_waiting() -> None:
    class Cancelled(_Run):
        async def stream_events(self) -> AsyncIterator[StreamEvent]:
            yield RawResponsesStreamEvent(data=_text("a", 1))
            await asyncio.sleep(0)
            raise asyncio.CancelledError

    events = RepairedRun(cast(RunResultStreaming, Cancelled([]))).stream_events()
    seen = [await anext(events)]
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(anext(events), 5)
    assert [event.data.delta for event in seen] == ["a"]
