"""Backends: clients with explicit timeouts that send history without re-transforming it."""

from __future__ import annotations

from typing import Any

import pytest

from chatkit_server.backends import Backend, BackendConfig, LeanAsyncOpenAI
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
