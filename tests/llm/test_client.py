"""llm/client.py: requests sent through the openai client, streams parsed here."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx2
import openai
import pydantic
import pytest
from chatkit.types import ThreadItemUpdatedEvent
from openai import AsyncOpenAI, DefaultAioHttpClient, Timeout
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses import ResponseCompletedEvent, ResponseTextDeltaEvent

from chatkit_server.llm.client import DRAIN_LIMIT, BackendClient, ChunkStream, _untransformed
from chatkit_server.llm.wire import build_model, merge_chat_text
from chatkit_server.settings import Settings
from chatkit_server.testing.fake_backend import Reply, ToolCall
from tests.live import LOCAL, FakeLLM, LiveFactory
from tests.llm.chunks import chat_chunk as _chunk

HISTORY = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Again"},
]


def _sse(value: Any) -> bytes:
    data = value if isinstance(value, str) else json.dumps(value)
    return f"data: {data}\n\n".encode()


# --- ChunkStream on scripted reads ------------------------------------------------


class _Body:
    """An open streaming response whose reads are scripted (bytes or an exception)."""

    def __init__(self, reads: list[bytes | BaseException]) -> None:
        self.http_response = httpx2.Response(
            200, request=httpx2.Request("POST", "http://backend.test/v1/chat/completions")
        )
        self.reads = list(reads)
        self.taken = 0
        self.closed = 0

    async def iter_bytes(self) -> AsyncIterator[bytes]:
        for read in self.reads:
            self.taken += 1
            if isinstance(read, BaseException):
                raise read
            yield read

    async def close(self) -> None:
        self.closed += 1


def _stream(
    reads: list[bytes | BaseException],
    build: Callable[[dict[str, Any]], pydantic.BaseModel] | None = None,
    merge: Callable[[list[Any]], list[Any]] | None = None,
) -> tuple[ChunkStream, _Body]:
    body = _Body(reads)

    def chunk(data: dict[str, Any]) -> pydantic.BaseModel:
        return build_model(ChatCompletionChunk, data)

    stream = ChunkStream(body, build or chunk, body.close, merge=merge)  # type: ignore[arg-type]
    return stream, body


async def _all(stream: ChunkStream) -> list[Any]:
    return [chunk async for chunk in stream]


async def _read_into(stream: ChunkStream, seen: list[Any]) -> None:
    """Read ``stream`` to the end, keeping each chunk in ``seen`` as it comes."""
    async for chunk in stream:
        seen.append(chunk)


def _contents(chunks: list[Any]) -> list[str | None]:
    return [c.choices[0].delta.content if c.choices else None for c in chunks]


async def test_a_stream_ends_at_done_and_closes() -> None:
    stream, body = _stream(
        [
            _sse(_chunk("a")),
            _sse(_chunk("b")) + _sse("[DONE]") + _sse(_chunk("after")),
            _sse(_chunk("never read")),
        ]
    )

    chunks = await _all(stream)

    assert _contents(chunks) == ["a", "b"]
    # What follows [DONE] is read (so the connection can be reused), never parsed.
    assert body.taken == 3
    assert body.closed == 1


async def test_a_long_body_after_done_is_not_read_to_its_end() -> None:
    tail = [b"x" * DRAIN_LIMIT, b"x" * DRAIN_LIMIT, b"never read"]
    stream, body = _stream([_sse(_chunk("a")) + _sse("[DONE]"), *tail])

    assert _contents(await _all(stream)) == ["a"]
    assert body.taken == 3
    assert body.closed == 1


async def test_a_stream_without_done_ends_with_the_body() -> None:
    stream, body = _stream([_sse(_chunk("a")), b"data: " + json.dumps(_chunk("b")).encode()])

    # The last event counts even without its empty line.
    assert _contents(await _all(stream)) == ["a", "b"]
    assert body.closed == 1


@pytest.mark.parametrize("merge", [None, merge_chat_text], ids=["as-read", "merged"])
async def test_the_text_of_a_read_is_merged_and_everything_else_kept(
    merge: Callable[[list[Any]], list[Any]] | None,
) -> None:
    tool_call = _chunk(
        tool_calls=[{"index": 0, "id": "call_1", "function": {"name": "f", "arguments": "{}"}}]
    )
    finish = _chunk()
    finish["choices"][0]["finish_reason"] = "tool_calls"
    usage = {**_chunk(), "choices": []}
    usage["usage"] = {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    stream, _body = _stream(
        [
            _sse(_chunk("", role="assistant")) + _sse(_chunk("He")) + _sse(_chunk("llo")),
            _sse(_chunk(" there")),
            _sse(_chunk(reasoning_content="hm")) + _sse(_chunk(reasoning_content="m")),
            _sse(tool_call) + _sse(tool_call) + _sse(finish) + _sse(usage) + _sse("[DONE]"),
        ],
        merge=merge,
    )

    chunks = await _all(stream)

    # Text read together is one chunk (the role's chunk stays its own; text
    # of another read is not waited for); anything else keeps its chunk.
    texts = ["", "Hello", " there"] if merge else ["", "He", "llo", " there"]
    thoughts = ["hmm"] if merge else ["hm", "m"]
    assert _contents(chunks)[: len(texts)] == texts
    assert chunks[0].choices[0].delta.role == "assistant"
    rest = chunks[len(texts) :]
    assert [c.choices[0].delta.reasoning_content for c in rest[: len(thoughts)]] == thoughts
    rest = rest[len(thoughts) :]
    calls = [c.choices[0].delta.tool_calls for c in rest[:2]]
    assert [call[0].function.name for call in calls] == ["f", "f"]
    assert rest[2].choices[0].finish_reason == "tool_calls"
    assert rest[3].usage.total_tokens == 7
    assert len(rest) == 4


async def test_an_error_payload_raises_api_error_with_its_message() -> None:
    error = {"error": {"message": "model overloaded", "type": "server_error", "code": None}}
    stream, body = _stream([_sse(_chunk("a")), _sse(error) + _sse(_chunk("b"))])

    seen: list[Any] = []
    with pytest.raises(openai.APIError, match="model overloaded") as raised:
        await _read_into(stream, seen)

    assert _contents(seen) == ["a"]
    assert raised.value.body == error["error"]
    assert body.closed == 1


@pytest.mark.parametrize("error", [{"code": 500}, "boom"])
async def test_an_error_payload_without_a_message_raises_the_clients_message(error: Any) -> None:
    stream, _body = _stream([_sse({"error": error})])

    with pytest.raises(openai.APIError, match="An error occurred during streaming"):
        await _all(stream)


async def test_an_event_that_is_not_a_json_object_raises_api_error() -> None:
    stream, body = _stream([_sse("keep-alive")])

    with pytest.raises(openai.APIError, match="not a JSON object"):
        await _all(stream)
    assert body.closed == 1


@pytest.mark.parametrize(
    ("failure", "expected"),
    [
        (httpx2.ReadError("connection reset"), openai.APIConnectionError),
        (httpx2.RemoteProtocolError("incomplete chunked read"), openai.APIConnectionError),
        (httpx2.ReadTimeout("timed out"), openai.APITimeoutError),
    ],
    ids=["read-error", "protocol-error", "read-timeout"],
)
async def test_a_failed_read_raises_the_clients_error(
    failure: BaseException, expected: type[openai.APIError]
) -> None:
    stream, body = _stream([_sse(_chunk("a")), failure])

    seen: list[Any] = []
    with pytest.raises(expected) as raised:
        await _read_into(stream, seen)

    assert type(raised.value) is expected
    assert raised.value.__cause__ is failure
    assert raised.value.request is body.http_response.request
    assert _contents(seen) == ["a"]
    assert body.closed == 1


async def test_a_chunk_that_fails_validation_is_built_leniently() -> None:
    sloppy = {"id": "x", "object": "chat.completion.chunk", "choices": _chunk("hi")["choices"]}
    stream, _body = _stream([_sse(sloppy)])

    (chunk,) = await _all(stream)

    assert isinstance(chunk, ChatCompletionChunk)
    assert chunk.model is None
    assert chunk.created is None
    assert chunk.choices[0].delta.content == "hi"


async def test_provider_delta_fields_read_as_none() -> None:
    stream, _body = _stream([_sse(_chunk("hi")) + _sse(_chunk(reasoning_content="r"))])

    chunks = await _all(stream)

    delta = chunks[0].choices[0].delta
    for name in ("reasoning", "reasoning_content", "thinking_blocks", "annotations", "audio"):
        assert getattr(delta, name) is None, name
    assert chunks[1].choices[0].delta.reasoning_content == "r"


async def test_aclose_closes_once() -> None:
    stream, body = _stream([_sse(_chunk("a")), _sse(_chunk("b"))])

    first = await anext(stream)
    await stream.aclose()
    await stream.aclose()
    await stream.close()

    assert first.choices[0].delta.content == "a"
    assert body.closed == 1


async def test_aclose_after_the_end_closes_nothing_more() -> None:
    stream, body = _stream([_sse(_chunk("a")) + _sse("[DONE]")])

    await _all(stream)
    await stream.aclose()

    assert body.closed == 1


async def test_a_failing_close_is_not_raised_from_aclose() -> None:
    body = _Body([])

    async def close() -> None:
        body.closed += 1
        raise httpx2.ReadError("already gone")

    stream = ChunkStream(body, lambda data: build_model(ChatCompletionChunk, data), close)  # type: ignore[arg-type]

    await stream.aclose()
    await stream.aclose()
    assert body.closed == 1


# --- BackendClient against the fake backend -----------------------------------------


def _client(fake_llm: FakeLLM, read_timeout: float = 5.0) -> BackendClient:
    timeout = Timeout(read_timeout, connect=2.0)
    return BackendClient(
        base_url=fake_llm.v1,
        api_key="k",
        max_retries=0,
        timeout=timeout,
        http_client=DefaultAioHttpClient(timeout=timeout),
    )


def _plain_client(fake_llm: FakeLLM) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=fake_llm.v1, api_key="k", max_retries=0, timeout=5.0)


async def _chat_stream(client: AsyncOpenAI, **kwargs: Any) -> Any:
    return await client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "Hi"}],
        stream=True,
        **kwargs,
    )


async def test_history_reaches_the_backend_without_the_client_transform(
    fake_llm: FakeLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    import openai.resources.chat.completions.completions as completions

    transformed: list[Any] = []
    original = completions.async_maybe_transform

    async def spy(data: Any, *args: Any, **kwargs: Any) -> Any:
        transformed.append(data)
        return await original(data, *args, **kwargs)

    monkeypatch.setattr(completions, "async_maybe_transform", spy)
    fake_llm.backend.script(Reply.text("Fine."))
    client = _client(fake_llm)

    try:
        stream = await client.chat.completions.create(
            model="m",
            messages=HISTORY,  # type: ignore[arg-type]
            stream=True,
            temperature=0.5,
            top_p=openai.omit,
            stream_options={"include_usage": True},
            extra_body={"top_k": 5, "temperature": 0.25},
        )
        text = "".join(
            [chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices]
        )
    finally:
        await client.close()

    assert text == "Fine."
    # Only what tells the client how to read the answer went through the
    # transform; every body field went as it was built.
    given = {k: v for k, v in transformed[0].items() if not isinstance(v, openai.Omit)}
    assert given == {"messages": [], "stream": True}
    received = fake_llm.backend.requests[-1].body
    assert received == {
        "stream": True,
        "messages": HISTORY,
        "model": "m",
        "temperature": 0.25,  # extra_body wins, as the client would have it
        "stream_options": {"include_usage": True},
        "top_k": 5,
    }


def test_a_field_not_given_is_not_sent_empty() -> None:
    # A Responses call that continues a stored response names no input: it
    # must not gain an empty one on its way to extra_body.
    kwargs = _untransformed({"model": "m", "previous_response_id": "r", "stream": True}, "input")

    assert "input" not in kwargs
    assert kwargs["stream"] is True
    assert kwargs["extra_body"] == {"model": "m", "previous_response_id": "r"}


@pytest.fixture
def lenient(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """What the openai client's lenient constructor is asked to build from now on."""
    import openai._base_client as base_client
    import openai._models as models

    calls: list[Any] = []
    original = models.construct_type

    def spy(**kwargs: Any) -> Any:
        calls.append(kwargs)
        return original(**kwargs)

    monkeypatch.setattr(models, "construct_type", spy)
    monkeypatch.setattr(base_client, "construct_type", spy)
    return calls


