"""Bytes go with their attachment: on delete, with their thread, and by the sweep."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from chatkit.types import AttachmentCreateParams, ThreadMetadata

from chatkit_server.context import RequestContext
from chatkit_server.errors import NotFoundError
from chatkit_server.files import FileStorage, LocalFileStorage
from chatkit_server.files.database import DatabaseFileStorage
from chatkit_server.files.sweep import ORPHAN_SECONDS, sweep_attachments
from chatkit_server.store import Database, SQLStore
from chatkit_server.store.tables import attachments

ALICE = RequestContext(user_id="alice")
BOB = RequestContext(user_id="bob")


@pytest.fixture(params=["local", "database"])
def files(request: pytest.FixtureRequest, tmp_path: Path, database: Database) -> FileStorage:
    if request.param == "local":
        return LocalFileStorage(tmp_path / "attachments")
    return DatabaseFileStorage(database)


@pytest.fixture
def store(database: Database, files: FileStorage) -> SQLStore:
    return SQLStore(database, files=files)


async def one(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def uploaded(store: SQLStore, context: RequestContext, thread_id: str | None = None) -> str:
    attachment = await store.create_attachment(
        AttachmentCreateParams(name="a.txt", size=1, mime_type="text/plain"), context
    )
    attachment = attachment.model_copy(update={"thread_id": thread_id})
    await store.save_attachment(attachment, context)
    assert store.files is not None
    await store.files.save(attachment.id, one(b"x"))
    return attachment.id


async def gone(files: FileStorage, file_id: str) -> bool:
    try:
        await files.read(file_id)
    except NotFoundError:
        return True
    return False


async def new_thread(store: SQLStore, context: RequestContext) -> str:
    thread = ThreadMetadata(id=f"thr_{time.monotonic_ns()}", created_at=datetime(2026, 1, 1))
    await store.save_thread(thread, context)
    return thread.id


async def test_deleting_an_attachment_deletes_its_bytes(
    store: SQLStore, files: FileStorage
) -> None:
    attachment_id = await uploaded(store, ALICE)

    await store.delete_attachment(attachment_id, BOB)  # not bob's: nothing happens
    assert not await gone(files, attachment_id)

    await store.delete_attachment(attachment_id, ALICE)
    assert await gone(files, attachment_id)


async def test_deleting_a_thread_deletes_its_attachments_bytes(
    store: SQLStore, files: FileStorage
) -> None:
    thread_id = await new_thread(store, ALICE)
    attached = await uploaded(store, ALICE, thread_id)
    elsewhere = await uploaded(store, ALICE)

    await store.delete_thread(thread_id, ALICE)

    assert await gone(files, attached)
    assert not await gone(files, elsewhere)


async def age(store: SQLStore, attachment_id: str, seconds: float) -> None:
    async with store.database.write() as session:
        await session.execute(
            sa.update(attachments)
            .where(attachments.c.id == attachment_id)
            .values(
                created_at=(datetime.now(UTC) - timedelta(seconds=seconds)).replace(tzinfo=None)
            )
        )


async def test_the_sweep_deletes_unsent_uploads_after_the_grace_period(
    store: SQLStore, files: FileStorage
) -> None:
    thread_id = await new_thread(store, ALICE)
    sent = await uploaded(store, ALICE, thread_id)
    fresh = await uploaded(store, ALICE)
    abandoned = await uploaded(store, ALICE)
    await age(store, sent, 7200)
    await age(store, abandoned, 7200)

    await sweep_attachments(store.database, files, grace=3600)

    assert await gone(files, abandoned)
    with pytest.raises(NotFoundError):
        await store.load_attachment(abandoned, ALICE)
    assert not await gone(files, fresh)
    assert not await gone(files, sent)
    await store.load_attachment(sent, ALICE)


async def test_the_sweep_deletes_old_bytes_that_name_no_attachment(
    store: SQLStore, files: FileStorage
) -> None:
    kept = await uploaded(store, ALICE)
    await files.save("atc_orphan", one(b"left behind"))

    await sweep_attachments(store.database, files, grace=3600)  # too young to be an orphan
    assert not await gone(files, "atc_orphan")

    await sweep_attachments(
        store.database, files, grace=3600, now=time.time() + ORPHAN_SECONDS + 60
    )
    assert await gone(files, "atc_orphan")
    assert not await gone(files, kept)
