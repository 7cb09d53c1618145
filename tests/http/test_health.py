"""``GET /healthz`` over real HTTP: it says 503 while the server cannot write."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from sqlalchemy import Connection

from chatkit_server.settings import Settings
from chatkit_server.store import database as database_module
from chatkit_server.testing.fake_backend import Reply
from tests.live import FakeLLM, Live, LiveFactory


async def _health(live: Live) -> tuple[int, dict[str, str]]:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{live.url}/healthz")
    return response.status_code, response.json()


async def test_ok_with_room_on_the_disk(live: Live) -> None:
    assert await _health(live) == (200, {"status": "ok"})


async def test_unavailable_while_the_data_disk_is_below_the_floor(
    start_live: LiveFactory, live_settings: Settings
) -> None:
    # More free space than any disk has: the floor is not met.
    async with start_live(live_settings.with_changes(min_free_bytes=2**62)) as live:
        assert await _health(live) == (503, {"status": "unavailable", "database": "disk full"})
    async with start_live(live_settings.with_changes(min_free_bytes=0)) as live:
        assert (await _health(live))[0] == 200


def _pages(connection: Connection) -> int:
    return int(connection.exec_driver_sql("PRAGMA page_count").scalar_one())


def _cap_pages(pages: int) -> object:
    def cap(connection: Connection) -> None:
        # SQLite's own limit on the file's size: past it every write that
        # needs a new page fails with SQLITE_FULL, as on a full disk.
        connection.exec_driver_sql(f"PRAGMA max_page_count = {pages}")

    return cap


async def test_a_write_that_fails_for_lack_of_space_makes_it_unavailable_for_a_while(
    live: Live, fake_llm: FakeLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = live.state.database
    pages = await database.run_write(_pages)
    await database.run_write(_cap_pages(pages))  # type: ignore[arg-type]

    fake_llm.backend.script(Reply.text("Hello"))
    turn = await live.client.create_thread("x" * 50_000)
    # The user is told, and the server says it cannot take writes.
    assert turn.errors
    assert database.disk_full
    assert await _health(live) == (503, {"status": "unavailable", "database": "disk full"})

    # Space is back; the mark fades by itself, with or without writes (a
    # balancer may have taken the server out of rotation).
    await database.run_write(_cap_pages(1_073_741_823))  # type: ignore[arg-type]
    monkeypatch.setattr(database_module, "DISK_FULL_HOLD_SECONDS", 0.2)
    await asyncio.sleep(0.3)
    assert await _health(live) == (200, {"status": "ok"})
    fake_llm.backend.script(Reply.text("Hello"))
    turn = await live.client.create_thread("x" * 50_000)
    assert turn.errors == []
    assert turn.assistant_text == "Hello"


class _DiskFull(Exception):
    sqlstate = "53100"


def test_postgres_disk_full_is_recognised() -> None:
    # asyncpg's DiskFullError carries SQLSTATE 53100.
    assert database_module._is_disk_full(_DiskFull("could not extend file"))
    assert database_module._is_disk_full(OSError(28, "No space left on device"))
    assert not database_module._is_disk_full(OSError(13, "Permission denied"))
