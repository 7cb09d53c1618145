"""Attachment bytes as files in a local directory (the default: under the data dir).

A save writes a hidden temporary file in the same directory, fsyncs it,
renames it over the final name and fsyncs the directory: a crash leaves the
old file or the new one, never half of one, and the new one survives power
loss once :meth:`LocalFileStorage.save` returns.

Disk work runs in worker threads, a megabyte at a time, so the event loop
never waits on the disk, and it overlaps the upload: a megabyte is written
while the next one arrives, and every few megabytes the file is flushed to
disk in the background, so that the closing fsync waits for the last few
megabytes only, not for the whole file. The megabytes are handed over as the
chunks they arrived in (one ``writev``), never copied into one buffer.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import threading
from collections.abc import AsyncIterable, AsyncIterator, Collection, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Final

import anyio.to_thread

from chatkit_server.errors import NotFoundError
from chatkit_server.files.storage import CHUNK_BYTES, ExistingIds, FileStorage, check_file_id

__all__ = ["LocalFileStorage"]

_TEMPORARY_PREFIX: Final = ".upload-"
# Ids are checked against the database in batches of this many.
_SWEEP_BATCH: Final = 500
# Written bytes are flushed to disk in the background each time this many more
# are written: the closing fsync then has at most about this much left to do.
_FLUSH_BYTES: Final = 8 * CHUNK_BYTES
# Chunks handed to one writev at most (the system's limit is 1024): a client
# sending tiny chunks is slow anyway, its batches are just smaller.
_MAX_PIECES: Final = 256
# The threads that write and flush uploads. Their own pool, not anyio's:
# a write runs while the coroutine that started it goes on receiving.
_DISK: Final = ThreadPoolExecutor(8, thread_name_prefix="chatkit-files")


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
        writer = _Writer(fd)
        size = 0
        try:
            batch: list[bytes] = []
            batched = 0
            async for chunk in chunks:
                batch.append(chunk)
                batched += len(chunk)
                if batched >= CHUNK_BYTES or len(batch) >= _MAX_PIECES:
                    await writer.write(batch, batched)
                    size += batched
                    batch, batched = [], 0
            size += batched
            await writer.written()
            await anyio.to_thread.run_sync(_finish, fd, batch, temporary, final)
        except BaseException:
            # Synchronous on purpose: a cancelled task (the client left) may
            # not await. The name goes at once; the file itself once no
            # thread writes to it any more.
            with contextlib.suppress(OSError):
                temporary.unlink()
            writer.close_when_idle()
            raise
        writer.close_when_idle()  # nothing is in flight: at once
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


class _Writer:
    """Writes to an open file in worker threads while the caller gathers the next batch.

    One batch is written at a time: :meth:`write` waits for the previous one
    (so at most two batches are in memory), raising its error if it failed.
    Every :data:`_FLUSH_BYTES` a flush (``fdatasync``) starts beside the
    writes; :meth:`written` waits for the last write and flush.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._writing: Future[None] | None = None
        self._flushing: Future[None] | None = None
        self._unflushed = 0

    async def write(self, batch: Sequence[bytes], size: int) -> None:
        """Start writing ``batch`` (``size`` bytes) once the previous batch is written."""
        await _done(self._writing)
        self._writing = _DISK.submit(_write_all, self._fd, batch)
        self._unflushed += size
        if self._unflushed >= _FLUSH_BYTES and (self._flushing is None or self._flushing.done()):
            # Its error, if any, is raised by written(): Linux reports a failed
            # writeback to one fsync only, so the closing one may not see it.
            await _done(self._flushing)
            self._flushing = _DISK.submit(os.fdatasync, self._fd)
            self._unflushed = 0

    async def written(self) -> None:
        """Wait until every batch is written and every flush done; raise their errors."""
        await _done(self._writing)
        await _done(self._flushing)

    def close_when_idle(self) -> None:
        """Close the file now, or as soon as the threads still writing to it are done.

        Never sooner: the descriptor's number could be reused by another
        file, and the write in flight would land there.
        """
        pending = [job for job in (self._writing, self._flushing) if job is not None]
        left = len(pending)
        lock = threading.Lock()

        def close() -> None:
            with contextlib.suppress(OSError):
                os.close(self._fd)

        def one_done(_: object) -> None:
            nonlocal left
            with lock:
                left -= 1
                last = left == 0
            if last:
                close()

        if not pending:
            close()
        for job in pending:
            # Called at once if the job is done already.
            job.add_done_callback(one_done)


async def _done(job: Future[None] | None) -> None:
    if job is not None:
        await asyncio.wrap_future(job)


def _write_all(fd: int, pieces: Sequence[bytes]) -> None:
    views = [memoryview(piece) for piece in pieces if piece]
    first = 0
    while first < len(views):
        written = os.writev(fd, views[first:])
        while first < len(views) and written >= len(views[first]):
            written -= len(views[first])
            first += 1
        if written:
            views[first] = views[first][written:]


def _finish(fd: int, rest: Sequence[bytes], temporary: Path, final: Path) -> None:
    _write_all(fd, rest)
    os.fsync(fd)
    # The caller closes the file, once: on a failure here too.
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
