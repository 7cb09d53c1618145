"""The operator's queries across users: what the REST API under ``/v1/chatkit`` reads.

The ChatKit store (:mod:`.sql_store`) scopes every query by the signed-in
user. The REST API acts for the operator, who sees every user's threads, so
these queries take the user as an optional *filter* instead.

Listings page by keyset over ``seq`` (no ``OFFSET``, no ``COUNT``), one row
more than asked for to know ``has_more``. Both cursors read in the
listing's own order, as the ``openai`` client pages (``after=last_id``):

- ``after``: the entries that follow the cursor in the listing;
- ``before`` alone: the ``limit`` entries just before the cursor (the
  previous page), still in listing order; ``has_more`` then says whether
  more precede them;
- both: the entries between the two, from ``after`` on.

A cursor that names no entry of the listing raises
:class:`~chatkit_server.errors.InvalidCursorError`. Nothing here imports
Starlette: the HTTP layer presents what these return.
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Generic, Literal, TypeVar

import sqlalchemy as sa
from chatkit.types import FeedbackKind, ThreadItem, ThreadMetadata

from chatkit_server.errors import InvalidCursorError
from chatkit_server.store.database import Database, Statements
from chatkit_server.store.sql_store import decode_item
from chatkit_server.store.statements import MAX_PAGE_SIZE, thread_not_found
from chatkit_server.store.tables import feedback, thread_items, threads

__all__ = [
    "FEEDBACK_ID_PREFIX",
    "AdminPage",
    "AdminStore",
    "FeedbackVote",
    "Order",
    "OwnedThread",
]

FEEDBACK_ID_PREFIX: Final = "fb_"
"""Feedback votes have no id of their own; this plus their row number names them."""

Order = Literal["asc", "desc"]
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True, kw_only=True)
class AdminPage(Generic[_T]):
    """One page of a listing.

    Attributes:
        data: The entries, in the order asked for.
        has_more: Whether more entries follow (or, for a page asked for with
            ``before`` alone, precede) this page.
    """

    data: list[_T]
    has_more: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class OwnedThread:
    """A thread's metadata and the user who owns it."""

    thread: ThreadMetadata
    user_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class FeedbackVote:
    """One feedback vote on one thread item.

    Attributes:
        id: ``fb_`` + the vote's row number: the cursor of feedback listings.
        created_at: When the vote was cast (aware, UTC).
    """

    id: str
    thread_id: str
    item_id: str
    user_id: str
    kind: FeedbackKind
    created_at: datetime


@dataclass(frozen=True, slots=True)
class _Listing:
    """A table as a listing: its cursor key, the columns read, the filters it takes.

    Each filter is a condition on one bind parameter of the filter's name;
    a filter applies when the caller gives it a value.
    """

    table: sa.Table
    key: str
    columns: tuple[str, ...]
    filters: Mapping[str, sa.ColumnElement[bool]]


_LISTINGS: Final[Mapping[str, _Listing]] = {
    "threads": _Listing(
        threads,
        "id",
        ("id", "user_id", "data"),
        {"user_id": threads.c.user_id == sa.bindparam("user_id")},
    ),
    "items": _Listing(
        thread_items,
        "id",
        ("id", "type", "data"),
        {
            "thread_id": thread_items.c.thread_id == sa.bindparam("thread_id"),
            "types": thread_items.c.type.in_(sa.bindparam("types", expanding=True)),
        },
    ),
    "feedback": _Listing(
        feedback,
        "seq",
        ("seq", "thread_id", "item_id", "user_id", "kind", "created_at"),
        {
            "user_id": feedback.c.user_id == sa.bindparam("user_id"),
            "thread_id": feedback.c.thread_id == sa.bindparam("thread_id"),
        },
    ),
}


