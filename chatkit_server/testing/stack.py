"""A whole chatkit-server on loopback, pointed at a given model backend, with a client.

Used by the pytest plugin (replay tests) and by the fixture recording script:

.. code-block:: python

    async with run_chatkit(backend_url, tmp_path, llm_api="responses") as stack:
        turn = await stack.client.create_thread("Hello")

:func:`replay_factory` is the body of the plugin's ``chatkit_replay`` fixture. It lives here,
not in the plugin module, so that loading the plugin (in every pytest session of a project
that installs this package) imports none of the server.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.applications import Starlette

from chatkit_server.app import create_app
from chatkit_server.settings import Settings
from chatkit_server.testing.client import ChatKitClient
from chatkit_server.testing.live import serve_app
from chatkit_server.testing.replay import MatchMode, ReplayBackend, Speed
from chatkit_server.workflows.file import load_workflow_file

__all__ = [
    "ChatKitStack",
    "ReplayFactory",
    "ReplayStack",
    "replay_factory",
    "run_chatkit",
    "stack_settings",
]


@dataclass
class ChatKitStack:
    """A running chatkit-server and a browser-like client for it.

    Attributes:
        url: The server's base URL (``/chatkit`` is below it).
        app: The Starlette app (its state holds the store).
        settings: The settings it runs on.
        client: A :class:`ChatKitClient` connected to it.
    """

    url: str
    app: Starlette
    settings: Settings
    client: ChatKitClient


def stack_settings(backend_url: str, data_dir: Path, **changes: Any) -> Settings:
    """Settings for a test server: temporary SQLite in ``data_dir``, no titles, no retries.

    Titles are off because a title request would take an answer meant for the chat
    (turn them on with ``titles=True`` when the fixtures hold title exchanges too).
    """
    defaults: dict[str, Any] = {
        "data_dir": data_dir,
        "llm_base_url": backend_url,
        "llm_read_timeout": 10.0,
        "llm_connect_timeout": 5.0,
        "llm_max_retries": 0,
        "local_model": "off",
        "titles": False,
    }
    return Settings(**{**defaults, **changes})


def _workflows_settings(data_dir: Path, text: str) -> dict[str, Any]:
    # Written to a file as an operator would: the file's own loader and errors apply.
    path = data_dir / "workflows.toml"
    data_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return {"workflows_path": path, "workflows_file": load_workflow_file(path, {})}


@asynccontextmanager
async def run_chatkit(
    backend_url: str, data_dir: Path, *, workflows: str | None = None, **changes: Any
) -> AsyncIterator[ChatKitStack]:
    """Run chatkit-server on real uvicorn (loopback, free port) against ``backend_url``.

    Args:
        backend_url: The model backend's base URL, ``.../v1``.
        data_dir: Directory for the SQLite database.
        workflows: Text of a workflows file; ``{backend_url}`` in it is replaced by
            ``backend_url`` (the port is only known once the backend runs).
        **changes: Any :class:`Settings` field, e.g. ``llm_api="responses"``.
    """
    if workflows is not None:
        changes |= _workflows_settings(data_dir, workflows.replace("{backend_url}", backend_url))
    settings = stack_settings(backend_url, data_dir, **changes)
    app = create_app(settings, migrate=True)
    async with serve_app(app) as url, ChatKitClient(url) as client:
        yield ChatKitStack(url=url, app=app, settings=settings, client=client)


@dataclass
class ReplayStack(ChatKitStack):
    """A :class:`ChatKitStack` whose model backend replays fixtures.

    Attributes:
        replay: The replay backend (``received``, ``mismatches``, ``unused``).
        backend_url: Its base URL, ``.../v1``.
    """

    replay: ReplayBackend | None = None
    backend_url: str = ""


ReplayFactory = Callable[..., AbstractAsyncContextManager[ReplayStack]]


def replay_factory(tmp_path: Path) -> ReplayFactory:
    """The ``chatkit_replay`` fixture's factory; each stack gets a database under ``tmp_path``.

    See :mod:`chatkit_server.testing.pytest_plugin` for how a test uses it.
    """
    started: list[ReplayBackend] = []

    @asynccontextmanager
    async def start(
        fixtures: Path | str,
        *,
        match: MatchMode = "sequence",
        speed: Speed = "fast",
        check: bool = True,
        **settings: Any,
    ) -> AsyncIterator[ReplayStack]:
        replay = ReplayBackend(fixtures, match=match, speed=speed)
        if "llm_model" not in settings:
            # The recorded requests name a model; the replayed ones must name the same.
            models = [
                e.request_body.get("model")
                for e in replay.exchanges
                if isinstance(e.request_body, dict)
            ]
            settings["llm_model"] = next((m for m in models if m), "model")
        # One database per stack: a test may start several.
        started.append(replay)
        data_dir = tmp_path / f"chatkit-{len(started)}"
        async with (
            serve_app(replay.app) as backend,
            run_chatkit(f"{backend}/v1", data_dir, **settings) as stack,
        ):
            yield ReplayStack(
                url=stack.url,
                app=stack.app,
                settings=stack.settings,
                client=stack.client,
                replay=replay,
                backend_url=f"{backend}/v1",
            )
        if check:
            replay.assert_all_used()

    return start
