"""Running a coroutine's step by hand, and handing it on to whoever awaits.

Two places run the next step of an async iterator themselves, to learn
whether it has its value at once (without going through the event loop) or
must wait: the batching SSE response (:mod:`chatkit_server.http.sse`) and the
event merge (:mod:`chatkit_server.library_patches`). A step that has to wait
is then finished by an ``await`` of :class:`Resumed`, which behaves exactly as
if the step had been awaited from the start.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Generator
from typing import Any

__all__ = ["Resumed", "resume"]


def resume(step: Generator[Any, Any, Any], waiting_on: Any) -> Generator[Any, Any, Any]:
    """``yield from step`` for a ``step`` that has already yielded ``waiting_on`` (PEP 380).

    Values, exceptions and closing are passed through to ``step`` as
    ``yield from`` would; its return value is returned.
    """
    while True:
        try:
            sent = yield waiting_on
        except GeneratorExit:
            step.close()
            raise
        except BaseException as exc:
            try:
                waiting_on = step.throw(exc)
            except StopIteration as done:
                return done.value
        else:
            try:
                waiting_on = step.send(sent)
            except StopIteration as done:
                return done.value


class Resumed:
    """An awaitable that finishes ``step``, which already yielded ``waiting_on``.

    Args:
        step: The ``__await__()`` iterator of a coroutine that was started by hand.
        waiting_on: What its last ``send`` yielded (the future it waits for).
    """

    __slots__ = ("_step", "_waiting_on")

    def __init__(self, step: Generator[Any, Any, Any], waiting_on: Any) -> None:
        self._step = step
        self._waiting_on = waiting_on

    def __await__(self) -> Generator[Any, Any, Any]:
        return resume(self._step, self._waiting_on)

    def cancel(self) -> None:
        """Cancel the step as its task's cancellation would, without waiting for it.

        ``CancelledError`` is raised where the step waits. A step that
        awaits something more on its way out (a ``finally`` that cleans up)
        is finished by a task of its own.
        """
        try:
            waiting_on = self._step.throw(asyncio.CancelledError())
        except BaseException:  # noqa: BLE001 - ended, as a cancelled step should
            return
        task = asyncio.ensure_future(_finish(Resumed(self._step, waiting_on)))
        # The loop keeps only weak references to its tasks.
        _FINISHING.add(task)
        task.add_done_callback(_FINISHING.discard)


_FINISHING: set[asyncio.Future[None]] = set()


async def _finish(step: Resumed) -> None:
    with contextlib.suppress(BaseException):
        await step
