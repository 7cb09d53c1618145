"""Fixtures for tests that need the whole stack on a real uvicorn.

A loopback fake OpenAI-compatible backend, a chatkit-server app on a
temporary SQLite file pointed at it, and a protocol client. Registered from
the root conftest with ``pytest_plugins``.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette

from chatkit_server.app import create_app
from chatkit_server.cli import uvicorn_options
from chatkit_server.context import RequestContext
from chatkit_server.http.state import AppState
from chatkit_server.settings import Settings
from chatkit_server.store import SQLStore
from chatkit_server.store.migrate import upgrade
from chatkit_server.testing.client import ChatKitClient
from chatkit_server.testing.fake_backend import FakeBackend
from chatkit_server.testing.live import serve_app

LOCAL = RequestContext()


@dataclass
class FakeLLM:
    backend: FakeBackend
    url: str

    @property
    def v1(self) -> str:
        return self.url + "/v1"


@dataclass
class Live:
    """A running chatkit-server and a client for it."""

    url: str
    app: Starlette
    settings: Settings
    client: ChatKitClient

    @property
    def state(self) -> AppState:
        state: AppState = self.app.state.chatkit
        return state

    @property
    def store(self) -> SQLStore:
        return self.state.store


@asynccontextmanager
async def serve_fake_llm() -> AsyncIterator[FakeLLM]:
    """A loopback fake backend on a real uvicorn, for as long as the block runs."""
    backend = FakeBackend()
    async with serve_app(backend.app) as url:
        yield FakeLLM(backend=backend, url=url)


@pytest.fixture
async def fake_llm() -> AsyncIterator[FakeLLM]:
    async with serve_fake_llm() as served:
        yield served


@pytest.fixture(scope="session")
def migrated_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An SQLite file with every migration applied, made once per test process.

    A live server starts on a copy: migrating a new file takes about as long
    as the rest of a server's start. The migrations themselves are tested
    from an empty database (tests/store/test_migrations.py, tests/test_cli.py).
    """
    path = tmp_path_factory.mktemp("migrated") / "chatkit.db"
    upgrade(f"sqlite+aiosqlite:///{path.as_posix()}")
    return path


def settings_for_live(directory: Path, fake_llm: FakeLLM, migrated_sqlite: Path) -> Settings:
    """The settings of a test server: a copy of the migrated SQLite file in ``directory``."""
    data_dir = directory / "data"
    data_dir.mkdir()
    shutil.copyfile(migrated_sqlite, data_dir / "chatkit.db")
    return Settings(
        data_dir=data_dir,
        llm_base_url=fake_llm.v1,
        llm_model="fake-model",
        llm_read_timeout=2.0,
        llm_connect_timeout=2.0,
        max_body_bytes=64 * 1024,
        # Title requests would take scripted replies meant for answers; the
        # title tests turn them on.
        titles=False,
    )


@pytest.fixture
def live_settings(tmp_path: Path, fake_llm: FakeLLM, migrated_sqlite: Path) -> Settings:
    return settings_for_live(tmp_path, fake_llm, migrated_sqlite)


LiveFactory = Callable[..., AbstractAsyncContextManager[Live]]


@asynccontextmanager
async def start_live_server(settings: Settings, **uvicorn_kwargs: Any) -> AsyncIterator[Live]:
    """A server on ``settings``, on a real uvicorn, for as long as the block runs."""
    app = create_app(settings, migrate=True)
    # As `serve` runs it (e.g. the trusted-proxy sign-in needs the real peer).
    options = {**uvicorn_options(settings), **uvicorn_kwargs}
    async with serve_app(app, **options) as url, ChatKitClient(url) as client:
        yield Live(url=url, app=app, settings=settings, client=client)


@pytest.fixture
def start_live() -> LiveFactory:
    """Start a server on given settings (for restarts and special settings)."""
    return start_live_server


@pytest.fixture
async def live(start_live: LiveFactory, live_settings: Settings) -> AsyncIterator[Live]:
    async with start_live(live_settings) as running:
        yield running
