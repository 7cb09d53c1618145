"""Backpressure: ``Pace`` alone, then a whole answer read by a client that stalls."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from chatkit.types import AssistantMessageItem, ThreadItem

from chatkit_server import pace as pace_module
from chatkit_server.llm import client as client_module
from chatkit_server.llm.client import BackendClient
from chatkit_server.llm.wire import merge_chat_text
from chatkit_server.pace import PACE_ARGUMENT, READ_SPACING, UNSPACED_STREAMS, Pace
from chatkit_server.settings import Settings
from chatkit_server.testing.client import user_input
from chatkit_server.testing.fake_backend import Reply
from chatkit_server.testing.live import serve_app
from tests.live import LOCAL, FakeLLM, Live, LiveFactory


async def _held_until(pace: Pace, release: Callable[[], None]) -> None:
    """Check that a read waits until ``release()``, and then goes on."""
    read = asyncio.ensure_future(pace.before_read())
    await asyncio.sleep(0.01)
    assert not read.done()

    release()
    await asyncio.wait_for(read, 1)


async def test_the_reader_waits_until_the_consumer_took_what_was_queued() -> None:
    pace = Pace()
    await asyncio.wait_for(pace.before_read(), 1)  # no consumer yet: nothing waits
    pace.queued()
    await _held_until(pace, pace.caught_up)


async def test_a_read_that_queued_nothing_does_not_hold_the_reader() -> None:
    pace = Pace()
    pace.queued()
    pace.caught_up()
    # The consumer waits; reads that give it no event go on one after another.
    for _ in range(3):
        await asyncio.wait_for(pace.before_read(), 1)


async def _read_times(pace: Pace, reads: int) -> list[float]:
    """When each of ``reads`` reads was let go, each one's events taken at once."""
    loop = asyncio.get_running_loop()
    times = []
    for _ in range(reads):
        await asyncio.wait_for(pace.before_read(), 5)
        times.append(loop.time())
        pace.queued(text=True)
        pace.caught_up()
    return times


async def test_under_load_the_reads_of_a_flowing_answer_are_spaced_out() -> None:
    streams = UNSPACED_STREAMS + 100
    pace = Pace(streams=lambda: streams)
    times = await _read_times(pace, 3)
    spacing = READ_SPACING * 100
    # Lower bounds only: a loaded machine may take longer, never less.
    assert times[1] - times[0] >= spacing * 0.99
    assert times[2] - times[1] >= spacing * 0.99


async def test_reads_are_not_spaced_before_text_flows_or_while_the_process_is_quiet(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # So long that a spaced read would time out.
    monkeypatch.setattr(pace_module, "READ_SPACING", 60.0)
    busy = Pace(streams=lambda: UNSPACED_STREAMS + 1)
    for _ in range(3):
        # The answer's first text is not held back, however busy the process.
        await asyncio.wait_for(busy.before_read(), 5)
        busy.queued()
        busy.caught_up()
    quiet = Pace(streams=lambda: UNSPACED_STREAMS)
    await _read_times(quiet, 3)
    unknown = Pace()
    await _read_times(unknown, 3)


async def test_the_spacing_has_a_ceiling(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pace_module, "MAX_READ_SPACING", 0.05)
    pace = Pace(streams=lambda: 10**9)  # past any sensible spacing
    times = await _read_times(pace, 2)
    assert times[1] - times[0] >= 0.05 * 0.99


async def test_a_held_output_holds_the_reader_until_released() -> None:
    pace = Pace()
    pace.hold()
    await _held_until(pace, pace.release)


async def test_the_model_being_asked_is_signalled_once_the_request_is_built(
    fake_llm: FakeLLM,
) -> None:
    fake_llm.backend.script(Reply.text("Fine."))
    pace = Pace()
    client = BackendClient(base_url=fake_llm.v1, api_key="k", max_retries=0)
    assert not await pace.wait_asked(0.01)  # bounded: a run that never asks

    async def ask() -> str:
        stream = await client.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": "Hi"}],
            stream=True,
            **{PACE_ARGUMENT: pace},  # type: ignore[arg-type]
        )
        return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    try:
        answer = asyncio.create_task(ask())
        assert await pace.wait_asked(5.0)
        assert await answer == "Fine."
    finally:
        await client.close()
    # The pace itself never reaches the backend.
    assert PACE_ARGUMENT not in fake_llm.backend.requests[-1].body


# An answer far longer than what the socket buffers between client and
# server hold.
LONG_ANSWER = 50_000
# The server's socket buffer: the kernel's own sizing would take megabytes of
# the answer before the server has to hold anything.
SEND_BUFFER = 16 * 1024


