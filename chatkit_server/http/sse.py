"""An SSE response that writes every frame that is ready in one write.

A ChatKit answer comes as bursts of frames: the user's message and
``stream_options`` while the model is being asked; the assistant item, its content
part and the first delta once the first token arrives; the finished item and
the ``thread.updated`` of a new title at the end. Starlette's
``StreamingResponse`` sends each frame on its own: one socket write (a system
call, and a wake-up of the reader) per frame. Here a producer task runs the
answer and queues its frames; the writer takes every frame that is queued
when it wakes up and sends them in one write. Nothing is held back: the
writer runs whenever the answer waits for anything (the model, the
database), so each frame leaves as early as before, in fewer, larger writes.
The status line and headers go out with the first batch, so the work before
an answer's first frame is not held up by a write that tells the client
nothing it can show.

A client that reads slowly holds the answer back instead of letting it pile
up in memory: once :data:`QUEUED_BYTES` wait for its socket, the
answer's :class:`~chatkit_server.pace.Pace` is held, which stops the reads
from the backend until the writer took them. The producer itself never waits
for room (see the pace's notes for why). A client that takes nothing for
``stall_timeout`` seconds is treated as gone: the answer is stopped as if the
client had disconnected (what came so far is saved, the backend request is
cancelled) and the connection is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Mapping
from typing import Final

import anyio
from starlette.responses import StreamingResponse
from starlette.types import Send

from chatkit_server.http.idle import OpenStreams
from chatkit_server.pace import Pace

__all__ = ["QUEUED_BYTES", "BatchedStreamingResponse"]

logger = logging.getLogger(__name__)

QUEUED_BYTES: Final = 64 * 1024
"""Bytes of frames waiting for the client's socket that hold the answer's backend reads.

Counted in bytes, not frames: under load neighbouring text deltas are merged,
so one frame may carry many tokens.
"""


class BatchedStreamingResponse(StreamingResponse):
    """A ``StreamingResponse`` of ``bytes`` frames, written in batches (see the module notes).

    Disconnects are noticed as by Starlette's own class (which this reuses
    for everything but the writing): the response's task is cancelled, and
    with it the producer, whose cleanup (saving a stopped answer) runs
    before the response ends.

    Args:
        content: The frames.
        pace: The answer's pace, held while frames wait for the client
            (``None``: the frames are not paced).
        stall_timeout: Seconds one write may wait for the client before the
            client is treated as gone; ``None``: forever.
        streams: The process's open streams, counting this one while it
            runs (``None``: not counted).
        media_type: As for ``StreamingResponse``.
        headers: As for ``StreamingResponse``.
    """

    body_iterator: AsyncGenerator[bytes, None]

    def __init__(
        self,
        content: AsyncGenerator[bytes, None],
        *,
        pace: Pace | None = None,
        stall_timeout: float | None = None,
        streams: OpenStreams | None = None,
        media_type: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(content, media_type=media_type, headers=headers)
        self.pace = pace
        self.stall_timeout = stall_timeout
        self.streams = streams
        self.stalled = False
        """Whether the client was given up on for taking nothing."""

    async def stream_response(self, send: Send) -> None:
        """Run the body in a producer task; send what it queued, batch by batch."""
        if self.streams is None:
            await self._stream(send)
            return
        with self.streams.open():
            await self._stream(send)

    async def _stream(self, send: Send) -> None:
        # None ends the body.
        queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        pace = self.pace
        queued = 0

        async def produce() -> None:
            nonlocal queued
            # Closed here, not left to the garbage collector, when the
            # producer is cancelled.
            async with contextlib.aclosing(self.body_iterator) as frames:
                async for frame in frames:
                    queue.put_nowait(frame)
                    queued += len(frame)
                    if pace is not None and queued >= QUEUED_BYTES:
                        pace.hold()
            queue.put_nowait(None)

        started = False
        try:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(produce)
                ended = False
                while not ended:
                    batch = [await queue.get()]
                    while not queue.empty():
                        batch.append(queue.get_nowait())
                    queued = 0
                    if pace is not None:
                        pace.release()
                    if batch[-1] is None:
                        ended = True
                        batch.pop()
                    if not started:
                        started = True
                        await send(
                            {
                                "type": "http.response.start",
                                "status": self.status_code,
                                "headers": self.raw_headers,
                            }
                        )
                    body = b"".join(frame for frame in batch if frame is not None)
                    message = {"type": "http.response.body", "body": body, "more_body": not ended}
                    with anyio.move_on_after(self.stall_timeout) as waiting:
                        await send(message)
                    if waiting.cancelled_caught:
                        # The producer is cancelled as on a disconnect, so
                        # the answer so far is saved and the backend stopped.
                        self.stalled = True
                        logger.warning(
                            "a client took none of its answer for %g s: "
                            "treated as gone (CHATKIT_STREAM_STALL_TIMEOUT)",
                            self.stall_timeout,
                        )
                        tasks.cancel_scope.cancel()
                        return
        except BaseExceptionGroup as group:
            # One failure (the client's socket, or the body) is raised as itself,
            # as a plain StreamingResponse would raise it.
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise
