"""Alembic migrations: they build exactly the schema of chatkit_server.store.tables."""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

import anyio.to_thread
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

from chatkit_server.context import RequestContext
from chatkit_server.store import (
    Database,
    SQLStore,
    alembic_config,
    current,
    downgrade,
    upgrade_async,
)
from chatkit_server.store import migrate as migrate_module
from chatkit_server.store.database import create_engine
from chatkit_server.store.tables import metadata
from tests.conftest import DatabaseTarget

HEAD = "0004"


async def _in_thread(function: Any, *args: Any, **kwargs: Any) -> Any:
    # The sync migration API runs its own event loop: keep it off this one.
    return await anyio.to_thread.run_sync(functools.partial(function, *args, **kwargs))


def _inspect(connection: Connection) -> tuple[set[str], list[Any]]:
    tables = set(sa.inspect(connection).get_table_names())
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return tables, compare_metadata(context, metadata)


async def _schema(target: DatabaseTarget) -> tuple[set[str], list[Any]]:
    engine = create_engine(target.url, connect_args=target.connect_args)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(_inspect)
    finally:
        await engine.dispose()


async def test_upgrade_matches_the_tables_and_downgrade_removes_them(
    database_target: DatabaseTarget,
) -> None:
    url, connect_args = database_target.url, database_target.connect_args
    assert await _in_thread(current, url, connect_args=connect_args) is None

    await upgrade_async(url, connect_args=connect_args)
    tables, diff = await _schema(database_target)
    assert await _in_thread(current, url, connect_args=connect_args) == HEAD
    assert tables == {*metadata.tables, "alembic_version"}
    assert diff == []

    await _in_thread(downgrade, url, "base", connect_args=connect_args)
    tables, _ = await _schema(database_target)
    assert tables <= {"alembic_version"}
    assert await _in_thread(current, url, connect_args=connect_args) is None

    await upgrade_async(url, connect_args=connect_args)
    assert await _in_thread(current, url, connect_args=connect_args) == HEAD
    database = database_target.connect()
    try:
        page = await SQLStore(database).load_threads(10, None, "desc", RequestContext())
        assert page.data == []
    finally:
        await database.dispose()


async def test_upgrade_logs_and_leaves_app_logging_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    app_logger = logging.getLogger("chatkit_server.some_module")
    root_handlers = list(logging.getLogger().handlers)
    caplog.set_level(logging.INFO, logger="chatkit_server.migrate")

    await upgrade_async(f"sqlite+aiosqlite:///{tmp_path / 'x' / 'chatkit.db'}")

    messages = [r.getMessage() for r in caplog.records if r.name == "chatkit_server.migrate"]
    # One line per revision, so a long upgrade shows its progress.
    assert messages == [
        "upgraded empty -> 0001: Initial schema: threads, thread items, attachments and feedback.",
        "upgraded 0001 -> 0002: Token usage per answer.",
        "upgraded 0002 -> 0003: Sign-in: sessions, rate-limit counts and per-thread answer leases.",
        "upgraded 0003 -> 0004: Attachments: their bytes in the database (when chosen) and the "
        "server's own keys.",
    ]
    assert capsys.readouterr().out == ""
    assert not app_logger.disabled
    assert logging.getLogger().handlers == root_handlers


def test_migrations_are_a_single_linear_history() -> None:
    script = ScriptDirectory.from_config(alembic_config("sqlite+aiosqlite://"))
    assert script.get_heads() == [HEAD]
    assert [revision.revision for revision in script.walk_revisions()][-1] == "0001"


def test_scripts_are_found_in_an_installed_wheel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "site-packages" / "chatkit_server"
    (package / "_migrations").mkdir(parents=True)
    (package / "_migrations" / "env.py").write_text("")
    monkeypatch.setattr(migrate_module, "_PACKAGE_DIR", package)
    assert migrate_module.script_location() == package / "_migrations"

    (package / "_migrations" / "env.py").unlink()
    with pytest.raises(FileNotFoundError, match="migrations are missing"):
        migrate_module.script_location()


def test_source_checkout_scripts_are_the_repository_ones() -> None:
    repository = Path(__file__).resolve().parents[2]
    assert migrate_module.script_location() == repository / "migrations"


async def test_sync_api_refuses_to_run_inside_an_event_loop(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="upgrade_async"):
        current(f"sqlite+aiosqlite:///{tmp_path / 'chatkit.db'}")


async def _persistence(url: str) -> dict[str, str]:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                sa.text(
                    "SELECT relname, relpersistence::text FROM pg_class WHERE relname IN "
                    "('rate_counts', 'thread_leases', 'threads')"
                )
            )
            return {row[0]: row[1] for row in rows}
    finally:
        await engine.dispose()


UNLOGGED = {"rate_counts": "u", "thread_leases": "u", "threads": "p"}


@pytest.mark.postgres
async def test_counts_and_leases_are_unlogged_on_postgres(postgres_database_url: str) -> None:
    await upgrade_async(postgres_database_url)
    assert await _persistence(postgres_database_url) == UNLOGGED


@pytest.mark.postgres
async def test_create_all_makes_them_unlogged_too(postgres_database_url: str) -> None:
    database = Database.connect(postgres_database_url)
    try:
        await database.create_all()
    finally:
        await database.dispose()
    assert await _persistence(postgres_database_url) == UNLOGGED
