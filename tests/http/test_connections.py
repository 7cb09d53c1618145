"""Connection limits over real sockets: header and body deadlines, keep-alive, the cap."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from chatkit_server.http.connections import HeaderDeadlineProtocol, default_connection_limit
from chatkit_server.settings import Settings
from tests.live import Live, LiveFactory


async def _connect(live: Live) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = live.url.removeprefix("http://").split(":")
    return await asyncio.open_connection(host, int(port))


async def _closed_within(reader: asyncio.StreamReader, seconds: float) -> bytes:
    """Everything the server sends until it closes the connection."""
    return await asyncio.wait_for(reader.read(), seconds)


async def _cut_off_within(reader: asyncio.StreamReader, seconds: float) -> bytes:
    """As :func:`_closed_within`, for a client that may still be writing when it is cut off.

    A byte that reaches a socket the server has closed is answered with a
    reset, which then ends the read instead of the end of the stream.
    """
    try:
        return await _closed_within(reader, seconds)
    except ConnectionResetError:
        return b""


@pytest.fixture
def quick(live_settings: Settings) -> Settings:
    return live_settings.with_changes(header_timeout=0.5, body_timeout=0.5, keepalive_timeout=0.5)


async def test_a_connection_that_sends_nothing_is_closed(
    start_live: LiveFactory, quick: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="chatkit_server")
    async with start_live(quick) as live:
        reader, writer = await _connect(live)
        assert await _closed_within(reader, 10) == b""
        writer.close()
    assert any("CHATKIT_HEADER_TIMEOUT" in record.getMessage() for record in caplog.records)


async def test_headers_that_trickle_in_are_cut_off(
    start_live: LiveFactory, quick: Settings
) -> None:
    async with start_live(quick) as live:
        reader, writer = await _connect(live)
        request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200
        closed = asyncio.ensure_future(_cut_off_within(reader, 10))
        # A byte every 50 ms: the connection is busy all along, yet the
        # headers are not complete in time.
        for byte in request:
            if closed.done():
                break
            writer.write(bytes([byte]))
            await asyncio.sleep(0.05)
        assert await closed == b""
        writer.close()


async def test_requests_in_time_are_served_and_an_idle_keep_alive_is_closed(
    start_live: LiveFactory, quick: Settings
) -> None:
    async with start_live(quick) as live:
        reader, writer = await _connect(live)
        for _ in range(2):
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            status = await reader.readline()
            assert status.startswith(b"HTTP/1.1 200")
            length = 0
            while (line := await reader.readline()) != b"\r\n":
                name, _, value = line.decode().partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            assert json.loads(await reader.readexactly(length))["status"] == "ok"
        # Then idle: uvicorn's keep-alive timeout closes it.
        assert await _closed_within(reader, 10) == b""
        writer.close()


async def test_a_body_shorter_than_its_content_length_gets_408(
    start_live: LiveFactory, quick: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="chatkit_server")
    async with start_live(quick) as live:
        reader, writer = await _connect(live)
        writer.write(
            b"POST /chatkit HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n" + b'{"type": "th'
        )
        answer = await _closed_within(reader, 10)
        writer.close()
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408")
        assert b"connection: close" in head.lower()
        assert json.loads(body)["error"]["code"] == "request_timeout"
        # Nothing was created, and the server answers others as before.
        assert (await live.client.call("threads.list"))["data"] == []
    assert any("CHATKIT_BODY_TIMEOUT" in record.getMessage() for record in caplog.records)


async def test_past_the_connection_cap_requests_get_503(
    start_live: LiveFactory, live_settings: Settings
) -> None:
    settings = live_settings.with_changes(max_connections=3)
    async with start_live(settings) as live:
        held = [await _connect(live) for _ in range(3)]
        reader, writer = await _connect(live)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await reader.readline()).startswith(b"HTTP/1.1 503")
        writer.close()
        for _reader, held_writer in held:
            held_writer.close()
        # Once they are gone, requests are served again.
        for _ in range(100):
            response = await live.client.post_raw(
                json.dumps({"type": "threads.list", "params": {}})
            )
            if response.status_code == 200:
                break
            await asyncio.sleep(0.05)
        assert response.status_code == 200


def test_the_default_cap_leaves_descriptors_for_each_streams_backend() -> None:
    import resource

    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = default_connection_limit()
    assert limit >= 16
    if soft != resource.RLIM_INFINITY:
        assert 2 * limit <= soft


def test_the_deadline_is_set_per_process() -> None:
    before = HeaderDeadlineProtocol.header_timeout
    try:
        HeaderDeadlineProtocol.configure(3.5)
        assert HeaderDeadlineProtocol.header_timeout == 3.5
    finally:
        HeaderDeadlineProtocol.configure(before)
