"""Attachment bytes in the database (``CHATKIT_ATTACHMENT_STORAGE=database``).

For several replicas on one PostgreSQL, where no local directory is shared.
Bytes are rows of at most a megabyte in ``attachment_chunks``, each written
in a short transaction of its own (a slow upload never holds a write lock),
under a temporary name; one last transaction replaces the file's earlier
rows and renames the new ones. So the bytes appear whole or not at all, and
they are durable when that transaction commits.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterable, AsyncIterator, Collection
from typing import Final

import anyio
import sqlalchemy as sa

from chatkit_server.errors import NotFoundError
from chatkit_server.files.storage import CHUNK_BYTES, ExistingIds, FileStorage, check_file_id
from chatkit_server.store.database import Database
from chatkit_server.store.tables import attachment_chunks, attachments

__all__ = ["DatabaseFileStorage"]

# Temporary names cannot be attachment ids (those start with atc_).
_TEMPORARY_PREFIX: Final = "upload_"
# Removing a failed upload's rows runs even in a cancelled task, this long at most.
_CLEANUP_SECONDS: Final = 5.0


class DatabaseFileStorage(FileStorage):
    """Attachment bytes as rows of ``attachment_chunks``.

    Args:
        database: The server's database (the one its attachments are in).
    """

    def __init__(self, database: Database) -> None:
        self._db = database

    async def save(self, file_id: str, chunks: AsyncIterable[bytes]) -> int:
        """Store ``chunks`` as ``file_id``; visible (and durable) only when complete."""
        check_file_id(file_id)
        temporary = f"{_TEMPORARY_PREFIX}{secrets.token_hex(16)}"
        created = int(time.time())
        index = 0
        size = 0
        buffer = bytearray()

        async def flush() -> None:
            nonlocal index
            data = bytes(buffer[:CHUNK_BYTES])
            await self._db.write_one(
                sa.insert(attachment_chunks).values(
                    file_id=temporary, chunk=index, data=data, created_at=created
                )
            )
            index += 1
            del buffer[:CHUNK_BYTES]

        try:
            async for chunk in chunks:
                buffer += chunk
                size += len(chunk)
                while len(buffer) >= CHUNK_BYTES:
                    await flush()
            if buffer or index == 0:  # an empty file is one empty row: it exists
                await flush()
            async with self._db.write() as session:
                await session.execute(
                    sa.delete(attachment_chunks).where(attachment_chunks.c.file_id == file_id)
                )
                await session.execute(
                    sa.update(attachment_chunks)
                    .where(attachment_chunks.c.file_id == temporary)
                    .values(file_id=file_id)
                )
        except BaseException:
            with anyio.CancelScope(shield=True, deadline=anyio.current_time() + _CLEANUP_SECONDS):
                await self._db.write_one(
                    sa.delete(attachment_chunks).where(attachment_chunks.c.file_id == temporary)
                )
            raise
        return size

    async def read(self, file_id: str) -> bytes:
        """All the bytes of ``file_id``."""
        return b"".join([chunk async for chunk in self.stream(file_id)])

    async def stream(self, file_id: str) -> AsyncIterator[bytes]:
        """The bytes of ``file_id``, one row (a megabyte at most) per query."""
        check_file_id(file_id)
        index = 0
        while True:
            async with self._db.read() as session:
                data: bytes | None = await session.scalar(
                    sa.select(attachment_chunks.c.data).where(
                        attachment_chunks.c.file_id == file_id,
                        attachment_chunks.c.chunk == index,
                    )
                )
            if data is None:
                if index == 0:
                    raise NotFoundError("No such attachment.")
                return
            if data:
                yield data
            index += 1

    async def delete(self, file_ids: Collection[str]) -> None:
        """Delete these files; missing ones are skipped."""
        ids = [check_file_id(file_id) for file_id in file_ids]
        if ids:
            await self._db.write_one(
                sa.delete(attachment_chunks).where(attachment_chunks.c.file_id.in_(ids))
            )

    async def sweep(self, existing: ExistingIds, *, older_than: float) -> int:
        """Delete old rows naming no attachment (``existing`` is not needed: one statement)."""
        rows = await self._db.write_one(
            sa.delete(attachment_chunks)
            .where(
                attachment_chunks.c.created_at < int(older_than),
                ~sa.exists().where(attachments.c.id == attachment_chunks.c.file_id),
            )
            .returning(attachment_chunks.c.file_id)
        )
        return len({row.file_id for row in rows})