async def test_a_whole_completion_is_validated(fake_llm: FakeLLM, lenient: list[Any]) -> None:
    fake_llm.backend.script(Reply.text("A title", usage=(3, 2)))
    client = _client(fake_llm)

    try:
        completion = await client.chat.completions.create(model="m", messages=HISTORY)  # type: ignore[arg-type]
    finally:
        await client.close()

    assert isinstance(completion, ChatCompletion)
    assert completion.choices[0].message.content == "A title"
    assert completion.usage is not None
    assert completion.usage.total_tokens == 5
    assert lenient == []
    assert fake_llm.backend.requests[-1].body["messages"] == HISTORY


async def test_responses_input_is_sent_as_given(fake_llm: FakeLLM) -> None:
    fake_llm.backend.script(Reply.text("Fine."), Reply.text("Streamed."))
    client = _client(fake_llm)
    items = [{"role": "user", "content": "Hi", "type": "message"}]

    try:
        response = await client.responses.create(model="m", input=items)  # type: ignore[arg-type]
        stream = await client.responses.create(model="m", input=items, stream=True)  # type: ignore[arg-type]
        events = [event async for event in stream]
    finally:
        await client.close()

    assert response.output_text == "Fine."
    assert [r.body["input"] for r in fake_llm.backend.requests] == [items, items]
    assert "".join(e.delta for e in events if isinstance(e, ResponseTextDeltaEvent)) == (
        "Streamed."
    )
    assert isinstance(events[-1], ResponseCompletedEvent)


