"""The direct Chat Completions sender: what the openai client would send and raise, cheaper."""

from __future__ import annotations

import socket
import time
from typing import Any

import openai
import pytest
from agents import OpenAIChatCompletionsModel
from openai.types.chat import ChatCompletion

from chatkit_server.backends import Backend, BackendConfig
from chatkit_server.direct import NOT_SENT, ConvertedTurns, DirectStream
from chatkit_server.streaming import backend_error_message
from chatkit_server.testing.fake_backend import Reply
from tests.live import FakeLLM

HISTORY = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Again"},
]

# Roughly what the Agents SDK passes: omitted settings, extra headers, extra body.
CALL: dict[str, Any] = {
    "model": "m",
    "messages": HISTORY,
    "tools": openai.omit,
    "temperature": 0.5,
    "top_p": openai.omit,
    "stream": True,
    "stream_options": {"include_usage": True},
    "extra_headers": {"User-Agent": "Agents/Python test", "X-Trace": "t1"},
    "extra_query": None,
    "extra_body": {"top_k": 5},
}


def _backend(url: str, *, retries: int = 0, read_timeout: float = 7.0) -> Backend:
    return Backend(
        BackendConfig(
            name="t",
            base_url=url,
            api_key="k",
            read_timeout=read_timeout,
            connect_timeout=3.0,
            max_retries=retries,
            headers={"X-Tenant": "acme"},
        )
    )


async def _text(stream: Any) -> str:
    return "".join(
        [chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices]
    )


async def test_sends_what_the_client_sends(fake_llm: FakeLLM) -> None:
    fake_llm.backend.script(Reply.text("One."), Reply.text("Two."))
    backend = _backend(fake_llm.v1)
    client = backend.client
    assert client is not None
    assert client.direct is not None

    direct = await client.chat.completions.create(**CALL)
    assert isinstance(direct, DirectStream)
    assert await _text(direct) == "One."
    client.direct = None  # the same call, sent by the openai client itself
    assert await _text(await client.chat.completions.create(**CALL)) == "Two."
    await backend.aclose()

    ours, theirs = fake_llm.backend.requests[-2:]
    assert ours.path == theirs.path == "/v1/chat/completions"
    assert ours.body == theirs.body
    assert ours.body["top_k"] == 5
    assert "top_p" not in ours.body
    for name in ("authorization", "x-tenant", "x-trace", "user-agent", "content-type"):
        assert ours.headers[name] == theirs.headers[name], name
    assert ours.headers["authorization"] == "Bearer k"


async def test_a_whole_completion_is_the_openai_type(fake_llm: FakeLLM) -> None:
    fake_llm.backend.script(Reply.text("A title"))
    backend = _backend(fake_llm.v1)
    assert backend.client is not None
    completion = await backend.client.chat.completions.create(**{**CALL, "stream": False})
    await backend.aclose()
    assert isinstance(completion, ChatCompletion)
    assert completion.choices[0].message.content == "A title"
    assert (
        "stream" not in fake_llm.backend.requests[-1].body
        or not (fake_llm.backend.requests[-1].body["stream"])
    )


async def test_copies_share_the_sender(fake_llm: FakeLLM) -> None:
    backend = _backend(fake_llm.v1)
    assert backend.client is not None
    copy = backend.client.with_options(max_retries=0)
    assert copy.direct is backend.client.direct
    await backend.aclose()


async def test_calls_it_cannot_send_go_through_the_client(fake_llm: FakeLLM) -> None:
    backend = _backend(fake_llm.v1)
    client = backend.client
    assert client is not None
    assert client.direct is not None
    for unusual in ({"extra_query": {"v": "1"}}, {"timeout": 3.0}, {"extra_body": {"x": object()}}):
        assert await client.direct.create(client, {**CALL, **unusual}) is NOT_SENT
    fake_llm.backend.script(Reply.text("Via the client."))
    stream = await client.chat.completions.create(**{**CALL, "extra_query": {"v": "1"}})
    assert not isinstance(stream, DirectStream)
    assert await _text(stream) == "Via the client."
    await backend.aclose()


async def test_errors_are_retried_then_raised_as_the_client_raises_them(
    fake_llm: FakeLLM,
) -> None:
    fake_llm.backend.script(
        Reply(status=503, error_message="busy"), Reply(status=503, error_message="still busy")
    )
    backend = _backend(fake_llm.v1, retries=1)
    assert backend.client is not None
    with pytest.raises(openai.InternalServerError) as caught:
        await backend.client.chat.completions.create(**CALL)
    await backend.aclose()
    assert caught.value.status_code == 503
    assert "still busy" in str(caught.value)
    assert len(fake_llm.backend.requests) == 2
    retries = [r.headers["x-stainless-retry-count"] for r in fake_llm.backend.requests]
    assert retries == ["0", "1"]


async def test_a_client_error_is_not_retried(fake_llm: FakeLLM) -> None:
    fake_llm.backend.script(Reply(status=400, error_message="bad model"))
    backend = _backend(fake_llm.v1, retries=2)
    assert backend.client is not None
    with pytest.raises(openai.BadRequestError, match="bad model"):
        await backend.client.chat.completions.create(**CALL)
    await backend.aclose()
    assert len(fake_llm.backend.requests) == 1


