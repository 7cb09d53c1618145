"""Timed HTTP calls for the benchmark: backend streams, ChatKit streams, JSON requests.

Private to ``bench/bench_streaming.py``. Both kinds of stream are read the
same way (raw bytes, split into SSE events, each event's JSON decoded), so a
ratio of ChatKit to backend times compares servers, not parsers. The parser
is deliberately lighter than ``chatkit_server.testing.client.ChatKitClient``
(which validates every event with the SDK's pydantic types), and the HTTP
client is aiohttp: with 500 streams on two cores, httpx alone took most of
a core to read them, CPU the server under test could not use.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp

TEXT_DELTA = "assistant_message.content_part.text_delta"
CHATKIT_HEADERS = {
    "content-type": "application/json",
    # The web component sends it on every request; send it too.
    "chatkit-frame-instance-id": uuid.uuid4().hex,
}


@dataclass
class Timing:
    """One timed request, all times in seconds from just before sending it.

    Attributes:
        total: Until the response body ended.
        first: Until the first content token (backend chunk or ChatKit text delta).
        tokens: Content tokens received.
        deltas: Content deltas (chunks or ChatKit text deltas) they came in.
        gap: The longest wait between two content deltas.
        last: Until the last content delta so far.
        error: Why the request failed (HTTP status, ``error`` event, exception).
        thread_id: The thread a ``threads.create`` made.
    """

    total: float = math.nan
    first: float = math.nan
    tokens: int = 0
    deltas: int = 0
    gap: float = 0.0
    last: float = math.nan
    error: str | None = None
    thread_id: str | None = None


def user_input(text: str) -> dict[str, Any]:
    """The ``input`` of a text message, as the browser sends it."""
    return {
        "content": [{"type": "input_text", "text": text}],
        "attachments": [],
        "quoted_text": None,
        "inference_options": {},
    }


async def _events(response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    """The ``data`` payload of each SSE event, as it arrives."""
    buffer = b""
    async for chunk in response.content.iter_any():
        buffer += chunk
        while True:
            end = buffer.find(b"\n\n")
            if end < 0:
                break
            block, buffer = buffer[:end], buffer[end + 2 :]
            data = [line[5:].lstrip() for line in block.split(b"\n") if line.startswith(b"data:")]
            if data:
                yield b"\n".join(data)


def _count(timing: Timing, text: str | None, start: float) -> None:
    """Count the fake backend's tokens (``"tok0 "``, ``"tok1 "`` ...) in one delta.

    Words, not deltas: the server merges deltas that reach it together.
    """
    if not text:
        return
    now = time.perf_counter() - start
    if timing.tokens == 0:
        timing.first = now
    else:
        timing.gap = max(timing.gap, now - timing.last)
    timing.last = now
    timing.tokens += len(text.split())
    timing.deltas += 1


async def backend_stream(client: aiohttp.ClientSession, base_url: str) -> Timing:
    """Stream one Chat Completions answer straight from the backend, to ``[DONE]``."""
    body = {
        "model": "fake-model",
        "messages": [{"role": "user", "content": "Benchmark question"}],
        "stream": True,
    }
    timing = Timing()
    start = time.perf_counter()
    try:
        async with client.post(f"{base_url}/v1/chat/completions", json=body) as resp:
            if resp.status >= 300:
                await resp.read()
                timing.error = f"HTTP {resp.status}"
                return timing
            done = False
            async for data in _events(resp):
                if data == b"[DONE]":
                    done = True
                    continue
                choices = json.loads(data).get("choices") or [{}]
                _count(timing, choices[0].get("delta", {}).get("content"), start)
            if not done:
                timing.error = "stream ended without [DONE]"
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        timing.error = f"{type(exc).__name__}: {exc}"
    timing.total = time.perf_counter() - start
    return timing


async def chatkit_stream(
    client: aiohttp.ClientSession,
    server_url: str,
    request_type: str,
    params: dict[str, Any],
    *,
    token: str | None = None,
) -> Timing:
    """Send one streaming ChatKit request and read its SSE answer to the end.

    ``token``: a bearer credential (a session's client secret).
    """
    content = json.dumps({"type": request_type, "params": params})
    timing = Timing()
    start = time.perf_counter()
    try:
        headers = CHATKIT_HEADERS
        if token is not None:
            headers = {**headers, "authorization": f"Bearer {token}"}
        async with client.post(f"{server_url}/chatkit", data=content, headers=headers) as resp:
            if resp.status >= 300:
                text = await resp.text()
                timing.error = f"HTTP {resp.status}: {text[:200]}"
                return timing
            async for data in _events(resp):
                event = json.loads(data)
                kind = event.get("type")
                if kind == "thread.item.updated":
                    if event["update"].get("type") == TEXT_DELTA:
                        _count(timing, event["update"].get("delta"), start)
                elif kind == "thread.created":
                    timing.thread_id = event["thread"]["id"]
                elif kind == "error":
                    timing.error = f"error event: {event.get('message')}"
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        timing.error = f"{type(exc).__name__}: {exc}"
    timing.total = time.perf_counter() - start
    return timing


async def create_thread(
    client: aiohttp.ClientSession, server_url: str, text: str, *, token: str | None = None
) -> Timing:
    """``threads.create`` with a text message, streamed to the end."""
    params = {"input": user_input(text)}
    return await chatkit_stream(client, server_url, "threads.create", params, token=token)


async def add_message(
    client: aiohttp.ClientSession,
    server_url: str,
    thread_id: str,
    text: str,
    *,
    token: str | None = None,
) -> Timing:
    """``threads.add_user_message`` on an existing thread, streamed to the end."""
    params = {"thread_id": thread_id, "input": user_input(text)}
    return await chatkit_stream(client, server_url, "threads.add_user_message", params, token=token)


async def chatkit_call(
    client: aiohttp.ClientSession, server_url: str, request_type: str, params: dict[str, Any]
) -> tuple[float, Any]:
    """Send one non-streaming ChatKit request; return (seconds, decoded JSON).

    Raises:
        RuntimeError: The server answered a non-2xx status.
    """
    content = json.dumps({"type": request_type, "params": params})
    start = time.perf_counter()
    async with client.post(f"{server_url}/chatkit", data=content, headers=CHATKIT_HEADERS) as resp:
        body = await resp.read()
    elapsed = time.perf_counter() - start
    if resp.status >= 300:
        raise RuntimeError(f"{request_type} answered HTTP {resp.status}: {body[:300]!r}")
    return elapsed, json.loads(body)


async def get_timed(client: aiohttp.ClientSession, url: str) -> float:
    """One GET, body read; seconds.

    Raises:
        RuntimeError: The server answered a non-2xx status.
    """
    start = time.perf_counter()
    async with client.get(url) as resp:
        await resp.read()
    elapsed = time.perf_counter() - start
    if resp.status >= 300:
        raise RuntimeError(f"GET {url} answered HTTP {resp.status}")
    return elapsed


def client(*, connections: int = 20, read_timeout: float = 60.0) -> aiohttp.ClientSession:
    """An HTTP client with room for ``connections`` concurrent requests.

    Create it inside the running event loop (``async with net.client() as http``).
    """
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=connections, limit_per_host=connections),
        timeout=aiohttp.ClientTimeout(total=None, connect=read_timeout, sock_read=read_timeout),
    )
