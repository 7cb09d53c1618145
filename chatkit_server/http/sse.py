"""An SSE response that writes every frame that is ready in one write.

A ChatKit answer comes as bursts of frames: ``thread.created``, the user's
message and ``stream_options`` before the model is asked; the assistant item,
its content part and the first delta once the first token arrives; the
finished item and the ``thread.updated`` of a new title at the end. Starlette's
``StreamingResponse`` sends each frame on its own: one socket write (a system
call, and a wake-up of the reader) per frame. Here frames are collected while
the answer produces them without waiting, and written together the moment it
waits (for the model, or for the database) or ends. Nothing is held back: a
frame is written before the stream next waits for anything, so the browser
sees each one as early as before, in fewer, larger writes. The status line
and headers go out with the first batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import types
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from typing import Any

from starlette.responses import StreamingResponse
from starlette.types import Send

from ..steps import resume

__all__ = ["BatchedStreamingResponse", "next_or_flush"]


class BatchedStreamingResponse(StreamingResponse):
    """A ``StreamingResponse`` of ``bytes`` frames, written in batches (see the module notes).

    Disconnects are noticed as by Starlette's own class (which this reuses
    for everything but the writing).
    """

    body_iterator: AsyncIterator[bytes]

    async def stream_response(self, send: Send) -> None:
        """Send the headers with the first batch, then each batch in one ``http.response.body``.

        The headers wait for the first frame: what a request does before
        its first frame (a model request, for an answer) is not held up by
        a write that tells the client nothing it can show.
        """
        pending: list[bytes] = []
        started = False

        async def write(more_body: bool) -> None:
            nonlocal started
            if not started:
                started = True
                await send(
                    {
                        "type": "http.response.start",
                        "status": self.status_code,
                        "headers": self.raw_headers,
                    }
                )
            body = b"".join(pending)
            pending.clear()
            await send({"type": "http.response.body", "body": body, "more_body": more_body})

        async def flush() -> None:
            await write(more_body=True)

        frames = aiter(self.body_iterator)
        while True:
            try:
                frame = await next_or_flush(frames, pending, flush)
            except StopAsyncIteration:
                break
            pending.append(frame)
        # The last batch and the end of the body go out in one write.
        await write(more_body=False)


@types.coroutine
def next_or_flush(
    frames: AsyncIterator[bytes], pending: list[bytes], flush: Callable[[], Awaitable[None]]
) -> Generator[Any, Any, bytes]:
    """``await anext(frames)``, but first ``await flush()`` if ``frames`` has to wait.

    The next frame is started by hand: if it comes without suspending, it is
    returned at once; the first time it suspends (the value it yields is what
    it waits for), ``flush`` runs, then the wait is handed to the event loop
    exactly as ``await`` would have (values, exceptions and cancellation pass
    through to the waiting step).

    If ``flush`` fails (the client went away, or the task was cancelled while
    the write waited for the socket), the waiting step is cancelled and run
    to its end, as it would be if the task had been cancelled while it
    waited; then the failure is raised.

    Raises:
        StopAsyncIteration: ``frames`` is exhausted.
    """
    step = frames.__anext__().__await__()
    try:
        waiting_on = step.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    if pending:
        try:
            yield from flush().__await__()
        except BaseException:
            # The write's failure is the one to report, whatever the step does.
            with contextlib.suppress(BaseException):
                yield from resume(step, step.throw(asyncio.CancelledError()))
            raise
    return (yield from resume(step, waiting_on))  # type: ignore[no-any-return]
