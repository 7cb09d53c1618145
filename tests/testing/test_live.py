"""serve_app and ServerThread: real uvicorn servers on loopback."""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import cast

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from chatkit_server.testing import live
from chatkit_server.testing.live import (
    PortInUseError,
    ServerStartupError,
    ServerThread,
    serve_app,
)


def make_app(events: list[str] | None = None) -> Starlette:
    log = events if events is not None else []

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        log.append("startup")
        yield
        log.append("shutdown")

    async def hello(request: Request) -> Response:
        return PlainTextResponse("hello")

    async def forever(request: Request) -> Response:
        async def body() -> AsyncIterator[bytes]:
            while True:
                yield b"tick\n"
                await asyncio.sleep(0.05)

        return StreamingResponse(body())

    return Starlette(routes=[Route("/hello", hello), Route("/forever", forever)], lifespan=lifespan)


@pytest.fixture
def listening_port() -> Iterator[int]:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        yield sock.getsockname()[1]


async def test_serve_app_yields_a_working_url_and_runs_the_lifespan() -> None:
    events: list[str] = []
    async with serve_app(make_app(events)) as url:
        assert url.startswith("http://127.0.0.1:")
        assert int(url.rsplit(":", 1)[1]) > 0
        assert events == ["startup"]
        async with httpx.AsyncClient() as client:
            response = await client.get(f"{url}/hello")
        assert response.text == "hello"
    assert events == ["startup", "shutdown"]

    async with httpx.AsyncClient() as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(f"{url}/hello")


async def test_serve_app_on_a_fixed_port_and_port_reuse() -> None:
    async with serve_app(make_app()) as url:
        port = int(url.rsplit(":", 1)[1])
    async with serve_app(make_app(), port=port) as again:
        assert again == url


async def test_port_in_use_is_a_clear_error(listening_port: int) -> None:
    with pytest.raises(PortInUseError) as caught:
        async with serve_app(make_app(), port=listening_port):
            pytest.fail("should not start")
    assert str(caught.value) == f"port {listening_port} on 127.0.0.1 is already in use"


async def test_port_of_a_running_server_is_in_use() -> None:
    async with serve_app(make_app()) as url:
        port = int(url.rsplit(":", 1)[1])
        with pytest.raises(PortInUseError, match=f"port {port} on 127.0.0.1"):
            async with serve_app(make_app(), port=port):
                pytest.fail("should not start")


async def test_lifespan_failure_raises_with_the_cause() -> None:
    @asynccontextmanager
    async def broken(app: Starlette) -> AsyncIterator[None]:
        raise RuntimeError("database unreachable")
        yield

    # The failure is raised as soon as it happens, not when the startup timeout runs out:
    # a guard shorter than that timeout fails a server that waits for it.
    with (
        anyio.fail_after(30),
        pytest.raises(ServerStartupError, match="startup failed") as caught,
    ):
        async with serve_app(Starlette(lifespan=broken), startup_timeout=600):
            pytest.fail("should not start")
    assert isinstance(caught.value.__cause__, RuntimeError)
    assert str(caught.value.__cause__) == "database unreachable"


async def test_hanging_startup_times_out() -> None:
    @asynccontextmanager
    async def hangs(app: Starlette) -> AsyncIterator[None]:
        await asyncio.Event().wait()
        yield

    with pytest.raises(ServerStartupError, match="did not start within 0.2 s"):
        async with serve_app(Starlette(lifespan=hangs), startup_timeout=0.2):
            pytest.fail("should not start")


async def test_signal_handlers_are_left_alone() -> None:
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    async with serve_app(make_app()):
        assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


async def test_shutdown_with_an_endless_stream_is_bounded() -> None:
    events: list[str] = []
    # A hang guard, not a speed check: an unbounded shutdown never returns.
    with anyio.fail_after(30):
        async with httpx.AsyncClient() as client:
            async with serve_app(make_app(events), shutdown_timeout=0.3) as url:
                request = client.build_request("GET", f"{url}/forever")
                response = await client.send(request, stream=True)
                # Kept referenced: a dropped generator is finalized at once and closes the
                # connection, which would let the graceful shutdown finish early.
                chunks = cast(AsyncGenerator[bytes, None], response.aiter_raw())
                assert await anext(chunks) == b"tick\n"
                exit_started = time.monotonic()
            # Left serve_app with the response still streaming: graceful shutdown cannot
            # finish, so open requests are cancelled after shutdown_timeout.
            elapsed = time.monotonic() - exit_started
            await chunks.aclose()
            await response.aclose()
    # The grace period was given in full (a lower bound, safe under load).
    assert elapsed >= 0.3
    assert events == ["startup", "shutdown"]


def test_server_thread_from_sync_code() -> None:
    events: list[str] = []
    with ServerThread(make_app(events)) as url:
        assert httpx.get(f"{url}/hello").text == "hello"
        assert events == ["startup"]
    assert events == ["startup", "shutdown"]
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/hello")


def test_server_thread_start_stop_and_base_url() -> None:
    server = ServerThread(make_app())
    with pytest.raises(RuntimeError, match="not running"):
        _ = server.base_url
    url = server.start()
    try:
        assert server.base_url == url
        with pytest.raises(RuntimeError, match="only once"):
            server.start()
    finally:
        server.stop()
    server.stop()


def test_server_thread_port_in_use(listening_port: int) -> None:
    with (
        pytest.raises(PortInUseError, match=f"port {listening_port} on 127.0.0.1 is already"),
        ServerThread(make_app(), port=listening_port),
    ):
        pytest.fail("should not start")


def test_server_thread_lifespan_failure() -> None:
    @asynccontextmanager
    async def broken(app: Starlette) -> AsyncIterator[None]:
        raise RuntimeError("nope")
        yield

    with pytest.raises(ServerStartupError), ServerThread(Starlette(lifespan=broken)):
        pytest.fail("should not start")


def test_the_listening_socket_says_tcp_so_asyncio_turns_nagle_off() -> None:
    # asyncio sets TCP_NODELAY on accepted connections only when the listening
    # socket's proto is IPPROTO_TCP; without it, keep-alive requests stall
    # ~40 ms on delayed ACKs.
    sock = live._bind("127.0.0.1", 0)  # noqa: SLF001
    try:
        assert sock.proto == socket.IPPROTO_TCP
    finally:
        sock.close()
