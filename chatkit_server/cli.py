"""``chatkit-server``: serve the ChatKit backend, or manage its database."""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import ipaddress
import logging
import multiprocessing
import os
import signal
import sys
import textwrap
import threading
import time
from collections.abc import Iterator, Sequence
from types import FrameType
from typing import Any

from chatkit_server import __version__
from chatkit_server.errors import ChatKitServerError, DatabaseUnavailableError, MigrationError
from chatkit_server.settings import DATABASE_VARIABLES, ENVIRONMENT_HELP, Settings, environment_help

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "main", "uvicorn_options"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
# record/replay stand in for a model server: not the server's own port.
DEFAULT_PROXY_PORT = 8099
# Collect young objects every 50,000 allocations instead of 700 (see
# tune_garbage_collector).
GC_THRESHOLDS = (50_000, 50, 100)
# In the data dir, next to the default database: where a newcomer looks first.
LOCAL_MODEL_LOG = "llama-server.log"

logger = logging.getLogger("chatkit_server")


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser, with the environment documented in ``--help``."""
    parser = argparse.ArgumentParser(
        prog="chatkit-server",
        description=(
            "A self-hosted backend for OpenAI ChatKit: point the ChatKit web component at "
            "POST /chatkit and chat with your own OpenAI-compatible model server."
        ),
        epilog=ENVIRONMENT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"chatkit-server {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = _command(
        commands,
        "serve",
        environment=ENVIRONMENT_HELP,
        help="run the server (applies database migrations first)",
        description="Run the HTTP server. The database schema is upgraded before it starts.",
    )
    serve.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help=(
            f"address to bind (default {DEFAULT_HOST}); any address but loopback needs a "
            "sign-in mode, or --allow-anonymous"
        ),
    )
    serve.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port to bind (default {DEFAULT_PORT})"
    )
    serve.add_argument(
        "--no-migrate",
        action="store_true",
        help="do not upgrade the database schema on start",
    )
    serve.add_argument(
        "--allow-anonymous",
        action="store_true",
        help=(
            "serve on a --host other than loopback with no sign-in mode on. Everyone who "
            "can reach the address is then one user, who reads and writes every thread. "
            "Without this flag serve refuses; set CHATKIT_JWT_SECRET, "
            "CHATKIT_JWT_PUBLIC_KEY, CHATKIT_TRUSTED_USER_HEADER or CHATKIT_ADMIN_KEY "
            "instead."
        ),
    )
    serve.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        help=(
            "server processes sharing the port (default 1). One process streams on one "
            "CPU core; more workers use more cores. On SQLite they share its single "
            "writer, so for many workers prefer PostgreSQL (CHATKIT_DATABASE_URL)."
        ),
    )

    migrate = _command(
        commands,
        "migrate",
        environment=_DATABASE_HELP,
        help="upgrade the database schema and exit",
        description="Upgrade (or, given a revision, move) the database schema, then exit.",
    )
    migrate.add_argument(
        "--downgrade",
        metavar="REVISION",
        help="move the schema down to REVISION instead ('base' removes every table)",
    )

    usage = _command(
        commands,
        "usage",
        environment=_DATABASE_HELP,
        help="print token usage per thread",
        description="Print the token usage recorded for each thread, biggest first.",
    )
    usage.add_argument("--user", help="only threads of this user")
    usage.add_argument("--thread", help="only this thread")
    usage.add_argument("--limit", type=int, default=50, help="most threads listed (default 50)")
    usage.add_argument("--json", action="store_true", help="print JSON instead of a table")

    record = _command(
        commands,
        "record",
        environment=_TEST_TOOL_HELP,
        help="run a recording proxy in front of an OpenAI-compatible server",
        description=(
            "Forward every request to --upstream and save it with its (streamed) response, "
            "byte for byte and with chunk timing, as a fixture directory under --out. "
            "Point chatkit-server (CHATKIT_LLM_BASE_URL) or any OpenAI client at "
            "http://HOST:PORT/v1. Stop with Ctrl+C."
        ),
    )
    record.add_argument(
        "--upstream", required=True, help="the real server's base URL, e.g. http://host:8080/v1"
    )
    record.add_argument("--out", required=True, help="fixture directory to write")
    record.add_argument("--note", default="", help="free text saved in every meta.json")
    _address_arguments(record)

    replay = _command(
        commands,
        "replay",
        environment=_TEST_TOOL_HELP,
        help="serve recorded fixtures as an OpenAI-compatible server",
        description=(
            "Answer OpenAI-compatible requests from a fixture directory written by 'record'. "
            "'sequence' matching answers request n with fixture n; 'key' matching finds the "
            "fixture whose request looks the same (model, messages/input, tools; ids "
            "ignored). A request that matches nothing gets HTTP 409 with a diff."
        ),
    )
    replay.add_argument("--fixtures", required=True, help="fixture directory to serve")
    replay.add_argument("--match", choices=("sequence", "key"), default="sequence")
    replay.add_argument(
        "--speed",
        choices=("realtime", "fast"),
        default="fast",
        help="realtime: keep the recorded chunk timing; fast: no waiting (default)",
    )
    _address_arguments(replay)
    return parser


_DATABASE_HELP = environment_help(
    DATABASE_VARIABLES,
    heading="environment (the other CHATKIT_* settings are checked too: chatkit-server --help):",
)
_TEST_TOOL_HELP = "environment: none (record and replay read no CHATKIT_* variables)\n"


def _command(
    commands: Any, name: str, *, help: str, description: str, environment: str
) -> argparse.ArgumentParser:
    """A subcommand whose --help ends with the environment variables it uses."""
    parser: argparse.ArgumentParser = commands.add_parser(
        name,
        help=help,
        # The raw formatter keeps the environment table's layout, so the
        # description is wrapped here.
        description=textwrap.fill(description, 78),
        epilog=environment,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1, got {value}")
    return value


def _address_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"address (default {DEFAULT_HOST})")
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PROXY_PORT, help=f"port (default {DEFAULT_PROXY_PORT})"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    args = build_parser().parse_args(argv)
    if args.command in ("record", "replay"):
        # Test tools: they need no settings, and must not fail on the server's.
        _configure_logging("info")
        try:
            return _record_or_replay(args)
        except ChatKitServerError as exc:
            print(f"chatkit-server: {exc}", file=sys.stderr)
            return 1
    try:
        settings = Settings.from_env()
    except ChatKitServerError as exc:
        # SettingsError and WorkflowFileError name the variable or the file
        # and key themselves.
        return _operator_error(str(exc))
    _configure_logging(settings.log_level)
    try:
        if args.command == "migrate":
            return _migrate(settings, downgrade_to=args.downgrade)
        if args.command == "usage":
            return _usage(
                settings, user=args.user, thread=args.thread, limit=args.limit, as_json=args.json
            )
        if not settings.auth_enabled and not _is_loopback(args.host):
            if not args.allow_anonymous:
                return _operator_error(
                    f"--host {args.host}: no sign-in mode is on, so everyone who can reach "
                    "this address would share one user and every thread; set "
                    "CHATKIT_JWT_SECRET, CHATKIT_JWT_PUBLIC_KEY, CHATKIT_TRUSTED_USER_HEADER "
                    "or CHATKIT_ADMIN_KEY, or pass --allow-anonymous"
                )
            logger.warning(
                "serving on %s without sign-in (--allow-anonymous): everyone who can reach it "
                "is one user",
                args.host,
            )
        return _serve(
            settings,
            host=args.host,
            port=args.port,
            migrate=not args.no_migrate,
            workers=args.workers,
        )
    except DatabaseUnavailableError as exc:
        return _operator_error(f"{_database_setting(settings)}: {exc}")
    except MigrationError as exc:
        where = f"--downgrade {args.downgrade}" if args.command == "migrate" else "migrations"
        return _operator_error(f"{where}: {exc}")
    except ChatKitServerError as exc:
        print(f"chatkit-server: {exc}", file=sys.stderr)
        return 1
    except NotImplementedError as exc:
        return _operator_error(str(exc))


def _is_loopback(host: str) -> bool:
    """Whether ``host`` can be reached from this machine only."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # another host name: it may resolve to anything
        return False


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """The ``uvicorn.Config`` options the app's settings call for.

    Connections: uvicorn's httptools protocol with a deadline for request
    headers (:mod:`chatkit_server.http.connections`; this sets the deadline
    for the process), its keep-alive timeout, and a cap on open connections
    past which requests are answered 503.

    With the trusted-proxy sign-in on, the user header is believed only from
    the connection's own peer. uvicorn's ``proxy_headers`` (on by default,
    trusting 127.0.0.1 or ``FORWARDED_ALLOW_IPS``) would replace that peer
    with the address in ``X-Forwarded-For``: a proxy on 127.0.0.1 would no
    longer be recognised, and a client allowed to forward could name a
    trusted address. The proxy logs the client's own address anyway.

    Args:
        settings: The server's settings.
    """
    from chatkit_server.http.connections import HeaderDeadlineProtocol, default_connection_limit

    HeaderDeadlineProtocol.configure(settings.header_timeout)
    options: dict[str, Any] = {
        "http": HeaderDeadlineProtocol,
        "timeout_keep_alive": settings.keepalive_timeout,
        "limit_concurrency": settings.max_connections or default_connection_limit(),
    }
    if "proxy" in settings.sign_in_modes:
        options["proxy_headers"] = False
    return options


