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
as "Task was destroyed but it is pending". :func:`merge_events` asks a stream
for its next item in the consumer's own task and takes it at once when it is
ready (the first token's read brings three events, which then leave in one
write); only a step that must wait goes to that stream's one fetch task, kept
for the whole answer. A stream is asked for its next item only once the
consumer is back for more, as in ChatKit's merge, so events that pile up in
the SDK's queue meanwhile are still merged downstream (``stream_fixups``).

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

from .steps import Resumed

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

    A stream's next item is first asked for in the consumer's own task: an
    item that is ready (the SDK's queue holds several events after a read)
    comes without a trip through the event loop, so a burst of events goes
    out together. Only a step that has to wait is handed to that stream's
    fetch task, which finishes it as an ``await`` would have.
    """
    # The tool events first: they are rare, and must not wait behind a
    # run whose events keep coming.
    sources: tuple[AsyncIterator[Any], AsyncIterator[Any]] = (b, a)
    ready: asyncio.Queue[tuple[_Kind, Any, int]] = asyncio.Queue()
    # busy[i]: source i's fetch task is finishing a step that had to wait.
    busy = [False, False]
    jobs: list[Resumed | None] = [None, None]
    wanted = [asyncio.Event(), asyncio.Event()]
    fetches: list[asyncio.Task[None] | None] = [None, None]

    async def fetch(index: int) -> None:
        want = wanted[index]
        while True:
            await want.wait()
            want.clear()
            job, jobs[index] = jobs[index], None
            if job is None:  # pragma: no cover - set only with a job
                continue
            try:
                item = await job
            except StopAsyncIteration:
                ready.put_nowait((_Kind.ENDED, None, index))
                return
            except Exception as exc:
                ready.put_nowait((_Kind.FAILED, exc, index))
                return
            ready.put_nowait((_Kind.ITEM, item, index))

    def step(index: int) -> tuple[_Kind, Any] | None:
        """Ask source ``index`` for its next item: the outcome, or ``None`` if it must wait."""
        started = sources[index].__anext__().__await__()
        try:
            waiting_on = started.send(None)
        except StopIteration as done:
            return _Kind.ITEM, done.value
        except StopAsyncIteration:
            return _Kind.ENDED, None
        except Exception as exc:
            return _Kind.FAILED, exc
        busy[index] = True
        jobs[index] = Resumed(started, waiting_on)
        if fetches[index] is None:
            fetches[index] = asyncio.ensure_future(fetch(index))
        wanted[index].set()
        return None

    try:
        while True:
            outcome: tuple[_Kind, Any] | None = None
            if ready.empty():
                for index in (0, 1):
                    if not busy[index] and (outcome := step(index)) is not None:
                        break
            if outcome is not None:
                kind, value = outcome
            else:
                # What a fetch task finished, in the order they finished.
                kind, value, index = ready.get_nowait() if not ready.empty() else await ready.get()
                busy[index] = False
            if kind is _Kind.FAILED:
                raise value
            if kind is _Kind.ENDED:
                break
            yield value
        while not ready.empty():  # fetched before the end: not to be lost
            kind, value, _ = ready.get_nowait()
            if kind is _Kind.ITEM:
                yield value
    finally:
        for job in jobs:
            if job is not None:  # never taken up by its fetch task
                job.cancel()
        for task in fetches:
            if task is not None:
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
