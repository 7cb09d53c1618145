"""RequestGate on SQLite and PostgreSQL: counts and leases of an existing thread."""

from __future__ import annotations

from datetime import datetime

import pytest
from chatkit.types import ThreadMetadata

from chatkit_server.context import RequestContext
from chatkit_server.store import Database, SQLStore
from chatkit_server.store.gate import RequestGate


@pytest.mark.parametrize("subject", ["session:s1", None])
async def test_an_existing_thread_is_leased_once_and_only_by_its_owner(
    database: Database, store: SQLStore, subject: str | None
) -> None:
    await store.save_thread(
        ThreadMetadata(id="thr_1", created_at=datetime(2026, 1, 1)), RequestContext(user_id="alice")
    )
    gate = RequestGate(database)
    admit = {"subject": subject, "limit": 10, "thread_id": "thr_1"}

    first = await gate.admit(**admit, user_id="alice")
    busy = await gate.admit(**admit, user_id="alice")
    foreign = await gate.admit(**admit, user_id="mallory")

    assert first.lease is not None
    assert busy.lease is None
    assert foreign.lease is None
    assert await gate.lease_again("thr_1", "alice") is None
    await gate.release(first.lease)
    assert await gate.lease_again("thr_1", "mallory") is None
    assert await gate.lease_again("thr_1", "alice") is not None
    if subject is not None:
        assert (first.count, busy.count, foreign.count) == (1, 2, 3)
