"""Backends: clients with explicit timeouts that send history without re-transforming it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from agents import Agent, RunConfig, Runner
from openai import DefaultAioHttpClient

from chatkit_server.backends import (
    Backend,
    BackendConfig,
    LeanAsyncOpenAI,
    watch_requests,
    with_earlier_turns,
)
from chatkit_server.testing.fake_backend import Reply
from tests.live import FakeLLM

HISTORY = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Again"},
]


def _backend(fake_llm: FakeLLM, api: str = "chat_completions") -> Backend:
    return Backend(
        BackendConfig(
            name="t",
            base_url=fake_llm.v1,
            api_key="k",
            api=api,  # type: ignore[arg-type]
            read_timeout=7.0,
            connect_timeout=3.0,
            max_retries=0,
        )
    )


def test_client_has_explicit_timeouts_and_no_retries(fake_llm: FakeLLM) -> None:
    client = _backend(fake_llm).client
    assert isinstance(client, LeanAsyncOpenAI)
    assert client.max_retries == 0
    timeout: Any = client.timeout
    assert (timeout.read, timeout.connect) == (7.0, 3.0)
    # aiohttp counts connecting in the pool timeout: never shorter than reading.
    assert timeout.pool == 7.0
    assert isinstance(client._client, DefaultAioHttpClient)


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
    backend = _backend(fake_llm)
    assert backend.client is not None
    # The calls the direct sender leaves to the client (chatkit_server.direct).
    backend.client.direct = None

    stream = await backend.client.chat.completions.create(
        model="m",
        messages=HISTORY,
        stream=True,
        extra_body={"top_k": 5},  # type: ignore[arg-type]
    )
    text = "".join(
        [chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices]
    )
    await backend.aclose()

    assert text == "Fine."
    assert transformed[0]["messages"] == []
    received = fake_llm.backend.requests[-1].body
    assert received["messages"] == HISTORY
    assert received["top_k"] == 5


async def test_responses_input_is_sent_as_given(fake_llm: FakeLLM) -> None:
    fake_llm.backend.script(Reply.text("Fine."))
    backend = _backend(fake_llm, "responses")
    assert backend.client is not None
    items = [{"role": "user", "content": "Hi", "type": "message"}]

    response = await backend.client.responses.create(model="m", input=items)  # type: ignore[arg-type]
    await backend.aclose()

    assert response.output_text == "Fine."
    assert fake_llm.backend.requests[-1].body["input"] == items


CHUNK = {
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
COMPLETION = {
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
TEXT_DELTA = {
    "type": "response.output_text.delta",
    "item_id": "msg_1",
    "output_index": 0,
    "content_index": 0,
    "delta": " tok",
    "sequence_number": 5,
    "logprobs": [],
}


def _lenient_path_calls(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    import openai._base_client as base_client

    calls: list[Any] = []
    original = base_client.construct_type

    def spy(*, type_: Any, value: Any) -> Any:
        calls.append(value)
        return original(type_=type_, value=value)

    monkeypatch.setattr(base_client, "construct_type", spy)
    return calls


@pytest.mark.parametrize(
    ("data", "cast_to"),
    [(CHUNK, "chunk"), (TEXT_DELTA, "event"), (COMPLETION, "completion")],
    ids=["chat-completions-chunk", "responses-event", "whole-completion"],
)
def test_stream_chunks_are_validated_not_constructed(
    monkeypatch: pytest.MonkeyPatch, data: dict[str, Any], cast_to: str
) -> None:
    from openai._models import construct_type
    from openai.types.chat import ChatCompletion, ChatCompletionChunk
    from openai.types.responses import ResponseStreamEvent

    targets = {"chunk": ChatCompletionChunk, "event": ResponseStreamEvent}
    target: Any = targets.get(cast_to, ChatCompletion)
    lenient = _lenient_path_calls(monkeypatch)
    client = LeanAsyncOpenAI(base_url="http://127.0.0.1:9/v1", api_key="k")

    parsed: Any = client._process_response_data(data=data, cast_to=target, response=None)  # type: ignore[arg-type]

    # The slow lenient builder is skipped, and the object is the one it builds.
    assert lenient == []
    constructed = construct_type(type_=target, value=data)
    assert type(parsed) is type(constructed)
    assert parsed.model_dump(exclude_none=True) == constructed.model_dump(exclude_none=True)
    if cast_to == "chunk":
        delta = parsed.choices[0].delta
        assert delta.reasoning_content == "hm"  # extra fields kept
        # Fields some servers send read as None instead of raising inside pydantic.
        assert (delta.reasoning, delta.thinking_blocks, delta.annotations) == (None, None, None)


def test_a_chunk_the_validator_rejects_takes_the_lenient_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from openai.types.chat import ChatCompletionChunk

    lenient = _lenient_path_calls(monkeypatch)
    client = LeanAsyncOpenAI(base_url="http://127.0.0.1:9/v1", api_key="k")
    # Some servers leave out fields the schema requires (here: created, model).
    sloppy = {"id": "x", "object": "chat.completion.chunk", "choices": CHUNK["choices"]}

    parsed: Any = client._process_response_data(
        data=sloppy,
        cast_to=ChatCompletionChunk,
        response=None,  # type: ignore[arg-type]
    )

    assert lenient == [sloppy]
    assert parsed.choices[0].delta.content == " tok"
    assert parsed.model is None


EARLIER_TURNS: list[Any] = [
    {"role": "user", "content": "Weather in Paris?", "type": "message"},
    {"role": "assistant", "content": "Let me check.", "type": "message"},
    {
        "type": "function_call",
        "call_id": "call_1",
        "name": "weather",
        "arguments": '{"city": "Paris"}',
    },
    {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
    {"role": "assistant", "content": "It is sunny.", "type": "message"},
    {"role": "user", "content": [{"type": "input_text", "text": "And Rome?"}], "type": "message"},
    {"role": "assistant", "content": "Also sunny.", "type": "message"},
    {"role": "user", "content": "Thanks!", "type": "message"},
]


async def _sent_body(model: Any, items: list[Any], fake_llm: FakeLLM) -> Any:
    agent = Agent(name="a", instructions="Be brief.", model=model)
    result = Runner.run_streamed(agent, items, run_config=RunConfig(tracing_disabled=True))
    async for _event in result.stream_events():
        pass
    return fake_llm.backend.requests[-1].body


async def test_earlier_turns_are_sent_as_the_sdk_would_send_them(fake_llm: FakeLLM) -> None:
    fake_llm.backend.script(Reply.text("One."), Reply.text("Two."))
    backend = _backend(fake_llm)
    model = backend.model("m")

    run_model, newest = with_earlier_turns(model, EARLIER_TURNS)
    assert run_model is not model
    assert newest == EARLIER_TURNS[-1:]
    ours = await _sent_body(run_model, newest, fake_llm)
    theirs = await _sent_body(model, EARLIER_TURNS, fake_llm)
    await backend.aclose()

    assert ours == theirs
    roles = [m["role"] for m in ours["messages"]]
    assert roles == ["system", "user", "assistant", "assistant", "tool"] + ["assistant", "user"] * 2
    assert ours["messages"][3]["tool_calls"][0]["id"] == "call_1"
    # The shared client is untouched: other runs send only their own messages.
    assert backend.client is not None
    assert backend.client.earlier_messages is None


def test_a_single_turn_or_another_model_is_left_as_it_is(fake_llm: FakeLLM) -> None:
    backend = _backend(fake_llm)
    model = backend.model("m")
    assert with_earlier_turns(model, EARLIER_TURNS[:1]) == (model, EARLIER_TURNS[:1])
    responses = _backend(fake_llm, api="responses").model("m")
    assert with_earlier_turns(responses, EARLIER_TURNS) == (responses, EARLIER_TURNS)


@pytest.mark.parametrize("api", ["chat_completions", "responses"])
async def test_a_run_started_under_a_watch_marks_its_first_request(
    fake_llm: FakeLLM, api: str
) -> None:
    fake_llm.backend.script(Reply.text("Fine."), Reply.text("Again."))
    backend = _backend(fake_llm, api=api)
    agent = Agent(name="a", model=backend.model("m"))
    config = RunConfig(tracing_disabled=True)
    try:
        with watch_requests() as sent:
            result = Runner.run_streamed(agent, "Hi", run_config=config)
        assert not sent.done()
        # Marked when the run sends its request, before any answer arrives.
        await asyncio.wait_for(asyncio.shield(sent), 5)
        assert not fake_llm.backend.streams or fake_llm.backend.streams[0].ended_at is None
        async for _event in result.stream_events():
            pass
        assert result.final_output == "Fine."

        # A run started outside the block is not watched.
        outside = Runner.run_streamed(agent, "Hi", run_config=config)
        async for _event in outside.stream_events():
            pass
        assert sent.done()
    finally:
        await backend.aclose()


async def test_requests_outside_a_watch_mark_nothing(fake_llm: FakeLLM) -> None:
    fake_llm.backend.script(Reply.text("Fine."))
    backend = _backend(fake_llm)
    assert backend.client is not None
    with watch_requests() as sent:
        pass
    try:
        await backend.client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "Hi"}]
        )
    finally:
        await backend.aclose()
    assert not sent.done()
