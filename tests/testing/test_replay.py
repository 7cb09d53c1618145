"""The replay server: answers from fixtures, explicit matching, clear mismatches, timing."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import anyio
import httpx
import pytest
from openai import APIConnectionError, AsyncOpenAI

from chatkit_server.testing.fake_backend import FakeBackend, Reply
from chatkit_server.testing.fixtures import load_exchanges
from chatkit_server.testing.live import serve_app
from chatkit_server.testing.recorder import Recorder
from chatkit_server.testing.replay import ReplayBackend, request_key, request_view

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
VLLM_TOOLS = FIXTURES / "hand-written" / "chat-tool-call-vllm"


def _chat(text: str) -> dict[str, object]:
    return {"model": "m", "stream": True, "messages": [{"role": "user", "content": text}]}


async def _record(tmp_path: Path, *replies: Reply, texts: tuple[str, ...]) -> Path:
    backend = FakeBackend()
    backend.script(*replies)
    async with serve_app(backend.app) as url:
        recorder = Recorder(f"{url}/v1", tmp_path)
        async with serve_app(recorder.app) as proxy, httpx.AsyncClient() as http:
            for text in texts:
                await http.post(f"{proxy}/v1/chat/completions", json=_chat(text))
    return tmp_path


async def test_replays_the_recorded_bytes_in_sequence(tmp_path: Path) -> None:
    fixtures = await _record(tmp_path, Reply.text("One."), Reply.text("Two."), texts=("a", "b"))
    replay = ReplayBackend(fixtures)
    async with serve_app(replay.app) as url, httpx.AsyncClient() as http:
        first = await http.post(f"{url}/v1/chat/completions", json=_chat("a"))
        second = await http.post(f"{url}/v1/chat/completions", json=_chat("b"))
    recorded = load_exchanges(fixtures)
    assert (first.content, second.content) == (recorded[0].body, recorded[1].body)
    assert [r.fixture for r in replay.received] == [e.name for e in recorded]
    assert replay.received[1].body["messages"][0]["content"] == "b"
    replay.assert_all_used()


async def test_a_mismatch_is_a_409_with_a_diff_and_is_kept(tmp_path: Path) -> None:
    fixtures = await _record(tmp_path, Reply.text("One."), texts=("a",))
    replay = ReplayBackend(fixtures)
    async with serve_app(replay.app) as url, httpx.AsyncClient() as http:
        resp = await http.post(f"{url}/v1/chat/completions", json=_chat("something else"))
        extra = await http.post(f"{url}/v1/chat/completions", json=_chat("a"))
        again = await http.post(f"{url}/v1/chat/completions", json=_chat("a"))
    assert resp.status_code == 409
    message = resp.json()["error"]["message"]
    assert "--- expected (0001-chat-completions)" in message
    assert '-      "content": "a"' in message
    assert '+      "content": "something else"' in message
    assert extra.status_code == 200
    assert again.status_code == 409
    assert "no fixture left" in again.json()["error"]["message"]
    assert [r.fixture for r in replay.received] == [None, "0001-chat-completions", None]
    assert len(replay.mismatches) == 2
    with pytest.raises(AssertionError, match="something else"):
        replay.assert_all_used()


async def test_key_matching_ignores_order_and_ids(tmp_path: Path) -> None:
    fixtures = await _record(tmp_path, Reply.text("One."), Reply.text("Two."), texts=("a", "b"))
    replay = ReplayBackend(fixtures, match="key")
    async with serve_app(replay.app) as url, httpx.AsyncClient() as http:
        second = await http.post(f"{url}/v1/chat/completions", json=_chat("b"))
        first = await http.post(f"{url}/v1/chat/completions", json=_chat("a"))
    assert b"Two." in second.content
    assert b"One." in first.content
    replay.assert_all_used()
    # Ids and nulls are left out of the key: they differ between runs.
    body = {"model": "m", "input": [{"id": "msg_1", "role": "user", "content": "x", "x": None}]}
    renamed = {"model": "m", "input": [{"id": "msg_2", "role": "user", "content": "x"}]}
    assert request_key("POST", "/v1/responses", body) == request_key(
        "POST", "/v1/responses", renamed
    )
    assert request_view("POST", "/v1/responses", body)["input"] == [
        {"role": "user", "content": "x"}
    ]


def _retimed(into: Path, last_ms: float) -> Path:
    """A copy of the vLLM tool-call fixture, its chunks spread evenly up to ``last_ms``."""
    shutil.copytree(VLLM_TOOLS, into)
    [path] = into.glob("*/response.json")
    response = json.loads(path.read_text(encoding="utf-8"))
    count = len(response["chunks"])
    response["chunks"] = [
        [last_ms * (i + 1) / count, size] for i, (_, size) in enumerate(response["chunks"])
    ]
    path.write_text(json.dumps(response), encoding="utf-8")
    return into


async def test_realtime_sends_no_chunk_before_its_recorded_time(tmp_path: Path) -> None:
    replay = ReplayBackend(_retimed(tmp_path / "fixture", last_ms=300), speed="realtime")
    [exchange] = replay.exchanges
    arrivals: list[tuple[float, bytes]] = []
    async with serve_app(replay.app) as url, httpx.AsyncClient() as http:
        started = time.monotonic()
        async with http.stream("POST", f"{url}{exchange.path}", json=exchange.request_body) as r:
            async for data in r.aiter_raw():
                arrivals.append((time.monotonic() - started, data))
    assert b"".join(data for _, data in arrivals) == exchange.body
    # Lower bounds only (a byte may arrive late on a loaded machine, never early): the
    # last byte of each recorded chunk came no sooner than that chunk's recorded time.
    received = 0
    pending = list(exchange.chunks)
    end = 0
    for at, data in arrivals:
        received += len(data)
        while pending and end + pending[0][1] <= received:
            ms, size = pending.pop(0)
            end += size
            assert at >= ms / 1000 - 0.01, (at, ms)  # less a timer's slack
    assert pending == []


async def test_fast_ignores_the_recorded_timing(tmp_path: Path) -> None:
    # Recorded as taking an hour: only a replay that ignores the timing can finish; the
    # bound is a hang guard, not a speed check.
    replay = ReplayBackend(_retimed(tmp_path / "fixture", last_ms=3_600_000), speed="fast")
    [exchange] = replay.exchanges
    with anyio.fail_after(30):
        async with serve_app(replay.app) as url, httpx.AsyncClient() as http:
            resp = await http.post(f"{url}{exchange.path}", json=exchange.request_body)
    assert resp.status_code == 200
    assert resp.content == exchange.body
    replay.assert_all_used()


async def test_a_truncated_fixture_cuts_the_connection() -> None:
    replay = ReplayBackend(FIXTURES / "hand-written" / "chat-truncated", match="key")
    [exchange] = replay.exchanges
    async with serve_app(replay.app) as url:
        client = AsyncOpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
        body = exchange.request_body
        stream = await client.chat.completions.create(**body)
        texts: list[str | None] = []

        async def consume() -> None:
            async for chunk in stream:
                texts.append(chunk.choices[0].delta.content if chunk.choices else None)

        with pytest.raises(APIConnectionError):
            await consume()
        await client.close()
    assert "tok0 " in texts


@pytest.mark.parametrize("fixture", ["chat-tool-call-vllm", "chat-tool-call-ollama"])
async def test_tool_call_shapes_reach_the_openai_client_whole(fixture: str) -> None:
    replay = ReplayBackend(FIXTURES / "hand-written" / fixture)
    [exchange] = replay.exchanges
    assert exchange.source == "hand-written"
    async with serve_app(replay.app) as url:
        client = AsyncOpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
        stream = await client.chat.completions.create(**exchange.request_body)
        chunks = [chunk async for chunk in stream]
        await client.close()
    calls = [c for chunk in chunks for c in chunk.choices[0].delta.tool_calls or []]
    arguments = "".join(c.function.arguments or "" for c in calls if c.function)
    assert arguments == '{"order_id": "42"}'
    assert len(calls) > 1 if fixture.endswith("vllm") else len(calls) == 1
    replay.assert_all_used()


def test_bad_options_are_refused() -> None:
    with pytest.raises(ValueError, match="match"):
        ReplayBackend(VLLM_TOOLS, match="random")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="speed"):
        ReplayBackend(VLLM_TOOLS, speed="slow")  # type: ignore[arg-type]