async def test_streamed_chunks_are_validated_not_constructed(
    fake_llm: FakeLLM, lenient: list[Any]
) -> None:
    fake_llm.backend.script(Reply.text("One two three", reasoning=["hm"]), Reply.text("Four"))
    client = _client(fake_llm)

    try:
        chat = [c async for c in await _chat_stream(client)]
        stream = await client.responses.create(model="m", input="Hi", stream=True)
        events = [e async for e in stream]
    finally:
        await client.close()

    assert "".join(c.choices[0].delta.content or "" for c in chat if c.choices) == "One two three"
    assert all(type(c) is ChatCompletionChunk for c in chat)
    assert isinstance(events[-1], ResponseCompletedEvent)
    assert lenient == []


async def test_a_stream_from_llama_server_is_built_leniently(fake_llm: FakeLLM) -> None:
    fake_llm.backend.script(Reply.text("Hi there", responses_shape="llama_server"))
    client = _client(fake_llm)

    try:
        stream = await client.responses.create(model="m", input="Hi", stream=True)
        events = [e async for e in stream]
    finally:
        await client.close()

    deltas = [e for e in events if getattr(e, "type", None) == "response.output_text.delta"]
    assert deltas
    assert all(isinstance(e, ResponseTextDeltaEvent) for e in deltas)
    assert "".join(e.delta for e in deltas) == "Hi there"


