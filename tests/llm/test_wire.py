"""llm/wire.py: decoding server-sent events, merging text deltas, building chunks."""

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
    merge_text_deltas,
    response_event_class,
)


def _chunk(content: str | None = None, **delta: Any) -> dict[str, Any]:
    if content is not None:
        delta["content"] = content
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}],
    }


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


# --- merge_text_deltas -------------------------------------------------------


def test_content_deltas_of_one_read_become_one() -> None:
    role = _chunk("", role="assistant")
    finish = _chunk()
    finish["choices"][0]["finish_reason"] = "stop"
    values = [role, *(_chunk(f"t{i} ") for i in range(5)), finish, "[DONE]"]
    before = copy.deepcopy(values)

    out = merge_text_deltas(values)

    assert len(out) == 3
    # The role chunk's empty content is text too: the run starts there.
    assert _text(out[0]) == "t0 t1 t2 t3 t4 "
    assert out[0]["choices"][0]["delta"]["role"] == "assistant"
    assert {k: v for k, v in out[0].items() if k != "choices"} == {
        k: v for k, v in role.items() if k != "choices"
    }
    assert out[1] is finish
    assert out[2] == "[DONE]"
    assert values == before  # the decoded events are not changed in place


def _unmergeable() -> dict[str, Any]:
    """Chunks with text that must pass as they came, by what keeps each apart."""
    other_choice = _chunk("b")
    other_choice["choices"][0]["index"] = 1
    other_id = _chunk("b")
    other_id["id"] = "chatcmpl-2"
    other_model = _chunk("b")
    other_model["model"] = "other"
    with_logprobs = _chunk("b")
    with_logprobs["choices"][0]["logprobs"] = {"content": []}
    with_usage = _chunk("b")
    with_usage["usage"] = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
    finished = _chunk("b")
    finished["choices"][0]["finish_reason"] = "stop"
    two_choices = _chunk("b")
    two_choices["choices"].append({**two_choices["choices"][0], "index": 1})
    not_a_chunk = _chunk("b")
    not_a_chunk["object"] = "chat.completion"
    not_text = _chunk()
    not_text["choices"][0]["delta"] = {"content": ["b"]}
    return {
        "other-choice": other_choice,
        "other-id": other_id,
        "other-model": other_model,
        "logprobs": with_logprobs,
        "usage": with_usage,
        "finish-reason": finished,
        "two-choices": two_choices,
        "two-text-fields": _chunk("b", reasoning_content="b"),
        "text-and-tool-call": _chunk("b", tool_calls=[{"index": 0, "function": {"name": "f"}}]),
        "tool-call": _chunk(tool_calls=[{"index": 0, "function": {"arguments": "{"}}]),
        "not-text": not_text,
        "role-only": _chunk(role="assistant"),
        "empty-delta": _chunk(content=None, reasoning=None),
        "no-delta": {**_chunk("b"), "choices": [{"index": 0, "delta": "b"}]},
        "not-a-chunk": not_a_chunk,
        "not-json": "not json",
        "list": ["b"],
    }


@pytest.mark.parametrize("value", _unmergeable().values(), ids=_unmergeable().keys())
def test_only_plain_text_of_the_same_place_merges(value: Any) -> None:
    # Each neighbour is plain text of a place the value would join if it merged.
    values = [
        _chunk(reasoning_content="a"),
        _chunk("a"),
        value,
        _chunk("c"),
        _chunk(reasoning_content="c"),
    ]
    values[1]["choices"][0]["delta"]["reasoning_content"] = None  # None fields do not count

    out = merge_text_deltas(copy.deepcopy(values))

    assert out == values


def test_reasoning_and_refusal_merge_apart_from_content() -> None:
    values = [_chunk(reasoning_content=t) for t in ("I ", "think")]
    values += [_chunk(reasoning=t) for t in ("so", "?")]
    values += [_chunk(t) for t in ("An", "swer")]
    values += [_chunk(refusal=t) for t in ("No", "pe")]

    out = merge_text_deltas(values)

    assert [v["choices"][0]["delta"] for v in out] == [
        {"reasoning_content": "I think"},
        {"reasoning": "so?"},
        {"content": "Answer"},
        {"refusal": "Nope"},
    ]


def test_responses_text_deltas_merge_with_the_last_sequence_number() -> None:
    added = {"type": "response.content_part.added", "item_id": "msg_1", "sequence_number": 1}
    values = [
        added,
        *(_output_delta(t, seq) for seq, t in enumerate(["a", "b", "c"], start=2)),
        _output_delta("x", 5, content_index=1),
        _output_delta("y", 6, content_index=1),
        _output_delta("z", 7, item_id="msg_2", content_index=1),
    ]

    out = merge_text_deltas(values)

    assert [v.get("delta") for v in out] == [None, "abc", "xy", "z"]
    assert [v["sequence_number"] for v in out] == [1, 4, 6, 7]
    assert out[1]["type"] == "response.output_text.delta"