def _operator_error(message: str) -> int:
    """Print an operator's mistake as the one line the README promises; exit status 2."""
    print(f"chatkit-server: {message}", file=sys.stderr)
    return 2


def _database_setting(settings: Settings) -> str:
    """The variable that chose the database, for error messages."""
    return "CHATKIT_DATABASE_URL" if settings.database_url else "CHATKIT_DATA_DIR"


def _check_database(settings: Settings, *, migrate: bool) -> None:
    """Fail fast, in one line, on a database that cannot serve.

    Raises:
        DatabaseUnavailableError: It cannot be reached, or (when it will not be
            migrated) it has no schema yet.
    """
    from chatkit_server.store import current

    if current(settings.resolved_database_url) is None and not migrate:
        raise DatabaseUnavailableError(
            "the database has no schema yet: run 'chatkit-server migrate' first"
        )


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if level != "debug":
        # Per-request and per-step chatter of libraries; our own lines say
        # what happened (e.g. "upgraded empty -> 0001").
        for name in ("alembic", "chatkit", "openai", "httpx", "httpx2"):
            logging.getLogger(name).setLevel(logging.WARNING)


def _migrate(settings: Settings, *, downgrade_to: str | None) -> int:
    from chatkit_server.store import current, downgrade, upgrade

    url = settings.resolved_database_url
    before = current(url)  # also the connection check, before anything changes
    if downgrade_to is not None:
        downgrade(url, downgrade_to)
    else:
        upgrade(url)
    logger.info("database schema: %s -> %s", before or "empty", current(url) or "empty")
    return 0


