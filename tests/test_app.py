"""The app's lifespan: resources, and tracing that stays off unless enabled."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
from agents.tracing import Span, Trace, TracingProcessor, add_trace_processor

from chatkit_server.app import _quiet_stop_leftovers, create_app
from chatkit_server.settings import Settings
from tests.live import LOCAL, Live
from tests.store.test_database import cancelled_connect_reports


class _Recorder(TracingProcessor):
    def __init__(self) -> None:
        self.traces: list[str] = []

    def on_trace_start(self, trace: Trace) -> None:
        self.traces.append(trace.name)

    def on_trace_end(self, trace: Trace) -> None:
        pass

    def on_span_start(self, span: Span[Any]) -> None:
        pass

    def on_span_end(self, span: Span[Any]) -> None:
        pass

    def shutdown(self) -> None:
        pass

    def force_flush(self) -> None:
        pass


async def test_conversations_are_not_traced_by_default(live: Live) -> None:
    recorder = _Recorder()
    add_trace_processor(recorder)

    turn = await live.client.create_thread("private words")

    assert turn.assistant_messages
    assert recorder.traces == []


async def test_lifespan_owns_database_and_backends(live: Live) -> None:
    state = live.state
    assert state.settings is live.settings
    assert state.backends.get("default").configured
    assert await state.store.load_threads(10, None, "desc", LOCAL) is not None


@pytest.mark.postgres
async def test_the_pool_size_setting_sizes_the_database_pool(
    postgres_database_url: str, tmp_path: Path
) -> None:
    settings = Settings(data_dir=tmp_path, database_url=postgres_database_url, database_pool_size=7)
    app = create_app(settings, migrate=True)
    async with app.router.lifespan_context(app):
        pool: Any = app.state.chatkit.database.sync_engine.pool
        assert pool.size() == 7


async def test_a_cancelled_postgresql_connect_is_not_reported_as_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="chatkit_server.app")
    passed_on: list[dict[str, Any]] = []
    quiet = _quiet_stop_leftovers(lambda _loop, context: passed_on.append(context))
    loop = asyncio.get_running_loop()

    reports = await cancelled_connect_reports(lambda context: quiet(loop, context))

    assert reports > 0
    assert passed_on == []
    assert "a cancelled PostgreSQL connect's TLS probe was collected" in caplog.text
