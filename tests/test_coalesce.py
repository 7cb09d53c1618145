"""Merging text deltas received together: unit checks, then the whole stack."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from chatkit.types import ThreadItemUpdatedEvent
from hypothesis import given, settings
from hypothesis import strategies as st
from openai._streaming import ServerSentEvent, SSEDecoder

from chatkit_server.coalesce import CoalescingSSEDecoder, merge_text_deltas
from chatkit_server.settings import Settings
from chatkit_server.testing.fake_backend import Reply
from tests.live import LOCAL, FakeLLM, LiveFactory


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


def _sse(value: Any, event: str | None = None) -> ServerSentEvent:
    data = value if isinstance(value, str) else json.dumps(value)
    return ServerSentEvent(event=event, data=data)


def _text(event: ServerSentEvent) -> str:
    delta = event.json()["choices"][0]["delta"]
    return str(delta.get("content") or delta.get("reasoning_content") or "")


def _output_delta(text: str, seq: int, *, content_index: int = 0) -> dict[str, Any]:
    return {
        "type": "response.output_text.delta",
        "item_id": "msg_1",
        "output_index": 0,
        "content_index": content_index,
        "delta": text,
        "logprobs": [],
        "sequence_number": seq,
    }


def test_content_deltas_of_one_read_become_one() -> None:
    role = _chunk("", role="assistant")
    finish = _chunk()
    finish["choices"][0]["finish_reason"] = "stop"
    events = [_sse(role), *(_sse(_chunk(f"t{i} ")) for i in range(5)), _sse(finish), _sse("[DONE]")]

    out = merge_text_deltas(events)

    assert len(out) == 4
    assert out[0].json() == role
    assert _text(out[1]) == "t0 t1 t2 t3 t4 "
    assert json.loads(out[1].data) == out[1].json()
    assert out[2].json() == finish
    assert out[3].data == "[DONE]"


def test_only_plain_text_of_the_same_place_merges() -> None:
    other_choice = _chunk("b")
    other_choice["choices"][0]["index"] = 1
    with_logprobs = _chunk("c")
    with_logprobs["choices"][0]["logprobs"] = {"content": []}
    tool_call = _chunk(tool_calls=[{"index": 0, "function": {"arguments": "{"}}])
    usage = _chunk("d")
    usage["usage"] = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
    reasoning = _chunk(reasoning_content="think")
    events = [
        _sse(_chunk("a")),
        _sse(other_choice),
        _sse(with_logprobs),
        _sse(tool_call),
        _sse(tool_call),
        _sse(usage),
        _sse(reasoning),
        _sse(_chunk("e")),
        _sse("not json"),
    ]

    out = merge_text_deltas(events)

    assert [e.data for e in out] == [e.data for e in events]


def test_reasoning_merges_apart_from_content() -> None:
    events = [_sse(_chunk(reasoning_content=t)) for t in ("I ", "think")]
    events += [_sse(_chunk(t)) for t in ("An", "swer")]

    out = merge_text_deltas(events)

    assert [_text(e) for e in out] == ["I think", "Answer"]
    assert "content" not in out[0].json()["choices"][0]["delta"]


def test_responses_text_deltas_merge_with_the_last_sequence_number() -> None:
    added = {"type": "response.content_part.added", "item_id": "msg_1", "sequence_number": 1}
    events = [
        _sse(added, "response.content_part.added"),
        *(
            _sse(_output_delta(t, seq), "response.output_text.delta")
            for seq, t in enumerate(["a", "b", "c"], start=2)
        ),
        _sse(_output_delta("x", 5, content_index=1), "response.output_text.delta"),
    ]

    out = merge_text_deltas(events)

    assert [e.json().get("delta") for e in out] == [None, "abc", "x"]
    assert out[1].json()["sequence_number"] == 4
    assert out[1].event == "response.output_text.delta"


async def _decode(reads: list[bytes]) -> list[ServerSentEvent]:
    async def source() -> AsyncIterator[bytes]:
        for read in reads:
            yield read

    return [sse async for sse in CoalescingSSEDecoder().aiter_bytes(source())]


async def test_the_decoder_merges_within_a_read_never_across() -> None:
    def frame(text: str) -> bytes:
        return f"data: {json.dumps(_chunk(text))}\n\n".encode()

    out = await _decode([frame("a") + frame("b") + frame("c"), frame("d"), frame("e")[:9]])
    rest = await _decode([frame("a"), frame("b")])

    assert [_text(e) for e in out] == ["abc", "d"]
    assert [_text(e) for e in rest] == ["a", "b"]


async def test_the_decoder_reads_crlf_split_across_reads() -> None:
    body = b'event: response.output_text.delta\r\ndata: {"type": "x"}\r\n\r\ndata: [DONE]\r\n\r\n'
    cut = body.index(b"\r\n") + 1  # between a CR and its LF

    out = await _decode([body[:cut], body[cut:]])

    assert [(e.event, e.data) for e in out] == [
        ("response.output_text.delta", '{"type": "x"}'),
        (None, "[DONE]"),
    ]


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
    b"data: [DONE]\n\n",
]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(_WIRE_EVENTS), st.sampled_from(["join", "after", "inside"])),
        min_size=1,
        max_size=12,
    )
)
async def test_the_decoder_reads_what_the_client_decoder_reads(
    events: list[tuple[bytes, str]],
) -> None:
    """Whole plain events take a fast path; every stream still decodes as the client's would.

    Each event joins the next one in the same read, ends its read, or is cut
    inside (its halves in two reads).
    """
    reads: list[bytes] = []
    current = b""
    for event, cut in events:
        wire = event if event.endswith((b"\n\n", b"\r\r")) else event + b"\n\n"
        if cut == "inside":
            reads.append(current + wire[: len(wire) // 2])
            current = wire[len(wire) // 2 :]
        else:
            current += wire
            if cut == "after":
                reads.append(current)
                current = b""
    reads.append(current)
    reads = [read for read in reads if read]

    async def chunks() -> AsyncIterator[bytes]:
        for read in reads:
            yield read

    ours = [e async for e in CoalescingSSEDecoder().aiter_bytes(chunks())]
    theirs = [e async for e in SSEDecoder().aiter_bytes(chunks())]

    def texts(decoded: list[ServerSentEvent]) -> list[tuple[Any, ...]]:
        # Merging joins neighbouring text of one place (a merged event keeps
        # the first one's id, which nothing reads): compare the joined text.
        out: list[tuple[Any, ...]] = []
        for event in decoded:
            value = event.json() if event.data.startswith("{") else event.data
            place: tuple[Any, ...] | None = None
            if isinstance(value, dict) and value.get("object") == "chat.completion.chunk":
                ((field, text),) = value["choices"][0]["delta"].items()
                place = ("chat", event.event, field)
            elif isinstance(value, dict) and value.get("type") == "response.output_text.delta":
                text = value["delta"]
                place = ("responses", event.event, value["item_id"], value["content_index"])
            if place is not None:
                if out and out[-1][0] == place:
                    out[-1] = (place, out[-1][1] + text)
                else:
                    out.append((place, text))
                continue
            out.append(("other", event.event, value, event.id))
        return out

    assert texts(ours) == texts(theirs)


async def test_the_decoder_ends_an_unterminated_last_line() -> None:
    out = await _decode([b"data: [DONE]\n", b"\n", b"data: tail"])

    assert [e.data for e in out] == ["[DONE]"]


@pytest.mark.parametrize("api", ["chat_completions", "responses"])
async def test_a_burst_from_the_backend_streams_as_fewer_deltas_with_all_the_text(
    start_live: LiveFactory, live_settings: Settings, fake_llm: FakeLLM, api: str
) -> None:
    reply = Reply.count(60, burst=True)
    fake_llm.backend.script(reply, Reply.text("Next."))

    async with start_live(live_settings.with_changes(llm_api=api)) as live:
        turn = await live.client.create_thread("Hello")
        deltas = [e for e in turn.events if isinstance(e, ThreadItemUpdatedEvent)]
        stored = await live.store.load_thread_items(turn.thread_id, None, 10, "asc", LOCAL)
        # The thread goes on as usual after a merged answer.
        second = await live.client.add_message(turn.thread_id, "More")

    # Sixty tokens in one write reach the browser in a few deltas, not sixty
    # (the socket may still split the write).
    assert 1 <= len(deltas) < 10
    assert turn.assistant_text == reply.content
    assert stored.data[-1].content[0].text == reply.content  # type: ignore[union-attr]
    assert second.assistant_text == "Next."
