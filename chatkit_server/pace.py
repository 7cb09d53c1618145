"""Backpressure: a streamed answer is read from the backend only as fast as it is used.

The Agents SDK reads the backend in a task of its own and queues every event
without bound, so a client that reads its stream slowly (or not at all) would
let the server read a long answer at the backend's full speed and hold all of
it in memory. A :class:`Pace` links the two ends of one answer:

* the backend reader (:class:`chatkit_server.llm.client.ChunkStream`) calls
  :meth:`Pace.before_read` before each read of the backend's answer;
* the answer's consumer (:mod:`chatkit_server.llm.repair`) calls
  :meth:`Pace.queued` whenever an event of the run is queued for it, and
  :meth:`Pace.caught_up` whenever it has taken every queued event and is
  about to wait for the next one;
* the SSE response (:mod:`chatkit_server.http.sse`) calls :meth:`Pace.hold`
  when frames wait for the client's socket, and :meth:`Pace.release` when it
  took them all.

The reader reads again only once the consumer has taken everything the last
read gave (a read that gave no event holds nothing back), and never while
the output is held. So a stalled client stops the backend reader at once,
and a slow consumer after one read: what one answer holds in memory is
bounded by the frames of the response's backlog plus one read, whatever the
client does. What the backend sends meanwhile waits in the socket (past its
buffers the backend is held back by its connection's flow control); the
reader's next read takes all of it, and its text is merged into one chunk
(:func:`chatkit_server.llm.wire.merge_chat_text`): the further the server
falls behind, the fewer and larger the chunks it has to handle.

Under load the reads of every answer are also spaced out: once the
process streams more than :data:`UNSPACED_STREAMS` answers, an answer's
reads after the one that brought its first text come at least
:data:`READ_SPACING` seconds per open stream apart (at most
:data:`MAX_READ_SPACING`). A read costs about the same CPU whatever it
carries (the SDK's events, ChatKit's conversion, one SSE frame: some 300
microseconds each on the 2-core machine the benchmarks run on), so the
reads of all answers together stay near 2,000 a second however many there
are, each with more text. Measured with ``bench/bench_streaming.py --only
concurrent`` (500 streams, one process): about 21,000 text deltas instead
of 30,000 to 40,000, and 12.4 to 12.7 s of server CPU instead of 14.2 to
15.1 s. A user of a busy server sees the answer grow in a few larger steps
a second; the first text is never held back.

The response never waits for room itself: a stream that is
stopped while its client is slow is then always stopped inside the ChatKit
server's own loop, which saves the answer so far.

The pace also says when the model is being asked (:meth:`Pace.asking`, by
the backend client just before it sends the request). A run started before
the ChatKit server stores the message it answers
(:meth:`chatkit_server.protocol.answers.Answers.ask_early`) is waited for
that far before the writes: with one core for everything, work beside the
run's task delays the request by as long as it takes, while after it the
work overlaps the backend's time to its first token. Such a run is
:meth:`Pace.reserve`-d: no chunk goes on until :meth:`Pace.claim`.

One pace is made per request (:class:`chatkit_server.context.RequestContext`
carries it). It reaches the backend reader explicitly, as a keyword argument
of the model call (:data:`PACE_ARGUMENT` in the run's
``ModelSettings.extra_args``, which the SDK passes to ``create`` as it is);
:class:`chatkit_server.llm.client.BackendClient` takes it out before the
request is built.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Callable
from typing import Final

__all__ = ["MAX_READ_SPACING", "PACE_ARGUMENT", "READ_SPACING", "UNSPACED_STREAMS", "Pace"]

PACE_ARGUMENT: Final = "chatkit_pace"
"""The ``create`` keyword (via ``ModelSettings.extra_args``) that carries an answer's pace."""

UNSPACED_STREAMS: Final = 8
"""Open streams up to which an answer's reads are not spaced out (see the module notes)."""
READ_SPACING: Final = 0.0005
"""Seconds between two reads of one answer, per open stream past :data:`UNSPACED_STREAMS`."""
MAX_READ_SPACING: Final = 0.25
"""The longest spacing between two reads of one answer, however busy the process."""


class Pace:
    """When one answer's backend reader may read again (see the module notes).

    Args:
        streams: How many answers the process streams now; ``None``: reads
            are never spaced out.
    """

    def __init__(self, streams: Callable[[], int] | None = None) -> None:
        self._streams = streams
        # When the last read was let go (loop time).
        self._last_read = -math.inf
        self._flowing = False
        # Whether the consumer has taken every event queued for it. True
        # before it starts: nothing was handed on yet.
        self._idle = True
        self._held = False
        self._room = asyncio.Event()
        self._room.set()
        self._asked = asyncio.Event()
        self._claimed = asyncio.Event()
        self._claimed.set()

    @property
    def held(self) -> bool:
        """Whether the output is backed up (between :meth:`hold` and :meth:`release`)."""
        return self._held

    async def before_read(self) -> None:
        """Wait while the answer is unclaimed, the output held, or events wait for the consumer."""
        if not self._claimed.is_set():
            await self._claimed.wait()
        # One turn of the loop first: the events of the last read reach the
        # consumer's queue (and say so, :meth:`queued`) before this looks.
        await asyncio.sleep(0)
        while self._held or not self._idle:
            self._room.clear()
            await self._room.wait()
        if self._streams is not None:
            await self._spaced(self._streams)

    async def _spaced(self, streams: Callable[[], int]) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._flowing:
            spacing = min(MAX_READ_SPACING, READ_SPACING * (streams() - UNSPACED_STREAMS))
            if spacing > 0 and now < self._last_read + spacing:
                await asyncio.sleep(self._last_read + spacing - now)
                now = loop.time()
        self._last_read = now

    def queued(self, text: bool = False) -> None:
        """An event of the run was queued for the consumer: the reader waits until it is taken.

        ``text``: the event shows the user text (an answer's or a thought's);
        from the first one on, reads are spaced out under load.
        """
        self._idle = False
        if text:
            self._flowing = True

    def caught_up(self) -> None:
        """The consumer has taken every event queued for it: the reader may read again."""
        self._idle = True
        self._room.set()

    def hold(self) -> None:
        """The output is backed up: the reader stops before its next chunk."""
        self._held = True

    def release(self) -> None:
        """The output took its backlog: the reader may go on."""
        self._held = False
        self._room.set()

    def reserve(self) -> None:
        """No chunk is handed on until :meth:`claim`: the answer was started early."""
        self._claimed.clear()

    def claim(self) -> None:
        """Whoever streams the answer took it: chunks may be handed on."""
        self._claimed.set()

    def asking(self) -> None:
        """The model is being asked: the request is built and about to be sent."""
        self._asked.set()

    async def wait_asked(self, seconds: float) -> bool:
        """Wait until the model is being asked, at most ``seconds``; whether it is."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._asked.wait()
        return self._asked.is_set()
