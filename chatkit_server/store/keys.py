"""Keys the server makes for itself, kept in the database.

When the operator configured no secret for something that needs one (the
links to uploads and image previews), the first process to ask makes a random key and
stores it; every other worker process and replica on the same database reads
the same one, and it survives restarts.
"""

from __future__ import annotations

import secrets

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from chatkit_server.store.database import Database
from chatkit_server.store.tables import server_keys

__all__ = ["server_key"]


async def server_key(database: Database, name: str) -> bytes:
    """The key called ``name``: made (32 random bytes) on first use, then always the same.

    Raises:
        StoreError: The database failed.
    """
    insert = (
        postgresql.insert(server_keys)
        if database.dialect == "postgresql"
        else sqlite.insert(server_keys)
    )
    # Two processes starting at once both try; the first insert wins and both read it.
    await database.write_one(
        insert.values(name=name, value=secrets.token_hex(32)).on_conflict_do_nothing(
            index_elements=["name"]
        )
    )
    async with database.read() as session:
        value: str = await session.scalar(
            sa.select(server_keys.c.value).where(server_keys.c.name == name)
        )
    return bytes.fromhex(value)
