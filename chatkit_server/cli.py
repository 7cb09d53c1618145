"""``chatkit-server``: serve the ChatKit backend, or manage its database."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from . import __version__
from .errors import ChatKitServerError
from .settings import ENVIRONMENT_HELP, Settings, SettingsError

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "main"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000

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

    serve = commands.add_parser(
        "serve",
        help="run the server (applies database migrations first)",
        description="Run the HTTP server. The database schema is upgraded before it starts.",
        epilog=ENVIRONMENT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument(
        "--host", default=DEFAULT_HOST, help=f"address to bind (default {DEFAULT_HOST})"
    )
    serve.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port to bind (default {DEFAULT_PORT})"
    )
    serve.add_argument(
        "--no-migrate",
        action="store_true",
        help="do not upgrade the database schema on start",
    )

    migrate = commands.add_parser(
        "migrate",
        help="upgrade the database schema and exit",
        description="Upgrade (or, given a revision, move) the database schema, then exit.",
        epilog=ENVIRONMENT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    migrate.add_argument(
        "--downgrade",
        metavar="REVISION",
        help="move the schema down to REVISION instead ('base' removes every table)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"chatkit-server: invalid setting {exc}", file=sys.stderr)
        return 2
    _configure_logging(settings.log_level)
    try:
        if args.command == "migrate":
            return _migrate(settings, downgrade_to=args.downgrade)
        return _serve(settings, host=args.host, port=args.port, migrate=not args.no_migrate)
    except ChatKitServerError as exc:
        print(f"chatkit-server: {exc}", file=sys.stderr)
        return 1
    except NotImplementedError as exc:
        print(f"chatkit-server: {exc}", file=sys.stderr)
        return 2


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if level != "debug":
        # Per-request and per-step chatter of libraries; our own lines say
        # what happened (e.g. "upgraded empty -> 0001").
        for name in ("alembic", "chatkit", "openai", "httpx"):
            logging.getLogger(name).setLevel(logging.WARNING)


def _migrate(settings: Settings, *, downgrade_to: str | None) -> int:
    from .store import current, downgrade, upgrade

    url = settings.resolved_database_url
    before = current(url)
    if downgrade_to is not None:
        downgrade(url, downgrade_to)
    else:
        upgrade(url)
    logger.info("database schema: %s -> %s", before or "empty", current(url) or "empty")
    return 0


def _serve(settings: Settings, *, host: str, port: int, migrate: bool) -> int:
    import uvicorn

    from .app import create_app
    from .store import upgrade

    if migrate:
        logger.info("upgrading the database schema")
        upgrade(settings.resolved_database_url)
    app = create_app(settings)
    logger.info("serving ChatKit on http://%s:%d/chatkit", host, port)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        log_level=settings.log_level,
        # Open answer streams get this long to finish on shutdown; then they
        # are cancelled, which persists their partial answers.
        timeout_graceful_shutdown=int(settings.shutdown_grace),
    )
    server = uvicorn.Server(config)
    server.run()
    # uvicorn reports a failed start (port in use) only by not having started.
    return 0 if server.started else 1


if __name__ == "__main__":
    raise SystemExit(main())
