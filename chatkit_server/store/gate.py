"""Admission of a request: its rate-limit count and its thread's answer lease.

Both live in the database, so every worker process and every replica on one
database enforce one limit and one answer per thread:

- **rate counts**: one row per subject (a session, a user) and clock minute,
  incremented by an upsert that returns the new count;
- **answer leases**: one row per thread that is answering, held by a
  process (``holder``) for one request (``token``) until ``expires_at``.
  The holder renews its leases while they stream (:meth:`RequestGate.renew`)
  and deletes each when its answer ends; a crashed holder's leases run out
  within :data:`LEASE_SECONDS`, so no thread stays locked.

Admission costs one round trip: on PostgreSQL a single statement (the count
and the lease as data-modifying CTEs, the lease being the statement used
when nothing is counted), on SQLite both statements in one transaction on
the writer thread. A request over its limit takes no lease.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, cast

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from chatkit_server.store.database import Database
from chatkit_server.store.statements import OWNED_THREAD, REQUIRE_THREAD, page_statement
from chatkit_server.store.tables import rate_counts, thread_items, thread_leases, threads
from chatkit_server.store.usage import RECORD_USAGE

__all__ = ["LEASE_SECONDS", "Admission", "Lease", "RequestGate"]

LEASE_SECONDS: Final = 20.0
"""How long a lease lasts without renewal: the longest a crash can lock a thread."""


@dataclass(frozen=True, slots=True)
class Lease:
    """The right to answer on one thread, until released.

    Attributes:
        thread_id: The thread.
        token: This lease's name (the thread's next lease has another).
        thread_data: The thread's stored metadata (JSON) when the lease was
            taken, read by the statement that took it: what an answer on the
            thread starts from, without reading it again. ``None`` for a new
            thread (it has no row yet).
        newest_items: The thread's newest items as ``(id, type, JSON)``,
            newest first, read in the same transaction as the lease when
            :meth:`RequestGate.admit` was asked for them: the history an
            answer starts from, as no other answer can change it now.
            ``None``: not read with the lease.
    """

    thread_id: str
    token: str
    thread_data: str | None = None
    newest_items: tuple[tuple[str, str, str], ...] | None = None

    def bare(self) -> Lease:
        """The lease without what was read with it: what to hold while the answer streams.

        The items of a long thread are tens of kilobytes; held by every
        answering request until it ends, they would add up under load.
        """
        return Lease(self.thread_id, self.token)


@dataclass(frozen=True, slots=True, kw_only=True)
class Admission:
    """What the gate decided about a request.

    Attributes:
        count: The subject's requests this minute, this one included (0: not counted).
        retry_after: Seconds until the minute ends (for ``Retry-After``).
        lease: The thread's lease, when one was asked for and taken.
    """

    count: int = 0
    retry_after: int = 0
    lease: Lease | None = None


class RequestGate:
    """Counts requests and leases threads, for one process.

    Args:
        database: Where counts and leases live.
        holder: This process's name on its leases (unique per process).
    """

    def __init__(self, database: Database, *, holder: str | None = None) -> None:
        self._db = database
        self.holder = holder or secrets.token_hex(8)
        self._held = 0
        dialect = database.dialect
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        count = insert(rate_counts).values(
            subject=sa.bindparam("subject"), minute=sa.bindparam("minute"), count=1
        )
        self._count = count.on_conflict_do_update(
            index_elements=["subject", "minute"],
            set_={"count": rate_counts.c.count + 1},
        ).returning(rate_counts.c.count)
        self._pg_admit = (
            {new: _postgres_admit(self._count, new_thread=new) for new in (False, True)}
            if dialect == "postgresql"
            else None
        )
        self._release = sa.delete(thread_leases).where(
            thread_leases.c.thread_id == sa.bindparam("thread_id"),
            thread_leases.c.token == sa.bindparam("token"),
        )
        # PostgreSQL: the usage row as a data-modifying CTE of the release.
        self._release_recording = (
            self._release.add_cte(RECORD_USAGE.cte("recorded")) if dialect == "postgresql" else None
        )
        self._lease_existing = _lease_statement(dialect, existing=True)
        self._lease_new = _lease_statement(dialect, existing=False)
        self._newest_items = page_statement(thread_items, ("id", "type", "data"), True, False)

    @property
    def held(self) -> int:
        """How many leases this process holds now."""
        return self._held

    async def admit(
        self,
        *,
        subject: str | None,
        limit: int | None,
        thread_id: str | None = None,
        user_id: str = "",
        new_thread: bool = False,
        newest_items: int = 0,
    ) -> Admission:
        """Count the request against ``subject`` and lease ``thread_id``, in one round trip.

        Args:
            subject: Whose requests are counted (``None``: not counted).
            limit: The subject's requests per minute; no lease is taken past it.
            thread_id: The thread to lease (``None``: no lease).
            user_id: The thread's owner: another user's thread is never leased.
            new_thread: The thread is being created (it has no row yet).
            newest_items: How many of the thread's newest items to read with
                its lease (:attr:`Lease.newest_items`): on PostgreSQL by the
                statement that takes it, on SQLite in the same job of the
                writer thread. It saves the answer a statement (a round trip,
                or a hand-off to a reader thread).

        Returns:
            The count and, if taken, the lease. No lease for a thread that
            does not exist for ``user_id``, that is leased already, or when
            the count is over ``limit``: the caller tells these apart.
        """
        now = time.time()
        minute = int(now // 60)
        token, parameters = self._lease_parameters(thread_id or "", user_id, now)
        parameters.update(
            subject=subject or "",
            minute=minute,
            limit=limit if limit is not None and subject is not None else 2**31 - 1,
            newest_items=0 if new_thread else max(0, newest_items),
        )
        retry_after = max(1, (minute + 1) * 60 - int(now))
        lease_statement = self._lease_existing if not new_thread else self._lease_new
        items: tuple[tuple[str, str, str], ...] | None = None
        if self._pg_admit is not None and subject is not None and thread_id is not None:
            row: Any = (await self._db.write_one(self._pg_admit[new_thread], parameters))[0]
            count, taken = int(row[0]), (row[1], row[2]) if row[1] is not None else None
            items = _items(row[3])
        elif self._db.dialect == "sqlite":

            def work(connection: Connection) -> tuple[int, Any, Any]:
                counted = 0
                if subject is not None:
                    counted = int(connection.execute(self._count, parameters).scalar_one())
                    if counted > parameters["limit"]:
                        return counted, None, None
                if thread_id is None:
                    return counted, None, None
                row = connection.execute(lease_statement, parameters).first()
                if row is None or newest_items <= 0 or new_thread:
                    return counted, row, None
                read = {**parameters, "limit": newest_items}
                rows = connection.execute(self._newest_items, read)
                return counted, row, tuple(cast("tuple[str, str, str]", tuple(r)) for r in rows)

            count, taken, items = await self._db.run_write(work)
        else:
            count, taken = await self._postgres_single(
                subject, thread_id, lease_statement, parameters
            )
            items = _items(taken[2]) if taken is not None else None
        lease = None
        if taken is not None:
            lease = Lease(thread_id or "", token, taken[1], items)
            self._held += 1
        return Admission(count=count, retry_after=retry_after, lease=lease)

    async def _postgres_single(
        self,
        subject: str | None,
        thread_id: str | None,
        lease_statement: sa.Executable,
        parameters: dict[str, Any],
    ) -> tuple[int, Any]:
        """One statement of the two (only a count, or only a lease)."""
        if subject is not None:
            rows = await self._db.write_one(self._count, parameters)
            return int(rows[0][0]), None
        if thread_id is not None:
            rows = await self._db.write_one(lease_statement, parameters)
            return 0, rows[0] if rows else None
        return 0, None

    async def thread_exists(self, thread_id: str, user_id: str) -> bool:
        """Whether ``user_id`` has the thread (to tell a missing thread from a busy one)."""
        async with self._db.read() as session:
            return bool(
                await session.scalar(REQUIRE_THREAD, {"thread_id": thread_id, "user_id": user_id})
            )

    async def lease_again(self, thread_id: str, user_id: str) -> Lease | None:
        """Try once more for a thread's lease (no counting): a finishing answer may free it."""
        token, parameters = self._lease_parameters(thread_id, user_id, time.time())
        rows = await self._db.write_one(self._lease_existing, parameters)
        if not rows:
            return None
        self._held += 1
        row: Any = rows[0]  # (token, thread data)
        return Lease(thread_id, token, row[1])

    def _lease_parameters(
        self, thread_id: str, user_id: str, now: float
    ) -> tuple[str, dict[str, Any]]:
        """A new lease token, and the parameters of a lease statement taking it at ``now``."""
        token = secrets.token_hex(16)
        return token, {
            "thread_id": thread_id,
            "user_id": user_id,
            "holder": self.holder,
            "token": token,
            "now": _millis(now),
            "expires_at": _millis(now + LEASE_SECONDS),
            "newest_items": 0,
        }

    async def release(self, lease: Lease, usage: Mapping[str, Any] | None = None) -> None:
        """End an answer's lease (only this request's: a token names it).

        ``usage``: the answer's token usage on the lease's thread
        (:func:`~chatkit_server.store.usage.usage_values`), recorded by the
        same write, so that the two writes every answer ends with cost one:
        on PostgreSQL one statement (the usage row a data-modifying CTE), on
        SQLite one job of the writer's group commit. When many answers end
        at once, each write at their end waits behind all the others'.
        """
        self._held = max(0, self._held - 1)
        parameters = {"thread_id": lease.thread_id, "token": lease.token}
        if usage is None:
            await self._db.write_one(self._release, parameters)
        elif self._release_recording is not None:
            await self._db.write_one(self._release_recording, {**usage, **parameters})
        else:

            def work(connection: Connection) -> None:
                connection.execute(RECORD_USAGE, {**usage, **parameters})
                connection.execute(self._release, parameters)

            await self._db.write_together(work)

    async def renew(self) -> None:
        """Extend every lease this process holds by :data:`LEASE_SECONDS` from now."""
        if self._held == 0:
            return
        await self._db.write_one(
            sa.update(thread_leases)
            .where(thread_leases.c.holder == self.holder)
            .values(expires_at=_millis(time.time() + LEASE_SECONDS))
        )

    async def sweep(self) -> None:
        """Delete counts of past minutes and leases that ran out."""
        now = time.time()
        async with self._db.write() as session:
            await session.execute(
                sa.delete(rate_counts).where(rate_counts.c.minute < int(now // 60) - 1)
            )
            await session.execute(
                sa.delete(thread_leases).where(thread_leases.c.expires_at < _millis(now))
            )


def _millis(seconds: float) -> int:
    return int(seconds * 1000)


_LEASE_VALUES: Final = ("thread_id", "holder", "token", "expires_at")


def _lease_statement(
    dialect: str, *, existing: bool, allowed: sa.ColumnElement[bool] | None = None
) -> sa.Insert:
    """Take a thread's lease unless a live one is held; ``RETURNING token, thread data``.

    On PostgreSQL the thread's newest items come back too (``newest_items``).
    For an existing thread the owner check rides along (``WHERE EXISTS``);
    a new thread has no row yet, and its id was just made by the server.
    ``allowed``: one more condition for taking it (the rate count's, say).
    """
    insert = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(thread_leases)
    condition: sa.ColumnElement[bool] = OWNED_THREAD if existing else sa.true()
    if allowed is not None:
        condition = sa.and_(condition, allowed)
    # SQLite needs a WHERE on an INSERT ... SELECT ... ON CONFLICT (its parser
    # would read ON as a join otherwise).
    # Typed parameters: PostgreSQL refuses one parameter read as text in the
    # SELECT list and as varchar in the ownership check.
    source: Any = sa.select(
        *(sa.bindparam(name, type_=thread_leases.c[name].type) for name in _LEASE_VALUES)
    ).where(condition)
    upsert = insert.from_select(_LEASE_VALUES, source).on_conflict_do_update(
        index_elements=["thread_id"],
        set_={name: insert.excluded[name] for name in ("holder", "token", "expires_at")},
        where=thread_leases.c.expires_at < sa.bindparam("now"),
    )
    if dialect == "postgresql":
        return upsert.returning(
            thread_leases.c.token,
            _THREAD_DATA.label("thread_data"),
            _NEWEST_ITEMS.label("newest_items"),
        )
    return upsert.returning(thread_leases.c.token, _THREAD_DATA)


def _postgres_admit(count: sa.Insert, *, new_thread: bool) -> sa.Select[Any]:
    """The count and the lease in one PostgreSQL statement (two data-modifying CTEs).

    ``count`` is the rate count's upsert (``RETURNING count``). The lease is
    taken only if the new count is within ``:limit``. One row: the count,
    then the lease's token, thread data and newest items (NULL: not taken).
    """
    counted = count.cte("counted")
    new_count = sa.select(counted.c.count).scalar_subquery()
    within = new_count <= sa.bindparam("limit", type_=sa.Integer)
    leased = _lease_statement("postgresql", existing=not new_thread, allowed=within).cte("leased")
    return sa.select(new_count, *(sa.select(column).scalar_subquery() for column in leased.c))


# The leased thread's metadata, read by the statement that takes the lease.
_THREAD_DATA: Final = (
    sa.select(threads.c.data).where(threads.c.id == sa.bindparam("thread_id")).scalar_subquery()
)


# PostgreSQL: the leased thread's newest items, (id, type, JSON) newest first,
# as one JSON array (NULL when none are asked for).
_newest: Final = (
    sa.select(thread_items.c.id, thread_items.c.type, thread_items.c.data, thread_items.c.seq)
    .where(thread_items.c.thread_id == sa.bindparam("thread_id"))
    .order_by(thread_items.c.seq.desc())
    .limit(sa.bindparam("newest_items", type_=sa.Integer))
    .subquery("newest")
)
_NEWEST_ITEMS: Final = sa.select(
    sa.cast(
        sa.func.json_agg(
            postgresql.aggregate_order_by(
                sa.func.json_build_array(_newest.c.id, _newest.c.type, _newest.c.data),
                _newest.c.seq.desc(),
            )
        ),
        sa.Text,
    )
).scalar_subquery()


def _items(value: str | None) -> tuple[tuple[str, str, str], ...] | None:
    """The newest items of :data:`_NEWEST_ITEMS` (``None``: not asked for)."""
    if value is None:
        return None
    return tuple((str(row[0]), str(row[1]), str(row[2])) for row in json.loads(value))