def test_responses_reasoning_summary_and_refusal_deltas_merge_by_place() -> None:
    def summary(text: str, seq: int, index: int) -> dict[str, Any]:
        return {
            "type": "response.reasoning_summary_text.delta",
            "item_id": "rs_1",
            "output_index": 0,
            "summary_index": index,
            "delta": text,
            "sequence_number": seq,
        }

    reasoning = "response.reasoning_text.delta"
    values = [
        summary("a", 1, 0),
        summary("b", 2, 0),
        summary("c", 3, 1),
        _output_delta("r", 4, kind=reasoning, item_id="rs_1"),
        _output_delta("s", 5, kind=reasoning, item_id="rs_1"),
        _output_delta("n", 6, kind="response.refusal.delta"),
        _output_delta("o", 7, kind="response.refusal.delta"),
    ]
    with_logprobs = _output_delta("p", 8)
    with_logprobs["logprobs"] = [{"token": "p", "logprob": -0.1}]
    arguments = {
        "type": "response.function_call_arguments.delta",
        "item_id": "fc_1",
        "output_index": 1,
        "delta": "{",
        "sequence_number": 9,
    }
    values += [with_logprobs, _output_delta("q", 9), arguments, {**arguments, "delta": "}"}]

    out = merge_text_deltas(values)

    assert [(v["type"].split(".")[1], v["delta"]) for v in out] == [
        ("reasoning_summary_text", "ab"),
        ("reasoning_summary_text", "c"),
        ("reasoning_text", "rs"),
        ("refusal", "no"),
        ("output_text", "p"),
        ("output_text", "q"),
        ("function_call_arguments", "{"),
        ("function_call_arguments", "}"),
    ]


def test_fewer_than_two_values_are_returned_as_they_are() -> None:
    one = [_chunk("a")]
    assert merge_text_deltas(one) is one
    assert merge_text_deltas([]) == []


# A pool of decoded events: text deltas of a few places, and things that never merge.
_finish = _chunk("f")
_finish["choices"][0]["finish_reason"] = "stop"
_usage = _chunk("u")
_usage["usage"] = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
_second_choice = _chunk("B")
_second_choice["choices"][0]["index"] = 1
_POOL: list[Any] = [
    _chunk("a"),
    _chunk("b"),
    _chunk(reasoning_content="r"),
    _chunk(reasoning="s"),
    _second_choice,
    _chunk(tool_calls=[{"index": 0, "function": {"arguments": "{}"}}]),
    _finish,
    _usage,
    _output_delta("x", 1),
    _output_delta("y", 2, content_index=1),
    {"type": "response.output_item.done", "sequence_number": 3},
    "not json",
]


def _place(value: Any) -> tuple[Any, ...] | None:
    """Where a value's text goes, if it is a mergeable text delta of the pool."""
    if not isinstance(value, dict):
        return None
    if value.get("object") == "chat.completion.chunk":
        choice = value["choices"][0]
        if value.get("usage") or choice["finish_reason"] is not None or len(choice["delta"]) != 1:
            return None
        ((field, text),) = choice["delta"].items()
        return ("chat", choice["index"], field) if isinstance(text, str) else None
    if value.get("type") == "response.output_text.delta":
        return ("responses", value["item_id"], value["content_index"])
    return None


def _delta_text(value: dict[str, Any]) -> str:
    if value.get("object") == "chat.completion.chunk":
        ((_field, text),) = value["choices"][0]["delta"].items()
        return str(text)
    return str(value["delta"])


def _joined(values: list[Any]) -> list[Any]:
    out: list[Any] = []
    for value in values:
        place = _place(value)
        if place is None:
            out.append(("other", value))
        elif out and out[-1][0] == place:
            out[-1] = (place, out[-1][1] + _delta_text(value))
        else:
            out.append((place, _delta_text(value)))
    return out


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(range(len(_POOL))), max_size=20))
def test_merging_keeps_every_text_and_event_and_leaves_no_neighbours(
    picks: list[int],
) -> None:
    values = [copy.deepcopy(_POOL[i]) for i in picks]

    out = merge_text_deltas(values)

    assert _joined(out) == _joined(values)
    places = [_place(value) for value in out]
    assert all(a is None or a != b for a, b in zip(places, places[1:], strict=False))


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
