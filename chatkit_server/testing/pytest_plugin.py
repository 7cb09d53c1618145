"""pytest plugin of the record/replay kit (registered as the ``chatkit_server`` pytest11 entry).

Fixtures, all prefixed ``chatkit_``:

``chatkit_replay``
    A factory: ``async with chatkit_replay(fixture_dir, llm_api=...) as stack`` serves a
    :class:`~chatkit_server.testing.replay.ReplayBackend` from ``fixture_dir`` and a
    chatkit-server on real uvicorn (temporary SQLite) pointed at it, and yields a
    :class:`ReplayStack` (``stack.client`` speaks like the ChatKit browser client,
    ``stack.replay.received`` holds what the model backend was sent). On leaving the block
    every fixture must have been used and no request refused, unless ``check=False``.
    Keyword arguments are :class:`~chatkit_server.settings.Settings` fields, or
    ``workflows=`` (a workflows file's text, ``{backend_url}`` standing for the replay URL).
``chatkit_golden``
    ``chatkit_golden(client, "name")`` compares ``client.transcript`` with
    ``<test dir>/golden/<name>.sse`` (``--chatkit-update-golden`` or
    ``CHATKIT_UPDATE_GOLDEN=1`` writes it instead).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from chatkit_server.testing.client import ChatKitClient
from chatkit_server.testing.golden import assert_golden
from chatkit_server.testing.live import serve_app
from chatkit_server.testing.replay import MatchMode, ReplayBackend, Speed
from chatkit_server.testing.stack import ChatKitStack, run_chatkit

__all__ = ["ReplayStack", "chatkit_golden", "chatkit_replay", "pytest_addoption"]

_UPDATE_OPTION = "--chatkit-update-golden"


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


def pytest_addoption(parser: pytest.Parser) -> None:
    """Add ``--chatkit-update-golden``."""
    parser.addoption(
        _UPDATE_OPTION,
        action="store_true",
        help="chatkit-server: write golden ChatKit transcripts instead of comparing",
    )


@pytest.fixture
def chatkit_replay(tmp_path: Path) -> ReplayFactory:
    """Start a replay backend and a chatkit-server wired to it (see the module docstring)."""
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


@pytest.fixture
def chatkit_golden(request: pytest.FixtureRequest) -> Callable[[ChatKitClient, str], None]:
    """Compare a client's transcript with ``golden/<name>.sse`` next to the test file."""
    update = bool(request.config.getoption(_UPDATE_OPTION)) or None
    directory = Path(request.path).parent / "golden"

    def check(client: ChatKitClient, name: str) -> None:
        assert_golden(client.transcript, directory / f"{name}.sse", update=update)

    return check
