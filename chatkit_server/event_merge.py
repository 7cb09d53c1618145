"""The merge of a run's events with its tools' events, without a task per event.

``chatkit.agents.stream_agent_response`` interleaves two streams: the Agents
SDK's events and the events tools send through ``AgentContext.stream``. Its
merge (``chatkit.agents._merge_generators``) starts a new task for every item
and waits on it with ``asyncio.wait``. For a streamed answer that is a task,
a waiter and four callbacks per token, and as each token is read in a new
task the SDK's ``RunResultStreaming.stream_events`` re-registers its consumer
every time. It also leaves its pending tasks behind when the stream is
closed early (the user pressed stop), which asyncio reports as "Task was
destroyed but it is pending".

:func:`merge_events` keeps one task per stream for the whole answer. A stream
is asked for its next item only once the consumer is back for more, as in
ChatKit's merge, so events that pile up in the SDK's queue meanwhile are
still merged downstream (``stream_fixups``). :func:`install` makes ChatKit use
it.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import AsyncIterator
from typing import Any, TypeVar

import chatkit.agents

__all__ = ["install", "merge_events"]

T1 = TypeVar("T1")
T2 = TypeVar("T2")


class _Kind(enum.Enum):
    ITEM = enum.auto()
    FAILED = enum.auto()
    ENDED = enum.auto()


async def merge_events(a: AsyncIterator[T1], b: AsyncIterator[T2]) -> AsyncIterator[T1 | T2]:
    """The items of ``a`` and ``b`` as they come, until either ends.

    Items already fetched when one ends are still yielded. An exception of
    either is raised once the items fetched before it are yielded. Closing
    or cancelling the merge cancels both fetches (an Agents SDK stream
    cancels its run when its reader is cancelled).
    """
    ready: asyncio.Queue[tuple[_Kind, Any, int]] = asyncio.Queue()
    wanted = [asyncio.Event(), asyncio.Event()]

    async def fetch(source: AsyncIterator[Any], index: int) -> None:
        want = wanted[index]
        try:
            async for item in source:
                want.clear()
                ready.put_nowait((_Kind.ITEM, item, index))
                # The next item is fetched when the consumer comes back for
                # more: meanwhile the source's own queue can fill up.
                await want.wait()
        except Exception as exc:
            ready.put_nowait((_Kind.FAILED, exc, index))
            return
        ready.put_nowait((_Kind.ENDED, None, index))

    fetches = [asyncio.ensure_future(fetch(a, 0)), asyncio.ensure_future(fetch(b, 1))]
    try:
        while True:
            kind, value, index = await ready.get()
            if kind is _Kind.FAILED:
                raise value
            if kind is _Kind.ENDED:
                break
            yield value
            wanted[index].set()
        while not ready.empty():  # fetched before the end: not to be lost
            kind, value, _ = ready.get_nowait()
            if kind is _Kind.ITEM:
                yield value
    finally:
        for task in fetches:
            task.cancel()


def install() -> None:
    """Make ``chatkit.agents.stream_agent_response`` merge with :func:`merge_events`.

    It looks its merge up by name in its module each time it runs, so the
    replacement applies to every answer from then on.
    """
    # The name is private to chatkit; tests/test_event_merge.py checks that
    # stream_agent_response still calls it, so an upgrade cannot drop this
    # silently.
    setattr(chatkit.agents, "_merge_generators", merge_events)  # noqa: B010
