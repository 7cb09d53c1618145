"""Shared fixtures.

Store fixtures: every store test runs against SQLite (a file in ``tmp_path``)
and PostgreSQL (``CHATKIT_TEST_POSTGRES_URL``, default
``postgresql+asyncpg://postgres@127.0.0.1:5432/test``), each test in a fresh
schema with a random name so concurrent runs never collide. When PostgreSQL is
unreachable its tests are skipped with the reason, unless
``CHATKIT_REQUIRE_POSTGRES=1`` (CI), which turns the skip into a failure.
"""

from __future__ import annotations

import asyncio
import gc
import os
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from chatkit_server.store import Database, SQLStore

# Whole-stack fixtures (fake backend, live server, protocol client).
pytest_plugins = ("tests.live",)

# The tests speak plain HTTP on loopback only, yet every HTTP client they
# start (several per test, in this process and in the servers it spawns)
# builds a TLS context and loads the CA bundle that SSL_CERT_FILE (or certifi)
# names: about 20 ms of CPU each, a tenth of the suite's time. A trust
# directory that does not exist costs nothing to load, and a TLS request that
# should not happen fails to verify.
os.environ.pop("SSL_CERT_FILE", None)
os.environ["SSL_CERT_DIR"] = os.path.join(os.path.dirname(__file__), "no-trusted-certificates")

# Nothing listens on the discard port: a client that falls back to the
# OpenAI defaults fails at once instead of reaching a real model.
_NO_MODEL_URL = "http://127.0.0.1:9/v1"


@pytest.fixture(autouse=True)
def _no_real_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail any test that would reach a real model (or OpenAI) by accident."""
    monkeypatch.setenv("OPENAI_BASE_URL", _NO_MODEL_URL)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-guard-no-real-model")


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto``: two test processes per core, at most eight.

    About a third of the suite's time is spent waiting (on servers started in
    subprocesses, the browser, timeouts under test), so one process per core
    leaves the cores idle that long; past eight, starting the processes and
    their databases costs more than it saves.
    """
    return min(8, 2 * (os.cpu_count() or 1))


def pytest_collection_finish(session: pytest.Session) -> None:
    """Keep the collector off what every test process holds for its whole run.

    The SDKs, their pydantic schemas and the collected test modules live until
    the process ends, yet every full collection walked them again: about
    0.2 s each, paid by every test that lets a server go idle (it collects
    twice to hand memory back, as in production) and by Python's own full
    collections. The server does the same at start (``tune_garbage_collector``).
    """
    gc.collect()
    gc.freeze()


DEFAULT_TEST_POSTGRES_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
POSTGRES_URL = os.environ.get("CHATKIT_TEST_POSTGRES_URL") or DEFAULT_TEST_POSTGRES_URL
REQUIRE_POSTGRES = os.environ.get("CHATKIT_REQUIRE_POSTGRES") == "1"


@dataclass(frozen=True)
class DatabaseTarget:
    """An empty database to run against: a URL plus driver connect arguments."""

    kind: str  # "sqlite" or "postgres"
    url: str
    connect_args: dict[str, Any] = field(default_factory=dict)

    def connect(self) -> Database:
        return Database.connect(self.url, connect_args=self.connect_args)


# Why PostgreSQL could not be used, once known: later tests skip at once.
_postgres_failure: list[str] = []


async def _create_postgres_schema(schema: str) -> AsyncEngine:
    """Create ``schema``; return the admin engine that will drop it."""
    # asyncpg waits 60 s for a connection by default: far too long for a skip.
    admin = create_async_engine(POSTGRES_URL, poolclass=NullPool, connect_args={"timeout": 5})
    try:
        async with admin.begin() as conn:
            await conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    except BaseException:
        await admin.dispose()
        raise
    return admin


def _skip_or_fail_postgres(reason: str) -> NoReturn:
    message = (
        f"PostgreSQL not reachable at {POSTGRES_URL} ({reason}): set CHATKIT_TEST_POSTGRES_URL"
    )
    if REQUIRE_POSTGRES:
        pytest.fail(f"{message} (CHATKIT_REQUIRE_POSTGRES=1)", pytrace=False)
    pytest.skip(message)


