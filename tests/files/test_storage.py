"""Both attachment storages keep the same promises (database: SQLite and PostgreSQL)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Collection
from pathlib import Path

import pytest
import sqlalchemy as sa

from chatkit_server.errors import NotFoundError, RequestError
from chatkit_server.files import CHUNK_BYTES, FileStorage, LocalFileStorage
from chatkit_server.files.database import DatabaseFileStorage
from chatkit_server.store import Database
from chatkit_server.store.tables import attachment_chunks


@pytest.fixture(params=["local", "database"])
def storage(request: pytest.FixtureRequest, tmp_path: Path, database: Database) -> FileStorage:
    if request.param == "local":
        return LocalFileStorage(tmp_path / "attachments")
    return DatabaseFileStorage(database)


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def leftovers(storage: FileStorage, database: Database) -> list[str]:
    """Everything the storage holds, temporary files included."""
    if isinstance(storage, LocalFileStorage):
        root = storage.root
        return sorted(p.name for p in root.iterdir()) if root.exists() else []
    async with database.read() as session:
        rows = await session.scalars(sa.select(attachment_chunks.c.file_id).distinct())
        return sorted(rows.all())


async def test_save_read_stream_delete(storage: FileStorage, database: Database) -> None:
    big = bytes(range(256)) * (CHUNK_BYTES // 256) + b"tail"  # more than one chunk

    size = await storage.save("atc_1", chunks(big[:1000], big[1000:]))

    assert size == len(big)
    assert await storage.read("atc_1") == big
    streamed = [chunk async for chunk in storage.stream("atc_1")]
    assert b"".join(streamed) == big
    assert all(len(chunk) <= CHUNK_BYTES for chunk in streamed)
    assert await leftovers(storage, database) == ["atc_1"]

    await storage.delete(["atc_1", "atc_missing"])  # a missing one is skipped
    with pytest.raises(NotFoundError):
        await storage.read("atc_1")
    assert await leftovers(storage, database) == []


async def test_an_empty_file_exists(storage: FileStorage) -> None:
    assert await storage.save("atc_empty", chunks()) == 0
    assert await storage.read("atc_empty") == b""


async def test_a_save_replaces_the_earlier_bytes(storage: FileStorage) -> None:
    await storage.save("atc_1", chunks(b"old" * 1000))
    await storage.save("atc_1", chunks(b"new"))
    assert await storage.read("atc_1") == b"new"


async def test_a_failed_save_leaves_nothing_and_keeps_the_old_bytes(
    storage: FileStorage, database: Database
) -> None:
    await storage.save("atc_1", chunks(b"kept"))

    async def too_large() -> AsyncIterator[bytes]:
        yield b"x" * (CHUNK_BYTES + 10)  # one chunk already written
        raise RequestError(413, "too large")

    with pytest.raises(RequestError):
        await storage.save("atc_1", too_large())
    with pytest.raises(RequestError):
        await storage.save("atc_2", too_large())

    assert await storage.read("atc_1") == b"kept"
    assert await leftovers(storage, database) == ["atc_1"]


@pytest.mark.parametrize("file_id", ["../etc/passwd", "a/b", "", ".hidden", "x" * 200])
async def test_ids_that_are_not_ours_name_nothing(storage: FileStorage, file_id: str) -> None:
    with pytest.raises(NotFoundError):
        await storage.save(file_id, chunks(b"x"))
    with pytest.raises(NotFoundError):
        await storage.read(file_id)


async def test_missing_files_are_not_found(storage: FileStorage) -> None:
    with pytest.raises(NotFoundError):
        await storage.read("atc_none")
    with pytest.raises(NotFoundError):
        await anext(storage.stream("atc_none"))


async def test_sweep_deletes_only_old_files_that_name_no_attachment(
    storage: FileStorage, database: Database
) -> None:
    await storage.save("atc_kept", chunks(b"a"))
    await storage.save("atc_orphan", chunks(b"b"))

    async def existing(ids: Collection[str]) -> set[str]:
        # The database storage asks the attachments table itself: it has no rows.
        return {"atc_kept"} & set(ids)

    assert await storage.sweep(existing, older_than=time.time() - 3600) == 0  # too young
    if isinstance(storage, DatabaseFileStorage):
        # Its check is one statement against the attachments table, which is empty here.
        assert await storage.sweep(existing, older_than=time.time() + 10) == 2
        return
    assert await storage.sweep(existing, older_than=time.time() + 10) == 1
    assert await leftovers(storage, database) == ["atc_kept"]


async def test_local_files_are_private_and_named_by_id(tmp_path: Path) -> None:
    storage = LocalFileStorage(tmp_path / "files")
    await storage.save("atc_1", chunks(b"secret"))
    path = tmp_path / "files" / "atc_1"
    assert path.read_bytes() == b"secret"
    assert path.stat().st_mode & 0o077 == 0