@functools.cache
def _page_statement(
    listing_name: str,
    filters: tuple[str, ...],
    descending: bool,
    after: bool,
    before: bool,
    backwards: bool,
) -> sa.Select[Any]:
    """A keyset page of a listing; built once per shape (building costs more than running)."""
    listing = _LISTINGS[listing_name]
    table = listing.table
    seq = table.c.seq
    scope = [listing.filters[name] for name in filters]

    def cursor(name: str) -> sa.ScalarSelect[Any]:
        # The cursor's seq, found within the same scope (SQL NULL if it is not there).
        return (
            sa.select(seq)
            .where(*scope, table.c[listing.key] == sa.bindparam(name))
            .scalar_subquery()
        )

    statement = sa.select(*(table.c[name] for name in listing.columns)).where(*scope)
    if after:
        statement = statement.where(seq < cursor("after") if descending else seq > cursor("after"))
    if before:
        statement = statement.where(
            seq > cursor("before") if descending else seq < cursor("before")
        )
    # A page before a cursor is read walking away from it, then turned round.
    walk_descending = descending != backwards
    return statement.order_by(seq.desc() if walk_descending else seq.asc()).limit(
        sa.bindparam("limit", type_=sa.Integer)
    )


@functools.cache
def _cursor_statement(listing_name: str, filters: tuple[str, ...]) -> sa.Select[tuple[bool]]:
    listing = _LISTINGS[listing_name]
    table = listing.table
    scope = [listing.filters[name] for name in filters]
    return sa.select(sa.exists().where(*scope, table.c[listing.key] == sa.bindparam("cursor")))


async def _page(
    session: Statements,
    listing_name: str,
    scope: Mapping[str, Any],
    *,
    limit: int,
    order: Order,
    after: Any,
    before: Any,
) -> tuple[Sequence[sa.Row[Any]], bool]:
    """Rows of one page of a listing and whether more follow; see the module notes."""
    if order not in ("asc", "desc"):
        raise ValueError(f"order must be 'asc' or 'desc', not {order!r}")
    limit = max(1, min(limit, MAX_PAGE_SIZE))
    filters = tuple(sorted(name for name, value in scope.items() if value is not None))
    backwards = before is not None and after is None
    statement = _page_statement(
        listing_name, filters, order == "desc", after is not None, before is not None, backwards
    )
    parameters: dict[str, Any] = {name: scope[name] for name in filters}
    parameters["limit"] = limit + 1
    if after is not None:
        parameters["after"] = after
    if before is not None:
        parameters["before"] = before
    rows = list((await session.execute(statement, parameters)).all())
    has_more = len(rows) > limit
    rows = rows[:limit]
    if backwards:
        rows.reverse()
    if not rows:
        # Only an empty page can hide an unknown cursor: find out which it is.
        check = _cursor_statement(listing_name, filters)
        for name, cursor in (("after", after), ("before", before)):
            if cursor is not None and not await session.scalar(
                check, {**{key: scope[key] for key in filters}, "cursor": cursor}
            ):
                raise InvalidCursorError(
                    f"The '{name}' cursor {cursor} does not name an entry of this list"
                )
    return rows, has_more


_THREAD: Final = sa.select(threads.c.user_id, threads.c.data).where(
    threads.c.id == sa.bindparam("thread_id")
)
_THREAD_EXISTS: Final = sa.select(sa.exists().where(threads.c.id == sa.bindparam("thread_id")))
_DELETE_THREAD: Final = (
    sa.delete(threads).where(threads.c.id == sa.bindparam("thread_id")).returning(threads.c.seq)
)


