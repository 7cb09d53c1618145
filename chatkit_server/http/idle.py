"""Memory after answers: handed back to the system once the last open stream has ended.

Twenty clients reading long answers slowly raise the server's resident
memory by about 30 MiB (``bench/bench_streaming.py --only slow-readers``).
Measured inside the server, none of it is live objects once they have left
(the objects reachable from the interpreter differ by a few hundred KiB);
it is kept by two things, and this module undoes both while nothing else
is running:

* **Garbage cycles.** Every answer leaves reference cycles behind: a stop's
  exceptions and their tracebacks, the Agents SDK's run and its tasks, and
  suspended async generators, which a collection cannot close itself: the
  event loop runs their ``aclose()``, and what that leaves behind needs a
  second collection. The collector is tuned to run rarely
  (:func:`chatkit_server.cli.tune_garbage_collector`, for the CPU it saves
  under load), so on a server that goes quiet the last answers' garbage
  stayed for minutes: about a third of the rise.
* **The allocators keep freed memory for reuse.** glibc's ``malloc`` keeps
  free chunks inside its heap (about 10 MiB here: answers' long texts are
  larger than CPython's small-object limit), and CPython's small-object
  allocator returns a 1 MiB arena only once every block in it is free. The
  first is given back by ``malloc_trim``; the second follows from the
  collection.

So :class:`OpenStreams` counts the process's open answer streams and, once
none has been open for :data:`DEFAULT_QUIET` seconds, collects the cycles,
lets the event loop run the finalizers that collection scheduled, collects
again, and on glibc calls ``malloc_trim(0)``. Measured (``--quick --only
slow-readers --slow-rounds 4``: 15 s rounds, about 180 MiB idle, rises of
about 30 MiB), the MiB still above idle five seconds after each round's
clients left went from 28.9 / 41.4 / 65.8 / 71.8 to 12.7 / 14.9 / 18.2 /
20.2. What stays is the memory of a server that has served twenty answers
at once (more database threads, pooled backend connections, the history
cache filling up to its bound, arenas that a few long-lived objects keep);
later rounds mostly reuse it.

It runs only while the process serves no stream, at most once per
:data:`DEFAULT_MIN_INTERVAL` seconds, and it is cheap: the start-up heap is
frozen, so a collection walks only what was made since.

**A burst pauses the collector.** When :data:`BUSY_STREAMS` streams are
open at once, the cycle collector is switched off for at most
:data:`GC_PAUSE_SECONDS` (and at most once per :data:`GC_PAUSE_INTERVAL`),
or until fewer streams are open. A burst's first seconds allocate
fast, and the objects of hundreds of starting answers are alive: each
young-generation collection then walked some 50,000 of them for 15 to 50
ms, about ten times in a burst of 500 new threads, while every one of
those requests waited to ask its model. What cycles the pause leaves are
collected by the next collection after it (the answers' garbage is
collected when the process goes quiet anyway). Measured with
``bench/bench_streaming.py --only concurrent`` (500 streams, one process,
SQLite, five runs alternating with four of the build before): p99
1.19-1.25x the ideal against 1.19-1.30x, the first delta p50 1.6-2.0 s
against 1.7-3.0 s, peak RSS the same (289 MiB).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import gc
import math
import sys
import time
from collections.abc import Callable, Iterator
from typing import Final

__all__ = [
    "BUSY_STREAMS",
    "DEFAULT_MIN_INTERVAL",
    "DEFAULT_QUIET",
    "GC_PAUSE_INTERVAL",
    "GC_PAUSE_SECONDS",
    "OpenStreams",
    "release_free_memory",
]

DEFAULT_QUIET: Final = 1.0
"""Seconds without an open stream before the memory is given back.

Long enough that a conversation's next turn, sent as soon as the last one
ended, finds nothing in its way.
"""

DEFAULT_MIN_INTERVAL: Final = 10.0
"""Least seconds between two hand-backs: a server that goes quiet often does it at this rate."""

BUSY_STREAMS: Final = 64
"""Open streams from which the cycle collector pauses (see the module notes)."""

GC_PAUSE_SECONDS: Final = 5.0
"""The longest the collector stays paused: a burst asks its models in its first seconds."""

GC_PAUSE_INTERVAL: Final = 30.0
"""Least seconds between two pauses' starts: under steady load the collector mostly runs."""

