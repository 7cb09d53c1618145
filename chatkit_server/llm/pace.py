"""Backpressure: a streamed answer is read from the backend only as fast as it is used.

The Agents SDK reads the backend in a task of its own and queues every event
without bound, so a client that reads its stream slowly (or not at all) would
let the server read a long answer at the backend's full speed and hold all of
it in memory. A :class:`Pace` links the two ends of one answer:

* the backend reader (:class:`chatkit_server.llm.client.ChunkStream`) calls
  :meth:`Pace.before_chunk` before it hands on each chunk, and waits there
  once it is :attr:`Pace.lead` chunks ahead;
* the answer's consumer calls :meth:`Pace.caught_up` whenever it has taken
  every event there was and is about to wait for the next one.

The consumer only catches up while its own output moves on: the SSE response
waits for the client's socket (a bounded queue of frames), so a stalled
client stops the consumer, and the backend reader stops ``lead`` chunks
later. What one answer holds in memory is then bounded by ``lead`` chunks plus
the response's frame queue, whatever the client does.

The pace reaches the backend reader explicitly, as a keyword argument of the
model call (:data:`PACE_ARGUMENT` in the run's ``ModelSettings.extra_args``,
which the SDK passes to ``create`` as it is); :class:`BackendClient` takes it
out before the request is built.
"""

from __future__ import annotations

import asyncio
from typing import Final

__all__ = ["DEFAULT_LEAD", "PACE_ARGUMENT", "Pace"]

PACE_ARGUMENT: Final = "chatkit_pace"
"""The ``create`` keyword (via ``ModelSettings.extra_args``) that carries an answer's pace."""

DEFAULT_LEAD: Final = 64
"""Chunks the backend reader may run ahead of the consumer.

Large enough that under load the consumer finds several tokens waiting and
their deltas are merged (see :mod:`chatkit_server.llm.repair`), small enough
that a stalled answer holds a few kilobytes.
"""


class Pace:
    """How far one answer's backend reader may run ahead of its consumer.

    Args:
        lead: Chunks the reader may hand on after the consumer last caught up.
    """

    def __init__(self, *, lead: int = DEFAULT_LEAD) -> None:
        if lead < 1:
            raise ValueError("lead must be at least 1")
        self.lead = lead
        self._ahead = 0
        self._room = asyncio.Event()
        self._room.set()

    @property
    def ahead(self) -> int:
        """Chunks handed on since the consumer last caught up."""
        return self._ahead

    async def before_chunk(self) -> None:
        """Wait, if the reader is ``lead`` chunks ahead, until the consumer catches up."""
        while self._ahead >= self.lead:
            self._room.clear()
            await self._room.wait()
        self._ahead += 1

    def caught_up(self) -> None:
        """The consumer has taken everything handed on so far: the reader may go on."""
        self._ahead = 0
        self._room.set()
