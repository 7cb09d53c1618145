"""Token usage: one row per answer, totals per thread and per user."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal

import sqlalchemy as sa

from chatkit_server.context import RequestContext
from chatkit_server.store.database import Database
from chatkit_server.store.statements import owned_values, require_thread, thread_not_found
from chatkit_server.store.tables import threads, usage

__all__ = ["RECORD_USAGE", "UsageRecord", "UsageStore", "UsageTotals", "usage_values"]


@dataclass(frozen=True, slots=True, kw_only=True)
class UsageRecord:
    """What one answer cost."""

    item_id: str | None
    workflow: str
    model: str
    requests: int
    input_tokens: int
    output_tokens: int


@dataclass(frozen=True, slots=True, kw_only=True)
class UsageTotals:
    """Summed usage of a thread (or of everything a report covers)."""

    thread_id: str | None
    user_id: str | None
    answers: int
    requests: int
    input_tokens: int
    output_tokens: int

    @property
    def total_tokens(self) -> int:
        """Input plus output tokens."""
        return self.input_tokens + self.output_tokens


class UsageStore:
    """Records and sums token usage; shares the store's database."""

    def __init__(self, database: Database) -> None:
        self._db = database

    async def record(self, thread_id: str, record: UsageRecord, context: RequestContext) -> None:
        """Store the usage of one answer in a thread of this user.

        Raises:
            NotFoundError: No such thread for this user.
        """
        recorded = await self._db.write_one(
            RECORD_USAGE, usage_values(thread_id, record, context.user_id)
        )
        if not recorded:
            raise thread_not_found(thread_id)

    async def for_item(
        self, thread_id: str, item_id: str, context: RequestContext
    ) -> UsageRecord | None:
        """The usage recorded for the answer ending with ``item_id``, if any.

        Raises:
            NotFoundError: No such thread for this user.
        """
        async with self._db.read() as session:
            await require_thread(session, thread_id, context)
            row = (
                await session.execute(
                    sa.select(usage).where(
                        usage.c.thread_id == thread_id, usage.c.item_id == item_id
                    )
                )
            ).first()
        if row is None:
            return None
        return UsageRecord(
            item_id=row.item_id,
            workflow=row.workflow,
            model=row.model,
            requests=row.requests,
            input_tokens=row.input_tokens,
            output_tokens=row.output_tokens,
        )

    async def for_thread(self, thread_id: str, context: RequestContext) -> UsageTotals:
        """Totals of one thread of this user.

        Raises:
            NotFoundError: No such thread for this user.
        """
        async with self._db.read() as session:
            await require_thread(session, thread_id, context)
            result = await session.execute(_totals().where(usage.c.thread_id == thread_id))
            row = result.mappings().one()
        return _to_totals(row, thread_id=thread_id, user_id=context.user_id)

    async def report(
        self,
        *,
        user_id: str | None = None,
        thread_id: str | None = None,
        limit: int = 100,
        by: Literal["thread", "user"] = "thread",
    ) -> list[UsageTotals]:
        """Totals across users (an operator's view), biggest first.

        Args:
            user_id: Only this user's threads.
            thread_id: Only this thread.
            limit: Most rows returned.
            by: One row per thread (with its owner), or per user (``thread_id``
                is then ``None``: the row sums all of the user's threads).
        """
        group = (usage.c.thread_id, threads.c.user_id) if by == "thread" else (threads.c.user_id,)
        statement = (
            _totals(*group)
            .join_from(usage, threads, usage.c.thread_id == threads.c.id)
            .group_by(*group)
            # Ties in a stable order, so that a report reads the same twice.
            .order_by(sa.desc("total"), *group)
            .limit(limit)
        )
        if user_id is not None:
            statement = statement.where(threads.c.user_id == user_id)
        if thread_id is not None:
            statement = statement.where(usage.c.thread_id == thread_id)
        async with self._db.read() as session:
            rows = (await session.execute(statement)).mappings().all()
        return [
            _to_totals(row, thread_id=row.get("thread_id"), user_id=row["user_id"]) for row in rows
        ]


def _guarded_record() -> sa.Insert:
    """One usage row, only for a thread of ``:user_id``, in one statement (``RETURNING seq``)."""
    columns = (
        "thread_id",
        "item_id",
        "user_id",
        "workflow",
        "model",
        "requests",
        "input_tokens",
        "output_tokens",
        "created_at",
    )
    return (
        sa.insert(usage).from_select(columns, owned_values(usage, columns)).returning(usage.c.seq)
    )


RECORD_USAGE: Final = _guarded_record()
"""Record one answer's usage (:func:`usage_values`), only in a thread of ``:user_id``."""


def usage_values(thread_id: str, record: UsageRecord, user_id: str) -> dict[str, Any]:
    """The parameters of :data:`RECORD_USAGE` for ``record``, recorded now."""
    return {
        "thread_id": thread_id,
        "item_id": record.item_id,
        "user_id": user_id,
        "workflow": record.workflow,
        "model": record.model,
        "requests": record.requests,
        "input_tokens": record.input_tokens,
        "output_tokens": record.output_tokens,
        "created_at": datetime.now(UTC).replace(tzinfo=None),
    }


def _totals(*group: sa.ColumnElement[str]) -> sa.Select[*tuple[Any, ...]]:
    zero = sa.literal(0)
    return sa.select(
        *group,
        sa.func.count(usage.c.seq).label("answers"),
        sa.func.coalesce(sa.func.sum(usage.c.requests), zero).label("requests"),
        sa.func.coalesce(sa.func.sum(usage.c.input_tokens), zero).label("input_tokens"),
        sa.func.coalesce(sa.func.sum(usage.c.output_tokens), zero).label("output_tokens"),
        sa.func.coalesce(sa.func.sum(usage.c.input_tokens + usage.c.output_tokens), zero).label(
            "total"
        ),
    )


def _to_totals(row: sa.RowMapping, *, thread_id: str | None, user_id: str | None) -> UsageTotals:
    return UsageTotals(
        thread_id=thread_id,
        user_id=user_id,
        answers=int(row["answers"]),
        requests=int(row["requests"]),
        input_tokens=int(row["input_tokens"]),
        output_tokens=int(row["output_tokens"]),
    )
