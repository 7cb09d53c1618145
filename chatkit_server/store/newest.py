"""The newest items of recently answered threads, and the threads, kept between requests.

Every answer starts by reading the thread's newest items (the history sent
to the model): a query of up to 200 rows, about a millisecond before the
first token on a long thread (measured by ``bench/``), although those rows
only changed by what this process itself just wrote. :class:`NewestItems`
keeps each recent thread's newest rows and applies this process's own item
writes to them, so the next answer reads them from memory.

It is only used for a SQLite file, where the store runs statements on one
connection of its own (``Database.data_version``). SQLite counts the
commits made through every *other* connection (this process's transactions
on its pool, other worker processes, other programs); whenever that count
moves, everything kept here is dropped, as anything may have changed. Writes
through the store's own connection keep their windows right: an added item
is put in front (it has the newest ``seq``), a replaced one is replaced in
place, anything else (a delete, an item older than the window) drops the
thread's window.

The thread rows themselves (the JSON of their metadata) are kept the same
way: every message starts by loading its thread, a query of about 0.3 ms
before the model is asked, for a row that only changed by this process's
own saves. A save through the store puts the saved JSON here; a delete drops it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

__all__ = ["NewestItems", "Row"]

Row = tuple[str, str, str, int]
"""``(id, type, JSON, seq)`` of one stored item."""

# Threads kept, and rows kept per thread (the history never reads more).
DEFAULT_THREADS: Final = 1024
MAX_ROWS: Final = 200


@dataclass(slots=True)
class _Window:
    rows: list[Row]  # newest first
    complete: bool  # the thread has no items but these


class NewestItems:
    """Per (thread, user): the thread's newest rows, newest first, and its own row.

    Args:
        data_version: SQLite's count of commits by other connections, read
            on the store's own connection.
        threads: How many threads to keep, of each kind (least recently used go first).
    """

    def __init__(self, data_version: Callable[[], int], *, threads: int = DEFAULT_THREADS) -> None:
        self._data_version = data_version
        self._capacity = threads
        self._windows: OrderedDict[tuple[str, str], _Window] = OrderedDict()
        # (thread, user) -> the thread row's JSON.
        self._threads: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._version: int | None = None

    def _current(self) -> bool:
        """Drop everything if another connection committed since the last look.

        Returns whether nothing was dropped. What was just read or written
        is kept only then: a commit by another connection in between may
        have changed it already.
        """
        version = self._data_version()
        if version == self._version:
            return True
        self._windows.clear()
        self._threads.clear()
        self._version = version
        return False

    def thread(self, thread_id: str, user_id: str) -> str | None:
        """The JSON of the user's thread, if kept."""
        self._current()
        key = (thread_id, user_id)
        data = self._threads.get(key)
        if data is not None:
            self._threads.move_to_end(key)
        return data

    def thread_saved(self, thread_id: str, user_id: str, data: str) -> None:
        """Keep the user's thread row as just read or written (``data``: its JSON).

        Call it right after the read or write, with no await in between.
        """
        if not self._current():
            return
        key = (thread_id, user_id)
        self._threads[key] = data
        self._threads.move_to_end(key)
        while len(self._threads) > self._capacity:
            self._threads.popitem(last=False)

    def get(self, thread_id: str, user_id: str, limit: int) -> tuple[list[Row], bool] | None:
        """The newest ``limit`` rows and whether older ones follow; ``None``: not all kept."""
        self._current()
        window = self._windows.get((thread_id, user_id))
        if window is None or (not window.complete and len(window.rows) < limit):
            return None
        self._windows.move_to_end((thread_id, user_id))
        return window.rows[:limit], not window.complete or len(window.rows) > limit

    def put(self, thread_id: str, user_id: str, rows: list[Row], *, complete: bool) -> None:
        """Keep rows just read (newest first); ``complete``: the thread has no others.

        Call it right after the read, with no await in between, so no write
        of this process falls between the read and this.
        """
        if not self._current():
            return
        key = (thread_id, user_id)
        self._windows[key] = _Window(rows[:MAX_ROWS], complete and len(rows) <= MAX_ROWS)
        self._windows.move_to_end(key)
        while len(self._windows) > self._capacity:
            self._windows.popitem(last=False)

    def created(self, thread_id: str, user_id: str) -> None:
        """A thread was just created: it has no items yet."""
        self.put(thread_id, user_id, [], complete=True)

    def written(self, thread_id: str, user_id: str, row: Row) -> None:
        """An item was added or replaced through the store's own connection."""
        if not self._current():
            return
        key = (thread_id, user_id)
        window = self._windows.get(key)
        if window is None:
            return
        rows = window.rows
        for index, kept in enumerate(rows):
            if kept[0] == row[0]:
                rows[index] = row  # replaced in place: it keeps its seq
                return
        if not rows or row[3] > rows[0][3]:
            rows.insert(0, row)
            if len(rows) > MAX_ROWS:
                del rows[MAX_ROWS:]
                window.complete = False
            return
        # An item older than the window: only a complete window would hold
        # it, so the thread changed in a way not tracked here.
        if window.complete:
            del self._windows[key]

    def forget(self, thread_id: str, *, thread: bool = False) -> None:
        """Drop a thread's windows (items deleted), and with ``thread`` its row (deleted)."""
        for key in [key for key in self._windows if key[0] == thread_id]:
            del self._windows[key]
        if thread:
            for key in [key for key in self._threads if key[0] == thread_id]:
                del self._threads[key]
