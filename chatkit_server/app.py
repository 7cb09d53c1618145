"""The Starlette application: routes, middleware and the lifespan that owns resources."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import agents
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import Route

from chatkit_server import compat
from chatkit_server.files import FileStorage, LinkSigner, LocalFileStorage
from chatkit_server.files.database import DatabaseFileStorage
from chatkit_server.files.sweep import sweep_attachments
from chatkit_server.http.auth import Authenticator
from chatkit_server.http.chatkit import chatkit_endpoint
from chatkit_server.http.console import console_routes
from chatkit_server.http.errors import http_exception_response, internal_error_response
from chatkit_server.http.health import healthz
from chatkit_server.http.idle import OpenStreams
from chatkit_server.http.rest import rest_routes
from chatkit_server.http.state import AppState
from chatkit_server.http.uploads import upload_routes
from chatkit_server.http.workflows import list_workflows
from chatkit_server.llm.backends import BackendRegistry
from chatkit_server.llm.local_model import no_backend_message
from chatkit_server.protocol.server import ChatKitApp
from chatkit_server.settings import Settings
from chatkit_server.store import Database, SQLStore, UsageStore, upgrade_async
from chatkit_server.store.database import is_cancelled_connect_leftover
from chatkit_server.store.gate import RequestGate
from chatkit_server.store.keys import server_key
from chatkit_server.store.sessions import SessionStore, secret_key
from chatkit_server.store.upkeep import run_upkeep
from chatkit_server.workflows.registry import WorkflowRegistry

__all__ = ["CORS_ALLOW_HEADERS", "CORS_ALLOW_METHODS", "create_app"]

logger = logging.getLogger(__name__)

# The ChatKit web component sends chatkit-frame-instance-id on every request,
# so a cross-origin preflight that does not allow it fails in the browser.
CORS_ALLOW_HEADERS = ["authorization", "content-type", "chatkit-frame-instance-id"]
# PUT: the two-phase upload of raw bytes.
CORS_ALLOW_METHODS = ["GET", "POST", "PUT", "DELETE", "OPTIONS"]


_LoopHandler = Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object]


def _quiet_stop_leftovers(previous: _LoopHandler | None) -> _LoopHandler:
    """A loop exception handler that does not report what a stopped answer leaves behind.

    ChatKit's ``stream_agent_response`` reads the run and the tool events in
    a task each; when the user stops an answer, the fetch of the run's next
    event is left behind and ends with ``StopAsyncIteration`` once the run is
    cancelled, and the wait for the next tool event stays pending until it
    is collected (:func:`chatkit_server.compat.is_stopped_merge_leftover`).
    On PostgreSQL, a stop that lands while a write opens a connection leaves
    asyncpg's TLS probe behind
    (:func:`chatkit_server.store.database.is_cancelled_connect_leftover`).
    asyncio would log each as an error. Everything else goes to the previous
    handler.
    """

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if isinstance(context.get("exception"), StopAsyncIteration) and str(
            context.get("message", "")
        ).startswith("Task exception was never retrieved"):
            logger.debug("a stopped answer's event fetch ended after the answer")
            return
        if compat.is_stopped_merge_leftover(context):
            logger.debug("a stopped answer's wait for agent events was collected")
            return
        if is_cancelled_connect_leftover(context):
            logger.debug("a cancelled PostgreSQL connect's TLS probe was collected")
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    return handle


def _file_storage(settings: Settings, database: Database) -> FileStorage:
    if settings.attachment_storage == "database":
        return DatabaseFileStorage(database)
    return LocalFileStorage(settings.attachments_dir)


def create_app(settings: Settings | None = None, *, migrate: bool = False) -> Starlette:
    """Build the chatkit-server ASGI app.

    Args:
        settings: Configuration; read from the environment when omitted.
        migrate: Upgrade the database schema to the newest revision on start.

    Returns:
        A Starlette app whose lifespan opens the database and the backend
        clients on start-up and closes them on shutdown.
    """
    settings = settings or Settings.from_env()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # Tracing would upload chat content to OpenAI (and fail with 401
        # without an OpenAI key): only on when the operator asks for it.
        agents.set_tracing_disabled(not settings.tracing)
        url = settings.resolved_database_url
        if migrate:
            await upgrade_async(url)
        database = Database.connect(url, pool_size=settings.database_pool_size)
        backends = BackendRegistry.from_settings(settings)
        loop = asyncio.get_running_loop()
        previous_handler = loop.get_exception_handler()
        loop.set_exception_handler(_quiet_stop_leftovers(previous_handler))
        streams = OpenStreams()
        try:
            workflows = WorkflowRegistry.from_settings(settings, backends)
            files = _file_storage(settings, database)
            # No secret to configure: made once, kept in the database, the
            # same for every worker process and replica.
            signer = LinkSigner(await server_key(database, "links"))
            store = SQLStore(database, files=files, signer=signer)
            usage = UsageStore(database)
            gate = RequestGate(database)
            sessions = (
                SessionStore(database, key=secret_key(settings.admin_key))
                if settings.admin_key is not None
                else None
            )
            server = ChatKitApp(
                store=store, usage=usage, workflows=workflows, settings=settings, gate=gate
            )
            auth = Authenticator(settings, sessions)
            app.state.chatkit = AppState(
                settings=settings,
                database=database,
                store=store,
                backends=backends,
                server=server,
                auth=auth,
                gate=gate,
                sessions=sessions,
                files=files,
                signer=signer,
                streams=streams,
            )
            upkeep = asyncio.create_task(
                run_upkeep(
                    gate,
                    sessions,
                    functools.partial(
                        sweep_attachments, database, files, grace=settings.upload_grace
                    ),
                ),
                name="chatkit-upkeep",
            )
            if auth.enabled:
                logger.info("sign-in required on /chatkit: %s", ", ".join(auth.modes))
            else:
                logger.info(
                    "sign-in is off: everyone who can reach this server is one user "
                    "(set CHATKIT_ADMIN_KEY, CHATKIT_JWT_SECRET or CHATKIT_TRUSTED_USER_HEADER)"
                )
            if not any(workflow.backend.configured for workflow in workflows):
                logger.warning(
                    "%s Until then every answer is an error.", no_backend_message(settings)
                )
            logger.info("chatkit-server ready (database: %s)", database.describe())
            try:
                yield
            finally:
                upkeep.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await upkeep
        finally:
            streams.close()
            await backends.aclose()
            await database.dispose()
            loop.set_exception_handler(previous_handler)

    middleware = []
    if settings.cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(settings.cors_origins),
                allow_methods=CORS_ALLOW_METHODS,
                allow_headers=CORS_ALLOW_HEADERS,
                max_age=600,
            )
        )
    routes = [
        Route("/chatkit", chatkit_endpoint, methods=["POST"]),
        Route("/chatkit/workflows", list_workflows, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        *upload_routes(),
        *rest_routes(),
        *(console_routes() if settings.console else []),
    ]
    return Starlette(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        # Every error body is JSON, Starlette's own 404/405 and 500 included.
        exception_handlers={
            HTTPException: http_exception_response,
            Exception: internal_error_response,
        },
    )