def _usage(
    settings: Settings, *, user: str | None, thread: str | None, limit: int, as_json: bool
) -> int:
    import asyncio
    import json

    from chatkit_server.store import Database, UsageStore

    _check_database(settings, migrate=False)

    async def report() -> list[dict[str, object]]:
        database = Database.connect(settings.resolved_database_url)
        try:
            rows = await UsageStore(database).report(user_id=user, thread_id=thread, limit=limit)
        finally:
            await database.dispose()
        return [
            {
                "thread_id": row.thread_id,
                "user_id": row.user_id,
                "answers": row.answers,
                "input_tokens": row.input_tokens,
                "output_tokens": row.output_tokens,
                "total_tokens": row.total_tokens,
            }
            for row in rows
        ]

    rows = asyncio.run(report())
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    columns = ("thread_id", "user_id", "answers", "input_tokens", "output_tokens", "total_tokens")
    table = [columns, *(tuple(str(row[c]) for c in columns) for row in rows)]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    for line in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)))
    if not rows:
        print("(no usage recorded yet)")
    return 0


def _serve(settings: Settings, *, host: str, port: int, migrate: bool, workers: int = 1) -> int:
    import uvicorn

    from chatkit_server.store import upgrade

    # Before the local model starts or anything is logged: an unreachable
    # database is then the one line of output.
    _check_database(settings, migrate=migrate)
    try:
        with _sigterm_unwinds(), contextlib.ExitStack() as resources:
            if migrate:
                logger.info("upgrading the database schema")
                upgrade(settings.resolved_database_url)
            served = _with_local_model(settings, resources)
            # Workers are separate processes: each reads the environment again
            # (the workflows file holds tools, which cannot be sent to another
            # process) and builds its own app, database pool and backend clients.
            local_model = {
                name: getattr(served, name)
                for name in ("llm_base_url", "llm_model", "llm_context_tokens")
                if getattr(served, name) != getattr(settings, name)
            }
            settings = served
            app: Any
            if workers > 1:
                app = functools.partial(_worker_app, local_model)
            else:
                # Imported only here: the supervisor of --workers never builds
                # an app, and the Agents SDK alone takes over a second to load.
                from chatkit_server.app import create_app

                app = create_app(settings)
            config = uvicorn.Config(
                app,
                factory=workers > 1,
                workers=workers,
                host=host,
                port=port,
                log_config=None,
                log_level=settings.log_level,
                # Open answer streams get this long to finish on shutdown; then they
                # are cancelled, which persists their partial answers.
                timeout_graceful_shutdown=int(settings.shutdown_grace),
                # A worker answers the supervisor's health checks only once it
                # has imported everything; on a loaded machine that takes
                # longer than uvicorn's 5 s, and the worker would be killed
                # and restarted over and over.
                timeout_worker_healthcheck=WORKER_HEALTHCHECK_SECONDS,
                **uvicorn_options(settings),
            )
            if workers > 1:
                return _serve_workers(config, settings)
            logger.info("serving ChatKit on http://%s:%d/chatkit", host, port)
            _log_console(settings, host, port)
            server = uvicorn.Server(config)
            tune_garbage_collector()
            server.run()
    except _Terminated:
        # Everything is stopped by now (the local model too). The previous handler is
        # back: by default it ends the process by the signal, as uvicorn alone does.
        signal.raise_signal(signal.SIGTERM)
        return 0
    except KeyboardInterrupt:
        # Ctrl+C (also while the local model loads) is a normal way to stop.
        return 130
    # uvicorn reports a failed start (port in use) only by not having started.
    return 0 if server.started else 1


