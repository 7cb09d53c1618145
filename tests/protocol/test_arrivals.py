"""A burst's models are asked before its writes (chatkit_server.protocol.arrivals)."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import func, select

from chatkit_server.protocol.arrivals import Arrivals
from chatkit_server.store.tables import threads
from chatkit_server.testing.fake_backend import Reply
from tests.live import FakeLLM, Live


async def test_a_request_counts_until_it_leaves_once() -> None:
    arrivals = Arrivals()
    with arrivals.arriving() as first, arrivals.arriving():
        assert arrivals.count == 2
        first.leave()
        first.leave()  # a second leave changes nothing
        assert arrivals.count == 1
    assert arrivals.count == 0


async def test_settled_returns_at_once_when_nothing_is_on_its_way() -> None:
    assert await Arrivals().settled(at_most=10.0)


async def test_settled_waits_for_the_last_request_to_leave() -> None:
    arrivals = Arrivals()
    with arrivals.arriving() as first:
        second = arrivals.arriving()
        other = second.__enter__()
        waiter = asyncio.ensure_future(arrivals.settled(at_most=10.0))
        await asyncio.sleep(0.01)
        first.leave()
        await asyncio.sleep(0.01)
        assert not waiter.done()  # one is still on its way
        other.leave()
        assert await waiter
        second.__exit__(None, None, None)


async def test_settled_gives_up_after_its_bound() -> None:
    arrivals = Arrivals()
    with arrivals.arriving():
        assert not await arrivals.settled(at_most=0.05)
        # A later wait gets a new chance, and the count still reaching zero wakes it.
        waiter = asyncio.ensure_future(arrivals.settled(at_most=10.0))
        await asyncio.sleep(0.01)
    assert await waiter


async def _stored_threads(live: Live) -> int:
    async with live.store.database.read() as session:
        return int((await session.execute(select(func.count()).select_from(threads))).scalar_one())


async def test_a_new_threads_writes_wait_for_a_burst_to_ask_where_they_would_compete(
    live: Live, fake_llm: FakeLLM
) -> None:
    server = live.state.server
    assert not live.store.database.statements_on_loop  # SQLite: nothing is held
    # As on PostgreSQL, whose statements share the event loop and a pool.
    server.hold_writes = True
    fake_llm.backend.script(Reply.text("Answered."))
    before = await _stored_threads(live)
    # Another request of the burst, still on its way to asking its model.
    with server.arrivals.arriving() as other:
        turn = asyncio.ensure_future(live.client.create_thread("Hello"))
        for _ in range(200):
            if fake_llm.backend.requests:
                break
            await asyncio.sleep(0.01)
        assert fake_llm.backend.requests, "the model was not asked"
        await asyncio.sleep(0.2)
        # Asked, but the thread is not stored while the other has not asked.
        assert await _stored_threads(live) == before
        assert not turn.done()
        other.leave()
        done = await asyncio.wait_for(turn, 10)
    assert done.assistant_text == "Answered."
    assert await _stored_threads(live) == before + 1


async def test_a_request_alone_is_never_held(live: Live, fake_llm: FakeLLM) -> None:
    live.state.server.hold_writes = True
    fake_llm.backend.script(Reply.text("At once."))
    done = await asyncio.wait_for(live.client.create_thread("Hello"), 10)
    assert done.assistant_text == "At once."
    assert live.state.server.arrivals.count == 0


@pytest.mark.parametrize("refused", ["not json", '{"type": "threads.create"}'])
async def test_a_refused_request_leaves_the_count(live: Live, refused: str) -> None:
    response = await live.client.post_raw(refused)
    assert response.status_code == 400
    assert live.state.server.arrivals.count == 0