class AdminStore:
    """Cross-user reads and deletes for the operator; shares the store's database.

    Args:
        database: Where everything lives.
    """

    def __init__(self, database: Database) -> None:
        self._db = database

    async def threads(
        self,
        *,
        user_id: str | None = None,
        limit: int = 20,
        order: Order = "desc",
        after: str | None = None,
        before: str | None = None,
    ) -> AdminPage[OwnedThread]:
        """A page of every user's threads (or one user's), newest first by default.

        Args:
            user_id: Only this user's threads.
            limit: Page size, clamped to ``1..MAX_PAGE_SIZE``.
            order: ``"asc"`` (oldest first) or ``"desc"``.
            after: Id of a thread of the listing; the page follows it.
            before: Id of a thread of the listing; the page precedes it.

        Raises:
            InvalidCursorError: A cursor is not a thread of this listing.
        """
        async with self._db.read() as session:
            rows, has_more = await _page(
                session,
                "threads",
                {"user_id": user_id},
                limit=limit,
                order=order,
                after=after,
                before=before,
            )
        return AdminPage(
            data=[
                OwnedThread(
                    thread=ThreadMetadata.model_validate_json(row.data), user_id=row.user_id
                )
                for row in rows
            ],
            has_more=has_more,
        )

    async def thread(self, thread_id: str) -> OwnedThread:
        """One thread, whoever owns it.

        Raises:
            NotFoundError: No such thread.
        """
        async with self._db.read() as session:
            row = (await session.execute(_THREAD, {"thread_id": thread_id})).one_or_none()
        if row is None:
            raise thread_not_found(thread_id)
        return OwnedThread(thread=ThreadMetadata.model_validate_json(row.data), user_id=row.user_id)

    async def delete_thread(self, thread_id: str) -> None:
        """Delete a thread with its items, attachments, feedback and usage (they cascade).

        Raises:
            NotFoundError: No such thread.
        """
        deleted = await self._db.write_one(_DELETE_THREAD, {"thread_id": thread_id})
        if not deleted:
            raise thread_not_found(thread_id)

    async def items(
        self,
        thread_id: str,
        *,
        types: Collection[str] | None = None,
        limit: int = 20,
        order: Order = "desc",
        after: str | None = None,
        before: str | None = None,
    ) -> AdminPage[ThreadItem]:
        """A page of a thread's items, newest first by default.

        Args:
            thread_id: The thread, whoever owns it.
            types: Only items of these types (``ThreadItem.type``); filtering
                here, not after the query, keeps pages full and ``has_more``
                exact.
            limit: Page size, clamped to ``1..MAX_PAGE_SIZE``.
            order: ``"asc"`` (oldest first) or ``"desc"``.
            after: Id of an item of the listing; the page follows it.
            before: Id of an item of the listing; the page precedes it.

        Raises:
            NotFoundError: No such thread.
            InvalidCursorError: A cursor is not an item of this listing.
        """
        scope = {"thread_id": thread_id, "types": None if types is None else list(types)}
        async with self._db.read() as session:
            try:
                rows, has_more = await _page(
                    session, "items", scope, limit=limit, order=order, after=after, before=before
                )
            except InvalidCursorError:
                await self._require_thread(session, thread_id)
                raise
            if not rows:
                await self._require_thread(session, thread_id)
        return AdminPage(data=[decode_item(row.type, row.data) for row in rows], has_more=has_more)

    async def feedback(
        self,
        *,
        user_id: str | None = None,
        thread_id: str | None = None,
        limit: int = 20,
        order: Order = "desc",
        after: str | None = None,
        before: str | None = None,
    ) -> AdminPage[FeedbackVote]:
        """A page of feedback votes, newest first by default.

        Args:
            user_id: Only this user's votes.
            thread_id: Only votes on this thread (an unknown thread has none).
            limit: Page size, clamped to ``1..MAX_PAGE_SIZE``.
            order: ``"asc"`` (oldest first) or ``"desc"``.
            after: Id of a vote of the listing; the page follows it.
            before: Id of a vote of the listing; the page precedes it.

        Raises:
            InvalidCursorError: A cursor is not a vote of this listing.
        """
        scope = {"user_id": user_id, "thread_id": thread_id}
        async with self._db.read() as session:
            rows, has_more = await _page(
                session,
                "feedback",
                scope,
                limit=limit,
                order=order,
                after=_vote_seq(after, "after"),
                before=_vote_seq(before, "before"),
            )
        return AdminPage(
            data=[
                FeedbackVote(
                    id=f"{FEEDBACK_ID_PREFIX}{row.seq}",
                    thread_id=row.thread_id,
                    item_id=row.item_id,
                    user_id=row.user_id,
                    kind=row.kind,
                    # The column holds naive UTC (see SQLStore.add_feedback).
                    created_at=row.created_at.replace(tzinfo=UTC),
                )
                for row in rows
            ],
            has_more=has_more,
        )

    @staticmethod
    async def _require_thread(session: Statements, thread_id: str) -> None:
        if not await session.scalar(_THREAD_EXISTS, {"thread_id": thread_id}):
            raise thread_not_found(thread_id)


def _vote_seq(cursor: str | None, name: str) -> int | None:
    """The row number a vote's id names."""
    if cursor is None:
        return None
    digits = cursor.removeprefix(FEEDBACK_ID_PREFIX)
    if cursor == digits or not (digits.isascii() and digits.isdigit()) or len(digits) > 18:
        raise InvalidCursorError(f"The '{name}' cursor {cursor} does not name a feedback vote")
    return int(digits)
