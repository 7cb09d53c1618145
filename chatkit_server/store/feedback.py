"""Thumbs up and down on thread items: one row per vote, scoped like everything else.

Votes are rows of the ``feedback`` table (deleted with their thread). A
vote names items of one thread of the voter: a missing or foreign thread, or
an item not in it, records nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa
from chatkit.types import FeedbackKind

from chatkit_server.context import RequestContext
from chatkit_server.errors import NotFoundError
from chatkit_server.store.database import Database
from chatkit_server.store.statements import require_thread
from chatkit_server.store.tables import feedback, thread_items

__all__ = ["FeedbackRecord", "add_feedback", "load_feedback"]


@dataclass(frozen=True, slots=True, kw_only=True)
class FeedbackRecord:
    """One feedback vote on one thread item."""

    thread_id: str
    item_id: str
    kind: FeedbackKind
    created_at: datetime


async def add_feedback(
    database: Database,
    thread_id: str,
    item_ids: Sequence[str],
    kind: FeedbackKind,
    context: RequestContext,
) -> None:
    """Record one feedback vote per item.

    Raises:
        NotFoundError: No such thread for this user, or an item id is not
            in the thread (then nothing is recorded).
        ValueError: ``kind`` is not ``"positive"`` or ``"negative"``.
    """
    if kind not in ("positive", "negative"):
        raise ValueError(f"feedback kind must be 'positive' or 'negative', not {kind!r}")
    wanted = list(dict.fromkeys(item_ids))
    now = datetime.now(UTC).replace(tzinfo=None)
    async with database.write() as session:
        await require_thread(session, thread_id, context)
        if not wanted:
            return
        found = set(
            await session.scalars(
                sa.select(thread_items.c.id).where(
                    thread_items.c.thread_id == thread_id, thread_items.c.id.in_(wanted)
                )
            )
        )
        for item_id in wanted:
            if item_id not in found:
                raise NotFoundError(f"Item {item_id} not found in thread {thread_id}")
        await session.execute(
            sa.insert(feedback),
            [
                {
                    "thread_id": thread_id,
                    "item_id": item_id,
                    "user_id": context.user_id,
                    "kind": kind,
                    "created_at": now,
                }
                for item_id in wanted
            ],
        )


async def load_feedback(
    database: Database, thread_id: str, context: RequestContext
) -> list[FeedbackRecord]:
    """Return the feedback recorded on a thread, oldest first.

    Raises:
        NotFoundError: No such thread for this user.
    """
    statement = (
        sa.select(feedback.c.item_id, feedback.c.kind, feedback.c.created_at)
        .where(feedback.c.thread_id == thread_id)
        .order_by(feedback.c.seq)
    )
    async with database.read() as session:
        await require_thread(session, thread_id, context)
        rows = (await session.execute(statement)).all()
    return [
        FeedbackRecord(
            thread_id=thread_id, item_id=row.item_id, kind=row.kind, created_at=row.created_at
        )
        for row in rows
    ]
