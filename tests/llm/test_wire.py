"""llm/wire.py: decoding server-sent events, building chunks."""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator
from typing import Any

import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai._streaming import SSEDecoder as ClientSSEDecoder
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses import (
    ResponseCompletedEvent,
    ResponseFunctionCallArgumentsDeltaEvent,
    ResponseStreamEvent,
    ResponseTextDeltaEvent,
)

from chatkit_server.llm.wire import (
    PROVIDER_DELTA_FIELDS,
    ServerSentEvent,
    SSEDecoder,
    build_model,
    merge_chat_text,
    merge_response_text,
    response_event_class,
)
from tests.llm.chunks import chat_chunk as _chunk


def _text(value: dict[str, Any]) -> str:
    delta = value["choices"][0]["delta"]
    return str(delta.get("content") or delta.get("reasoning_content") or "")


def _output_delta(
    text: str,
    seq: int,
    *,
    kind: str = "response.output_text.delta",
    item_id: str = "msg_1",
    content_index: int = 0,
) -> dict[str, Any]:
    return {
        "type": kind,
        "item_id": item_id,
        "output_index": 0,
        "content_index": content_index,
        "delta": text,
        "logprobs": [],
        "sequence_number": seq,
    }


# --- SSEDecoder ----------------------------------------------------------------


def _decode(reads: list[bytes]) -> list[tuple[str | None, str]]:
    decoder = SSEDecoder()
    events = [event for read in reads for event in decoder.feed(read)]
    events += decoder.finish()
    return [(event.event, event.data) for event in events]


def test_the_decoder_returns_the_events_each_read_completes() -> None:
    decoder = SSEDecoder()

    first = decoder.feed(b"data: a\n\ndata: b\n\ndata: c")
    second = decoder.feed(b"\n")
    third = decoder.feed(b"\n")

    assert [e.data for e in first] == ["a", "b"]
    assert second == []
    assert [e.data for e in third] == ["c"]
    assert decoder.finish() == []


def test_the_decoder_reads_crlf_split_across_reads() -> None:
    body = b'event: response.output_text.delta\r\ndata: {"type": "x"}\r\n\r\ndata: [DONE]\r\n\r\n'
    cut = body.index(b"\r\n") + 1  # between a CR and its LF

    out = _decode([body[:cut], body[cut:]])

    assert out == [("response.output_text.delta", '{"type": "x"}'), (None, "[DONE]")]


def test_the_decoder_reads_fields_comments_and_line_ends_as_the_specification_says() -> None:
    body = (
        b": a comment\n"
        b"id: 7\nretry: 10\nevent: one\ndata: first\ndata:second\n\n"
        b"event: dropped\n\n"  # no data: not dispatched, and its name forgotten
        b"data\n\n"  # a field without a colon has an empty value
        b"data:  two spaces\r\rdata: cr\r\n\r\n"
        b"unknown: field\ndata: last\n\n"
    )

    out = _decode([body])

    assert out == [
        ("one", "first\nsecond"),
        (None, ""),
        (None, " two spaces"),
        (None, "cr"),
        (None, "last"),
    ]


def test_the_decoder_joins_a_character_split_across_reads() -> None:
    body = "data: héllo 👋\n\n".encode()
    cut = body.index("👋".encode()) + 2

    assert _decode([body[:cut], body[cut:]]) == [(None, "héllo 👋")]


def test_the_decoder_dispatches_an_unfinished_last_event_at_the_end() -> None:
    assert _decode([b"data: [DONE]\n", b"\n", b"data: tail"]) == [
        (None, "[DONE]"),
        (None, "tail"),
    ]
    assert _decode([b"data: a\r"]) == [(None, "a")]
    assert _decode([b"event: x\n"]) == []


def test_server_sent_event_repr_names_its_fields() -> None:
    assert repr(ServerSentEvent("d", "e")) == "ServerSentEvent(event='e', data='d')"