# Async generators found in cycles are closed by tasks on the event loop; a
# few turns of it let those run before the second collection.
_FINALIZER_TURNS = 10


class OpenStreams:
    """The process's open answer streams; memory is handed back when the last one ends.

    One per app (its lifespan makes it); every streamed response is inside
    :meth:`open` while it runs. See the module notes for what happens when
    none is open.

    Args:
        quiet: Seconds without an open stream before the memory is given back.
        min_interval: Least seconds between two hand-backs.
        release: Gives the allocator's free memory back (:func:`release_free_memory`).
        busy: Open streams from which the cycle collector pauses.
        gc_pause: The longest pause, in seconds.
        gc_pause_interval: Least seconds between two pauses' starts.
    """

    def __init__(
        self,
        *,
        quiet: float = DEFAULT_QUIET,
        min_interval: float = DEFAULT_MIN_INTERVAL,
        release: Callable[[], object] | None = None,
        busy: int = BUSY_STREAMS,
        gc_pause: float = GC_PAUSE_SECONDS,
        gc_pause_interval: float = GC_PAUSE_INTERVAL,
    ) -> None:
        self.quiet = quiet
        self.min_interval = min_interval
        self._release = release or release_free_memory
        self.busy = busy
        self.gc_pause = gc_pause
        self.gc_pause_interval = gc_pause_interval
        # The pause's end, while this switched the collector off.
        self._paused: asyncio.TimerHandle | None = None
        self._last_pause = -math.inf
        self.count = 0
        """Streams open now."""
        self.settled = 0
        """How many times the memory was handed back."""
        self._last = -math.inf
        self._pending: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None

    @contextlib.contextmanager
    def open(self) -> Iterator[None]:
        """Count one stream for as long as the block runs (it may be cancelled)."""
        self.count += 1
        if self.count == self.busy:
            self._pause_collector()
        self._cancel_pending()
        try:
            yield
        finally:
            self.count -= 1
            if self.count < self.busy:
                self._resume_collector()
            if self.count == 0:
                self._schedule()

    @property
    def collector_paused(self) -> bool:
        """Whether this switched the cycle collector off (a burst is starting)."""
        return self._paused is not None

    def _pause_collector(self) -> None:
        now = time.monotonic()
        # A collector someone else switched off is theirs to switch on.
        if not gc.isenabled() or now - self._last_pause < self.gc_pause_interval:
            return
        self._last_pause = now
        gc.disable()
        self._paused = asyncio.get_running_loop().call_later(self.gc_pause, self._resume_collector)

    def _resume_collector(self) -> None:
        if self._paused is None:
            return
        self._paused.cancel()
        self._paused = None
        gc.enable()

    def close(self) -> None:
        """Stop what is scheduled (on shutdown), and switch a paused collector back on."""
        self._resume_collector()
        self._cancel_pending()
        if self._task is not None:
            self._task.cancel()
            self._task = None

    def _cancel_pending(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None

    def _schedule(self) -> None:
        loop = asyncio.get_running_loop()
        self._cancel_pending()
        delay = max(self.quiet, self._last + self.min_interval - time.monotonic())
        self._pending = loop.call_later(delay, self._start)

    def _start(self) -> None:
        self._pending = None
        if self.count or self._task is not None:
            return
        self._task = asyncio.get_running_loop().create_task(self._settle(), name="chatkit-idle")

    async def _settle(self) -> None:
        try:
            gc.collect()
            for _ in range(_FINALIZER_TURNS):
                await asyncio.sleep(0)
            if self.count:
                return  # a stream started: its next turn will come back here
            gc.collect()
            self._release()
            self.settled += 1
        finally:
            self._last = time.monotonic()
            self._task = None


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """The C library's ``malloc_trim`` (glibc), or ``None`` where it has none (macOS, musl)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    trim = getattr(libc, "malloc_trim", None)
    if trim is None:
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim  # type: ignore[no-any-return]


def release_free_memory() -> bool:
    """Give the C allocator's free memory back to the system; whether it could.

    ``malloc_trim(0)`` on glibc returns every whole free page of its heaps
    (not only the top of the heap); elsewhere nothing is done.
    """
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
