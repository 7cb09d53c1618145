"""A burst's models are asked before its writes: the requests on their way to asking.

When hundreds of messages arrive at once, every stream ends about ten
seconds (its answer's length) after its model was asked, so the burst's
slowest stream is the one whose model was asked last. Each request is
first admitted (its rate count, and an existing thread's lease), then asks
its model, then stores the thread and the message
(:meth:`chatkit_server.protocol.answers.Answers.ask_early`).
Where statements run on the event loop and share a pool of connections
(PostgreSQL), the writes of requests that have asked compete with the
leases of those that have not, for the loop and for the pool; the last
model of a burst of 500 was asked some 3 s in. :class:`Arrivals` counts
the requests that have not asked yet, and a request that has asked holds
its writes until none is left (:meth:`Arrivals.settled`), for at most
:data:`WRITE_HOLD_SECONDS`: the models are asked first, the writes follow
while the backends think.

Measured with ``bench/bench_streaming.py --only sessions-concurrent`` (500
new threads at once on PostgreSQL, one process, four runs alternating with
the build before): p99 stream time 1.21-1.30x the ideal with sign-in off and
1.21-1.28x with a session each, against 1.31-1.38x and 1.27-1.36x. On
SQLite, whose statements run on their own threads and commit in groups, it
made no difference beyond the noise (1.19-1.31x against 1.19-1.28x), so it
is not used there. A request alone never waits: nothing else is on its way.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Final

__all__ = ["WRITE_HOLD_SECONDS", "Arrival", "Arrivals"]

WRITE_HOLD_SECONDS: Final = 1.0
"""The longest a request's writes wait for the rest of a burst to ask (under
steady load some request is always on its way)."""


class Arrival:
    """One request counted by :class:`Arrivals`, until :meth:`leave`."""

    def __init__(self, arrivals: Arrivals) -> None:
        self._arrivals: Arrivals | None = arrivals

    def leave(self) -> None:
        """The request asked its model, or goes on without asking first: it no longer counts.

        Idempotent.
        """
        arrivals, self._arrivals = self._arrivals, None
        if arrivals is not None:
            arrivals._left()


class Arrivals:
    """How many requests of this process are on their way to asking their model."""

    def __init__(self) -> None:
        self.count = 0
        # Set and dropped each time the count reaches zero; made by the first waiter.
        self._settled: asyncio.Event | None = None

    @contextlib.contextmanager
    def arriving(self) -> Iterator[Arrival]:
        """Count a request until it leaves (:meth:`Arrival.leave`), at the latest on exit."""
        self.count += 1
        arrival = Arrival(self)
        try:
            yield arrival
        finally:
            arrival.leave()

    def _left(self) -> None:
        self.count -= 1
        if self.count == 0 and self._settled is not None:
            self._settled.set()
            self._settled = None

    async def settled(self, at_most: float = WRITE_HOLD_SECONDS) -> bool:
        """Wait until no request is on its way, at most ``at_most`` seconds; whether none is."""
        if self.count == 0:
            return True
        if self._settled is None:
            self._settled = asyncio.Event()
        settled = self._settled
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(at_most):
                await settled.wait()
        return settled.is_set()
