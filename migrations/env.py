"""Alembic environment: async engines, SQLite batch mode, one locked transaction.

Run either by ``chatkit_server.store.migrate`` (no ini file; the URL and driver
arguments arrive in ``config.attributes``) or by the ``alembic`` command line
from the repository root (URL from ``sqlalchemy.url`` or the server settings).
A caller may also pass an open synchronous connection as
``config.attributes["connection"]``.
"""

from __future__ import annotations

import asyncio
import logging
from logging.config import fileConfig
from typing import Any

from alembic import context
from alembic.runtime.migration import MigrationContext, MigrationInfo
from sqlalchemy.engine import Connection

from chatkit_server.store.database import create_engine, for_writes
from chatkit_server.store.tables import metadata

config = context.config
logger = logging.getLogger("chatkit_server.migrate")

# Only the alembic command line has an ini file to take logging from. Called
# from the server there is none, so the application's logging stays untouched.
if config.config_file_name is not None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def _url() -> str:
    url = config.attributes.get("url") or config.get_main_option("sqlalchemy.url")
    if url:
        return str(url)
    from chatkit_server.settings import Settings

    return Settings.from_env().resolved_database_url


def _log_step(ctx: MigrationContext, step: MigrationInfo, heads: Any, run_args: Any) -> None:
    direction = "upgraded" if step.is_upgrade else "downgraded"
    source = ", ".join(step.source_revision_ids) or "empty"
    target = ", ".join(step.destination_revision_ids) or "empty"
    doc = getattr(step.up_revision, "doc", "")  # a Script: its docstring's first line
    logger.info("%s %s -> %s: %s", direction, source, target, doc)


def _run(connection: Connection) -> None:
    sqlite = connection.dialect.name == "sqlite"
    context.configure(
        connection=connection,
        target_metadata=metadata,
        compare_type=True,
        # SQLite cannot ALTER most things; batch mode rebuilds the table.
        render_as_batch=sqlite,
        # Our engines issue BEGIN themselves, so SQLite DDL is transactional
        # too: a failed migration leaves the schema as it was.
        transactional_ddl=True,
        on_version_apply=_log_step,
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            # Server processes starting together must not migrate at once.
            connection.exec_driver_sql("SELECT pg_advisory_xact_lock(hashtext(current_schema()))")
        context.run_migrations()


async def _run_async() -> None:
    # Foreign keys off: a batch-mode rebuild drops the old table, which would
    # otherwise cascade into its children. BEGIN IMMEDIATE (for_writes) makes
    # a second migrating process wait rather than race.
    engine = create_engine(
        _url(),
        connect_args=config.attributes.get("connect_args"),
        enforce_foreign_keys=False,
    )
    try:
        async with for_writes(engine).connect() as connection:
            await connection.run_sync(_run)
    finally:
        await engine.dispose()


def run_migrations_offline() -> None:
    context.configure(
        url=_url(),
        target_metadata=metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        render_as_batch=_url().startswith("sqlite"),
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
    else:
        asyncio.run(_run_async())


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
