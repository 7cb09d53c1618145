"""The recording proxy: bytes pass through unchanged and land in readable fixtures."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from openai import APIConnectionError, AsyncOpenAI, InternalServerError

from chatkit_server.testing.fake_backend import FakeBackend, Reply
from chatkit_server.testing.fixtures import load_exchanges, parse_sse
from chatkit_server.testing.live import serve_app
from chatkit_server.testing.recorder import Recorder

MESSAGES = [{"role": "user", "content": "Hi"}]


def _all_text(directory: Path) -> str:
    return "".join(p.read_text() for p in directory.rglob("*") if p.is_file())


async def test_a_stream_is_recorded_byte_for_byte_with_chunk_timing(tmp_path: Path) -> None:
    backend = FakeBackend()
    backend.script(Reply.text("Hello there friend", delay=0.01))
    async with serve_app(backend.app) as url:
        recorder = Recorder(f"{url}/v1", tmp_path, note="unit test")
        async with serve_app(recorder.app) as proxy, httpx.AsyncClient() as http:
            body = {"model": "m", "messages": MESSAGES, "stream": True}
            async with http.stream("POST", f"{proxy}/v1/chat/completions", json=body) as resp:
                received = b"".join([chunk async for chunk in resp.aiter_raw()])
                assert resp.headers["content-type"].startswith("text/event-stream")

    [exchange] = load_exchanges(tmp_path)
    assert exchange.name == "0001-chat-completions"
    assert exchange.body == received
    assert exchange.streamed
    assert not exchange.truncated
    assert exchange.request_body == body
    assert exchange.meta["source"] == "recorded"
    assert exchange.meta["note"] == "unit test"
    assert sum(size for _, size in exchange.chunks) == len(received)
    times = [ms for ms, _ in exchange.chunks]
    assert times == sorted(times)
    # Three tokens 10 ms apart: the timing is real, not all zero.
    assert times[-1] - times[0] >= 15
    events = parse_sse(exchange.body)
    assert events[-1] == (None, "[DONE]")
    # Files a person can read.
    request = json.loads((tmp_path / exchange.name / "request.json").read_text())
    assert request["path"] == "/v1/chat/completions"


async def test_credentials_are_not_written(tmp_path: Path) -> None:
    backend = FakeBackend()
    async with serve_app(backend.app) as url:
        recorder = Recorder(f"{url}/v1", tmp_path)
        async with serve_app(recorder.app) as proxy:
            client = AsyncOpenAI(base_url=f"{proxy}/v1", api_key="sk-secret", max_retries=0)
            await client.chat.completions.create(model="m", messages=MESSAGES)  # type: ignore[arg-type]
            await client.close()
    # The upstream got the key; the fixture did not.
    assert backend.requests[0].headers["authorization"] == "Bearer sk-secret"
    assert "sk-secret" not in _all_text(tmp_path)
    [exchange] = load_exchanges(tmp_path)
    assert exchange.body_file == "body.json"
    assert json.loads(exchange.body)["choices"][0]["message"]["content"]


async def test_an_error_status_and_a_cut_stream_are_recorded_as_such(tmp_path: Path) -> None:
    backend = FakeBackend()
    backend.script(Reply(status=503, error_message="busy"), Reply.count(5, drop_after=2))
    async with serve_app(backend.app) as url:
        recorder = Recorder(f"{url}/v1", tmp_path)
        async with serve_app(recorder.app) as proxy:
            client = AsyncOpenAI(base_url=f"{proxy}/v1", api_key="x", max_retries=0)
            with pytest.raises(InternalServerError):
                await client.chat.completions.create(model="m", messages=MESSAGES)  # type: ignore[arg-type]
            stream = await client.chat.completions.create(
                model="m",
                messages=MESSAGES,  # type: ignore[arg-type]
                stream=True,
            )
            # The client sees the cut, as it would from the upstream itself.
            with pytest.raises(APIConnectionError):
                async for _ in stream:
                    pass
            await client.close()

    error, cut = load_exchanges(tmp_path)
    assert error.status == 503
    assert json.loads(error.body)["error"]["message"] == "busy"
    assert cut.truncated
    assert b"[DONE]" not in cut.body
    assert b"tok1" in cut.body


async def test_numbering_continues_in_a_directory_that_has_fixtures(tmp_path: Path) -> None:
    backend = FakeBackend()
    async with serve_app(backend.app) as url:
        for _ in range(2):
            recorder = Recorder(f"{url}/v1", tmp_path)
            async with serve_app(recorder.app) as proxy, httpx.AsyncClient() as http:
                await http.post(f"{proxy}/v1/responses", json={"model": "m", "input": "Hi"})
    assert [e.name for e in load_exchanges(tmp_path)] == ["0001-responses", "0002-responses"]


async def test_an_unreachable_upstream_is_a_502_naming_it(tmp_path: Path) -> None:
    recorder = Recorder("http://127.0.0.1:9/v1", tmp_path)
    async with serve_app(recorder.app) as proxy, httpx.AsyncClient() as http:
        resp = await http.post(f"{proxy}/v1/chat/completions", json={"model": "m"})
    assert resp.status_code == 502
    assert "127.0.0.1:9" in resp.json()["error"]["message"]
    assert _all_text(tmp_path) == ""


async def test_a_client_that_stops_stops_the_upstream_and_is_recorded(tmp_path: Path) -> None:
    backend = FakeBackend()
    # Far more tokens than a test would wait for: the upstream stream can only end early
    # because the recorder passed the disconnect on (the wait below is a hang guard).
    backend.script(Reply.count(10_000, delay=0.01))
    async with serve_app(backend.app) as url:
        recorder = Recorder(f"{url}/v1", tmp_path)
        async with serve_app(recorder.app) as proxy, httpx.AsyncClient() as http:
            body = {"model": "m", "messages": MESSAGES, "stream": True}
            async with http.stream("POST", f"{proxy}/v1/chat/completions", json=body) as resp:
                async for _ in resp.aiter_raw():
                    break  # like pressing stop
            record = await backend.wait_for_stream_end(timeout=30.0)
        # The proxy's shutdown waited for the request to end, so the fixture is written.
    # The upstream was told: it stopped before the end of its answer.
    assert record.disconnected
    assert not record.completed
    assert record.tokens_sent < 10_000
    [exchange] = load_exchanges(tmp_path)
    assert exchange.truncated
    assert exchange.meta["client_disconnected"] is True
