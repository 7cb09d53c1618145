"""Both attachment storages keep the same promises (database: SQLite and PostgreSQL)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import AsyncIterator, Collection, Sequence
from pathlib import Path

import anyio
import anyio.to_thread
import pytest
import sqlalchemy as sa

from chatkit_server.errors import NotFoundError, RequestError
from chatkit_server.files import CHUNK_BYTES, FileStorage, LocalFileStorage, local
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


async def test_a_large_local_save_is_whole(tmp_path: Path) -> None:
    # Past several background flushes, in chunks of odd sizes.
    storage = LocalFileStorage(tmp_path / "files")
    data = bytes(range(251)) * (3 * local._FLUSH_BYTES // 251 + 7)

    async def odd_chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(data), 100_003):
            yield data[start : start + 100_003]

    assert await storage.save("atc_big", odd_chunks()) == len(data)
    assert (tmp_path / "files" / "atc_big").read_bytes() == data


async def test_the_next_chunks_arrive_while_a_batch_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first batch's write finishes only once the upload has gone on
    # past it: a save that waited for each write would never get there.
    storage = LocalFileStorage(tmp_path / "files")
    went_on = threading.Event()
    write_all = local._write_all

    def write_once_the_upload_went_on(fd: int, pieces: Sequence[bytes]) -> None:
        assert went_on.wait(10), "the upload waited for the write"
        write_all(fd, pieces)

    monkeypatch.setattr(local, "_write_all", write_once_the_upload_went_on)

    async def source() -> AsyncIterator[bytes]:
        yield b"a" * CHUNK_BYTES  # a whole batch: handed to a thread
        went_on.set()
        yield b"b"

    assert await storage.save("atc_1", source()) == CHUNK_BYTES + 1
    assert (tmp_path / "files" / "atc_1").read_bytes() == b"a" * CHUNK_BYTES + b"b"


async def test_a_failed_background_flush_fails_the_save(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Linux reports a failed writeback to one fsync only: the closing fsync
    # might not see what the background flush saw.
    storage = LocalFileStorage(tmp_path / "files")

    def failing(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", failing)

    async def source() -> AsyncIterator[bytes]:
        for _ in range(local._FLUSH_BYTES // CHUNK_BYTES + 2):
            yield b"a" * CHUNK_BYTES

    with pytest.raises(OSError, match="Input/output"):
        await storage.save("atc_1", source())
    assert list((tmp_path / "files").iterdir()) == []


async def test_a_save_cancelled_mid_write_leaves_nothing_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = LocalFileStorage(tmp_path / "files")
    writing = threading.Event()
    release = threading.Event()
    write_all = local._write_all

    def slow_write(fd: int, pieces: Sequence[bytes]) -> None:
        writing.set()
        release.wait(10)
        write_all(fd, pieces)

    monkeypatch.setattr(local, "_write_all", slow_write)
    open_files = len(os.listdir("/proc/self/fd"))

    async def source() -> AsyncIterator[bytes]:
        yield b"a" * CHUNK_BYTES
        await anyio.sleep_forever()
        yield b""

    async with anyio.create_task_group() as group:
        group.start_soon(storage.save, "atc_1", source())
        await anyio.to_thread.run_sync(writing.wait, 10)
        group.cancel_scope.cancel()
    # Its name is gone at once; the file stays open until the write in flight is done.
    assert list((tmp_path / "files").iterdir()) == []
    release.set()
    for _ in range(100):
        if len(os.listdir("/proc/self/fd")) <= open_files:
            break
        await anyio.sleep(0.01)
    assert len(os.listdir("/proc/self/fd")) <= open_files
