"""Attachment bytes as files in a local directory (the default: under the data dir).

A save writes a hidden temporary file in the same directory, fsyncs it,
renames it over the final name and fsyncs the directory: a crash leaves the
old file or the new one, never half of one, and the new one survives power
loss once :meth:`LocalFileStorage.save` returns. Disk work runs in worker
threads, a megabyte at a time, so the event loop never waits on the disk.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import AsyncIterable, AsyncIterator, Collection
from pathlib import Path
from typing import Final

import anyio.to_thread

from chatkit_server.errors import NotFoundError
from chatkit_server.files.storage import CHUNK_BYTES, ExistingIds, FileStorage, check_file_id

__all__ = ["LocalFileStorage"]

_TEMPORARY_PREFIX: Final = ".upload-"
# Ids are checked against the database in batches of this many.
_SWEEP_BATCH: Final = 500


class LocalFileStorage(FileStorage):
    """Attachment bytes as files named by id in ``root``.

    Args:
        root: The directory (created on first use). Every process serving the
            same database must see the same directory: for several machines,
            use the database storage.
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, file_id: str) -> Path:
        return self.root / check_file_id(file_id)

    async def save(self, file_id: str, chunks: AsyncIterable[bytes]) -> int:
        """Store ``chunks`` as ``file_id`` atomically and durably (see the module notes)."""
        final = self._path(file_id)
        await anyio.to_thread.run_sync(lambda: self.root.mkdir(parents=True, exist_ok=True))
        temporary = self.root / f"{_TEMPORARY_PREFIX}{secrets.token_hex(8)}"
        fd = await anyio.to_thread.run_sync(
            os.open, temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600
        )
        size = 0
        try:
            buffer = bytearray()
            async for chunk in chunks:
                buffer += chunk
                size += len(chunk)
                if len(buffer) >= CHUNK_BYTES:
                    # No copy: the buffer is not touched until the write is done.
                    await anyio.to_thread.run_sync(_write_all, fd, buffer)
                    buffer.clear()
            await anyio.to_thread.run_sync(_finish, fd, bytes(buffer), temporary, final)
        except BaseException:
            # Synchronous on purpose: a cancelled task (the client left) may not await.
            with contextlib.suppress(OSError):
                os.close(fd)
            with contextlib.suppress(OSError):
                temporary.unlink()
            raise
        return size

    async def read(self, file_id: str) -> bytes:
        """All the bytes of ``file_id``."""
        path = self._path(file_id)
        try:
            return await anyio.to_thread.run_sync(path.read_bytes)
        except FileNotFoundError:
            raise NotFoundError("No such attachment.") from None

    async def stream(self, file_id: str) -> AsyncIterator[bytes]:
        """The bytes of ``file_id`` a megabyte at a time."""
        path = self._path(file_id)
        try:
            handle = await anyio.open_file(path, "rb")
        except FileNotFoundError:
            raise NotFoundError("No such attachment.") from None
        async with handle:
            while chunk := await handle.read(CHUNK_BYTES):
                yield chunk

    async def delete(self, file_ids: Collection[str]) -> None:
        """Delete these files; missing ones are skipped."""
        paths = [self._path(file_id) for file_id in file_ids]
        if paths:
            await anyio.to_thread.run_sync(_unlink_all, paths)

    async def sweep(self, existing: ExistingIds, *, older_than: float) -> int:
        """Delete old files naming no attachment, and old temporary files."""
        old = await anyio.to_thread.run_sync(_old_files, self.root, older_than)
        deleted = 0
        for start in range(0, len(old), _SWEEP_BATCH):
            batch = old[start : start + _SWEEP_BATCH]
            named = {name for name in batch if not name.startswith(_TEMPORARY_PREFIX)}
            keep = await existing(named) if named else set()
            doomed = [self.root / name for name in batch if name not in keep]
            await anyio.to_thread.run_sync(_unlink_all, doomed)
            deleted += len(doomed)
        return deleted


def _write_all(fd: int, data: bytes | bytearray) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _finish(fd: int, rest: bytes, temporary: Path, final: Path) -> None:
    _write_all(fd, rest)
    os.fsync(fd)
    os.close(fd)
    os.replace(temporary, final)
    # The rename itself is durable only once the directory is.
    directory = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _unlink_all(paths: list[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


def _old_files(root: Path, older_than: float) -> list[str]:
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError:
        return []
    old = []
    for entry in entries:
        with contextlib.suppress(FileNotFoundError):
            if entry.is_file() and entry.stat().st_mtime < older_than:
                old.append(entry.name)
    return old