async def test_a_dropped_connection_raises_api_connection_error(fake_llm: FakeLLM) -> None:
    fake_llm.backend.script(Reply.count(10, drop_after=3, delay=0.01))
    client = _client(fake_llm)

    seen: list[Any] = []
    try:
        stream = await _chat_stream(client)
        with pytest.raises(openai.APIConnectionError) as raised:
            await _read_into(stream, seen)
    finally:
        await client.close()

    assert type(raised.value) is openai.APIConnectionError
    assert "".join(c.choices[0].delta.content or "" for c in seen) == "tok0 tok1 tok2 "
    assert stream.response.is_closed


async def test_a_stall_past_the_read_timeout_raises_api_timeout_error(fake_llm: FakeLLM) -> None:
    fake_llm.backend.script(Reply.count(5, stall_after=2, stall_seconds=3.0))
    client = _client(fake_llm, read_timeout=0.3)

    seen: list[Any] = []
    try:
        stream = await _chat_stream(client)
        with pytest.raises(openai.APITimeoutError):
            await _read_into(stream, seen)
    finally:
        await client.close()

    assert "".join(c.choices[0].delta.content or "" for c in seen) == "tok0 tok1 "
    record = await fake_llm.backend.wait_for_stream_end()
    assert record.disconnected


async def test_an_error_event_mid_stream_raises_api_error(fake_llm: FakeLLM) -> None:
    fake_llm.backend.script(Reply.text("Some text", error_event="the model crashed"))
    client = _client(fake_llm)

    try:
        stream = await _chat_stream(client)
        with pytest.raises(openai.APIError, match="the model crashed"):
            await asyncio.wait_for(_all(stream), 5)
    finally:
        await client.close()


