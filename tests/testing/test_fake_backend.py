"""The fake LLM backend, consumed over real HTTP by the official openai client."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any, TypeVar

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionChunk
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from chatkit_server.testing import _fake_wire
from chatkit_server.testing.fake_backend import (
    DEFAULT_REPLY_TEXT,
    FakeBackend,
    Reply,
    StreamRecord,
)
from chatkit_server.testing.live import ServerThread, serve_app

T = TypeVar("T")
MESSAGES: list[Any] = [{"role": "user", "content": "Say hello"}]


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
async def url(backend: FakeBackend) -> AsyncIterator[str]:
    async with serve_app(backend.app) as base_url:
        yield base_url


@pytest.fixture
async def client(url: str) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0) as c:
        yield c


async def raw_sse(url: str, path: str, body: dict[str, Any]) -> list[str]:
    """The data fields of an SSE response, as sent."""
    async with httpx.AsyncClient(base_url=url) as http:
        response = await http.post(path, json=body)
    assert response.headers["content-type"].startswith("text/event-stream")
    return [line[6:] for line in response.text.split("\n") if line.startswith("data: ")]


async def collect(client: openai.AsyncOpenAI, **options: Any) -> list[ChatCompletionChunk]:
    stream = await client.chat.completions.create(
        model="m", messages=MESSAGES, stream=True, **options
    )
    return [chunk async for chunk in stream]


async def drain(stream: AsyncIterable[T], into: list[T]) -> None:
    async for item in stream:
        into.append(item)


def text_of(chunks: list[ChatCompletionChunk]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


# --- Reply helpers -----------------------------------------------------------------------


def test_reply_text_splits_words_with_their_spaces() -> None:
    assert Reply.text("Hello there friend").tokens == ("Hello ", "there ", "friend")
    for text in ["  lead and trail  ", "one", "", "a\nb\tc"]:
        assert Reply.text(text).content == text


def test_reply_count_and_immutability() -> None:
    reply = Reply.count(3, delay=0.1)
    assert reply.tokens == ("tok0 ", "tok1 ", "tok2 ")
    assert reply.delay == 0.1
    assert hash(reply) == hash(Reply.count(3, delay=0.1))
    assert Reply(tokens=["a"], empty=True).content == ""


# --- Chat Completions ----------------------------------------------------------------------


async def test_chat_stream_round_trip(backend: FakeBackend, client: openai.AsyncOpenAI) -> None:
    backend.script(Reply.text("Hello there friend"))
    chunks = await collect(client)

    assert text_of(chunks) == "Hello there friend"
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].id.startswith("chatcmpl-")
    assert all(c.object == "chat.completion.chunk" and c.model == "m" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].choices[0].delta.content == ""
    assert [c.choices[0].delta.content for c in chunks[1:-1]] == ["Hello ", "there ", "friend"]
    last = chunks[-1].choices[0]
    assert last.finish_reason == "stop"
    assert last.delta.content is None
    assert chunks[-1].usage is None

    record = await backend.wait_for_stream_end()
    assert (record.tokens_sent, record.completed, record.disconnected) == (3, True, False)
    assert record.stream


async def test_chat_non_stream(backend: FakeBackend, client: openai.AsyncOpenAI) -> None:
    backend.script(Reply.text("Plain answer", usage=(7, 2)))
    completion = await client.chat.completions.create(model="m", messages=MESSAGES)

    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-")
    assert completion.choices[0].message.content == "Plain answer"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (7, 2)
    record = backend.streams[-1]
    assert (record.stream, record.completed, record.tokens_sent) == (False, True, 2)


async def test_include_usage_adds_a_final_usage_chunk(
    backend: FakeBackend, client: openai.AsyncOpenAI
) -> None:
    backend.script(Reply.text("one two", usage=(11, 2)), Reply.text("one two three"))
    chunks = await collect(client, stream_options={"include_usage": True})

    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.model_dump(include={"prompt_tokens", "completion_tokens"}) == {
        "prompt_tokens": 11,
        "completion_tokens": 2,
    }
    assert chunks[-1].usage.total_tokens == 13
    assert chunks[-2].choices[0].finish_reason == "stop"

    estimated = (await collect(client, stream_options={"include_usage": True}))[-1].usage
    assert estimated is not None
    assert estimated.completion_tokens == 3
    assert estimated.prompt_tokens >= 1


async def test_every_raw_chunk_is_a_valid_chat_completion_chunk(url: str) -> None:
    body: dict[str, Any] = {"model": "m", "messages": MESSAGES, "stream": True}
    body["stream_options"] = {"include_usage": True}
    data = await raw_sse(url, "/v1/chat/completions", body)

    assert data[-1] == "[DONE]"
    for raw in data[:-1]:
        ChatCompletionChunk.model_validate_json(raw)


@pytest.mark.parametrize("stream", [True, False])
async def test_status_reply_raises_api_status_error(
    backend: FakeBackend, client: openai.AsyncOpenAI, stream: bool
) -> None:
    backend.script(Reply(status=503, error_message="model is loading"))
    with pytest.raises(openai.APIStatusError) as caught:
        await client.chat.completions.create(model="m", messages=MESSAGES, stream=stream)

    assert caught.value.status_code == 503
    assert "model is loading" in caught.value.message
    assert caught.value.body == {
        "code": 503,
        "message": "model is loading",
        "type": "server_error",
        "param": None,
    }


async def test_drop_after_breaks_the_stream(
    backend: FakeBackend, client: openai.AsyncOpenAI
) -> None:
    backend.script(Reply.count(10, drop_after=3))
    received: list[ChatCompletionChunk] = []
    stream = await client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
    # What really happens: the body ends without the terminating chunk, httpx2 raises
    # RemoteProtocolError ("incomplete chunked read") and the openai client wraps it.
    with pytest.raises(openai.APIConnectionError) as caught:
        await drain(stream, received)

    assert "incomplete chunked read" in str(caught.value.__cause__)
    assert text_of(received) == "tok0 tok1 tok2 "
    assert all(c.choices[0].finish_reason is None for c in received)
    record = await backend.wait_for_stream_end()
    assert (record.tokens_sent, record.dropped, record.completed) == (3, True, False)
    assert not record.disconnected


async def test_drop_after_non_stream_breaks_the_body(
    backend: FakeBackend, client: openai.AsyncOpenAI
) -> None:
    backend.script(Reply.count(10, drop_after=3))
    with pytest.raises(openai.APIConnectionError):
        await client.chat.completions.create(model="m", messages=MESSAGES)
    assert backend.streams[-1].dropped


async def test_stall_pauses_then_resumes(backend: FakeBackend, client: openai.AsyncOpenAI) -> None:
    backend.script(Reply.count(4, stall_after=2, stall_seconds=0.3))
    started = time.monotonic()
    arrivals: list[tuple[float, str]] = []
    stream = await client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append((time.monotonic(), chunk.choices[0].delta.content))

    assert [t for _, t in arrivals] == ["tok0 ", "tok1 ", "tok2 ", "tok3 "]
    # Only lower bounds from the request's start: a token cannot arrive before it is sent,
    # however loaded the machine, but may arrive late. Where the stall sits is checked by
    # the read-timeout test below.
    assert arrivals[2][0] - started >= 0.29  # 0.3 s, less a timer's slack
    assert backend.streams[-1].completed


async def test_stall_longer_than_the_read_timeout_times_out(backend: FakeBackend, url: str) -> None:
    # The stall is far longer than the timeout, so the timeout fires inside it even when
    # the client runs late; the connection then closes, so its length costs no time.
    backend.script(Reply.count(4, stall_after=1, stall_seconds=10.0))
    received: list[ChatCompletionChunk] = []
    async with openai.AsyncOpenAI(
        base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=0.3
    ) as client:
        stream = await client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
        with pytest.raises(openai.APITimeoutError):
            await drain(stream, received)
    # The stall came after the first token.
    assert text_of(received) == "tok0 "


async def test_delays_pace_the_stream(backend: FakeBackend, client: openai.AsyncOpenAI) -> None:
    backend.script(Reply.count(3, delay=0.05, first_byte_delay=0.2))
    started = time.monotonic()
    stream = await client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
    headers_after = time.monotonic() - started
    async for _ in stream:
        pass

    # Lower bounds only: nothing can arrive before it is sent, but anything may arrive late.
    assert headers_after >= 0.2
    assert time.monotonic() - started >= 0.2 + 3 * 0.05


async def test_a_late_chunk_does_not_delay_the_next_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    # On a fake clock where every send runs 30 ms late (a busy machine), the
    # chunks still leave at the reply's pace: each is due 50 ms after the
    # previous one was due, so a late send shortens the next wait rather than
    # pushing every later chunk back.
    clock = [100.0]
    sent_at: list[float] = []

    async def sleep(seconds: float) -> None:
        assert seconds >= 0
        clock[0] += seconds

    async def send(message: Any) -> None:
        if message["type"] == "http.response.body":
            sent_at.append(clock[0])
        clock[0] += 0.03

    monkeypatch.setattr(_fake_wire.anyio, "current_time", lambda: clock[0])
    monkeypatch.setattr(_fake_wire.anyio, "sleep", sleep)
    reply = Reply.count(5, delay=0.05, stall_after=3, stall_seconds=0.5)
    plan = _fake_wire.chat_plan(reply, "m", {"stream": True})
    record = StreamRecord("/v1/chat/completions", reply, True, clock[0])
    await _fake_wire.Responder(plan, reply, record)._send(send)

    tokens = sent_at[1:6]  # after the role chunk
    gaps = [later - earlier for earlier, later in zip(tokens, tokens[1:], strict=False)]
    assert gaps == pytest.approx([0.05, 0.05, 0.5 + 0.05, 0.05])  # not 0.08 each
    assert record.tokens_sent == 5
    assert record.completed


async def test_empty_reply_has_no_content(backend: FakeBackend, client: openai.AsyncOpenAI) -> None:
    backend.script(Reply.text("ignored", empty=True))
    chunks = await collect(client)

    assert len(chunks) == 2
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[1].choices[0].finish_reason == "stop"
    assert text_of(chunks) == ""
    assert backend.streams[-1].tokens_sent == 0


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
async def test_reasoning_deltas_come_first_in_the_chosen_field(
    backend: FakeBackend, url: str, field: str
) -> None:
    backend.script(Reply.text("Answer", reasoning=["Let me ", "think."], reasoning_field=field))
    body = {"model": "m", "messages": MESSAGES, "stream": True}
    data = await raw_sse(url, "/v1/chat/completions", body)
    deltas = [json.loads(d)["choices"][0]["delta"] for d in data[:-1]]

    assert deltas[1:4] == [{field: "Let me "}, {field: "think."}, {"content": "Answer"}]
    assert backend.streams[-1].tokens_sent == 1


async def test_reasoning_in_non_stream_message(backend: FakeBackend, url: str) -> None:
    backend.script(Reply.text("Answer", reasoning=["Hm."], reasoning_field="reasoning"))
    async with httpx.AsyncClient(base_url=url) as http:
        response = await http.post("/v1/chat/completions", json={"model": "m", "messages": []})
    message = response.json()["choices"][0]["message"]
    assert message == {"role": "assistant", "content": "Answer", "reasoning": "Hm."}


async def test_client_disconnect_stops_generation(
    backend: FakeBackend, client: openai.AsyncOpenAI
) -> None:
    # Ten minutes of tokens: the stream can only end early because the client left, and
    # the wait below is a hang guard, not a measure of how quickly it noticed.
    backend.script(Reply.count(12_000, delay=0.05))
    seen = 0
    async with await client.chat.completions.create(
        model="m", messages=MESSAGES, stream=True
    ) as stream:
        async for chunk in stream:
            seen += bool(chunk.choices and chunk.choices[0].delta.content)
            if seen == 3:
                break

    record = await backend.wait_for_stream_end(timeout=30.0)
    assert record.disconnected
    assert not record.completed
    assert 3 <= record.tokens_sent < 12_000
    assert record.ended_at is not None


# --- Responses API -------------------------------------------------------------------------


async def test_responses_stream_parses_into_typed_events(
    backend: FakeBackend, client: openai.AsyncOpenAI
) -> None:
    backend.script(Reply.text("Hi there"))
    stream = await client.responses.create(model="m", input="hello", stream=True)
    events = [event async for event in stream]

    assert [e.type for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    completed = events[-1]
    assert completed.type == "response.completed"
    assert completed.response.output_text == "Hi there"
    assert completed.response.usage is not None
    assert completed.response.usage.output_tokens == 2
    assert backend.streams[-1].path == "/v1/responses"


async def test_responses_events_validate_strictly(backend: FakeBackend, url: str) -> None:
    # The client builds events without validation; validating proves no field is missing.
    adapter: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
    body = {"model": "m", "input": "hello", "stream": True}
    events = [adapter.validate_json(d) for d in await raw_sse(url, "/v1/responses", body)]
    assert events[-1].type == "response.completed"
    assert events[-1].response.status == "completed"


async def test_responses_length_finish_ends_incomplete(
    backend: FakeBackend, client: openai.AsyncOpenAI
) -> None:
    backend.script(Reply.text("cut short", finish_reason="length"))
    stream = await client.responses.create(model="m", input="hello", stream=True)
    last = [event async for event in stream][-1]
    assert last.type == "response.incomplete"
    assert last.response.incomplete_details is not None
    assert last.response.incomplete_details.reason == "max_output_tokens"


async def test_responses_non_stream(backend: FakeBackend, client: openai.AsyncOpenAI) -> None:
    backend.script(Reply.text("Whole answer"))
    response = await client.responses.create(model="m", input="hello")
    assert response.output_text == "Whole answer"
    Response.model_validate(response.model_dump())


async def test_responses_drop_breaks_the_stream(
    backend: FakeBackend, client: openai.AsyncOpenAI
) -> None:
    backend.script(Reply.count(5, drop_after=2))
    stream = await client.responses.create(model="m", input="hello", stream=True)
    events: list[Any] = []
    with pytest.raises(openai.APIConnectionError):
        await drain(stream, events)
    types = [event.type for event in events]
    assert types.count("response.output_text.delta") == 2
    assert "response.completed" not in types


@pytest.mark.parametrize(
    ("kind", "delta_type"),
    [
        ("summary", "response.reasoning_summary_text.delta"),
        ("text", "response.reasoning_text.delta"),
    ],
)
async def test_responses_reasoning_streams_first_and_validates(
    backend: FakeBackend, url: str, kind: str, delta_type: str
) -> None:
    backend.script(Reply.text("Answer", reasoning=["Let me ", "think."], responses_reasoning=kind))
    adapter: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
    body = {"model": "m", "input": "hello", "stream": True}
    events = [adapter.validate_json(d) for d in await raw_sse(url, "/v1/responses", body)]

    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = [e for e in events if e.type.endswith(".delta")]
    assert [(e.type, e.delta) for e in deltas] == [
        (delta_type, "Let me "),
        (delta_type, "think."),
        ("response.output_text.delta", "Answer"),
    ]
    output = events[-1].response.output
    assert [item.type for item in output] == ["reasoning", "message"]
    assert [item.id for item in output] == list(backend.streams[-1].item_ids)
    assert backend.streams[-1].tokens_sent == 1


async def test_llama_server_shape_leaves_fields_out(backend: FakeBackend, url: str) -> None:
    backend.script(Reply.text("Hi there", reasoning=["Hm."], responses_shape="llama_server"))
    body = {"model": "m", "input": "hello", "stream": True}
    events = [json.loads(d) for d in await raw_sse(url, "/v1/responses", body)]

    assert [e["type"] for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.reasoning_text.delta",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_item.done",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    for event in events:
        assert not {"sequence_number", "output_index", "content_index"} & set(event)
    assert "annotations" not in events[5]["part"]
    assert "logprobs" not in events[6]
    assert set(events[0]["response"]) == {"id", "object", "status"}
    assert "tools" not in events[-1]["response"]
    assert events[-1]["response"]["output"][1]["content"][0]["text"] == "Hi there"


# --- scripting and observation ---------------------------------------------------------------


async def test_script_is_fifo_then_default(
    backend: FakeBackend, client: openai.AsyncOpenAI
) -> None:
    backend.script(Reply.text("first"), Reply.text("second"))
    assert backend.pending == 2
    answers = [text_of(await collect(client)) for _ in range(3)]
    assert answers == ["first", "second", DEFAULT_REPLY_TEXT]
    assert backend.pending == 0


async def test_custom_default_reply(url: str) -> None:
    backend = FakeBackend(default=Reply.text("always this"), model="other")
    async with (
        serve_app(backend.app) as other_url,
        openai.AsyncOpenAI(base_url=f"{other_url}/v1", api_key="x", max_retries=0) as client,
    ):
        assert text_of(await collect(client)) == "always this"
        models = await client.models.list()
    assert [m.id for m in models.data] == ["other"]


async def test_requests_are_recorded(backend: FakeBackend, client: openai.AsyncOpenAI) -> None:
    before = time.monotonic()
    await collect(client, temperature=0.5)
    await client.models.list()

    chat, models = backend.requests
    assert (chat.method, chat.path) == ("POST", "/v1/chat/completions")
    assert chat.body["messages"] == MESSAGES
    assert chat.body["temperature"] == 0.5
    assert chat.headers["authorization"] == "Bearer x"
    assert chat.received_at >= before
    assert (models.method, models.path, models.body) == ("GET", "/v1/models", None)


async def test_reset_forgets_everything(backend: FakeBackend, client: openai.AsyncOpenAI) -> None:
    await collect(client)
    backend.script(Reply.text("left over"))
    backend.reset()
    assert (backend.requests, backend.streams, backend.pending) == ([], [], 0)


async def test_bad_json_body_is_a_400(backend: FakeBackend, url: str) -> None:
    async with httpx.AsyncClient(base_url=url) as http:
        response = await http.post("/v1/chat/completions", content=b"{not json")
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert backend.streams == []


async def test_wait_for_stream_end_times_out(backend: FakeBackend) -> None:
    with pytest.raises(TimeoutError, match="did not end within 0.05 s"):
        await backend.wait_for_stream_end(timeout=0.05)


def test_server_thread_with_the_sync_client() -> None:
    backend = FakeBackend()
    backend.script(Reply.text("sync works"))
    with (
        ServerThread(backend.app) as url,
        openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0) as client,
    ):
        stream = client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "sync works"
    assert backend.streams[0].completed


async def test_a_token_limit_cuts_the_reply_as_a_server_does(
    backend: FakeBackend, client: openai.AsyncOpenAI
) -> None:
    backend.default = Reply.count(10)

    whole = await client.chat.completions.create(model="m", messages=[])
    cut = await client.chat.completions.create(model="m", messages=[], max_tokens=3)
    stream = await client.responses.create(
        model="m", input="hello", max_output_tokens=2, stream=True
    )
    last = [event async for event in stream][-1]

    assert whole.choices[0].message.content == "".join(f"tok{i} " for i in range(10))
    assert cut.choices[0].message.content == "tok0 tok1 tok2 "
    assert cut.choices[0].finish_reason == "length"
    assert last.type == "response.incomplete"
    assert last.response.output_text == "tok0 tok1 "
