"""Sessions: minted, verified by secret, cancelled, swept (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import time

import sqlalchemy as sa

from chatkit_server.store import Database
from chatkit_server.store.sessions import (
    RETENTION_SECONDS,
    SECRET_PREFIX,
    SessionStore,
    secret_key,
)
from chatkit_server.store.tables import sessions
from tests.conftest import record_sql

KEY = secret_key("a" * 32)
WORKFLOW = {"id": "default", "state_variables": {"plan": "pro"}, "tracing": {"enabled": True}}
CONFIG = {
    "automatic_thread_titling": {"enabled": False},
    "file_upload": {"enabled": True, "max_file_size": 2, "max_files": 3},
    "history": {"enabled": True, "recent_threads": 5},
}


async def _mint(store: SessionStore, *, expires_in: int = 600) -> tuple[str, str]:
    record, secret = await store.create(
        user_id="alice",
        workflow=WORKFLOW,
        expires_in=expires_in,
        rate_limit=7,
        configuration=CONFIG,
    )
    return record.id, secret


async def test_a_minted_secret_signs_its_user_in(database: Database) -> None:
    store = SessionStore(database, key=KEY)
    session_id, secret = await _mint(store)

    record = await SessionStore(database, key=KEY).verify(secret)  # another process

    assert secret.startswith(SECRET_PREFIX)
    assert len(secret) > 40
    assert record is not None
    assert (record.id, record.user_id, record.rate_limit) == (session_id, "alice", 7)
    assert record.state_variables == {"plan": "pro"}
    limits = record.limits()
    assert not limits.titles
    assert (limits.uploads, limits.max_file_bytes, limits.max_files) == (True, 2 << 20, 3)
    assert limits.recent_threads == 5
    assert limits.files_since == record.created_at


async def test_only_a_keyed_hash_is_stored(database: Database) -> None:
    store = SessionStore(database, key=KEY)
    _, secret = await _mint(store)
    async with database.read() as session:
        stored = (await session.execute(sa.select(sessions))).one()
    assert secret not in repr(tuple(stored))
    # Another key (a rotated admin key) recognises nothing.
    assert await SessionStore(database, key=secret_key("b" * 32)).verify(secret) is None


async def test_unknown_and_expired_secrets_are_refused(database: Database) -> None:
    store = SessionStore(database, key=KEY)
    _, secret = await _mint(store, expires_in=0)
    assert await store.verify(secret) is None
    assert await store.verify(SECRET_PREFIX + "nope") is None
    record = await store.get((await _mint(store, expires_in=0))[0])
    assert record is not None
    assert record.status() == "expired"


async def test_cancel_takes_effect_at_once_here_and_within_a_second_elsewhere(
    database: Database,
) -> None:
    here, elsewhere = SessionStore(database, key=KEY), SessionStore(database, key=KEY)
    session_id, secret = await _mint(here)
    assert await here.verify(secret) is not None
    assert await elsewhere.verify(secret) is not None  # now cached there

    cancelled = await here.cancel(session_id)

    assert cancelled is not None
    assert cancelled.status() == "cancelled"
    assert await here.verify(secret) is None
    # The other process trusts its cache for at most VERIFIED_TTL.
    deadline = time.monotonic() + 2
    while await elsewhere.verify(secret) is not None:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)


async def test_cancel_of_unknown_or_ended_sessions(database: Database) -> None:
    store = SessionStore(database, key=KEY)
    assert await store.cancel("cksess_missing") is None
    session_id, _ = await _mint(store, expires_in=0)
    ended = await store.cancel(session_id)
    assert ended is not None
    assert ended.status() == "expired"


async def test_sweep_deletes_only_long_ended_sessions(database: Database) -> None:
    store = SessionStore(database, key=KEY)
    old_id, _ = await _mint(store)
    live_id, _ = await _mint(store)
    async with database.write() as session:
        await session.execute(
            sa.update(sessions)
            .where(sessions.c.id == old_id)
            .values(expires_at=int(time.time()) - RETENTION_SECONDS - 1)
        )

    assert await store.sweep() == 1
    assert await store.get(old_id) is None
    assert await store.get(live_id) is not None


async def test_a_polled_memory_verifies_without_a_query(database: Database) -> None:
    store = SessionStore(database, key=KEY)
    _, secret = await _mint(store)
    await store.poll_cancelled()
    assert await store.verify(secret) is not None  # the first time asks the database
    statements = record_sql(database)

    for _ in range(5):
        assert await store.verify(secret) is not None

    assert statements == []


async def test_the_process_that_minted_a_session_verifies_it_without_a_query(
    database: Database,
) -> None:
    store = SessionStore(database, key=KEY)
    await store.poll_cancelled()
    session_id, secret = await _mint(store)
    statements = record_sql(database)

    record = await store.verify(secret)

    assert record is not None
    assert record.id == session_id
    assert statements == []
    # Cancelled here, it is refused at once all the same.
    await store.cancel(session_id)
    assert await store.verify(secret) is None


async def test_a_poll_forgets_sessions_cancelled_elsewhere(database: Database) -> None:
    here, elsewhere = SessionStore(database, key=KEY), SessionStore(database, key=KEY)
    session_id, secret = await _mint(here)
    await elsewhere.poll_cancelled()
    assert await elsewhere.verify(secret) is not None
    await here.cancel(session_id)

    await elsewhere.poll_cancelled()

    assert await elsewhere.verify(secret) is None