def _log_console(settings: Settings, host: str, port: int) -> None:
    # The first thing a new user wants after `serve`: somewhere to click.
    if settings.console:
        logger.info(
            "the console: open http://%s:%d/ in a browser (CHATKIT_CONSOLE=off hides it)",
            host,
            port,
        )


def _serve_workers(config: Any, settings: Settings) -> int:
    from uvicorn.supervisors import Multiprocess

    try:
        sock = config.bind_socket()
    except SystemExit:
        return 1  # uvicorn has logged why (e.g. the port is in use)
    if settings.resolved_database_url.startswith("sqlite"):
        logger.info(
            "%d workers share one SQLite file: writes queue on its single writer "
            "(PostgreSQL scales further)",
            config.workers,
        )
    logger.info(
        "serving ChatKit on http://%s:%d/chatkit with %d worker processes",
        config.host,
        config.port,
        config.workers,
    )
    _log_console(settings, config.host, config.port)
    # The supervisor handles SIGINT/SIGTERM itself: it stops every worker, each
    # of which shuts down gracefully and persists its open answers.
    Multiprocess(config, sockets=[sock]).run()
    return 0


def _worker_app(changes: dict[str, Any]) -> Any:
    """The app of one worker process: the environment's settings with ``changes``.

    A fresh interpreter: logging is set up again.
    """
    from chatkit_server.app import create_app
    from chatkit_server.http.connections import HeaderDeadlineProtocol

    settings = Settings.from_env().with_changes(**changes)
    _configure_logging(settings.log_level)
    # The supervisor's uvicorn options reach this process, but not the
    # deadline they set on the protocol class in the supervisor.
    HeaderDeadlineProtocol.configure(settings.header_timeout)
    app = create_app(settings)
    tune_garbage_collector()
    _stop_with_supervisor()
    return app


# How long a worker may take to answer its supervisor (see _serve).
WORKER_HEALTHCHECK_SECONDS = 60

