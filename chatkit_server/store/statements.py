"""The store's SQL: prebuilt statements, ownership checks and keyset pages.

Statements are built once, with bind parameters: building a SQLAlchemy
statement and computing its cache key costs more CPU than SQLite takes to
run it. Ownership rides along in the same statement as the read or write
(``INSERT ... SELECT ... WHERE EXISTS``, an ``EXISTS`` in a page's
``WHERE``), so another user's thread behaves exactly like a missing one,
with no extra round trip.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final

import sqlalchemy as sa
from chatkit.types import ThreadItem
from sqlalchemy.dialects import postgresql, sqlite

from chatkit_server.context import RequestContext
from chatkit_server.errors import InvalidCursorError, NotFoundError
from chatkit_server.store.database import Statements
from chatkit_server.store.tables import thread_items, threads

__all__ = [
    "MAX_PAGE_SIZE",
    "OWNED_THREAD",
    "REQUIRE_THREAD",
    "LISTED_THREAD",
    "SCOPES",
    "THREAD_COLUMNS",
    "check_cursor",
    "column_time",
    "cursor_statement",
    "guarded_item_upsert",
    "item_values",
    "owned_data_statement",
    "owned_thread_upsert",
    "owned_values",
    "page",
    "page_statement",
    "recent_bound",
    "require_thread",
    "thread_not_found",
    "utc_now",
]

MAX_PAGE_SIZE: Final = 200
"""The largest page a listing returns, whatever limit is asked for."""


def owned_thread_upsert(dialect: str) -> sa.Executable:
    """Insert a thread, or update it if ``:user_id`` owns it; ``RETURNING seq``.

    A conflicting row of another user fails the ``WHERE`` and returns no row:
    that is how a foreign id is detected. Built once, like the item upsert.
    """
    insert = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(threads).values(
        {name: sa.bindparam(name, type_=threads.c[name].type) for name in THREAD_COLUMNS}
    )
    upsert = insert.on_conflict_do_update(
        index_elements=["id"],
        set_={name: insert.excluded[name] for name in ("created_at", "data")},
        where=threads.c.user_id == sa.bindparam("user_id"),
    )
    return upsert.returning(threads.c.seq)


THREAD_COLUMNS: Final = ("id", "user_id", "created_at", "data")


def guarded_item_upsert(dialect: str) -> sa.Executable:
    """Add or replace an item, only in a thread of ``:user_id``, in one statement.

    ``INSERT ... SELECT :values WHERE EXISTS (owned thread) ON CONFLICT DO
    UPDATE ... RETURNING seq``: no row back means no such thread for this
    user. One statement instead of a check and a write halves the round
    trips of every message and answer. Built once, not per call: building an
    upsert and its cache key is more CPU than running it.
    The conflict update leaves ``seq`` alone, so a re-added item keeps its place.
    """
    columns = ("thread_id", "id", "type", "created_at", "data")
    insert = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(thread_items)
    upsert = insert.from_select(columns, owned_values(thread_items, columns)).on_conflict_do_update(
        index_elements=["thread_id", "id"],
        set_={name: insert.excluded[name] for name in ("type", "created_at", "data")},
    )
    return upsert.returning(thread_items.c.seq)


# Read statements are built once, with bind parameters: building a
# SQLAlchemy statement and computing its cache key costs more CPU than
# SQLite takes to run a page query, on every request.
OWNED_THREAD: Final = sa.exists().where(
    threads.c.id == sa.bindparam("thread_id"), threads.c.user_id == sa.bindparam("user_id")
)
REQUIRE_THREAD: Final = sa.select(OWNED_THREAD)
# What a listing of each table is scoped to; the parameters come from the caller.
LISTED_THREAD: Final = sa.exists().where(thread_items.c.thread_id == threads.c.id)
"""A thread is listed once it holds an item.