async def test_aclose_mid_stream_releases_the_connection(fake_llm: FakeLLM) -> None:
    fake_llm.backend.script(Reply.count(500, delay=0.01), Reply.text("Next."))
    client = _client(fake_llm)

    try:
        stream = await _chat_stream(client)
        await anext(stream)
        await stream.aclose()
        await stream.aclose()
        record = await fake_llm.backend.wait_for_stream_end()
        # The client still works after the early close.
        after = [c async for c in await _chat_stream(client)]
    finally:
        await client.close()

    assert stream.response.is_closed
    assert record.disconnected
    assert record.tokens_sent < 500
    assert "".join(c.choices[0].delta.content or "" for c in after if c.choices) == "Next."


# The same reply read by the plain openai client and by ours must say the same.

CHAT_REPLIES = {
    "text": Reply.text("Hello there, how are you today?"),
    "reasoning-content": Reply.text("It is four.", reasoning=["Two ", "and two"]),
    "reasoning": Reply.text("Yes.", reasoning=["Hm ", "ok"], reasoning_field="reasoning"),
    "tool-calls-vllm": Reply.tool_call("weather", {"city": "Paris"}, tokens=["Let ", "me."]),
    "tool-calls-ollama": Reply(
        tool_calls=(ToolCall("a", '{"x": 1}'), ToolCall("b", "{}")), tool_call_shape="ollama"
    ),
    "burst": Reply.count(40, burst=True, reasoning=["r1 ", "r2"]),
    "length": Reply.count(5, finish_reason="length"),
    "empty": Reply.text("unused", empty=True),
}


def _chat_summary(chunks: list[Any]) -> dict[str, Any]:
    content, reasoning, finish, usage = [], [], [], []
    calls: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        if chunk.usage is not None:
            usage.append(chunk.usage.model_dump())
        for choice in chunk.choices:
            delta = choice.delta
            content.append(delta.content or "")
            extra = delta.model_extra or {}
            reasoning.append(extra.get("reasoning_content") or extra.get("reasoning") or "")
            if choice.finish_reason is not None:
                finish.append(choice.finish_reason)
            for call in delta.tool_calls or ():
                # Call ids are made up per request: only whether one came.
                entry = calls.setdefault(call.index, {"id": "", "name": "", "arguments": ""})
                entry["id"] = entry["id"] or ("sent" if call.id else "")
                entry["name"] += (call.function and call.function.name) or ""
                entry["arguments"] += (call.function and call.function.arguments) or ""
    return {
        "content": "".join(content),
        "reasoning": "".join(reasoning),
        "finish": finish,
        "calls": calls,
        "usage": usage,
    }


@pytest.mark.parametrize("reply", CHAT_REPLIES.values(), ids=CHAT_REPLIES.keys())
async def test_chat_completions_stream_as_the_plain_client_reads_them(
    fake_llm: FakeLLM, reply: Reply
) -> None:
    fake_llm.backend.script(reply, reply)
    ours, theirs = _client(fake_llm), _plain_client(fake_llm)
    options = {"stream_options": {"include_usage": True}}

    try:
        our_chunks = [c async for c in await _chat_stream(ours, **options)]
        their_chunks = [c async for c in await _chat_stream(theirs, **options)]
    finally:
        await ours.close()
        await theirs.close()

    summary = _chat_summary(our_chunks)
    assert summary == _chat_summary(their_chunks)
    assert summary["content"] == reply.content
    assert len(our_chunks) <= len(their_chunks)
    assert [type(c) for c in our_chunks] == [ChatCompletionChunk] * len(our_chunks)


