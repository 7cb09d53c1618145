"""Tool calls from the fake backend, in vLLM's, Ollama's and the Responses API's shapes."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionChunk
from openai.types.responses import ResponseStreamEvent
from pydantic import TypeAdapter

from chatkit_server.testing.fake_backend import FakeBackend, Reply, ToolCall
from chatkit_server.testing.live import serve_app

MESSAGES: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]
ARGUMENTS = {"city": "Paris", "unit": "celsius"}


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
async def url(backend: FakeBackend) -> AsyncIterator[str]:
    async with serve_app(backend.app) as base_url:
        yield base_url


async def _chunks(url: str, **body: Any) -> list[ChatCompletionChunk]:
    """Every chunk as sent, validated strictly against the openai type."""
    async with httpx.AsyncClient(base_url=url) as http:
        response = await http.post(
            "/v1/chat/completions",
            json={"model": "m", "messages": MESSAGES, "stream": True, **body},
        )
    lines = [line[6:] for line in response.text.split("\n") if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [ChatCompletionChunk.model_validate_json(line) for line in lines[:-1]]


def _tool_deltas(chunks: list[ChatCompletionChunk]) -> list[Any]:
    return [call for c in chunks if c.choices for call in c.choices[0].delta.tool_calls or []]


async def test_vllm_streams_the_name_then_argument_fragments(
    backend: FakeBackend, url: str
) -> None:
    backend.script(Reply.tool_call("get_weather", ARGUMENTS))
    chunks = await _chunks(url)

    first, *fragments = _tool_deltas(chunks)
    assert first.index == 0
    assert first.id.startswith("chatcmpl-tool-")
    assert (first.type, first.function.name, first.function.arguments) == (
        "function",
        "get_weather",
        "",
    )
    assert len(fragments) > 2
    assert all(f.id is None and f.function.name is None for f in fragments)
    assert json.loads("".join(f.function.arguments for f in fragments)) == ARGUMENTS
    last = chunks[-1].choices[0]
    assert (last.finish_reason, last.delta.tool_calls) == ("tool_calls", None)


async def test_ollama_sends_the_whole_call_in_one_chunk_with_the_finish(
    backend: FakeBackend, url: str
) -> None:
    backend.script(Reply.tool_call("get_weather", ARGUMENTS, tool_call_shape="ollama"))
    chunks = await _chunks(url)

    [call] = _tool_deltas(chunks)
    assert call.id.startswith("call_")
    assert len(call.id) == 13
    assert (call.function.name, json.loads(call.function.arguments)) == ("get_weather", ARGUMENTS)
    carrier = next(c for c in chunks if c.choices and c.choices[0].delta.tool_calls)
    assert carrier is chunks[-1]
    assert carrier.choices[0].finish_reason == "tool_calls"
    assert carrier.choices[0].delta.role == "assistant"


async def test_parallel_calls_and_content_before_them(backend: FakeBackend, url: str) -> None:
    calls = (ToolCall("a", '{"x": 1}', call_id="call_a"), ToolCall("b", "{}"))
    backend.script(Reply(tokens=["Checking "], tool_calls=calls), Reply(tool_calls=calls))
    chunks = await _chunks(url)

    contents = [c.choices[0].delta.content for c in chunks if c.choices]
    assert "Checking " in contents
    assert contents.index("Checking ") < next(
        i for i, c in enumerate(chunks) if c.choices and c.choices[0].delta.tool_calls
    )
    named = [d for d in _tool_deltas(chunks) if d.function.name]
    assert [(d.index, d.id, d.function.name) for d in named][0] == (0, "call_a", "a")
    assert [d.index for d in named] == [0, 1]

    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0) as client:
        completion = await client.chat.completions.create(model="m", messages=MESSAGES)
    message = completion.choices[0].message
    assert completion.choices[0].finish_reason == "tool_calls"
    assert message.content is None
    assert [(c.id, c.function.name) for c in message.tool_calls or []][0] == ("call_a", "a")  # type: ignore[union-attr]


async def test_responses_function_call_events_validate_strictly(
    backend: FakeBackend, url: str
) -> None:
    backend.script(Reply.tool_call("get_weather", ARGUMENTS))
    adapter: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
    async with httpx.AsyncClient(base_url=url) as http:
        response = await http.post(
            "/v1/responses", json={"model": "m", "input": "weather?", "stream": True}
        )
    data = [line[6:] for line in response.text.split("\n") if line.startswith("data: ")]
    events = [adapter.validate_json(line, strict=True) for line in data]

    kinds = [e.type for e in events]
    assert kinds[:3] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
    ]
    assert kinds[-3:] == [
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert "response.output_text.delta" not in kinds
    added = events[2].item
    assert (added.type, added.arguments, added.status) == ("function_call", "", "in_progress")
    deltas = [e.delta for e in events if e.type == "response.function_call_arguments.delta"]
    assert json.loads("".join(deltas)) == ARGUMENTS
    [item] = events[-1].response.output
    assert (item.type, item.name, item.call_id) == ("function_call", "get_weather", added.call_id)
    assert backend.streams[-1].item_ids == (item.id,)


async def test_responses_non_stream_output_has_the_call(backend: FakeBackend, url: str) -> None:
    backend.script(Reply.tool_call("get_weather", ARGUMENTS, tokens=["Let me look."]))
    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0) as client:
        response = await client.responses.create(model="m", input="weather?")
    message, call = response.output
    assert message.type == "message"
    assert call.type == "function_call"
    assert json.loads(call.arguments) == ARGUMENTS


def test_llama_server_responses_shape_has_no_tool_calls() -> None:
    with pytest.raises(ValueError, match="openai"):
        Reply.tool_call("f", responses_shape="llama_server")


def test_finish_reason_follows_the_reply() -> None:
    assert Reply.text("hi").finish == "stop"
    assert Reply.tool_call("f").finish == "tool_calls"
    assert Reply.tool_call("f", finish_reason="length").finish == "length"
    assert Reply.tool_call("f", {"a": 1}).tool_calls == (ToolCall("f", '{"a": 1}'),)
