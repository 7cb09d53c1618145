"""The storage interface for attachment bytes, and what every implementation promises.

- files are named by the attachment's id, never by a client's file name;
- :meth:`FileStorage.save` is atomic: the bytes become visible under their id
  only once all of them are durable (fsynced, or committed), and a save that
  fails or is cancelled halfway (the client left, the size limit was passed)
  leaves nothing behind;
- :meth:`FileStorage.delete` of a missing file does nothing.

The size limit is not the storage's business: the caller passes chunks from
an iterator that raises once the limit is passed, and the save is undone.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Collection
from typing import Final

from chatkit_server.errors import NotFoundError

__all__ = ["CHUNK_BYTES", "ExistingIds", "FileStorage", "check_file_id"]

CHUNK_BYTES: Final = 1024 * 1024
"""Bytes buffered before a write: few system calls or rows, little memory per upload."""

ExistingIds = Callable[[Collection[str]], Awaitable[set[str]]]
"""Which of some file ids still name an attachment (the rest are orphans)."""

# Ids this server makes (atc_ + 32 hex digits) fit; nothing that could walk a path does.
_FILE_ID: Final = re.compile(r"[A-Za-z0-9_-]{1,128}")


def check_file_id(file_id: str) -> str:
    """``file_id`` if it can name a file, else :class:`NotFoundError` (as a missing one).

    Raises:
        NotFoundError: The id holds anything but letters, digits, ``_`` and ``-``.
    """
    if not _FILE_ID.fullmatch(file_id):
        raise NotFoundError("No such attachment.")
    return file_id


class FileStorage(ABC):
    """Where attachment bytes are kept (see the module notes for the promises)."""

    @abstractmethod
    async def save(self, file_id: str, chunks: AsyncIterable[bytes]) -> int:
        """Store the bytes of ``chunks`` as ``file_id``, replacing any earlier ones.

        Returns:
            How many bytes were stored, once they are durable.

        Raises:
            Exception: Whatever ``chunks`` raises (nothing is left behind), or
                :class:`~chatkit_server.errors.StoreError` when storing failed.
        """

    @abstractmethod
    async def read(self, file_id: str) -> bytes:
        """All the bytes of ``file_id`` (callers bound the size by the upload limit).

        Raises:
            NotFoundError: No such file.
        """

    @abstractmethod
    def stream(self, file_id: str) -> AsyncIterator[bytes]:
        """The bytes of ``file_id`` in chunks of at most :data:`CHUNK_BYTES`.

        Raises:
            NotFoundError: No such file (on the first iteration).
        """

    @abstractmethod
    async def delete(self, file_ids: Collection[str]) -> None:
        """Delete these files; missing ones are skipped."""

    @abstractmethod
    async def sweep(self, existing: ExistingIds, *, older_than: float) -> int:
        """Delete files older than ``older_than`` (Unix seconds) that name no attachment.

        What a crash between storing and recording an upload, or a thread
        deleted by another process, leaves behind.

        Returns:
            How many files were deleted.
        """