# How often a worker looks for its supervisor: the longest an orphan serves on.
SUPERVISOR_CHECK_SECONDS = 1.0


def _stop_with_supervisor() -> None:
    """Stop this worker (gracefully, by SIGTERM) once its supervisor is gone.

    A supervisor killed with SIGKILL cannot stop its workers: left alone they
    would serve on as orphans and hold the port, so a restart could not bind
    it. An orphan gets a new parent, which a thread notices.
    """
    parent = multiprocessing.parent_process()
    if parent is None or parent.pid is None:
        return  # not started by a supervisor
    # The supervisor's pid as it started this worker: os.getppid() now would
    # already name the new parent if the supervisor died during start-up.
    supervisor = parent.pid

    def watch() -> None:
        while os.getppid() == supervisor:
            time.sleep(SUPERVISOR_CHECK_SECONDS)
        logger.warning("the supervisor (pid %d) is gone: this worker stops", supervisor)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="supervisor-watch", daemon=True).start()


def tune_garbage_collector() -> None:
    """Make Python's cycle collector cheap for a long-running server process.

    Everything imported and built so far (the SDKs, their pydantic schemas,
    the app) lives as long as the process, yet every full collection walked
    it again; and with hundreds of streams the default thresholds collect
    thousands of times a minute. With 500 streams that was about a sixth of
    the server's CPU (5.5 s of about 33 s, measured by bench/). Freezing the
    start-up heap and collecting less often keeps cycles collected (memory
    peaked the same) at a fraction of the cost.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _record_or_replay(args: argparse.Namespace) -> int:
    from chatkit_server.testing.live import ServerThread
    from chatkit_server.testing.recorder import Recorder
    from chatkit_server.testing.replay import ReplayBackend

    app: Recorder | ReplayBackend
    if args.command == "record":
        app = Recorder(args.upstream, args.out, note=args.note)
        what = f"recording {args.upstream} into {args.out}"
    else:
        # Loaded up front so a bad fixture is reported before anything listens.
        app = ReplayBackend(args.fixtures, match=args.match, speed=args.speed)
        what = f"replaying {len(app.exchanges)} fixtures from {args.fixtures}"
    with ServerThread(app, host=args.host, port=args.port, log_config=None) as url:
        logger.info("%s; point your client at %s/v1 (Ctrl+C stops)", what, url)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()
    return 0


def _with_local_model(settings: Settings, resources: contextlib.ExitStack) -> Settings:
    """Settings on the bundled local model when no backend is configured and it may run.

    It runs for as long as ``resources`` is open. Its absence is not an error: the
    server still starts, and every answer is an error event saying what to set.
    """
    if settings.llm_base_url is not None or settings.workflows_path is not None:
        return settings
    if settings.local_model == "off":
        return settings
    from chatkit_server.llm.local_model import (
        DEFAULT_CTX_SIZE,
        LocalModelServer,
        LocalModelUnavailable,
    )

    try:
        local = LocalModelServer(log_path=settings.data_dir / LOCAL_MODEL_LOG)
    except LocalModelUnavailable as exc:
        logger.warning("no model backend is configured, and %s", exc)
        return settings
    logger.info(
        "no model backend is configured (CHATKIT_LLM_BASE_URL), so chatkit-server runs its "
        "bundled local model: SmolLM2-135M, a tiny demo model whose answers are fluent but "
        "not meaningful. Set CHATKIT_LLM_BASE_URL to your own OpenAI-compatible server to "
        "use a real model, or CHATKIT_LOCAL_MODEL=off to not start this one."
    )
    resources.enter_context(local)
    return settings.with_changes(
        llm_base_url=local.base_url,
        llm_model=local.model_name,
        llm_context_tokens=settings.llm_context_tokens or DEFAULT_CTX_SIZE,
    )


class _Terminated(BaseException):
    """SIGTERM arrived; raised so that every ``with`` block unwinds, as for Ctrl+C."""


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    # By default SIGTERM ends the process on the spot (uvicorn, too, re-raises it once
    # it has shut down), which would leave a local llama-server running.
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_terminated(signum: int, frame: FrameType | None) -> None:
        raise _Terminated

    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    raise SystemExit(main())