_WIRE_EVENTS = [
    b"data: " + json.dumps(_chunk("a")).encode() + b"\n\n",
    b"data: " + json.dumps(_chunk("b")).encode() + b"\n\n",
    b"data: " + json.dumps(_chunk(reasoning_content="r")).encode() + b"\n\n",
    b"event: response.output_text.delta\ndata: " + json.dumps(_output_delta("c", 3)).encode(),
    b": keep-alive comment\n\n",
    b"id: 7\ndata: " + json.dumps(_chunk("d")).encode() + b"\n\n",
    b"data: " + json.dumps(_chunk("e")).encode() + b"\r\n\r\n",
    b"data:" + json.dumps(_chunk("f")).encode() + b"\n\n",
    b"data: " + json.dumps(_chunk("g")).encode() + b"\r\r",
    "data: ünïcødé ✓ 👋\n\n".encode(),
    b"data: line one\ndata: line two\n\n",
    b"retry: 100\nevent: ping\n\n",
    b"data: [DONE]\n\n",
]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(_WIRE_EVENTS), st.sampled_from(["join", "after", "inside"])),
        min_size=1,
        max_size=12,
    ),
    st.integers(min_value=1, max_value=7),
)
async def test_the_decoder_reads_what_the_client_decoder_reads(
    events: list[tuple[bytes, str]], inside: int
) -> None:
    """Whole plain events take a fast path; every stream still decodes as the client's would.

    Each event joins the next one in the same read, ends its read, or is cut
    inside (its parts in two reads).
    """
    reads: list[bytes] = []
    current = b""
    for event, cut in events:
        wire = event if event.endswith((b"\n\n", b"\r\r")) else event + b"\n\n"
        if cut == "inside":
            at = len(wire) * inside // 8
            reads.append(current + wire[:at])
            current = wire[at:]
        else:
            current += wire
            if cut == "after":
                reads.append(current)
                current = b""
    reads.append(current)
    reads = [read for read in reads if read]

    async def source() -> AsyncIterator[bytes]:
        for read in reads:
            yield read

    theirs = [(e.event, e.data) async for e in ClientSSEDecoder().aiter_bytes(source())]
    # The client also dispatches an event that has no data (the specification
    # drops it); nothing reads those.
    theirs = [(event, data) for event, data in theirs if data]

    assert _decode(reads) == theirs


# --- build_model and response_event_class ---------------------------------------

CHUNK: dict[str, Any] = {
    "id": "chatcmpl-1",
    "object": "chat.completion.chunk",
    "created": 1700000000,
    "model": "m",
    "choices": [
        {
            "index": 0,
            "delta": {"role": "assistant", "content": " tok", "reasoning_content": "hm"},
            "finish_reason": None,
        }
    ],
}
COMPLETION: dict[str, Any] = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "m",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "A title"},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
}
TEXT_DELTA: dict[str, Any] = _output_delta(" tok", 5)


