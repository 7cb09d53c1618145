"""The batching SSE response: ready frames share a write, nothing waits behind a wait."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from starlette.types import Message

from chatkit_server.http.sse import QUEUED_BYTES, BatchedStreamingResponse
from chatkit_server.pace import Pace

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

    class Broken(Recorder):
        async def send(self, message: Message) -> None:
            if message["type"] == "http.response.body":
                raise OSError("client went away")
            await super().send(message)

    async def frames() -> AsyncIterator[bytes]:
        yield b"x"
        try:
            await asyncio.sleep(1)
        except asyncio.CancelledError:
            outcome.append("cancelled")
            raise
        yield b"y"

    recorder = Broken()
    response = BatchedStreamingResponse(frames(), media_type="text/event-stream")
    with pytest.raises(OSError, match="client went away"):
        await asyncio.wait_for(response(SCOPE, recorder.receive, recorder.send), 5)
    assert outcome == ["cancelled"]


FRAME = b"." * 1024


async def test_a_slow_client_holds_the_answers_pace_within_a_bound() -> None:
    # Frames queue up to QUEUED_BYTES while the client's socket is busy; past
    # that the pace is held, which stops the answer's backend reads.
    produced: list[int] = []
    release = asyncio.Event()
    pace = Pace()  # no consumer queues anything: only the response holds it here

    class Slow(Recorder):
        async def send(self, message: Message) -> None:
            await super().send(message)
            await release.wait()

    count = QUEUED_BYTES * 3 // len(FRAME)

    async def frames() -> AsyncIterator[bytes]:
        for index in range(count):
            await pace.before_read()
            produced.append(index)
            yield FRAME

    recorder = Slow()
    response = BatchedStreamingResponse(frames(), pace=pace, media_type="text/event-stream")
    task = asyncio.create_task(response(SCOPE, recorder.receive, recorder.send))
    for _ in range(count * 2):
        await asyncio.sleep(0)
    assert pace.held
    # One batch (at most QUEUED_BYTES and a frame) is being written, as much
    # again waits.
    assert len(produced) * len(FRAME) <= 2 * (QUEUED_BYTES + len(FRAME))
    release.set()
    await asyncio.wait_for(task, 5)
    assert b"".join(body for body, _more in recorder.bodies) == FRAME * count
    assert not pace.held


async def test_a_stop_while_the_client_is_stuck_lands_inside_the_answer() -> None:
    # The producer never waits for the client itself, so cancelling the
    # response reaches the answer where it waits: inside, as CancelledError
    # (which the ChatKit server needs to save a stopped answer), not as the
    # GeneratorExit of a generator closed from outside.
    outcome: list[str] = []
    stuck = asyncio.Event()
    pace = Pace()

    class Stuck(Recorder):
        async def send(self, message: Message) -> None:
            await super().send(message)
            await stuck.wait()

    async def frames() -> AsyncIterator[bytes]:
        try:
            while True:
                await pace.before_read()
                yield FRAME
        except asyncio.CancelledError:
            outcome.append("cancelled")
            raise
        except GeneratorExit:
            outcome.append("closed from outside")
            raise

    recorder = Stuck()
    response = BatchedStreamingResponse(frames(), pace=pace, media_type="text/event-stream")
    task = asyncio.create_task(response(SCOPE, recorder.receive, recorder.send))
    for _ in range(200):
        await asyncio.sleep(0)
    assert pace.held
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert outcome == ["cancelled"]


async def test_a_client_that_takes_nothing_is_given_up_after_the_stall_timeout() -> None:
    outcome: list[str] = []

    class Stuck(Recorder):
        async def send(self, message: Message) -> None:
            await super().send(message)
            if message["type"] == "http.response.body":
                await asyncio.Event().wait()

    async def frames() -> AsyncIterator[bytes]:
        try:
            while True:
                yield FRAME
                await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            outcome.append("cancelled")
            raise

    recorder = Stuck()
    response = BatchedStreamingResponse(frames(), stall_timeout=0.2, media_type="text/event-stream")
    await asyncio.wait_for(response(SCOPE, recorder.receive, recorder.send), 5)
    assert response.stalled
    assert outcome == ["cancelled"]
