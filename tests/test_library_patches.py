"""Library patches: the event merge (arrival order, nothing lost, one task per stream)
and the agent identity map (same map, no signatures for unique names)."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator
from typing import Any

import agents._run_state_agent_identity as agent_identity
import chatkit.agents
import pytest
from agents import Agent, handoff

from chatkit_server import library_patches
from chatkit_server.library_patches import identity_map, merge_events


async def from_queue(queue: asyncio.Queue[Any]) -> AsyncIterator[Any]:
    """Items of ``queue`` until ``None``."""
    while (item := await queue.get()) is not None:
        yield item


async def test_items_come_in_arrival_order_and_the_end_of_either_stops() -> None:
    run: asyncio.Queue[Any] = asyncio.Queue()
    tools: asyncio.Queue[Any] = asyncio.Queue()
    merged = merge_events(from_queue(run), from_queue(tools))
    got: list[Any] = []
    for queue, item in [(run, "r1"), (tools, "t1"), (run, "r2"), (run, "r3"), (tools, "t2")]:
        queue.put_nowait(item)
        got.append(await anext(merged))
    assert got == ["r1", "t1", "r2", "r3", "t2"]
    tools.put_nowait("t3")  # fetched before the run ends: still delivered
    await asyncio.sleep(0.01)
    run.put_nowait(None)
    assert [item async for item in merged] == ["t3"]


async def test_the_other_stream_keeps_what_arrives_after_the_end() -> None:
    # ChatKit drains its tool-event queue after the merge: an event that
    # arrives once the run has ended must still be in that queue.
    run: asyncio.Queue[Any] = asyncio.Queue()
    tools: asyncio.Queue[Any] = asyncio.Queue()
    merged = merge_events(from_queue(run), from_queue(tools))
    run.put_nowait("r1")
    assert await anext(merged) == "r1"
    run.put_nowait(None)
    with pytest.raises(StopAsyncIteration):
        await anext(merged)
    tools.put_nowait("late")
    await asyncio.sleep(0.01)
    assert tools.get_nowait() == "late"


async def test_a_failure_comes_after_the_items_before_it_and_stops_both() -> None:
    tools: asyncio.Queue[Any] = asyncio.Queue()
    cancelled: list[str] = []

    async def failing() -> AsyncIterator[str]:
        yield "r1"
        raise RuntimeError("backend dropped")

    async def watched_tools() -> AsyncIterator[Any]:
        try:
            async for item in from_queue(tools):
                yield item
        except asyncio.CancelledError:
            cancelled.append("tools")
            raise

    merged = merge_events(failing(), watched_tools())
    assert await anext(merged) == "r1"
    with pytest.raises(RuntimeError, match="backend dropped"):
        await anext(merged)
    await asyncio.sleep(0.01)
    assert cancelled == ["tools"]


async def test_a_stream_is_asked_for_more_only_when_the_consumer_is_back() -> None:
    # As in ChatKit's merge: while an event is being handled, the run's
    # events pile up in its queue, where they can be merged.
    asked: list[int] = []

    async def counted() -> AsyncIterator[int]:
        for i in range(3):
            asked.append(i)
            yield i

    never: asyncio.Queue[Any] = asyncio.Queue()
    merged = merge_events(counted(), from_queue(never))
    assert await anext(merged) == 0
    await asyncio.sleep(0.01)  # the consumer is busy elsewhere
    assert asked == [0]
    assert await anext(merged) == 1
    assert asked == [0, 1]
    await merged.aclose()  # type: ignore[attr-defined]


async def test_closing_early_cancels_both_fetches() -> None:
    run: asyncio.Queue[Any] = asyncio.Queue()
    tools: asyncio.Queue[Any] = asyncio.Queue()
    before = asyncio.all_tasks()
    merged = merge_events(from_queue(run), from_queue(tools))
    run.put_nowait("r1")
    assert await anext(merged) == "r1"
    await merged.aclose()  # type: ignore[attr-defined]
    # (The loop closes an abandoned generator in a task of its own.)
    await asyncio.sleep(0.01)
    left = [task for task in asyncio.all_tasks() - before if not task.done()]
    assert left == []


async def test_one_task_per_stream_not_per_item() -> None:
    loop = asyncio.get_running_loop()
    created = 0
    default = loop.get_task_factory()

    def counting(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> Any:
        nonlocal created
        created += 1
        if default is not None:
            return default(loop, coro, **kwargs)
        return asyncio.Task(coro, loop=loop, **kwargs)

    run: asyncio.Queue[Any] = asyncio.Queue()
    tools: asyncio.Queue[Any] = asyncio.Queue()

    async def produce() -> None:
        for i in range(200):
            run.put_nowait(i)
            await asyncio.sleep(0)
        run.put_nowait(None)

    producer = asyncio.create_task(produce())
    loop.set_task_factory(counting)
    try:
        got = [item async for item in merge_events(from_queue(run), from_queue(tools))]
    finally:
        loop.set_task_factory(default)
    await producer
    assert got == list(range(200))
    assert created == 2


def test_chatkit_still_merges_through_the_name_we_replace() -> None:
    # If an upgrade of chatkit renames its merge, install() would quietly do
    # nothing: fail here instead.
    source = inspect.getsource(chatkit.agents.stream_agent_response)
    assert "_merge_generators(result.stream_events(), queue_iterator)" in source
    library_patches.install()
    assert chatkit.agents._merge_generators is merge_events


def _graphs() -> dict[str, Agent[Any]]:
    single = Agent(name="assistant", instructions="Be brief.")
    billing = Agent(name="billing", instructions="Bills.")
    support = Agent(name="support", instructions="Help.", handoffs=[billing])
    triage = Agent(name="triage", handoffs=[support, handoff(billing)])
    billing.handoffs = [triage]  # a cycle
    twin_a = Agent(name="twin", instructions="first")
    twin_b = Agent(name="twin", instructions="second")
    twins = Agent(name="root", handoffs=[twin_b, twin_a])
    return {"single": single, "handoffs with a cycle": triage, "shared names": twins}


@pytest.mark.parametrize("name", ["single", "handoffs with a cycle", "shared names"])
def test_identity_map_equals_the_sdk_s(name: str) -> None:
    agent = _graphs()[name]
    original = library_patches._SDK_IDENTITY_MAP(agent)
    ours = identity_map(agent)
    assert list(ours.items()) == list(original.items())


def test_identity_map_signs_no_agent_when_names_are_unique(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    signed: list[str] = []
    original = agent_identity._agent_identity_signature

    def counting(agent: Agent[Any]) -> str:
        signed.append(agent.name)
        return original(agent)

    monkeypatch.setattr(agent_identity, "_agent_identity_signature", counting)
    identity_map(_graphs()["handoffs with a cycle"])
    assert signed == []
    identity_map(_graphs()["shared names"])  # the SDK's own tie-break
    assert signed.count("twin") == 2


def test_the_sdk_still_builds_its_keys_through_the_name_we_replace() -> None:
    source = inspect.getsource(agent_identity._build_agent_identity_keys_by_id)
    assert "_build_agent_identity_map(initial_agent)" in source
    library_patches.install()
    assert agent_identity._build_agent_identity_map is identity_map
    agent = _graphs()["handoffs with a cycle"]
    keys = agent_identity._build_agent_identity_keys_by_id(agent)
    assert sorted(keys.values()) == ["billing", "support", "triage"]


async def test_ready_items_come_without_a_trip_through_the_loop() -> None:
    # Three events from one read of the backend go out in one write: the
    # merge must not wait on the loop between them.
    run: asyncio.Queue[Any] = asyncio.Queue()
    tools: asyncio.Queue[Any] = asyncio.Queue()
    for item in ("added", "part", "delta"):
        run.put_nowait(item)
    merged = merge_events(from_queue(run), from_queue(tools))
    loop_turns: list[str] = []
    asyncio.get_running_loop().call_soon(loop_turns.append, "turn")
    got = [await anext(merged) for _ in range(3)]
    assert got == ["added", "part", "delta"]
    assert loop_turns == []
    await merged.aclose()  # type: ignore[attr-defined]
