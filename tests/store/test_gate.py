"""Rate counts and thread leases in the database (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime

import pytest
import sqlalchemy as sa
from chatkit.types import ThreadMetadata

from chatkit_server.context import RequestContext
from chatkit_server.store import Database, SQLStore, UsageRecord, UsageStore
from chatkit_server.store.gate import LEASE_SECONDS, RequestGate
from chatkit_server.store.tables import rate_counts, thread_leases
from chatkit_server.store.usage import usage_values
from tests.conftest import record_sql
from tests.items import user_message

ALICE = RequestContext(user_id="alice")


async def _thread(store: SQLStore, thread_id: str = "thr_a") -> str:
    await store.save_thread(
        ThreadMetadata(id=thread_id, created_at=ALICE_TIME, status={"type": "active"}), ALICE
    )
    return thread_id


ALICE_TIME = datetime(2026, 12, 6, 12, 0, 0)
USAGE = UsageRecord(
    item_id="msg_1", workflow="default", model="m", requests=1, input_tokens=7, output_tokens=3
)


async def test_counts_per_subject_and_refuses_no_one(database: Database) -> None:
    gate = RequestGate(database)
    counts = [(await gate.admit(subject="user:alice", limit=None)).count for _ in range(3)]
    other = await gate.admit(subject="user:bob", limit=None)
    assert counts == [1, 2, 3]
    assert other.count == 1
    assert 1 <= other.retry_after <= 60


async def test_concurrent_counts_are_exact(database: Database) -> None:
    gates = [RequestGate(database) for _ in range(4)]  # as if four processes
    results = await asyncio.gather(
        *(gates[i % 4].admit(subject="s", limit=None) for i in range(40))
    )
    assert sorted(result.count for result in results) == list(range(1, 41))


async def test_a_thread_has_one_lease_at_a_time(database: Database) -> None:
    store = SQLStore(database)
    thread_id = await _thread(store)
    first, second = RequestGate(database, holder="p1"), RequestGate(database, holder="p2")

    taken = await first.admit(subject=None, limit=None, thread_id=thread_id, user_id="alice")
    refused = await second.admit(subject=None, limit=None, thread_id=thread_id, user_id="alice")

    assert taken.lease is not None
    assert refused.lease is None
    await first.release(taken.lease)
    again = await second.admit(subject=None, limit=None, thread_id=thread_id, user_id="alice")
    assert again.lease is not None


@pytest.mark.parametrize("subject", [None, "user:mallory"])
async def test_another_users_or_a_missing_thread_is_never_leased(
    database: Database, subject: str | None
) -> None:
    store = SQLStore(database)
    thread_id = await _thread(store)
    gate = RequestGate(database)

    foreign = await gate.admit(subject=subject, limit=10, thread_id=thread_id, user_id="mallory")
    missing = await gate.admit(subject=subject, limit=10, thread_id="thr_none", user_id="alice")

    assert foreign.lease is None
    assert missing.lease is None
    assert await gate.thread_exists(thread_id, "alice")
    assert not await gate.thread_exists(thread_id, "mallory")
    assert gate.held == 0


async def test_a_new_threads_lease_is_taken_before_its_row_exists(database: Database) -> None:
    gate = RequestGate(database)
    admitted = await gate.admit(
        subject=None, limit=None, thread_id="thr_new", user_id="alice", new_thread=True
    )
    assert admitted.lease is not None
    blocked = await gate.admit(
        subject=None, limit=None, thread_id="thr_new", user_id="alice", new_thread=True
    )
    assert blocked.lease is None


async def test_over_the_limit_no_lease_is_taken(database: Database) -> None:
    store = SQLStore(database)
    thread_id = await _thread(store)
    gate = RequestGate(database)
    first = await gate.admit(subject="s", limit=1, thread_id=thread_id, user_id="alice")
    assert first.lease is not None
    await gate.release(first.lease)

    second = await gate.admit(subject="s", limit=1, thread_id=thread_id, user_id="alice")

    assert second.count == 2
    assert second.lease is None
    async with database.read() as session:
        assert await session.scalar(sa.select(sa.func.count()).select_from(thread_leases)) == 0


@pytest.mark.parametrize("subject", [None, "user:alice"])
async def test_a_lease_carries_the_thread_as_it_was_when_taken(
    database: Database, subject: str | None
) -> None:
    store = SQLStore(database)
    thread_id = await _thread(store)
    gate = RequestGate(database)

    first = await gate.admit(subject=subject, limit=10, thread_id=thread_id, user_id="alice")
    assert first.lease is not None
    assert first.lease.thread_data is not None
    stored = await store.load_thread(thread_id, ALICE)
    assert ThreadMetadata.model_validate_json(first.lease.thread_data) == stored
    await gate.release(first.lease)

    stored.title = "Renamed"
    await store.save_thread(stored, ALICE)
    again = await gate.lease_again(thread_id, "alice")
    assert again is not None
    assert again.thread_data is not None
    assert ThreadMetadata.model_validate_json(again.thread_data).title == "Renamed"

    new = await gate.admit(
        subject=subject, limit=10, thread_id="thr_new", user_id="alice", new_thread=True
    )
    assert new.lease is not None
    assert new.lease.thread_data is None


@pytest.mark.parametrize("subject", [None, "user:alice"])
async def test_a_lease_carries_the_newest_items_when_asked(
    database: Database, subject: str | None
) -> None:
    store = SQLStore(database)
    thread_id = await _thread(store)
    for n in range(5):
        await store.add_thread_item(thread_id, user_message(thread_id, f"msg_{n}", f"m {n}"), ALICE)
    gate = RequestGate(database)
    newest = [row async for row in store.newest_rows(thread_id, 3, ALICE)]

    asked = await gate.admit(
        subject=subject, limit=10, thread_id=thread_id, user_id="alice", newest_items=3
    )
    assert asked.lease is not None
    assert asked.lease.newest_items is not None
    assert [item_id for item_id, _, _ in asked.lease.newest_items] == ["msg_4", "msg_3", "msg_2"]
    assert [(kind, data) for _, kind, data in asked.lease.newest_items] == newest
    bare = asked.lease.bare()  # what an answer holds while it streams
    assert (bare.thread_id, bare.token) == (asked.lease.thread_id, asked.lease.token)
    assert (bare.thread_data, bare.newest_items) == (None, None)
    await gate.release(asked.lease)

    not_asked = await gate.admit(subject=subject, limit=10, thread_id=thread_id, user_id="alice")
    assert not_asked.lease is not None
    assert not_asked.lease.newest_items is None
    await gate.release(not_asked.lease)
    new = await gate.admit(
        subject=subject,
        limit=10,
        thread_id="thr_new",
        user_id="alice",
        new_thread=True,
        newest_items=3,
    )
    assert new.lease is not None
    assert new.lease.newest_items is None


async def test_admission_is_one_round_trip(database: Database) -> None:
    store = SQLStore(database)
    thread_id = await _thread(store)
    gate = RequestGate(database)
    statements = record_sql(database)

    await gate.admit(subject="s", limit=10, thread_id=thread_id, user_id="alice")

    # SQLite: both statements in one hand-off to the writer thread (plus its
    # BEGIN IMMEDIATE/COMMIT); PostgreSQL: one statement.
    work = [s for s in statements if s.upper().startswith(("INSERT", "WITH"))]
    assert len(work) == (1 if database.dialect == "postgresql" else 2)


async def test_a_crashed_holders_lease_runs_out(database: Database) -> None:
    store = SQLStore(database)
    thread_id = await _thread(store)
    crashed = RequestGate(database, holder="crashed")
    assert (
        await crashed.admit(subject=None, limit=None, thread_id=thread_id, user_id="alice")
    ).lease
    # The holder is gone: nobody renews. Age its lease past its end.
    async with database.write() as session:
        await session.execute(
            sa.update(thread_leases).values(expires_at=int((time.time() - 1) * 1000))
        )

    taken = await RequestGate(database, holder="alive").admit(
        subject=None, limit=None, thread_id=thread_id, user_id="alice"
    )

    assert taken.lease is not None


async def test_renew_extends_only_this_holders_leases(database: Database) -> None:
    store = SQLStore(database)
    await _thread(store, "thr_a")
    await _thread(store, "thr_b")
    mine, theirs = RequestGate(database, holder="mine"), RequestGate(database, holder="theirs")
    await mine.admit(subject=None, limit=None, thread_id="thr_a", user_id="alice")
    await theirs.admit(subject=None, limit=None, thread_id="thr_b", user_id="alice")
    async with database.write() as session:
        await session.execute(sa.update(thread_leases).values(expires_at=0))

    await mine.renew()

    async with database.read() as session:
        rows = dict(
            (
                await session.execute(sa.select(thread_leases.c.holder, thread_leases.c.expires_at))
            ).all()
        )
    assert rows["mine"] >= int((time.time() + LEASE_SECONDS - 5) * 1000)
    assert rows["theirs"] == 0


async def test_sweep_forgets_past_minutes_and_lapsed_leases(database: Database) -> None:
    gate = RequestGate(database)
    await gate.admit(subject="s", limit=None)
    await gate.admit(subject=None, limit=None, thread_id="thr_x", user_id="a", new_thread=True)
    async with database.write() as session:
        await session.execute(sa.update(rate_counts).values(minute=rate_counts.c.minute - 5))
        await session.execute(sa.update(thread_leases).values(expires_at=0))

    await gate.sweep()

    async with database.read() as session:
        assert await session.scalar(sa.select(sa.func.count()).select_from(rate_counts)) == 0
        assert await session.scalar(sa.select(sa.func.count()).select_from(thread_leases)) == 0


@pytest.mark.parametrize("new_thread", [False, True])
async def test_release_removes_only_its_own_lease(database: Database, new_thread: bool) -> None:
    store = SQLStore(database)
    thread_id = "thr_n" if new_thread else await _thread(store)
    gate = RequestGate(database)
    first = await gate.admit(
        subject=None, limit=None, thread_id=thread_id, user_id="alice", new_thread=new_thread
    )
    assert first.lease is not None
    async with database.write() as session:  # lapsed, and taken by another request
        await session.execute(sa.update(thread_leases).values(expires_at=0))
    second = await gate.admit(
        subject=None, limit=None, thread_id=thread_id, user_id="alice", new_thread=new_thread
    )
    assert second.lease is not None

    await gate.release(first.lease)  # late: must not free the second request's lease

    third = await gate.admit(
        subject=None, limit=None, thread_id=thread_id, user_id="alice", new_thread=new_thread
    )
    assert third.lease is None


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


async def test_a_release_records_the_answers_usage_in_the_same_write(
    database: Database, store: SQLStore
) -> None:
    thread_id = await _thread(store)
    gate = RequestGate(database)
    usage_store = UsageStore(database)
    taken = await gate.admit(subject=None, limit=None, thread_id=thread_id, user_id="alice")
    assert taken.lease is not None
    writes = record_sql(database)

    await gate.release(taken.lease, usage_values(thread_id, USAGE, "alice"))
    released = [statement.split()[0] for statement in writes]

    assert await usage_store.for_item(thread_id, "msg_1", ALICE) == USAGE
    assert await gate.lease_again(thread_id, "alice") is not None
    # One statement on PostgreSQL; on SQLite the two in one transaction.
    if database.dialect == "postgresql":
        assert released == ["WITH"]
    else:
        assert released == ["BEGIN", "INSERT", "DELETE"]


async def test_a_release_frees_the_lease_when_its_usage_cannot_be_recorded(
    database: Database, store: SQLStore
) -> None:
    thread_id = await _thread(store)
    gate = RequestGate(database)
    taken = await gate.admit(subject=None, limit=None, thread_id=thread_id, user_id="alice")
    assert taken.lease is not None

    # Usage in another user's name (as if the thread changed hands): not recorded.
    await gate.release(taken.lease, usage_values(thread_id, USAGE, "mallory"))

    assert await UsageStore(database).for_item(thread_id, "msg_1", ALICE) is None
    assert await gate.lease_again(thread_id, "alice") is not None
