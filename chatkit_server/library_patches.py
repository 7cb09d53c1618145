"""Two narrow replacements of library internals that cost time on every answer.

Both keep the replaced function's results exactly and are installed by
:func:`install` (from ``ChatKitApp``). Each replaced name is checked by a test
(tests/test_library_patches.py), so an upgrade that drops or renames it fails
there instead of quietly undoing the fix.

**ChatKit's event merge.** ``chatkit.agents.stream_agent_response``
interleaves two streams: the Agents SDK's events and the events tools send
through ``AgentContext.stream``. Its merge (``chatkit.agents._merge_generators``)
starts a new task for every item and waits on it with ``asyncio.wait``. For a
streamed answer that is a task, a waiter and four callbacks per token, and as
each token is read in a new task the SDK's ``RunResultStreaming.stream_events``
re-registers its consumer every time. It also leaves its pending tasks behind
when the stream is closed early (the user pressed stop), which asyncio reports
as "Task was destroyed but it is pending". :func:`merge_events` keeps one task
per stream for the whole answer. A stream is asked for its next item only once
the consumer is back for more, as in ChatKit's merge, so events that pile up
in the SDK's queue meanwhile are still merged downstream (``stream_fixups``).

**The Agents SDK's agent identity map.** Every run builds a map of the agents
it can reach (``agents._run_state_agent_identity._build_agent_identity_map``,
for the sandbox runtime and the tool-use snapshot). Agents that share a name
are told apart by sorting them on a signature of their whole configuration
(instructions, model settings, tools and more, serialised to JSON), and that
signature is computed even for a name only one agent has: about 6% of the
CPU that starting an answer takes. :func:`identity_map` answers directly
when every name is unique (then each name maps to its agent, in graph order,
as the original would) and leaves everything else to the original.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import AsyncIterator
from typing import Any, TypeVar

import agents._run_state_agent_identity as agent_identity
import chatkit.agents
from agents import Agent

__all__ = ["identity_map", "install", "merge_events"]

_SDK_IDENTITY_MAP = agent_identity._build_agent_identity_map

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


def identity_map(initial_agent: Agent[Any]) -> dict[str, Agent[Any]]:
    """The SDK's identity map of the agents reachable from ``initial_agent``, built cheaply.

    Unique names (the usual case) need no tie-breaking signature; shared
    names go to the SDK's own function.
    """
    ordered = list(agent_identity._iter_agent_graph(initial_agent))
    by_name = {agent.name: agent for agent in ordered}
    if len(by_name) == len(ordered):
        return by_name
    return _SDK_IDENTITY_MAP(initial_agent)


def install() -> None:
    """Install :func:`merge_events` and :func:`identity_map` (see the module notes).

    Both libraries look these functions up by name in their modules each
    time, so the replacements apply to every answer from then on.
    """
    setattr(chatkit.agents, "_merge_generators", merge_events)  # noqa: B010
    setattr(agent_identity, "_build_agent_identity_map", identity_map)  # noqa: B010