@asynccontextmanager
async def _stalled_stream(live: Live) -> AsyncIterator[tuple[asyncio.StreamReader, int]]:
    """A ``threads.create`` whose client reads the headers and then nothing.

    Its receive buffer is small, so the server's socket fills after a few
    kilobytes and the server has to hold the rest (or not read it).
    """
    host, port = live.url.removeprefix("http://").split(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
    reader, writer = await asyncio.open_connection(sock=sock)
    body = json.dumps({"type": "threads.create", "params": {"input": user_input("go")}}).encode()
    writer.write(
        b"POST /chatkit HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    await writer.drain()
    status = await reader.readline()
    try:
        yield reader, int(status.split()[1])
    finally:
        writer.close()
        await writer.wait_closed()


@pytest.fixture
def events_read(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A count of the events (tokens) every server in this test has read from its backend.

    Counted before the text of each read is merged, which makes them fewer chunks.
    """
    count = [0]

    def counted(values: list[Any]) -> list[Any]:
        count[0] += len(values)
        return merge_chat_text(values)

    monkeypatch.setattr(client_module, "merge_chat_text", counted)
    return count


async def _settled(count: list[int], *, every: float = 1.0, within: float = 60) -> int:
    """``count[0]`` once it stopped growing for ``every`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    last = -1
    while loop.time() < deadline:
        if count[0] == last and last > 0:
            return last
        last = count[0]
        await asyncio.sleep(every)
    raise AssertionError(f"the backend was still being read: {count[0]} events")


async def _wait_for_answer(live: Live) -> list[ThreadItem]:
    for _ in range(200):
        threads = await live.store.load_threads(10, None, "desc", LOCAL)
        if threads.data:
            page = await live.store.load_thread_items(threads.data[0].id, None, 50, "asc", LOCAL)
            if any(isinstance(item, AssistantMessageItem) for item in page.data):
                return page.data
        await asyncio.sleep(0.05)
    raise AssertionError("the partial answer was not saved")


def _chunk_event(delta: dict[str, Any], finish: str | None = None) -> bytes:
    chunk = {
        "id": "chatcmpl-quiet",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


async def _eventless_chunks_backend(scope: Any, receive: Any, send: Any) -> None:
    """A Chat Completions stream with chunks the Agents SDK makes no event of, each sent alone."""
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    headers = [(b"content-type", b"text/event-stream")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    parts = [
        _chunk_event({"role": "assistant", "content": "Hel"}),
        _chunk_event({}),  # no text, no call: nothing for the SDK to report
        _chunk_event({"content": None}),
        _chunk_event({"content": "lo"}),
        _chunk_event({}, finish="stop"),
        b"data: [DONE]\n\n",
    ]
    for part in parts:
        await send({"type": "http.response.body", "body": part, "more_body": True})
        await asyncio.sleep(0.05)  # a read each
    await send({"type": "http.response.body", "body": b""})


async def test_chunks_that_give_the_sdk_no_event_do_not_stop_the_reads(
    start_live: LiveFactory, live_settings: Settings
) -> None:
    async with serve_app(_eventless_chunks_backend) as backend:
        settings = live_settings.with_changes(llm_base_url=f"{backend}/v1")
        async with start_live(settings) as live:
            turn = await asyncio.wait_for(live.client.create_thread("Hi"), 10)

    assert turn.errors == []
    assert turn.assistant_text == "Hello"


async def test_a_client_that_reads_nothing_holds_the_backend_back(
    start_live: LiveFactory, live_settings: Settings, fake_llm: FakeLLM, events_read: list[int]
) -> None:
    fake_llm.backend.script(Reply.count(LONG_ANSWER))
    # Neither cap may end the answer first; the backend's silence while it is
    # held back is not its fault.
    settings = live_settings.with_changes(answer_max_chars=0, llm_read_timeout=60.0)
    async with start_live(settings, send_buffer=SEND_BUFFER) as live:
        async with _stalled_stream(live) as (_reader, status):
            assert status == 200
            # The reads stop while the stream is still open: only what the
            # client's socket and a bounded backlog hold was read.
            read = await _settled(events_read)
            assert read < LONG_ANSWER / 5
            # (The backend may have sent it all: the kernel buffers between
            # it and the server hold megabytes. What the server read counts.)
            assert not fake_llm.backend.streams[-1].disconnected

        # The client left: what came is kept. (That the backend request is
        # cancelled on a stop is tested where stops are; here the kernel
        # buffers may already hold the whole answer, so the backend may not
        # see it.)
        items = await _wait_for_answer(live)
        answer = next(item for item in items if isinstance(item, AssistantMessageItem))
        assert answer.content[0].text.startswith("tok0 tok1 ")


async def test_a_client_that_takes_nothing_for_the_stall_timeout_is_let_go(
    start_live: LiveFactory,
    live_settings: Settings,
    fake_llm: FakeLLM,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="chatkit_server")
    fake_llm.backend.script(Reply.count(LONG_ANSWER))
    settings = live_settings.with_changes(
        stream_stall_timeout=1.0, answer_max_chars=0, llm_read_timeout=60.0
    )
    async with (
        start_live(settings, send_buffer=SEND_BUFFER) as live,
        _stalled_stream(live) as (reader, status),
    ):
        assert status == 200
        # The server gives up while this client still holds its socket open,
        # and saves the answer so far. (Whether the backend sees its request
        # cancelled depends on the kernel buffers, which may hold all of it.)
        for _ in range(600):
            if any("treated as gone" in record.getMessage() for record in caplog.records):
                break
            await asyncio.sleep(0.1)
        assert any("treated as gone" in record.getMessage() for record in caplog.records)
        items = await _wait_for_answer(live)
        # And the connection is closed: what the socket still held reads to its end.
        rest = await asyncio.wait_for(reader.read(), 30)
        assert rest.startswith(b"\r\n") or b"data: " in rest

        # The thread takes its next message.
        turn = await live.client.add_message(items[0].thread_id, "again")
        assert turn.errors == []