@pytest.fixture(
    params=[
        pytest.param("sqlite"),
        pytest.param("postgres", marks=pytest.mark.postgres),
    ]
)
async def database_target(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[DatabaseTarget]:
    """An empty database, SQLite or PostgreSQL (no tables)."""
    if request.param == "sqlite":
        yield DatabaseTarget("sqlite", f"sqlite+aiosqlite:///{tmp_path / 'db' / 'chatkit.db'}")
        return
    schema = f"test_{secrets.token_hex(6)}"
    if not _postgres_failure:
        try:
            admin = await _create_postgres_schema(schema)
        except Exception as exc:
            _postgres_failure.append(f"{type(exc).__name__}: {exc}")
    if _postgres_failure:
        _skip_or_fail_postgres(_postgres_failure[0])
    try:
        yield DatabaseTarget("postgres", POSTGRES_URL, {"server_settings": {"search_path": schema}})
    finally:
        async with admin.begin() as conn:
            await conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        await admin.dispose()


@asynccontextmanager
async def new_postgres_database() -> AsyncIterator[str]:
    """The URL of a new, empty PostgreSQL database, dropped on exit.

    For servers, which take only a URL (no driver arguments): a database of
    their own keeps concurrent runs apart as the per-test schemas do. Skips
    (or fails, under ``CHATKIT_REQUIRE_POSTGRES=1``) when PostgreSQL cannot
    be reached.
    """
    name = f"test_{secrets.token_hex(6)}"
    admin = create_async_engine(
        POSTGRES_URL,
        poolclass=NullPool,
        isolation_level="AUTOCOMMIT",  # CREATE DATABASE cannot run in a transaction
        connect_args={"timeout": 5},
    )
    if not _postgres_failure:
        try:
            async with admin.connect() as conn:
                await conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        except Exception as exc:
            _postgres_failure.append(f"{type(exc).__name__}: {exc}")
    if _postgres_failure:
        await admin.dispose()
        _skip_or_fail_postgres(_postgres_failure[0])
    try:
        yield sa.make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        # FORCE: a server stopped mid-request may leave a connection behind.
        async with admin.connect() as conn:
            await conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await admin.dispose()


@pytest.fixture
async def postgres_database_url() -> AsyncIterator[str]:
    """A new, empty PostgreSQL database for a server (see :func:`new_postgres_database`)."""
    async with new_postgres_database() as url:
        yield url


@pytest.fixture(
    params=[
        pytest.param("sqlite"),
        pytest.param("postgres", marks=pytest.mark.postgres),
    ]
)
async def server_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """An empty database for a whole server, SQLite or PostgreSQL, named by its URL alone."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'server' / 'chatkit.db'}"
        return
    async with new_postgres_database() as url:
        yield url


@pytest.fixture
async def database(database_target: DatabaseTarget) -> AsyncIterator[Database]:
    """A :class:`Database` with the tables created, disposed after the test."""
    database = database_target.connect()
    await database.create_all()
    try:
        yield database
    finally:
        await database.dispose()


def record_sql(database: Database, *, only: str | None = None) -> list[str]:
    """Every SQL statement ``database`` runs from now on, whitespace collapsed.

    Args:
        database: The database to listen to.
        only: Keep only statements starting with this keyword (e.g. ``"SELECT"``).
    """
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        text = " ".join(statement.split())
        if only is None or text.upper().startswith(only):
            statements.append(text)

    sa.event.listen(database.sync_engine, "before_cursor_execute", record)
    return statements


@pytest.fixture
def store(database: Database) -> SQLStore:
    """A :class:`SQLStore` on a fresh database."""
    return SQLStore(database)


@pytest.fixture
async def sqlite_database(tmp_path: Path) -> AsyncIterator[Database]:
    """A :class:`Database` on the SQLite file ``tmp_path / "chatkit.db"``, tables created."""
    database = Database.connect(f"sqlite+aiosqlite:///{tmp_path / 'chatkit.db'}")
    await database.create_all()
    yield database
    await database.dispose()


async def outside_minute_end(margin: float = 15.0) -> None:
    """Wait, if needed, until the current clock minute has ``margin`` seconds left.

    Rate limits count per clock minute: a test that counts requests must not
    straddle two minutes.
    """
    left = 60 - time.time() % 60
    if left < margin:
        await asyncio.sleep(left + 0.1)
