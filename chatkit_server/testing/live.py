"""Run an ASGI app on a real uvicorn bound to loopback, for tests and benchmarks.

``httpx.ASGITransport`` buffers whole bodies, so it cannot show SSE timing or client
disconnects (design note 5.16). These helpers start a real ``uvicorn.Server`` on an
ephemeral port instead:

.. code-block:: python

    async with serve_app(app) as base_url:          # on the current event loop
        async with httpx.AsyncClient(base_url=base_url) as client:
            ...

    with ServerThread(app) as base_url:             # from synchronous code
        httpx.get(f"{base_url}/healthz")

Both bind the socket themselves (port 0 by default) so the real port is known before
the server starts and "port in use" is reported as :class:`PortInUseError` rather than
uvicorn's ``sys.exit``. The lifespan runs with ``lifespan="on"``: a failing startup
raises :class:`ServerStartupError` chained to the app's exception. uvicorn never
installs signal handlers here, because the test runner or benchmark owns them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import logging
import socket
import threading
from collections.abc import AsyncIterator, Callable, Generator
from types import TracebackType
from typing import Any

import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

from chatkit_server.errors import ChatKitServerError

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_LOG_LEVEL",
    "DEFAULT_SHUTDOWN_TIMEOUT",
    "DEFAULT_STARTUP_TIMEOUT",
    "PortInUseError",
    "ServerStartupError",
    "ServerThread",
    "serve_app",
]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_LOG_LEVEL = "warning"
DEFAULT_STARTUP_TIMEOUT = 10.0
DEFAULT_SHUTDOWN_TIMEOUT = 5.0
# After the graceful bound, connections are abandoned; this bounds the forced phase.
_FORCE_EXIT_TIMEOUT = 2.0
_STARTUP_POLL_INTERVAL = 0.005
_SHUTDOWN_POLL_INTERVAL = 0.005

_logger = logging.getLogger(__name__)


class ServerStartupError(ChatKitServerError):
    """The server did not start: lifespan failure, bind failure or startup timeout."""


class PortInUseError(ServerStartupError):
    """The requested port is already bound by another socket."""


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signals alone and stops as soon as it may.

    uvicorn's own loop notices ``should_exit`` on a 0.1 s tick and its
    shutdown sleeps another 0.1 s before it looks at open connections: about
    0.2 s per server, which a test suite that starts two servers per test pays
    hundreds of times. Here a stop request wakes the loop at once and the
    shutdown polls for open connections and requests every few milliseconds;
    what the shutdown does, and in which order, is uvicorn's.
    """

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._exit_requested = asyncio.Event()

    def request_exit(self) -> None:
        """Ask the server to shut down gracefully; it starts at once."""
        self.should_exit = True
        self._exit_requested.set()

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # uvicorn 0.54 swaps SIGINT/SIGTERM handlers when running on the main thread,
        # which would steal Ctrl+C from pytest and re-raise captured signals on exit.
        yield

    async def main_loop(self) -> None:
        counter = 0
        # on_tick still runs every 0.1 s: it keeps the Date header current and
        # applies limit_max_requests.
        while not await self.on_tick(counter):
            counter = (counter + 1) % 864000
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._exit_requested.wait(), 0.1)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()
        for sock in sockets or []:
            sock.close()
        state = self.server_state
        # Idle keep-alive connections close now; busy ones after their response.
        for connection in list(state.connections):
            connection.shutdown()
        try:
            async with asyncio.timeout(self.config.timeout_graceful_shutdown):
                # uvicorn's sets of connections and tasks give no signal when
                # they empty, so they are polled, as uvicorn itself does.
                while (state.connections or state.tasks) and not self.force_exit:  # noqa: ASYNC110
                    await asyncio.sleep(_SHUTDOWN_POLL_INTERVAL)
                for server in self.servers:
                    await server.wait_closed()
        except TimeoutError:
            _logger.error("cancelling %d request(s) still running at shutdown", len(state.tasks))
            for request in list(state.tasks):
                request.cancel(msg="graceful shutdown time exceeded")
        if not self.force_exit:
            await self.lifespan.shutdown()


def _bind(host: str, port: int, send_buffer: int | None = None) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP spelled out: asyncio turns Nagle's algorithm off on accepted
    # connections only for a socket that says so, and with it on a reused
    # connection's next request waits ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        # Same option uvicorn sets: lets a just-closed test server's port be reused,
        # while a port with a live listener still fails with EADDRINUSE.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if send_buffer is not None:
            # Accepted connections inherit it (and lose the kernel's autotuning).
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise PortInUseError(f"port {port} on {host} is already in use") from exc
        raise ServerStartupError(f"cannot bind {host}:{port}: {exc}") from exc
    return sock


