"""Keys the server makes for itself: one per name, the same for every process."""

from __future__ import annotations

import asyncio

from chatkit_server.store import Database
from chatkit_server.store.keys import server_key


async def test_a_key_is_made_once_and_then_always_the_same(database: Database) -> None:
    # As worker processes starting together: every one gets the first key made.
    keys = await asyncio.gather(*(server_key(database, "links") for _ in range(5)))
    assert len(set(keys)) == 1
    assert len(keys[0]) == 32
    assert await server_key(database, "links") == keys[0]
    assert await server_key(database, "other") != keys[0]
