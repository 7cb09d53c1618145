"""The one-trip aiosqlite cursor: same results as SQLAlchemy's, a quarter of the trips."""

from __future__ import annotations

from datetime import datetime

import pytest
import sqlalchemy as sa

from chatkit_server.store import Database
from chatkit_server.store.database import _BEGIN_OPTION
from chatkit_server.store.tables import threads

WHEN = datetime(2025, 1, 1)


def _row(number: int) -> dict[str, object]:
    return {"id": f"thr_{number}", "user_id": "u", "created_at": WHEN, "data": "{}"}


async def test_a_statement_is_one_trip(sqlite_database: Database, trips: list[str]) -> None:
    # The store's own statements run on the loop's connection (see
    # test_database); what still goes through aiosqlite is this.
    engine = sqlite_database.engine.execution_options(**{_BEGIN_OPTION: "NONE"})
    async with engine.connect() as session:
        await session.scalar(sa.select(sa.func.count()).select_from(threads))  # pool warm-up
    del trips[:]

    async with engine.connect() as session:
        count = await session.scalar(sa.select(sa.func.count()).select_from(threads))

    assert count == 0
    # SQLAlchemy's adapter alone makes four trips for the statement, and a
    # fifth when the pool rolls the connection back (here no transaction is
    # open, so there is nothing to roll back).
    assert trips == ["_run_statement"]


async def test_a_transaction_still_commits_and_rolls_back(
    sqlite_database: Database, trips: list[str]
) -> None:
    async with sqlite_database.write() as session:
        await session.execute(sa.insert(threads).values(_row(1)))
    assert trips[-1] == "commit"

    async def abandoned() -> None:
        async with sqlite_database.write() as session:
            await session.execute(sa.insert(threads).values(_row(2)))
            raise RuntimeError("abandon this unit of work")

    with pytest.raises(RuntimeError):
        await abandoned()
    assert trips[-1] == "rollback"

    async with sqlite_database.read() as session:
        ids = (await session.execute(sa.select(threads.c.id))).scalars().all()
    assert ids == ["thr_1"]


async def test_results_match_what_sqlalchemy_expects(sqlite_database: Database) -> None:
    async with sqlite_database.write() as session:
        # executemany, then rowcount and RETURNING.
        await session.execute(sa.insert(threads), [_row(n) for n in range(5)])
        updated = await session.execute(
            sa.update(threads).where(threads.c.id.in_(["thr_1", "thr_2"])).values(data="[]")
        )
        assert updated.rowcount == 2
        returned = await session.execute(
            sa.delete(threads).where(threads.c.id == "thr_4").returning(threads.c.id)
        )
        assert returned.scalars().all() == ["thr_4"]

    async with sqlite_database.read() as session:
        rows = (await session.execute(sa.select(threads.c.id, threads.c.data))).all()
        assert [tuple(row) for row in rows] == [
            ("thr_0", "{}"),
            ("thr_1", "[]"),
            ("thr_2", "[]"),
            ("thr_3", "{}"),
        ]
        created = await session.scalar(sa.select(threads.c.created_at).limit(1))
        assert created == WHEN  # column types still process the values


async def test_driver_errors_surface_as_sqlalchemy_errors(sqlite_database: Database) -> None:
    async with sqlite_database.engine.connect() as connection:
        await connection.execute(sa.insert(threads).values(_row(1)))
        with pytest.raises(sa.exc.IntegrityError):
            await connection.execute(sa.insert(threads).values(_row(1)))
        with pytest.raises(sa.exc.OperationalError, match="no such table"):
            await connection.exec_driver_sql("SELECT * FROM nowhere")
        # The connection still works after both.
        assert await connection.scalar(sa.select(sa.literal(1))) == 1
