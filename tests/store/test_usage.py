"""Token usage rows: per answer, per thread, per user, owner-scoped."""

from __future__ import annotations

from datetime import datetime

import pytest
from chatkit.types import ThreadMetadata

from chatkit_server.context import RequestContext
from chatkit_server.errors import NotFoundError
from chatkit_server.store import Database, SQLStore, UsageRecord, UsageStore

ALICE = RequestContext(user_id="alice")
MALLORY = RequestContext(user_id="mallory")


def _record(item_id: str | None, tokens: tuple[int, int]) -> UsageRecord:
    return UsageRecord(
        item_id=item_id,
        workflow="default",
        model="m",
        requests=1,
        input_tokens=tokens[0],
        output_tokens=tokens[1],
    )


async def _thread(store: SQLStore, thread_id: str, context: RequestContext) -> None:
    await store.save_thread(ThreadMetadata(id=thread_id, created_at=datetime(2026, 1, 1)), context)


async def test_usage_is_summed_per_thread_and_reported(database: Database, store: SQLStore) -> None:
    usage = UsageStore(database)
    await _thread(store, "thr_a", ALICE)
    await _thread(store, "thr_b", ALICE)
    await usage.record("thr_a", _record("msg_1", (10, 5)), ALICE)
    await usage.record("thr_a", _record("msg_2", (20, 7)), ALICE)
    await usage.record("thr_b", _record(None, (3, 0)), ALICE)

    totals = await usage.for_thread("thr_a", ALICE)
    assert (totals.answers, totals.input_tokens, totals.output_tokens) == (2, 30, 12)
    assert totals.total_tokens == 42
    item = await usage.for_item("thr_a", "msg_2", ALICE)
    assert item is not None
    assert (item.input_tokens, item.output_tokens) == (20, 7)
    report = await usage.report(user_id="alice")
    assert [(row.thread_id, row.total_tokens) for row in report] == [("thr_a", 42), ("thr_b", 3)]
    assert await usage.report(user_id="nobody") == []


async def test_usage_is_owner_scoped_and_cascades(database: Database, store: SQLStore) -> None:
    usage = UsageStore(database)
    await _thread(store, "thr_a", ALICE)
    await usage.record("thr_a", _record("msg_1", (1, 1)), ALICE)

    with pytest.raises(NotFoundError):
        await usage.record("thr_a", _record("msg_1", (1, 1)), MALLORY)
    with pytest.raises(NotFoundError):
        await usage.for_thread("thr_a", MALLORY)

    await store.delete_thread("thr_a", ALICE)
    assert await usage.report() == []


async def test_report_per_user_sums_every_thread(database: Database, store: SQLStore) -> None:
    usage = UsageStore(database)
    bob = RequestContext(user_id="bob")
    await _thread(store, "thr_a", ALICE)
    await _thread(store, "thr_b", ALICE)
    await _thread(store, "thr_c", bob)
    await usage.record("thr_a", _record("msg_1", (10, 5)), ALICE)
    await usage.record("thr_b", _record("msg_2", (1, 1)), ALICE)
    await usage.record("thr_c", _record("msg_3", (4, 4)), bob)

    report = await usage.report(by="user")

    assert [(row.user_id, row.thread_id, row.answers, row.total_tokens) for row in report] == [
        ("alice", None, 2, 17),
        ("bob", None, 1, 8),
    ]
    assert [row.user_id for row in await usage.report(by="user", user_id="bob")] == ["bob"]
    assert [row.thread_id for row in await usage.report(thread_id="thr_b")] == ["thr_b"]
