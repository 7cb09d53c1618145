"""llm/client.py: a request reset before its answer is sent once more, never an answer."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator

import openai
import pytest
from openai import DefaultAioHttpClient, Timeout
from openai.types.chat import ChatCompletionChunk

from chatkit_server.llm.backends import BACKEND_KEEPALIVE_SECONDS, Backend, BackendConfig
from chatkit_server.llm.client import BackendClient, reset_before_answer
from chatkit_server.testing.fake_backend import Reply
from tests.live import FakeLLM

_MESSAGES = [{"role": "user", "content": "Hi"}]


class ResettingProxy:
    """A TCP proxy to the fake backend that resets its first ``resets`` connections.

    Each reset comes once the request has started to arrive, with no byte of
    an answer: what a backend does to a kept-alive connection it has just
    closed.
    """

    def __init__(self, target_port: int, resets: int) -> None:
        self.target_port = target_port
        self.resets = resets
        self.connections = 0
        self.server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/v1"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self.connections <= self.resets:
            await reader.read(1)
            sock = writer.get_extra_info("socket")
            # Linger 0: close() sends a RST, as a reset connection does.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.close()
            return
        upstream_reader, upstream_writer = await asyncio.open_connection(
            "127.0.0.1", self.target_port
        )

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.close()

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[ResettingProxy]:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        async with self.server:
            yield self


def _client(url: str) -> BackendClient:
    timeout = Timeout(5.0, connect=2.0)
    return BackendClient(
        base_url=url,
        api_key="k",
        max_retries=0,
        timeout=timeout,
        http_client=DefaultAioHttpClient(timeout=timeout),
    )


def _port(fake_llm: FakeLLM) -> int:
    return int(fake_llm.url.rsplit(":", 1)[1])


@pytest.mark.parametrize("stream", [True, False])
async def test_a_request_reset_before_its_answer_is_sent_once_more(
    fake_llm: FakeLLM, stream: bool
) -> None:
    fake_llm.backend.script(Reply.text("Hello there"))
    async with ResettingProxy(_port(fake_llm), resets=1).running() as proxy:
        client = _client(proxy.url)
        try:
            answer = await client.chat.completions.create(
                model="m", messages=_MESSAGES, stream=stream
            )
            if stream:
                text = "".join(
                    [
                        chunk.choices[0].delta.content or ""
                        async for chunk in answer
                        if chunk.choices
                    ]
                )
            else:
                text = answer.choices[0].message.content
        finally:
            await client.close()

    assert text == "Hello there"
    assert proxy.connections == 2
    assert len(fake_llm.backend.requests) == 1


async def test_a_second_reset_is_the_callers_error(fake_llm: FakeLLM) -> None:
    async with ResettingProxy(_port(fake_llm), resets=2).running() as proxy:
        client = _client(proxy.url)
        try:
            with pytest.raises(openai.APIConnectionError) as raised:
                await client.chat.completions.create(model="m", messages=_MESSAGES, stream=True)
        finally:
            await client.close()

    assert reset_before_answer(raised.value)
    assert proxy.connections == 2
    assert fake_llm.backend.requests == []


async def _read_into(stream: AsyncIterator[ChatCompletionChunk], seen: list[str]) -> None:
    async for chunk in stream:
        if chunk.choices:
            seen.append(chunk.choices[0].delta.content or "")


async def test_an_answer_that_breaks_off_is_never_sent_again(fake_llm: FakeLLM) -> None:
    fake_llm.backend.script(Reply.count(10, drop_after=3))
    client = _client(fake_llm.v1)
    seen: list[str] = []
    try:
        stream = await client.chat.completions.create(model="m", messages=_MESSAGES, stream=True)
        with pytest.raises(openai.APIError):
            await _read_into(stream, seen)
    finally:
        await client.close()

    assert "".join(seen) == "tok0 tok1 tok2 "
    assert len(fake_llm.backend.requests) == 1


async def test_a_backend_that_is_down_is_not_tried_twice() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once closed
    client = _client(f"http://127.0.0.1:{port}/v1")
    try:
        with pytest.raises(openai.APIConnectionError) as raised:
            await client.chat.completions.create(model="m", messages=_MESSAGES, stream=True)
    finally:
        await client.close()
    assert not reset_before_answer(raised.value)


async def test_an_idle_backend_connection_is_dropped_before_servers_drop_theirs(
    fake_llm: FakeLLM,
) -> None:
    fake_llm.backend.script(Reply.text("one"), Reply.text("two"), Reply.text("three"))
    async with ResettingProxy(_port(fake_llm), resets=0).running() as proxy:
        backend = Backend(BackendConfig(name="b", base_url=proxy.url, api_key="k"))
        assert backend.client is not None
        try:
            for pause in (0.0, BACKEND_KEEPALIVE_SECONDS + 0.5):
                await asyncio.sleep(pause)
                await backend.client.chat.completions.create(model="m", messages=_MESSAGES)
            await backend.client.chat.completions.create(model="m", messages=_MESSAGES)
        finally:
            await backend.aclose()
    # Back to back: one connection. After an idle spell (still shorter than
    # the 5 s after which uvicorn, serving vLLM, and llama-server close
    # theirs) a new one, then that one is reused.
    assert BACKEND_KEEPALIVE_SECONDS < 5
    assert proxy.connections == 2
