"""Running action handlers: what a failure or a timeout leaves, streamed and synchronous.

On a real store (SQLite and PostgreSQL); over HTTP, with real handlers from a
workflows file, in ``tests/workflows/test_actions.py``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import anyio
import pytest
from chatkit.actions import Action
from chatkit.types import (
    AssistantMessageItem,
    ErrorEvent,
    ThreadMetadata,
    ThreadStreamEvent,
)

from chatkit_server.context import RequestContext
from chatkit_server.errors import RequestError
from chatkit_server.protocol.actions import run_streamed_action, run_sync_action
from chatkit_server.store import SQLStore
from chatkit_server.workflows.actions import ActionClock, ActionContext, ActionTimeout

ALICE = RequestContext(user_id="alice")


async def _keeps_one_then_hangs(action: ActionContext) -> AsyncIterator[ThreadStreamEvent]:
    yield action.add_message("Kept.")
    await anyio.sleep_forever()
    yield action.notice("Never.")  # pragma: no cover


async def _fails(action: ActionContext) -> None:
    raise RuntimeError("internal detail")


async def _context(store: SQLStore, *, sync: bool) -> ActionContext:
    thread = ThreadMetadata(id="thr_1", created_at=datetime.now(UTC))
    await store.save_thread(thread, ALICE)
    return ActionContext(
        action=Action(type="test.act", payload=None),
        sender=None,
        thread=thread,
        request_context=ALICE,
        store=store,
        sync=sync,
    )


async def test_a_sync_handler_out_of_time_is_504_and_keeps_the_items_it_added(
    store: SQLStore,
) -> None:
    action = await _context(store, sync=True)

    with pytest.raises(RequestError) as refused:
        await run_sync_action(_keeps_one_then_hangs, action, ActionClock(0.2), store)

    assert refused.value.status_code == 504
    page = await store.load_thread_items("thr_1", None, 10, "asc", ALICE)
    [kept] = page.data
    assert isinstance(kept, AssistantMessageItem)
    assert kept.content[0].text == "Kept."


async def test_a_failing_sync_handler_is_502_without_its_details(store: SQLStore) -> None:
    action = await _context(store, sync=True)

    with pytest.raises(RequestError) as refused:
        await run_sync_action(_fails, action, ActionClock(5), store)

    assert refused.value.status_code == 502
    assert "internal detail" not in str(refused.value)


async def test_a_streamed_handler_ends_with_an_error_event_when_it_fails_or_hangs(
    store: SQLStore,
) -> None:
    action = await _context(store, sync=False)

    hung = [e async for e in run_streamed_action(_keeps_one_then_hangs, action, ActionClock(0.2))]
    failed = [e async for e in run_streamed_action(_fails, action, ActionClock(5))]

    assert [type(event) for event in hung][-1] is ErrorEvent
    assert "did not finish in time" in str(hung[-1])
    assert len(failed) == 1
    assert isinstance(failed[0], ErrorEvent)
    assert "internal detail" not in str(failed[0])


async def test_the_clock_stops_while_an_answer_streams() -> None:
    clock = ActionClock(0.2)

    async def answer() -> AsyncIterator[str]:
        for word in ("slow", "answer"):
            await anyio.sleep(0.15)  # 0.3 s in all: more than the handler's time
            yield word

    async def handler() -> AsyncIterator[str]:
        async for word in clock.excluding(answer()):
            yield word
        yield "done"

    assert [word async for word in clock.run(handler())] == ["slow", "answer", "done"]


async def test_0_is_no_limit() -> None:
    async def slow() -> AsyncIterator[str]:
        await anyio.sleep(0.3)
        yield "late"

    assert [word async for word in ActionClock(0).run(slow())] == ["late"]
    with pytest.raises(ActionTimeout):
        [word async for word in ActionClock(0.1).run(slow())]
