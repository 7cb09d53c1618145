"""The ChatKit ``Store`` and ``AttachmentStore`` on SQLAlchemy (SQLite or PostgreSQL).

Semantics the ChatKit base server relies on:

- every query is scoped by ``context.user_id``: a thread or attachment of
  another user raises the same :class:`~chatkit_server.errors.NotFoundError`
  as one that does not exist;
- items are keyed by ``(thread_id, item_id)``; deleting a missing item is a
  no-op;
- ``save_item`` of an existing id replaces the item in place (keeping its
  position): it is how the server applies an explicit change (a replaced
  widget, an answered structured input, a client tool's output);
- ``add_thread_item`` of an existing id replaces it in place too (the SDK
  re-adds a workflow when it ends), except that it never takes a *settled*
  item back to an unsettled state: a stored structured input that is
  ``answered`` or ``skipped`` is kept when the add says ``pending``, a
  stored workflow with a summary (finished) is kept when the add has none,
  and a stored ``completed`` client tool call is kept when the add says
  ``pending``. Such an add changes nothing (no error); every other add of
  an existing id, settled over settled included, replaces the item;
- items load as the classes they were saved as: a widget built from the
  SDK's named classes (``Card``, ``ListView``, ...) loads as that class, as
  the SDK's ``ThreadItem`` union validates it; one built from a template
  (``DynamicWidgetRoot``, possibly with fields the named classes do not
  model) loads as ``DynamicWidgetRoot``, field for field;
- listings order by an auto-increment ``seq``; ``after`` is an exclusive
  cursor naming the id of the last entry of a page that has more (``None``
  on the last page, as in the SDK's own stores; unknown ids raise
  :class:`~chatkit_server.errors.InvalidCursorError`), and pages fetch one
  row more than asked to know ``has_more`` without a ``COUNT``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Sequence
from datetime import UTC, datetime
from typing import Any, Final, cast

import sqlalchemy as sa
from chatkit.store import AttachmentStore, Store, StoreItemType
from chatkit.types import (
    Attachment,
    AttachmentCreateParams,
    FeedbackKind,
    Page,
    ThreadItem,
    ThreadMetadata,
)
from sqlalchemy.dialects import postgresql, sqlite

from chatkit_server.context import THREAD_WORKFLOW_KEY, RequestContext
from chatkit_server.errors import NotFoundError
from chatkit_server.files.links import LinkSigner
from chatkit_server.files.storage import FileStorage
from chatkit_server.store.attachments import (
    ATTACHMENT,
    AttachmentLinks,
    finish_upload,
    upload_metadata,
)
from chatkit_server.store.database import Database
from chatkit_server.store.feedback import FeedbackRecord, add_feedback, load_feedback
from chatkit_server.store.ids import ID_PREFIXES, new_id
from chatkit_server.store.items import SETTLING_KINDS, decode_item, undoes_settled
from chatkit_server.store.statements import (
    MAX_PAGE_SIZE,
    check_cursor,
    column_time,
    guarded_item_upsert,
    item_values,
    owned_data_statement,
    owned_thread_upsert,
    page,
    recent_bound,
    require_thread,
    thread_not_found,
    utc_now,
)
from chatkit_server.store.tables import attachments, thread_items, threads

__all__ = ["DEFAULT_UPLOAD_BASE_URL", "FeedbackRecord", "SQLStore", "decode_item"]

DEFAULT_UPLOAD_BASE_URL: Final = "http://127.0.0.1:8000"

# A full Thread (with its items) may be passed to save_thread; keep only these.
_THREAD_FIELDS: Final = frozenset(ThreadMetadata.model_fields)


class SQLStore(Store[RequestContext], AttachmentStore[RequestContext]):
    """Threads, items, attachment metadata and feedback in a SQL database.

    One instance serves as both the ``store`` and the ``attachment_store`` of a
    ``ChatKitServer``. Attachment bytes are kept by a
    :class:`~chatkit_server.files.FileStorage`; the store deletes them with
    their attachment (or its thread).
    """

    def __init__(
        self,
        database: Database,
        *,
        upload_base_url: str = DEFAULT_UPLOAD_BASE_URL,
        files: FileStorage | None = None,
        signer: LinkSigner | None = None,
    ) -> None:
        """Create a store.

        Args:
            database: Where to keep everything.
            upload_base_url: Base URL of this server for upload and preview
                URLs when a request's context does not say how it was addressed.
            files: Where attachment bytes are kept (none: nothing to delete).
            signer: Signs upload and preview links (none: links without a signature).
        """
        self._db = database
        self.links = AttachmentLinks(upload_base_url, signer)
        self.files = files
        self._item_upsert = guarded_item_upsert(database.dialect)
        self._thread_upsert = owned_thread_upsert(database.dialect)

    @property
    def database(self) -> Database:
        """The database the store keeps everything in."""
        return self._db

    # -- ids -------------------------------------------------------------------

    def generate_thread_id(self, context: RequestContext) -> str:
        """Return a new 128-bit, time-ordered thread id (``thr_...``).

        The id admission chose for the request's new thread, if it chose one.
        """
        return context.new_thread_id or new_id(ID_PREFIXES["thread"])

    def generate_item_id(
        self, item_type: StoreItemType, thread: ThreadMetadata, context: RequestContext
    ) -> str:
        """Return a new 128-bit, time-ordered item id with the SDK's prefix."""
        return new_id(ID_PREFIXES[item_type])

    def generate_attachment_id(self, mime_type: str, context: RequestContext) -> str:
        """Return a new 128-bit, time-ordered attachment id (``atc_...``)."""
        return new_id(ID_PREFIXES["attachment"])

    # -- threads ---------------------------------------------------------------

    async def load_thread(self, thread_id: str, context: RequestContext) -> ThreadMetadata:
        """Load a thread's metadata.

        Raises:
            NotFoundError: No such thread for this user.
        """
        data = await self._owned_data(threads, thread_id, context)
        if data is None:
            raise thread_not_found(thread_id)
        return ThreadMetadata.model_validate_json(data)

    async def save_thread(self, thread: ThreadMetadata, context: RequestContext) -> None:
        """Insert a thread owned by the caller, or update the caller's thread.

        Only metadata is stored: the ``items`` of a full ``Thread`` are dropped.
        The thread a ``threads.create`` request makes (``context.new_thread_id``)
        is stored naming the request's workflow (``metadata.workflow``), unless
        it names one: the workflow that answers every turn of a thread is
        fixed by its first write. The ChatKit server creates the thread
        before anything else could name it, and once it is stored no write at
        the end of its first answer is needed to remember it.

        Raises:
            NotFoundError: The id belongs to another user's thread (nothing changes).
        """
        if thread.id == context.new_thread_id and THREAD_WORKFLOW_KEY not in thread.metadata:
            metadata = {**thread.metadata, THREAD_WORKFLOW_KEY: context.workflow_id}
            thread = thread.model_copy(update={"metadata": metadata})
        data = thread.model_dump_json(include=set(_THREAD_FIELDS))
        saved = await self._db.write_one(
            self._thread_upsert,
            {
                "id": thread.id,
                "user_id": context.user_id,
                "created_at": column_time(thread.created_at),
                "data": data,
            },
        )
        if not saved:
            raise thread_not_found(thread.id)

    async def load_threads(
        self, limit: int, after: str | None, order: str, context: RequestContext
    ) -> Page[ThreadMetadata]:
        """Load a page of the caller's threads.

        A session's ``history`` configuration narrows the listing: nothing
        when history is off, only the ``recent_threads`` newest when set.

        Args:
            limit: Page size, clamped to ``1..MAX_PAGE_SIZE``.
            after: Id of the last thread of the previous page (exclusive).
            order: ``"asc"`` (oldest first) or ``"desc"`` (newest first).
            context: The caller.

        Raises:
            InvalidCursorError: ``after`` is not one of the caller's threads.
        """
        limits = context.limits
        if not limits.history or limits.recent_threads == 0:
            return Page(data=[], has_more=False, after=None)
        scope = {"user_id": context.user_id}
        async with self._db.read() as session:
            oldest: int | None = None
            start = after
            if limits.recent_threads is not None:
                oldest, before_oldest = await recent_bound(
                    session, context.user_id, limits.recent_threads
                )
                if order == "asc" and after is None:
                    start = before_oldest
            rows, has_more = await page(
                session, threads, scope, start, limit, order, ("id", "data", "seq")
            )
            if not rows:
                await check_cursor(session, threads, scope, after)
        if oldest is not None:
            kept = [row for row in rows if row.seq >= oldest]
            if order == "desc":
                has_more = has_more and len(kept) == len(rows) and kept[-1].seq > oldest
            rows = kept
        return Page(
            data=[ThreadMetadata.model_validate_json(row.data) for row in rows],
            has_more=has_more,
            after=rows[-1].id if rows and has_more else None,
        )

    async def delete_thread(self, thread_id: str, context: RequestContext) -> None:
        """Delete a thread with its items, attachments and feedback.

        Raises:
            NotFoundError: No such thread for this user.
        """
        statement = (
            sa.delete(threads)
            .where(threads.c.id == thread_id, threads.c.user_id == context.user_id)
            .returning(threads.c.seq)
        )
        async with self._db.write() as session:
            # The cascade deletes the attachment rows; their bytes are not rows.
            files = (
                await session.scalars(
                    sa.select(attachments.c.id).where(
                        attachments.c.thread_id == thread_id,
                        attachments.c.user_id == context.user_id,
                    )
                )
            ).all()
            deleted = (await session.execute(statement)).scalar_one_or_none()
        if deleted is None:
            raise thread_not_found(thread_id)
        await self._delete_files(files)

    # -- items -----------------------------------------------------------------

    async def load_thread_items(
        self,
        thread_id: str,
        after: str | None,
        limit: int,
        order: str,
        context: RequestContext,
    ) -> Page[ThreadItem]:
        """Load a page of a thread's items, hidden-context items included.

        Args:
            thread_id: The thread.
            after: Id of the last item of the previous page (exclusive).
            limit: Page size, clamped to ``1..MAX_PAGE_SIZE``.
            order: ``"asc"`` (oldest first) or ``"desc"`` (newest first).
            context: The caller.

        Raises:
            NotFoundError: No such thread for this user.
            InvalidCursorError: ``after`` is not an item of this thread.
        """
        rows, has_more = await self._item_rows(thread_id, after, limit, order, context)
        return Page(
            data=[
                self.links.fresh_item(decode_item(type_, data), context)
                for _id, type_, data in rows
            ],
            has_more=has_more,
            after=rows[-1][0] if rows and has_more else None,
        )

    async def newest_items(
        self, thread_id: str, limit: int, context: RequestContext, *, page_size: int = 100
    ) -> AsyncGenerator[ThreadItem, None]:
        """Up to ``limit`` of a thread's items, newest first, each decoded only when reached.

        For loading history until a token budget is spent: rows are fetched a
        page at a time (few round trips), but the consumer stops wherever it
        likes and only the items it reached pay for decoding.

        Raises:
            NotFoundError: No such thread for this user.
        """
        rows = self.newest_rows(thread_id, limit, context, page_size=page_size)
        async with contextlib.aclosing(rows):
            async for kind, data in rows:
                yield decode_item(kind, data)

    async def newest_rows(
        self,
        thread_id: str,
        limit: int,
        context: RequestContext,
        *,
        page_size: int = 100,
        after: str | None = None,
    ) -> AsyncGenerator[tuple[str, str], None]:
        """As :meth:`newest_items`, undecoded: each item's type and stored JSON.

        For a consumer that keeps decoded items by their JSON (see
        :func:`decode_item`). ``after``: an item's id; only items older
        than it.

        Raises:
            NotFoundError: No such thread for this user.
            InvalidCursorError: ``after`` names no item of the thread.
        """
        remaining = limit
        while remaining > 0:
            size = max(1, min(page_size, remaining, MAX_PAGE_SIZE))
            rows, has_more = await self._item_rows(thread_id, after, size, "desc", context)
            for _id, kind, data in rows:
                yield kind, data
            remaining -= len(rows)
            if not has_more or not rows:
                return
            after = rows[-1][0]

    async def _item_rows(
        self,
        thread_id: str,
        after: str | None,
        limit: int,
        order: str,
        context: RequestContext,
    ) -> tuple[list[tuple[str, str, str]], bool]:
        """``(id, type, JSON)`` of a page of items, and whether more follow."""
        scope = {"thread_id": thread_id, "user_id": context.user_id}
        async with self._db.read() as session:
            rows, has_more = await page(
                session, thread_items, scope, after, limit, order, ("id", "type", "data")
            )
            if not rows:
                await require_thread(session, thread_id, context)
                await check_cursor(session, thread_items, scope, after)
        # Unpacked by position: looking up three fields by name on each of
        # a hundred rows is a noticeable share of reading a long history.
        return [cast("tuple[str, str, str]", tuple(row)) for row in rows], has_more

    async def add_thread_item(
        self, thread_id: str, item: ThreadItem, context: RequestContext
    ) -> None:
        """Append an item; an item with the same id is replaced in place.

        Unless the stored item is settled and this one is not (see the module
        notes): then nothing changes, so a run that re-emits an item it
        started with never undoes the user's answer or a finished workflow.

        Raises:
            NotFoundError: No such thread for this user.
        """
        if item.type in SETTLING_KINDS:
            await self._add_guarded(thread_id, item, context)
        else:
            await self._upsert_item(thread_id, item, context)

    async def save_item(self, thread_id: str, item: ThreadItem, context: RequestContext) -> None:
        """Replace an item in place, or append it if it is new.

        Raises:
            NotFoundError: No such thread for this user.
        """
        await self._upsert_item(thread_id, item, context)

    async def load_item(self, thread_id: str, item_id: str, context: RequestContext) -> ThreadItem:
        """Load one item of one of the caller's threads.

        Raises:
            NotFoundError: No such item, or no such thread for this user.
        """
        statement = (
            sa.select(thread_items.c.type, thread_items.c.data)
            .join(threads, threads.c.id == thread_items.c.thread_id)
            .where(
                thread_items.c.thread_id == thread_id,
                thread_items.c.id == item_id,
                threads.c.user_id == context.user_id,
            )
        )
        async with self._db.read() as session:
            row = (await session.execute(statement)).one_or_none()
        if row is None:
            raise NotFoundError(f"Item {item_id} not found in thread {thread_id}")
        return decode_item(row.type, row.data)

    async def delete_thread_item(
        self, thread_id: str, item_id: str, context: RequestContext
    ) -> None:
        """Delete an item; deleting an item that does not exist does nothing.

        Raises:
            NotFoundError: No such thread for this user.
        """
        async with self._db.write() as session:
            await require_thread(session, thread_id, context)
            await session.execute(
                sa.delete(thread_items).where(
                    thread_items.c.thread_id == thread_id, thread_items.c.id == item_id
                )
            )

    async def _upsert_item(self, thread_id: str, item: ThreadItem, context: RequestContext) -> None:
        saved = await self._db.write_one(self._item_upsert, item_values(thread_id, item, context))
        if not saved:
            raise thread_not_found(thread_id)

    async def _add_guarded(self, thread_id: str, item: ThreadItem, context: RequestContext) -> None:
        """Add an item of a kind that settles, keeping a settled stored one.

        A read and a write in one transaction (``BEGIN IMMEDIATE`` on SQLite,
        the stored row locked on PostgreSQL), so an answer saved meanwhile is
        not lost either. Only these rare kinds pay the extra round trip.
        """
        stored_statement = (
            sa.select(thread_items.c.type, thread_items.c.data)
            .join(threads, threads.c.id == thread_items.c.thread_id)
            .where(
                thread_items.c.thread_id == thread_id,
                thread_items.c.id == item.id,
                threads.c.user_id == context.user_id,
            )
            .with_for_update(of=thread_items)
        )
        async with self._db.write() as session:
            stored = (await session.execute(stored_statement)).one_or_none()
            if stored is not None and undoes_settled(decode_item(stored.type, stored.data), item):
                return
            saved = (
                await session.execute(self._item_upsert, item_values(thread_id, item, context))
            ).all()
        if not saved:
            raise thread_not_found(thread_id)

    # -- attachments -----------------------------------------------------------

    async def create_attachment(
        self, input: AttachmentCreateParams, context: RequestContext
    ) -> Attachment:
        """Describe a new attachment for a two-phase upload (nothing is stored).

        The ChatKit server saves the returned attachment with
        :meth:`save_attachment`; its ``upload_descriptor`` points at this
        server's upload route, on the address the request came to. ``image/*``
        types get an ``ImageAttachment`` with a preview URL. The declared size
        is kept in ``metadata["size"]``.
        """
        attachment_id = self.generate_attachment_id(input.mime_type, context)
        return self.links.new_attachment(
            attachment_id,
            name=input.name,
            mime_type=input.mime_type,
            context=context,
            upload_descriptor=self.links.upload_descriptor(attachment_id, context),
            metadata=upload_metadata(input.size, context),
        )

    async def finish_upload(self, attachment: Attachment, context: RequestContext) -> None:
        """Save an uploaded attachment's new metadata, if it still exists (never inserts).

        Raises:
            NotFoundError: No such attachment for this user (any more).
        """
        if not await finish_upload(self._db, attachment, context):
            raise _attachment_not_found(attachment.id)

    async def save_attachment(self, attachment: Attachment, context: RequestContext) -> None:
        """Insert or update attachment metadata owned by the caller.

        Raises:
            NotFoundError: The id belongs to another user's attachment, or the
                attachment names a thread the caller does not own.
        """
        values = {
            "id": attachment.id,
            "user_id": context.user_id,
            "thread_id": attachment.thread_id,
            "created_at": utc_now(),
            "data": attachment.model_dump_json(),
        }
        statement = self._upsert(
            attachments,
            values,
            key=["id"],
            update=["thread_id", "data"],
            where=attachments.c.user_id == context.user_id,
        ).returning(attachments.c.id)
        async with self._db.write() as session:
            if attachment.thread_id is not None:
                await require_thread(session, attachment.thread_id, context)
            saved = (await session.execute(statement)).scalar_one_or_none()
        if saved is None:
            raise _attachment_not_found(attachment.id)

    async def load_attachment(self, attachment_id: str, context: RequestContext) -> Attachment:
        """Load attachment metadata.

        Raises:
            NotFoundError: No such attachment for this user.
        """
        data = await self._owned_data(attachments, attachment_id, context)
        if data is None:
            raise _attachment_not_found(attachment_id)
        return self.links.fresh(ATTACHMENT.validate_json(data), context)

    async def delete_attachment(self, attachment_id: str, context: RequestContext) -> None:
        """Delete the caller's attachment metadata; otherwise do nothing.

        The ChatKit server calls this twice per ``attachments.delete`` (once as
        the attachment store, once as the store), so an attachment that is
        already gone is not an error. Another user's attachment is never
        touched, and looks the same as a missing one. Its bytes go with it.
        """
        rows = await self._db.write_one(
            sa.delete(attachments)
            .where(attachments.c.id == attachment_id, attachments.c.user_id == context.user_id)
            .returning(attachments.c.id)
        )
        await self._delete_files([row.id for row in rows])

    async def _delete_files(self, file_ids: Sequence[str]) -> None:
        if self.files is not None and file_ids:
            await self.files.delete(file_ids)

    async def count_attachments(self, *, since: int, context: RequestContext) -> int:
        """How many attachments the caller has created since ``since`` (Unix seconds)."""
        statement = sa.select(sa.func.count()).where(
            attachments.c.user_id == context.user_id,
            attachments.c.created_at >= datetime.fromtimestamp(since, UTC).replace(tzinfo=None),
        )
        async with self._db.read() as session:
            return int(await session.scalar(statement) or 0)

    # -- feedback --------------------------------------------------------------

    async def add_feedback(
        self,
        thread_id: str,
        item_ids: Sequence[str],
        kind: FeedbackKind,
        context: RequestContext,
    ) -> None:
        """Record one feedback vote per item (see :func:`.feedback.add_feedback`)."""
        await add_feedback(self._db, thread_id, item_ids, kind, context)

    async def load_feedback(self, thread_id: str, context: RequestContext) -> list[FeedbackRecord]:
        """The feedback recorded on a thread, oldest first (see :func:`.feedback.load_feedback`)."""
        return await load_feedback(self._db, thread_id, context)

    # -- helpers ---------------------------------------------------------------

    async def _owned_data(
        self, table: sa.Table, row_id: str, context: RequestContext
    ) -> str | None:
        """The stored JSON of the caller's row ``row_id`` of ``table``, if any."""
        async with self._db.read() as session:
            data: str | None = await session.scalar(
                owned_data_statement(table), {"row_id": row_id, "user_id": context.user_id}
            )
        return data

    def _upsert(
        self,
        table: sa.Table,
        values: dict[str, Any],
        *,
        key: list[str],
        update: list[str],
        where: sa.ColumnElement[bool] | None = None,
    ) -> postgresql.Insert | sqlite.Insert:
        """``INSERT ... ON CONFLICT (key) DO UPDATE`` (both dialects spell it alike).

        With ``where``, a conflicting row that fails it is left unchanged and
        ``RETURNING`` yields no row: that is how a foreign row is detected.
        """
        insert = (
            postgresql.insert(table) if self._db.dialect == "postgresql" else sqlite.insert(table)
        ).values(values)
        return insert.on_conflict_do_update(
            index_elements=key,
            set_={column: insert.excluded[column] for column in update},
            where=where,
        )


def _attachment_not_found(attachment_id: str) -> NotFoundError:
    return NotFoundError(f"Attachment {attachment_id} not found")
