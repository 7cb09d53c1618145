"""SessionStore on SQLite and PostgreSQL: minting, verifying, cancelling, sweeping."""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa

from chatkit_server.store import Database
from chatkit_server.store.sessions import SessionStore, secret_key
from chatkit_server.store.tables import sessions


@pytest.fixture
def session_store(database: Database) -> SessionStore:
    return SessionStore(database, key=secret_key("k" * 32))


async def test_sweep_deletes_only_sessions_that_ended_long_ago(
    session_store: SessionStore, database: Database
) -> None:
    kept, _ = await session_store.create(
        user_id="alice", workflow={"id": "default"}, expires_in=60, rate_limit=10, configuration={}
    )
    old, _ = await session_store.create(
        user_id="bob", workflow={"id": "default"}, expires_in=60, rate_limit=10, configuration={}
    )
    async with database.write() as session:
        await session.execute(
            sa.update(sessions)
            .where(sessions.c.id == old.id)
            .values(expires_at=int(time.time()) - 2 * 24 * 3600)
        )

    assert await session_store.sweep() == 1
    assert await session_store.get(old.id) is None
    assert await session_store.get(kept.id) is not None
    assert await session_store.sweep() == 0