def _base_url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class _LifespanWatch:
    """Wraps the app to keep what uvicorn's lifespan runner only logs."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.error: BaseException | None = None
        self.task: asyncio.Task[Any] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        # uvicorn runs the lifespan in a task it does not keep; a hung startup would
        # leave it pending after the server gave up.
        self.task = asyncio.current_task()
        try:
            await self.app(scope, receive, send)
        except BaseException as exc:
            self.error = exc
            raise

    async def cancel(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
            with contextlib.suppress(BaseException):
                await self.task


async def _run(server: uvicorn.Server, sock: socket.socket) -> None:
    try:
        await server.serve(sockets=[sock])
    except SystemExit as exc:
        # uvicorn reports startup failure with sys.exit(); inside a task that would
        # escape the event loop and end the whole test session.
        raise ServerStartupError(f"uvicorn exited during startup (code {exc.code})") from None


async def _stop(server: _Server, task: asyncio.Task[None], grace: float) -> None:
    server.request_exit()
    # uvicorn itself cancels open requests after timeout_graceful_shutdown and then runs
    # the lifespan shutdown; this outer bound only covers a shutdown that hangs anyway.
    done, _ = await asyncio.wait({task}, timeout=grace + _FORCE_EXIT_TIMEOUT)
    if not done:
        _logger.warning("uvicorn did not shut down within %s s; forcing exit", grace)
        server.force_exit = True
        for request_task in list(server.server_state.tasks):
            request_task.cancel()
        done, _ = await asyncio.wait({task}, timeout=_FORCE_EXIT_TIMEOUT)
    if not done:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return
    task.result()


@contextlib.asynccontextmanager
async def serve_app(
    app: ASGIApp,
    *,
    host: str = DEFAULT_HOST,
    port: int = 0,
    startup_timeout: float = DEFAULT_STARTUP_TIMEOUT,
    shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT,
    send_buffer: int | None = None,
    **uvicorn_kwargs: Any,
) -> AsyncIterator[str]:
    """Serve ``app`` with uvicorn on the running event loop and yield its base URL.

    Args:
        app: An ASGI 3 application. Its lifespan runs (``lifespan="on"``; pass
            ``lifespan="off"`` for a bare app that does not speak the protocol).
        host: Interface to bind; loopback by default.
        port: Port to bind; ``0`` picks a free one.
        startup_timeout: Seconds to wait for the lifespan startup before giving up.
        shutdown_timeout: Seconds of graceful shutdown (open responses may finish)
            before uvicorn cancels the remaining requests; the app's lifespan
            shutdown still runs afterwards.
        send_buffer: The kernel's send buffer per connection, in bytes
            (``None``: the kernel sizes it, up to megabytes). A small one makes
            a client that stops reading hold the server back after kilobytes,
            for tests of backpressure.
        **uvicorn_kwargs: Extra ``uvicorn.Config`` options. Defaults here:
            ``log_level="warning"``, ``access_log=False``, ``log_config=None`` (uvicorn
            does not reconfigure logging; records propagate to pytest's capture) and
            ``timeout_graceful_shutdown=shutdown_timeout``.

    Yields:
        The base URL, e.g. ``"http://127.0.0.1:54321"``.

    Raises:
        PortInUseError: ``port`` is already bound.
        ServerStartupError: The lifespan startup failed or did not finish in time.
    """
    options: dict[str, Any] = {"log_level": DEFAULT_LOG_LEVEL, "access_log": False}
    options.update(lifespan="on", log_config=None, timeout_graceful_shutdown=shutdown_timeout)
    options.update(uvicorn_kwargs)
    sock = _bind(host, port, send_buffer)
    try:
        watch = _LifespanWatch(app)
        # The socket is passed to serve(); host and port only label uvicorn's log lines.
        config = uvicorn.Config(watch, host=host, port=sock.getsockname()[1], **options)
        server = _Server(config)
        base_url = _base_url(sock)
        task = asyncio.create_task(_run(server, sock), name=f"uvicorn {base_url}")
        try:
            await _wait_started(server, task, startup_timeout, watch)
        except BaseException:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            await watch.cancel()
            raise
        try:
            yield base_url
        except BaseException:
            # The body's exception is the one worth seeing; shutdown trouble would mask it.
            with contextlib.suppress(Exception):
                await _stop(server, task, shutdown_timeout)
            raise
        await _stop(server, task, shutdown_timeout)
    finally:
        # uvicorn closes the socket on a normal shutdown, not when startup fails.
        sock.close()


async def _wait_started(
    server: uvicorn.Server,
    task: asyncio.Task[None],
    limit: float,
    watch: _LifespanWatch,
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not server.started:
        if task.done():
            cause = watch.error or task.exception()
            raise ServerStartupError("application startup failed") from cause
        if loop.time() >= deadline:
            raise ServerStartupError(f"server did not start within {limit} s")
        await asyncio.wait({task}, timeout=_STARTUP_POLL_INTERVAL)


class ServerThread:
    """Serve an ASGI app from a background thread with its own event loop.

    For synchronous callers (sync tests, benchmarks driving load from the main thread):

    .. code-block:: python

        with ServerThread(app) as base_url:
            httpx.get(f"{base_url}/v1/models")

    The app and everything it creates live on the thread's loop; touch its async objects
    only through HTTP. Errors from startup are raised by :meth:`start` (and so by
    ``with``); errors from shutdown are raised by :meth:`stop`.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        host: str = DEFAULT_HOST,
        port: int = 0,
        startup_timeout: float = DEFAULT_STARTUP_TIMEOUT,
        shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT,
        loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
        **uvicorn_kwargs: Any,
    ) -> None:
        """Prepare the server; nothing runs until :meth:`start` or ``with``.

        Args:
            app: An ASGI 3 application.
            host: Interface to bind; loopback by default.
            port: Port to bind; ``0`` picks a free one.
            startup_timeout: Seconds to wait for the server to accept connections.
            shutdown_timeout: Seconds of graceful shutdown, as in :func:`serve_app`.
            loop_factory: Event loop for the thread, e.g. ``uvloop.new_event_loop`` for
                benchmarks; the default asyncio loop otherwise.
            **uvicorn_kwargs: Extra ``uvicorn.Config`` options, as in :func:`serve_app`.
        """
        self._app = app
        self._host = host
        self._port = port
        self._startup_timeout = startup_timeout
        self._shutdown_timeout = shutdown_timeout
        self._loop_factory = loop_factory
        self._uvicorn_kwargs = uvicorn_kwargs
        self._ready: concurrent.futures.Future[str] = concurrent.futures.Future()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._main_task: asyncio.Task[None] | None = None
        self._stop_event: asyncio.Event | None = None
        self._error: BaseException | None = None

    @property
    def base_url(self) -> str:
        """The server's base URL; only valid between :meth:`start` and :meth:`stop`."""
        if not self._ready.done() or self._ready.exception() is not None:
            raise RuntimeError("the server is not running")
        return self._ready.result()

    def start(self) -> str:
        """Start the thread and block until the server accepts connections.

        Returns:
            The base URL, e.g. ``"http://127.0.0.1:54321"``.

        Raises:
            PortInUseError: The port is already bound.
            ServerStartupError: Startup failed or took longer than ``startup_timeout``.
        """
        if self._thread is not None:
            raise RuntimeError("a ServerThread can be started only once")
        self._thread = threading.Thread(target=self._thread_main, name="ServerThread", daemon=True)
        self._thread.start()
        try:
            # The thread has its own startup bound; this one only guards a wedged loop.
            return self._ready.result(timeout=self._startup_timeout + _FORCE_EXIT_TIMEOUT)
        except concurrent.futures.TimeoutError:
            self.stop()
            raise ServerStartupError(
                f"server did not start within {self._startup_timeout} s"
            ) from None
        except BaseException:
            self._thread.join()
            raise

    def stop(self) -> None:
        """Shut the server down and join the thread; a no-op when not running.

        Raises:
            BaseException: Whatever the server raised while shutting down.
        """
        thread, loop = self._thread, self._loop
        if thread is None:
            return
        if thread.is_alive() and loop is not None:
            if self._stop_event is not None:
                loop.call_soon_threadsafe(self._stop_event.set)
            elif self._main_task is not None:
                loop.call_soon_threadsafe(self._main_task.cancel)
        thread.join(timeout=self._shutdown_timeout + _FORCE_EXIT_TIMEOUT + 1.0)
        if thread.is_alive():
            raise RuntimeError("the server thread did not stop")
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def __enter__(self) -> str:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _thread_main(self) -> None:
        # Every exception must be caught here: an unhandled one in a thread becomes a
        # pytest warning (an error under filterwarnings=error) far from its cause.
        try:
            with asyncio.Runner(loop_factory=self._loop_factory) as runner:
                runner.run(self._serve())
        except BaseException as exc:
            if not self._ready.done():
                self._ready.set_exception(exc)
            else:
                self._error = exc

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._main_task = asyncio.current_task()
        async with serve_app(
            self._app,
            host=self._host,
            port=self._port,
            startup_timeout=self._startup_timeout,
            shutdown_timeout=self._shutdown_timeout,
            **self._uvicorn_kwargs,
        ) as base_url:
            self._stop_event = asyncio.Event()
            self._ready.set_result(base_url)
            await self._stop_event.wait()
