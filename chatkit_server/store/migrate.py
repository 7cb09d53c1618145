"""Schema migrations, run with Alembic from code.

The migration scripts live in the repository's top-level ``migrations/``
directory; the wheel ships the same directory as
``chatkit_server/_migrations``. :func:`alembic_config` finds either, so no
``alembic.ini`` is needed at run time.

An unreachable or missing database raises
:class:`~chatkit_server.errors.DatabaseUnavailableError`, an unknown revision
:class:`~chatkit_server.errors.MigrationError`: both carry a one-line message
for the operator, so the command line need not show a traceback.

Progress is logged (logger ``chatkit_server.migrate``), never printed, and
the application's logging configuration is left alone.

The functions here are synchronous and start their own event loop, so call
them where no loop is running (the CLI); async code uses
:func:`upgrade_async`, which runs :func:`upgrade` in a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import anyio.to_thread
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DBAPIError

from chatkit_server.errors import DatabaseUnavailableError, MigrationError
from chatkit_server.store.database import create_engine

__all__ = [
    "alembic_config",
    "current",
    "downgrade",
    "script_location",
    "upgrade",
    "upgrade_async",
]

_PACKAGE_DIR = Path(__file__).resolve().parent.parent
# Alembic keeps the running environment in module globals (alembic.context,
# alembic.op): two migrations in one process at once would trample each other.
_ALEMBIC_LOCK = threading.Lock()


def script_location() -> Path:
    """Return the directory holding ``env.py`` and ``versions/``.

    Raises:
        FileNotFoundError: Neither an installed nor a source-checkout copy exists.
    """
    candidates = (
        _PACKAGE_DIR / "_migrations",  # installed wheel (pyproject force-include)
        _PACKAGE_DIR.parent / "migrations",  # source checkout or editable install
    )
    for candidate in candidates:
        if (candidate / "env.py").is_file():
            return candidate
    searched = ", ".join(str(candidate) for candidate in candidates)
    raise FileNotFoundError(f"the database migrations are missing (looked in {searched})")


def alembic_config(url: str, *, connect_args: Mapping[str, Any] | None = None) -> Config:
    """Build the Alembic configuration for a database, without an ini file.

    Args:
        url: A ``sqlite+aiosqlite://`` or ``postgresql+asyncpg://`` URL.
        connect_args: Extra keyword arguments for the driver's ``connect``.
    """
    config = Config()
    # Config values go through configparser interpolation: escape "%".
    config.set_main_option("script_location", str(script_location()).replace("%", "%%"))
    config.set_main_option("path_separator", "os")
    config.attributes["url"] = url
    config.attributes["connect_args"] = dict(connect_args or {})
    return config


def upgrade(
    url: str, revision: str = "head", *, connect_args: Mapping[str, Any] | None = None
) -> None:
    """Upgrade the schema to ``revision`` (the newest by default).

    Must be called where no event loop is running.

    Args:
        url: The database URL.
        revision: An Alembic revision, ``"head"`` or a relative one (``"+1"``).
        connect_args: Extra keyword arguments for the driver's ``connect``.

    Raises:
        DatabaseUnavailableError: The database cannot be reached or opened.
        MigrationError: ``revision`` is unknown, or the schema cannot move to it.
    """
    _check_no_running_loop("upgrade")
    config = alembic_config(url, connect_args=connect_args)
    with _ALEMBIC_LOCK, _operator_errors(config):
        command.upgrade(config, revision)


def downgrade(url: str, revision: str, *, connect_args: Mapping[str, Any] | None = None) -> None:
    """Downgrade the schema to ``revision`` (``"base"`` drops every table).

    Must be called where no event loop is running.

    Args:
        url: The database URL.
        revision: An Alembic revision, ``"base"`` or a relative one (``"-1"``).
        connect_args: Extra keyword arguments for the driver's ``connect``.

    Raises:
        DatabaseUnavailableError: The database cannot be reached or opened.
        MigrationError: ``revision`` is unknown, or the schema cannot move to it.
    """
    _check_no_running_loop("downgrade")
    config = alembic_config(url, connect_args=connect_args)
    with _ALEMBIC_LOCK, _operator_errors(config):
        command.downgrade(config, revision)


def current(url: str, *, connect_args: Mapping[str, Any] | None = None) -> str | None:
    """Return the schema revision of the database, or None if it has none.

    Must be called where no event loop is running.

    Args:
        url: The database URL.
        connect_args: Extra keyword arguments for the driver's ``connect``.

    Raises:
        DatabaseUnavailableError: The database cannot be reached or opened.
    """
    _check_no_running_loop("current")
    with _operator_errors(alembic_config(url, connect_args=connect_args)):
        return asyncio.run(_current(url, connect_args))


async def upgrade_async(
    url: str, revision: str = "head", *, connect_args: Mapping[str, Any] | None = None
) -> None:
    """:func:`upgrade`, from async code: it runs in a worker thread.

    Args:
        url: The database URL.
        revision: An Alembic revision, ``"head"`` by default.
        connect_args: Extra keyword arguments for the driver's ``connect``.
    """
    await anyio.to_thread.run_sync(
        functools.partial(upgrade, url, revision, connect_args=connect_args)
    )


@contextlib.contextmanager
def _operator_errors(config: Config) -> Iterator[None]:
    """Turn the driver's and Alembic's failures into one-line errors.

    A refused connection, an unknown database or a bad revision is the
    operator's to fix, and a traceback hides the one line that says how.
    """
    url = make_url(config.attributes["url"]).render_as_string(hide_password=True)
    try:
        yield
    except DBAPIError as exc:
        # The driver's own sentence, e.g. 'database "chat" does not exist'.
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise DatabaseUnavailableError(f"cannot use {url}: {reason}") from None
    except OSError as exc:
        raise DatabaseUnavailableError(f"cannot connect to {url}: {_os_reason(exc)}") from None
    except CommandError as exc:
        message = str(exc)
        if "locate revision" in message:
            known = ", ".join(
                s.revision for s in ScriptDirectory.from_config(config).walk_revisions()
            )
            message = f"{message} (known: {known}, base, head, or relative such as -1)"
        raise MigrationError(message) from None


def _os_reason(exc: OSError) -> str:
    # "connection refused" rather than the event loop's "Connect call failed
    # ('127.0.0.1', 5432)"; name lookups carry a negative errno and their own text.
    if exc.errno is not None and exc.errno > 0:
        return os.strerror(exc.errno).lower()
    return exc.strerror or str(exc) or type(exc).__name__


def _check_no_running_loop(name: str) -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise RuntimeError(
        f"{name}() runs its own event loop and cannot be called from async code: "
        "use upgrade_async(), or call it in a worker thread"
    )


async def _current(url: str, connect_args: Mapping[str, Any] | None) -> str | None:
    engine = create_engine(url, connect_args=connect_args)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(_current_revision)
    finally:
        await engine.dispose()


def _current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()