RESPONSES_REPLIES = {
    "text": Reply.text("Hello there, how are you today?"),
    "reasoning-text": Reply.text("It is four.", reasoning=["Two ", "and two"]),
    "reasoning-summary": Reply.text("Yes.", reasoning=["Hm ", "ok"], responses_reasoning="summary"),
    "tool-call": Reply.tool_call("weather", {"city": "Paris"}, tokens=["Let ", "me."]),
    "llama-server": Reply.text("Plain words here", responses_shape="llama_server"),
    "burst": Reply.count(40, burst=True),
    "length": Reply.count(5, finish_reason="length"),
}

_RESPONSE_TEXT_DELTAS = (
    "response.output_text.delta",
    "response.reasoning_text.delta",
    "response.reasoning_summary_text.delta",
)


def _responses_summary(events: list[Any]) -> dict[str, Any]:
    texts: dict[tuple[str, Any], str] = {}
    others: list[Any] = []
    for event in events:
        if event.type in _RESPONSE_TEXT_DELTAS:
            key = (event.type, getattr(event, "item_id", None))
            texts[key] = texts.get(key, "") + event.delta
        else:
            others.append(event.model_dump(exclude_none=True))
    return {"texts": texts, "others": others}


@pytest.mark.parametrize("reply", RESPONSES_REPLIES.values(), ids=RESPONSES_REPLIES.keys())
async def test_responses_stream_as_the_plain_client_reads_them(
    fake_llm: FakeLLM, reply: Reply
) -> None:
    fake_llm.backend.script(reply, reply)
    ours, theirs = _client(fake_llm), _plain_client(fake_llm)

    try:
        stream = await ours.responses.create(model="m", input="Hi", stream=True)
        our_events = [e async for e in stream]
        their_stream = await theirs.responses.create(model="m", input="Hi", stream=True)
        their_events = [e async for e in their_stream]
    finally:
        await ours.close()
        await theirs.close()

    summary = _responses_summary(our_events)
    their_summary = _responses_summary(their_events)
    # Item ids are made up per request: compare the texts in order, and the
    # other events with their ids in place.
    assert list(summary["texts"].values()) == list(their_summary["texts"].values())
    assert [k for k, _ in summary["texts"]] == [k for k, _ in their_summary["texts"]]
    assert _without_ids(summary["others"]) == _without_ids(their_summary["others"])
    output = [text for (kind, _), text in summary["texts"].items() if "output" in kind]
    assert "".join(output) == reply.content
    assert [type(e) for e in our_events if e.type != "response.output_text.delta"] == [
        type(e) for e in their_events if e.type != "response.output_text.delta"
    ]


# Ids are made up per request and timestamps are taken per request: two
# requests may straddle a second boundary.
_PER_REQUEST_KEYS = frozenset(
    ("id", "item_id", "call_id", "created_at", "completed_at", "sequence_number")
)


def _without_ids(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_ids(v) for k, v in value.items() if k not in _PER_REQUEST_KEYS}
    if isinstance(value, list):
        return [_without_ids(v) for v in value]
    return value


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (Reply.count(10, drop_after=3), openai.APIConnectionError),
        (Reply.count(5, stall_after=2, stall_seconds=3.0), openai.APITimeoutError),
        (Reply.text("Some text", error_event="crashed"), openai.APIError),
        (Reply(status=503, error_message="busy"), openai.InternalServerError),
        (Reply(status=429), openai.RateLimitError),
    ],
    ids=["drop", "stall", "error-event", "503", "429"],
)
async def test_failures_raise_what_the_plain_client_raises(
    fake_llm: FakeLLM, reply: Reply, expected: type[Exception]
) -> None:
    fake_llm.backend.script(reply, reply)
    timeout = Timeout(0.5, connect=2.0)
    ours = _client(fake_llm, read_timeout=0.5)
    theirs = AsyncOpenAI(base_url=fake_llm.v1, api_key="k", max_retries=0, timeout=timeout)
    raised: list[type[Exception]] = []

    try:
        for client in (ours, theirs):
            try:
                await asyncio.wait_for(_all(await _chat_stream(client)), 5)
            except openai.APIError as exc:
                raised.append(type(exc))
    finally:
        await ours.close()
        await theirs.close()

    assert raised == [expected, expected]


# --- The whole stack -----------------------------------------------------------------


@pytest.mark.parametrize("api", ["chat_completions", "responses"])
async def test_a_burst_from_the_backend_reaches_the_browser_as_fewer_deltas(
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