async def test_a_retry_that_succeeds_streams_the_answer(fake_llm: FakeLLM) -> None:
    fake_llm.backend.script(Reply(status=429), Reply.text("Now."))
    backend = _backend(fake_llm.v1, retries=1)
    assert backend.client is not None
    assert await _text(await backend.client.chat.completions.create(**CALL)) == "Now."
    await backend.aclose()


async def test_a_refused_connection_is_a_connection_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    backend = _backend(f"http://127.0.0.1:{port}/v1")
    assert backend.client is not None
    with pytest.raises(openai.APIConnectionError) as caught:
        await backend.client.chat.completions.create(**CALL)
    await backend.aclose()
    assert not isinstance(caught.value, openai.APITimeoutError)
    assert "could not be reached" in backend_error_message(caught.value)


async def test_a_backend_slow_to_answer_is_a_timeout(fake_llm: FakeLLM) -> None:
    fake_llm.backend.script(Reply.text("Late.", first_byte_delay=3.0))
    backend = _backend(fake_llm.v1, read_timeout=0.3)
    assert backend.client is not None
    started = time.monotonic()
    with pytest.raises(openai.APITimeoutError) as caught:
        await backend.client.chat.completions.create(**CALL)
    await backend.aclose()
    assert time.monotonic() - started < 2.0
    assert "did not answer in time" in backend_error_message(caught.value)


@pytest.mark.parametrize(
    ("reply", "error", "message"),
    [
        # An error event mid-stream, as vLLM and LiteLLM send one.
        (
            Reply.text("Partial answer", error_event="model crashed"),
            openai.APIError,
            "model crashed",
        ),
        # A dropped connection.
        (Reply.count(20, drop_after=3), openai.APIConnectionError, None),
    ],
)
async def test_a_stream_failing_midway_raises_as_the_client_would(
    fake_llm: FakeLLM, reply: Reply, error: type[openai.APIError], message: str | None
) -> None:
    fake_llm.backend.script(reply)
    backend = _backend(fake_llm.v1)
    assert backend.client is not None
    stream = await backend.client.chat.completions.create(**CALL)
    with pytest.raises(error, match=message):
        await _text(stream)
    await backend.aclose()


async def test_closing_the_stream_stops_the_backend(fake_llm: FakeLLM) -> None:
    fake_llm.backend.script(Reply.count(500, delay=0.01))
    backend = _backend(fake_llm.v1)
    assert backend.client is not None
    stream = await backend.client.chat.completions.create(**CALL)
    async for _chunk in stream:
        break
    await stream.close()
    record = await fake_llm.backend.wait_for_stream_end()
    await backend.aclose()
    assert record.disconnected
    assert not record.completed
    assert record.tokens_sent < 100


async def test_copies_of_a_client_share_one_prepared_request(fake_llm: FakeLLM) -> None:
    fake_llm.backend.script(*(Reply.text(f"{n}.") for n in range(5)))
    backend = _backend(fake_llm.v1)
    client = backend.client
    assert client is not None
    assert backend.direct is not None
    for n in range(5):
        run_client = client.for_run([{"role": "user", "content": f"earlier {n}"}])
        assert await _text(await run_client.chat.completions.create(**CALL)) == f"{n}."
    # One entry, not one per run: copies are made per run and would pile up.
    assert len(backend.direct._prepared) == 1
    # After the instructions, before the call's own messages.
    assert fake_llm.backend.requests[-1].body["messages"][1]["content"] == "earlier 4"
    await backend.aclose()


def test_earlier_turns_are_converted_once_each() -> None:
    from agents.models.chatcmpl_converter import Converter

    model = OpenAIChatCompletionsModel(model="m", openai_client=openai.AsyncOpenAI(api_key="k"))
    turns = ConvertedTurns()
    seen: list[int] = []

    def convert(items: Any) -> list[dict[str, Any]]:
        seen.append(len(items))
        return Converter.items_to_messages(items)  # type: ignore[return-value]

    def turn(n: int) -> list[Any]:
        return [
            {"role": "user", "content": f"q{n}", "type": "message"},
            {"type": "function_call", "call_id": f"c{n}", "name": "f", "arguments": "{}"},
            {"type": "function_call_output", "call_id": f"c{n}", "output": "x"},
            {"role": "assistant", "content": f"a{n}", "type": "message"},
        ]

    one, two, three = turn(1), turn(2), turn(3)
    assert turns.convert(model, one, convert) == Converter.items_to_messages(one)
    grown = one + two
    assert turns.convert(model, grown, convert) == Converter.items_to_messages(grown)
    assert seen == [4, 4]  # the second call converted only the new turn
    slid = two + three  # the window lost its oldest turn and gained one
    assert turns.convert(model, slid, convert) == Converter.items_to_messages(slid)
    assert seen == [4, 4, 4]
    # Equal but not the same objects (an edited or reloaded history): again.
    copied = [dict(item) for item in slid]
    assert turns.convert(model, copied, convert) == Converter.items_to_messages(slid)
    assert seen == [4, 4, 4, 4, 4]
    # A turn that grew (an answer added to it) is converted again.
    longer = [*three, {"role": "assistant", "content": "more", "type": "message"}]
    assert turns.convert(model, longer, convert) == Converter.items_to_messages(longer)
    assert seen[-1] == 5
