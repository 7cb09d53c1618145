"""Steps run by hand: finished by an await as if awaited all along, or cancelled."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from chatkit_server.steps import Resumed


async def test_a_step_started_by_hand_is_finished_by_await() -> None:
    loop = asyncio.get_running_loop()
    first: asyncio.Future[int] = loop.create_future()
    second: asyncio.Future[int] = loop.create_future()

    async def work() -> int:
        return await first + await second

    step = work().__await__()
    waiting_on = step.send(None)
    assert waiting_on is first
    task = asyncio.ensure_future(_await(Resumed(step, waiting_on)))
    first.set_result(1)
    await asyncio.sleep(0)
    second.set_result(2)
    assert await task == 3


async def test_errors_reach_the_step_and_its_own_come_back() -> None:
    loop = asyncio.get_running_loop()
    failing: asyncio.Future[int] = loop.create_future()

    async def work() -> int:
        try:
            return await failing
        except KeyError:
            raise ValueError("handled") from None

    step = work().__await__()
    task = asyncio.ensure_future(_await(Resumed(step, step.send(None))))
    failing.set_exception(KeyError("x"))
    with pytest.raises(ValueError, match="handled"):
        await task


async def test_cancel_raises_where_the_step_waits() -> None:
    queue: asyncio.Queue[int] = asyncio.Queue()
    seen: list[str] = []

    async def work() -> int:
        try:
            return await queue.get()
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    step = work().__await__()
    Resumed(step, step.send(None)).cancel()
    assert seen == ["cancelled"]
    # The queue forgot the waiter: a later item stays for the next reader.
    queue.put_nowait(1)
    assert queue.get_nowait() == 1


async def test_a_step_that_awaits_on_its_way_out_is_finished_in_a_task() -> None:
    loop = asyncio.get_running_loop()
    blocker: asyncio.Future[None] = loop.create_future()
    cleanup: asyncio.Future[None] = loop.create_future()
    done: list[str] = []

    async def work() -> None:
        try:
            await blocker
        finally:
            await cleanup
            done.append("cleaned up")

    step = work().__await__()
    Resumed(step, step.send(None)).cancel()
    assert done == []
    cleanup.set_result(None)
    await asyncio.sleep(0.01)
    assert done == ["cleaned up"]


async def _await(step: Resumed) -> Any:
    return await step