``threads.create`` stores the thread, then its first message, in two
transactions; a crash between the two leaves a thread the client never saw,
and it must not turn up in the listing as an empty thread.
"""

SCOPES: Final[Mapping[str, sa.ColumnElement[bool]]] = {
    "threads": sa.and_(threads.c.user_id == sa.bindparam("user_id"), LISTED_THREAD),
    "thread_items": sa.and_(
        thread_items.c.thread_id == sa.bindparam("thread_id"),
        OWNED_THREAD,  # ownership rides along in the same statement
    ),
}


def owned_values(table: sa.Table, columns: Sequence[str]) -> sa.Select[Any]:
    """``SELECT :column, ... WHERE`` the thread ``:thread_id`` belongs to ``:user_id``.

    The source of an ``INSERT ... SELECT`` that writes nothing (and returns
    no row) for another user's or a missing thread.
    """
    return sa.select(*(sa.bindparam(name, type_=table.c[name].type) for name in columns)).where(
        OWNED_THREAD
    )


@functools.cache
def owned_data_statement(table: sa.Table) -> sa.Select[tuple[str]]:
    """``SELECT data`` of the row ``:row_id`` of ``table`` if ``:user_id`` owns it."""
    return sa.select(table.c.data).where(
        table.c.id == sa.bindparam("row_id"), table.c.user_id == sa.bindparam("user_id")
    )


async def require_thread(session: Statements, thread_id: str, context: RequestContext) -> None:
    """Raise :func:`thread_not_found` unless the caller owns ``thread_id``."""
    if not await session.scalar(
        REQUIRE_THREAD, {"thread_id": thread_id, "user_id": context.user_id}
    ):
        raise thread_not_found(thread_id)


@functools.cache
def page_statement(
    table: sa.Table, columns: tuple[str, ...], descending: bool, with_cursor: bool
) -> sa.Select[Any]:
    """A keyset page of ``table`` in its scope, after ``:after`` when ``with_cursor``."""
    scope = SCOPES[table.name]
    seq = table.c.seq
    statement = sa.select(*(table.c[name] for name in columns)).where(scope)
    if with_cursor:
        # Found by its unique key within the same scope (SQL NULL if unknown).
        cursor = sa.select(seq).where(scope, table.c.id == sa.bindparam("after")).scalar_subquery()
        statement = statement.where(seq < cursor if descending else seq > cursor)
    order = seq.desc() if descending else seq.asc()
    return statement.order_by(order).limit(sa.bindparam("limit", type_=sa.Integer))


async def page(
    session: Statements,
    table: sa.Table,
    scope: Mapping[str, str],
    after: str | None,
    limit: int,
    order: str,
    columns: Sequence[str] = ("id", "data"),
) -> tuple[Sequence[sa.Row[Any]], bool]:
    """Keyset pagination over ``seq`` within the table's scope: no OFFSET, no COUNT.

    One statement: the cursor's ``seq`` and the ownership check are
    subqueries, so a page costs a single round trip. An unknown cursor or a
    failed ownership check yields no rows; the caller tells those apart from
    a genuinely empty page only when it gets one.
    """
    if order not in ("asc", "desc"):
        raise ValueError(f"order must be 'asc' or 'desc', not {order!r}")
    limit = max(1, min(limit, MAX_PAGE_SIZE))
    statement = page_statement(table, tuple(columns), order == "desc", after is not None)
    parameters: dict[str, Any] = {**scope, "limit": limit + 1}
    if after is not None:
        parameters["after"] = after
    rows = (await session.execute(statement, parameters)).all()
    return rows[:limit], len(rows) > limit


@functools.cache
def cursor_statement(table: sa.Table) -> sa.Select[tuple[bool]]:
    """Whether ``:after`` names an entry of the listing of ``table`` in its scope."""
    return sa.select(sa.exists().where(SCOPES[table.name], table.c.id == sa.bindparam("after")))


async def check_cursor(
    session: Statements, table: sa.Table, scope: Mapping[str, str], after: str | None
) -> None:
    """Raise :class:`InvalidCursorError` when ``after`` names no entry of the listing."""
    if after is not None and not await session.scalar(
        cursor_statement(table), {**scope, "after": after}
    ):
        raise InvalidCursorError(f"Cursor {after} does not name an entry of this listing")


def thread_not_found(thread_id: str) -> NotFoundError:
    """The error for a thread that is missing or not the caller's (the two look alike)."""
    return NotFoundError(f"Thread {thread_id} not found")


def item_values(thread_id: str, item: ThreadItem, context: RequestContext) -> dict[str, Any]:
    """The parameters of the item upsert for ``item``."""
    return {
        "thread_id": thread_id,
        "user_id": context.user_id,
        "id": item.id,
        "type": item.type,
        "created_at": column_time(item.created_at),
        "data": item.model_dump_json(),
    }


async def recent_bound(session: Statements, user_id: str, recent: int) -> tuple[int, str | None]:
    """The ``seq`` of the user's ``recent``-th newest thread, and the id of the one before it.

    Threads older than the first are out of a listing limited to the
    ``recent`` newest; the second is where an oldest-first listing starts
    after (``None``: there is no older thread).
    """
    rows = (
        await session.execute(
            sa.select(threads.c.seq, threads.c.id)
            .where(threads.c.user_id == user_id, LISTED_THREAD)
            .order_by(threads.c.seq.desc())
            .limit(2)
            .offset(max(0, recent - 1))
        )
    ).all()
    if not rows:
        return 0, None
    return rows[0].seq, rows[1].id if len(rows) > 1 else None


def utc_now() -> datetime:
    """Now, in UTC, naive (as the columns hold times)."""
    return datetime.now(UTC).replace(tzinfo=None)


def column_time(value: datetime) -> datetime:
    """Columns hold naive datetimes (the JSON keeps the original value)."""
    if value.tzinfo is None:
        return value
    return value.astimezone(UTC).replace(tzinfo=None)
