"""The batching SSE response: ready frames share a write, nothing waits behind a wait."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from starlette.types import Message

from chatkit_server.http.sse import BatchedStreamingResponse, next_or_flush

SCOPE: dict[str, Any] = {"type": "http", "asgi": {"spec_version": "2.3"}}


class Recorder:
    """An ASGI ``send`` keeping the body messages, and a ``receive`` that never disconnects."""

    def __init__(self) -> None:
        self.bodies: list[tuple[bytes, bool]] = []
        self.started = False

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
        else:
            self.bodies.append((message["body"], message["more_body"]))

    async def receive(self) -> Message:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def test_frames_made_without_waiting_share_one_write() -> None:
    gate = asyncio.Event()
    written_before_gate: list[list[tuple[bytes, bool]]] = []

    class GateOpener(Recorder):
        async def send(self, message: Message) -> None:
            await super().send(message)
            if self.bodies and self.bodies[-1][0] == b"cd" and not gate.is_set():
                # The stream now waits on the gate: "d" had to be written first.
                written_before_gate.append(list(self.bodies))
                gate.set()

    async def frames() -> AsyncIterator[bytes]:
        yield b"a"
        yield b"b"
        await asyncio.sleep(0)  # a wait that is over at once still lets them out
        yield b"c"
        yield b"d"
        await gate.wait()
        yield b"e"
        yield b"f"

    recorder = GateOpener()
    response = BatchedStreamingResponse(frames(), media_type="text/event-stream")
    await asyncio.wait_for(response(SCOPE, recorder.receive, recorder.send), 5)
    assert recorder.started
    assert written_before_gate == [[(b"ab", True), (b"cd", True)]]
    # The last batch and the end of the body are one message.
    assert recorder.bodies == [(b"ab", True), (b"cd", True), (b"ef", False)]


async def test_headers_wait_for_the_first_frame() -> None:
    recorder = Recorder()
    before_first: list[bool] = []
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    async def frames() -> AsyncIterator[bytes]:
        await ready  # work before the first frame (an answer's model request)
        before_first.append(recorder.started)
        yield b"a"

    response = BatchedStreamingResponse(frames(), media_type="text/event-stream")
    task = asyncio.create_task(response(SCOPE, recorder.receive, recorder.send))
    await asyncio.sleep(0.01)
    assert not recorder.started
    ready.set_result(None)
    await asyncio.wait_for(task, 5)
    assert before_first == [False]
    assert recorder.started
    assert recorder.bodies == [(b"a", False)]


async def test_a_stream_without_frames_still_sends_its_headers() -> None:
    async def frames() -> AsyncIterator[bytes]:
        return
        yield b""

    recorder = Recorder()
    response = BatchedStreamingResponse(frames(), media_type="text/event-stream")
    await asyncio.wait_for(response(SCOPE, recorder.receive, recorder.send), 5)
    assert recorder.started
    assert recorder.bodies == [(b"", False)]


async def test_values_and_errors_of_the_wait_reach_the_stream() -> None:
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[bytes] = loop.create_future()
    failure: asyncio.Future[bytes] = loop.create_future()
    caught: list[str] = []

    async def frames() -> AsyncIterator[bytes]:
        yield b"1"
        yield await answer
        try:
            await failure
        except ValueError as exc:
            caught.append(str(exc))
        yield b"3"

    flushed: list[bytes] = []
    pending: list[bytes] = []

    async def flush() -> None:
        flushed.append(b"".join(pending))
        pending.clear()

    it = aiter(frames())
    pending.append(await next_or_flush(it, pending, flush))
    loop.call_later(0.01, answer.set_result, b"2")
    pending.append(await next_or_flush(it, pending, flush))
    assert flushed == [b"1"]
    loop.call_later(0.01, failure.set_exception, ValueError("backend said no"))
    assert await next_or_flush(it, pending, flush) == b"3"
    assert caught == ["backend said no"]
    assert flushed == [b"1", b"2"]
    with pytest.raises(StopAsyncIteration):
        await next_or_flush(it, [], flush)


async def test_cancelling_the_stream_cancels_the_wait_inside_the_frames() -> None:
    # Stop (the client leaves) must reach the answer where it waits, so it
    # can save the partial answer and stop the backend.
    reached = asyncio.Event()
    outcome: list[str] = []
    recorder = Recorder()

    async def frames() -> AsyncIterator[bytes]:
        yield b"partial"
        reached.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            outcome.append("cancelled")
            raise
        yield b"never"

    response = BatchedStreamingResponse(frames(), media_type="text/event-stream")
    task = asyncio.create_task(response(SCOPE, recorder.receive, recorder.send))
    await reached.wait()
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert outcome == ["cancelled"]
    assert recorder.bodies == [(b"partial", True)]


async def test_a_failed_write_cancels_the_waiting_frames_and_is_raised() -> None:
    outcome: list[str] = []

    async def frames() -> AsyncIterator[bytes]:
        yield b"x"
        try:
            await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            outcome.append("cancelled")
            raise
        yield b"y"

    async def broken_flush() -> None:
        raise OSError("client went away")

    it = aiter(frames())
    pending = [await next_or_flush(it, [], broken_flush)]
    with pytest.raises(OSError, match="client went away"):
        await next_or_flush(it, pending, broken_flush)
    assert outcome == ["cancelled"]
    with pytest.raises(StopAsyncIteration):  # the frames ended with the cancellation
        await anext(it)
