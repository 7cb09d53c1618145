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

__all__ = ["DEFAULT_MIN_INTERVAL", "DEFAULT_QUIET", "OpenStreams", "release_free_memory"]

DEFAULT_QUIET: Final = 1.0
"""Seconds without an open stream before the memory is given back.

Long enough that a conversation's next turn, sent as soon as the last one
ended, finds nothing in its way.
"""

DEFAULT_MIN_INTERVAL: Final = 10.0
"""Least seconds between two hand-backs: a server that goes quiet often does it at this rate."""

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
    """

    def __init__(
        self,
        *,
        quiet: float = DEFAULT_QUIET,
        min_interval: float = DEFAULT_MIN_INTERVAL,
        release: Callable[[], object] | None = None,
    ) -> None:
        self.quiet = quiet
        self.min_interval = min_interval
        self._release = release or release_free_memory
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
        self._cancel_pending()
        try:
            yield
        finally:
            self.count -= 1
            if self.count == 0:
                self._schedule()

    def close(self) -> None:
        """Stop what is scheduled (on shutdown)."""
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