@pytest.fixture
def lenient(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The data every lenient ``construct`` of an openai model is given from now on."""
    import openai._models as models

    calls: list[Any] = []
    original = models.BaseModel.construct.__func__  # type: ignore[attr-defined]

    def spy(cls: Any, _fields_set: Any = None, **values: Any) -> Any:
        calls.append(values)
        return original(cls, _fields_set, **values)

    monkeypatch.setattr(models.BaseModel, "construct", classmethod(spy))
    return calls


@pytest.mark.parametrize(
    ("cls", "data"),
    [
        (ChatCompletionChunk, CHUNK),
        (ResponseTextDeltaEvent, TEXT_DELTA),
        (ChatCompletion, COMPLETION),
    ],
    ids=["chat-completions-chunk", "responses-event", "whole-completion"],
)
def test_models_are_validated_not_constructed(
    lenient: list[Any], cls: type[pydantic.BaseModel], data: dict[str, Any]
) -> None:
    from openai._models import construct_type

    built = build_model(cls, copy.deepcopy(data))

    assert lenient == []
    # The object the openai client itself would have built from the same data.
    constructed: Any = construct_type(type_=cls, value=copy.deepcopy(data))
    assert type(built) is type(constructed)
    assert built.model_dump(exclude_none=True) == constructed.model_dump(exclude_none=True)


def test_chunk_deltas_get_the_provider_fields_as_none() -> None:
    built = build_model(ChatCompletionChunk, copy.deepcopy(CHUNK))

    delta = built.choices[0].delta
    assert delta.content == " tok"
    assert delta.reasoning_content == "hm"  # type: ignore[attr-defined]  # sent: kept
    for name in PROVIDER_DELTA_FIELDS:
        if name != "reasoning_content":
            assert getattr(delta, name) is None, name
    # Present as plain attributes: reading one is a lookup, not a failed probe.
    assert set(PROVIDER_DELTA_FIELDS) <= set(type(delta).model_fields) | set(
        delta.__pydantic_extra__ or {}
    )


def test_a_chunk_the_validator_rejects_is_built_leniently(lenient: list[Any]) -> None:
    # Some servers leave out fields the schema requires (here: created, model).
    sloppy = {"id": "x", "object": "chat.completion.chunk", "choices": CHUNK["choices"]}

    built = build_model(ChatCompletionChunk, copy.deepcopy(sloppy))

    assert lenient[0]["id"] == "x"  # the chunk itself, then its parts
    assert isinstance(built, ChatCompletionChunk)
    assert built.model is None
    assert built.choices[0].delta.content == " tok"
    assert built.choices[0].delta.reasoning is None  # type: ignore[attr-defined]


def test_a_responses_event_missing_fields_is_built_leniently(lenient: list[Any]) -> None:
    # llama-server's Responses stream leaves out the sequence number and indexes.
    sloppy = {"type": "response.output_text.delta", "item_id": "msg_1", "delta": "hi"}

    built = build_model(ResponseTextDeltaEvent, dict(sloppy))

    assert len(lenient) == 1
    assert isinstance(built, ResponseTextDeltaEvent)
    assert (built.delta, built.item_id) == ("hi", "msg_1")


def test_response_event_class_names_the_class_of_each_event_type() -> None:
    assert response_event_class("response.output_text.delta") is ResponseTextDeltaEvent
    assert response_event_class("response.completed") is ResponseCompletedEvent
    assert (
        response_event_class("response.function_call_arguments.delta")
        is ResponseFunctionCallArgumentsDeltaEvent
    )
    assert response_event_class("response.no_such_event") is None
    assert response_event_class(None) is None
    assert response_event_class(["response.completed"]) is None


def test_response_event_class_knows_every_stream_event() -> None:
    from typing import get_args

    (union, *_annotations) = get_args(ResponseStreamEvent)
    for cls in get_args(union):
        for kind in get_args(cls.model_fields["type"].annotation):
            assert response_event_class(kind) is cls


# --- Merging the text of one read ---------------------------------------------------------


def _deltas(values: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [value["choices"][0]["delta"] if value["choices"] else value for value in values]


def test_chat_text_read_together_is_one_chunk_per_run() -> None:
    finish = _chunk()
    finish["choices"][0]["finish_reason"] = "stop"
    values = [
        _chunk("", role="assistant"),
        _chunk("He"),
        _chunk("llo"),
        _chunk(reasoning_content="hm"),
        _chunk(reasoning_content="m"),
        _chunk(" there", reasoning=None),  # a field sent as null is no text
        _chunk("!"),
        finish,
    ]

    merged = merge_chat_text(copy.deepcopy(values))

    assert _deltas(merged) == [
        {"role": "assistant", "content": ""},  # a role starts its own run
        {"content": "Hello"},
        {"reasoning_content": "hmm"},
        {"content": " there!", "reasoning": None},
        {},
    ]
    assert merged[-1]["choices"][0]["finish_reason"] == "stop"
    # The text is all there, in order, whatever was merged.
    assert "".join(map(_text, merged)) == "".join(map(_text, values))


@pytest.mark.parametrize(
    "other",
    [
        {"logprobs": {"content": []}},
        {"finish_reason": "length"},
        {"delta": {"content": "x", "tool_calls": [{"index": 0, "id": "c"}]}},
        {"delta": {"content": "x", "role": "assistant"}},
        {"index": 1},
        {"delta": {"content": 7}},
    ],
    ids=["logprobs", "finish", "tool-call", "role", "other-choice", "not-text"],
)
def test_a_chunk_with_more_than_text_is_never_merged(other: dict[str, Any]) -> None:
    odd = _chunk("x")
    odd["choices"][0].update(other)
    values = [_chunk("a"), odd, _chunk("b")]

    assert merge_chat_text(copy.deepcopy(values)) == values


def test_chunks_of_other_answers_or_with_usage_are_not_merged() -> None:
    other = {**_chunk("b"), "id": "chatcmpl-2"}
    usage = {**_chunk("c"), "usage": {"prompt_tokens": 1, "completion_tokens": 1}}
    unknown = {**_chunk("d"), "extension": True}  # a field we do not know to be harmless
    two = _chunk("e")
    two["choices"].append({"index": 1, "delta": {"content": "f"}})
    values = [_chunk("a"), other, usage, unknown, two, _chunk("g")]

    assert merge_chat_text(copy.deepcopy(values)) == values


def test_a_merged_chunk_drops_its_padding_and_builds() -> None:
    values = [{**_chunk("a"), "obfuscation": "xy"}, {**_chunk("b"), "obfuscation": "zw"}]

    (merged,) = merge_chat_text(values)

    assert "obfuscation" not in merged
    built = build_model(ChatCompletionChunk, merged)
    assert built.choices[0].delta.content == "ab"


def test_responses_text_deltas_read_together_are_one_event_per_part() -> None:
    summary = {
        "type": "response.reasoning_summary_text.delta",
        "item_id": "rs_1",
        "output_index": 0,
        "summary_index": 0,
        "delta": "hm",
        "sequence_number": 5,
    }
    values = [
        _output_delta("a", 1),
        _output_delta("b", 2),
        _output_delta("c", 3, content_index=1),
        _output_delta("d", 4, content_index=1),
        summary,
        {**summary, "delta": "m", "sequence_number": 6},
        {**_output_delta("e", 7), "logprobs": [{"token": "e", "logprob": 0.0}]},
        _output_delta("f", 8),
        {"type": "response.output_text.done", "item_id": "msg_1", "sequence_number": 9},
        _output_delta("g", 10),
    ]

    merged = merge_response_text(copy.deepcopy(values))

    assert [(v.get("delta"), v.get("sequence_number")) for v in merged] == [
        ("ab", 2),
        ("cd", 4),
        ("hmm", 6),
        ("e", 7),  # logprobs belong to their own token
        ("f", 8),
        (None, 9),
        ("g", 10),
    ]
    for value in merged:
        built = build_model(response_event_class(value["type"]) or ResponseTextDeltaEvent, value)
        assert built.type == value["type"]
