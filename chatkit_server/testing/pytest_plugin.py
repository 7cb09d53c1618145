"""pytest plugin of the record/replay kit (registered as the ``chatkit_server`` pytest11 entry).

Fixtures, all prefixed ``chatkit_``:

``chatkit_replay``
    A factory: ``async with chatkit_replay(fixture_dir, llm_api=...) as stack`` serves a
    :class:`~chatkit_server.testing.replay.ReplayBackend` from ``fixture_dir`` and a
    chatkit-server on real uvicorn (temporary SQLite) pointed at it, and yields a
    :class:`~chatkit_server.testing.stack.ReplayStack` (``stack.client`` speaks like the
    ChatKit browser client, ``stack.replay.received`` holds what the model backend was sent).
    On leaving the block every fixture must have been used and no request refused, unless
    ``check=False``. Keyword arguments are :class:`~chatkit_server.settings.Settings` fields,
    or ``workflows=`` (a workflows file's text, ``{backend_url}`` standing for the replay URL).
    Annotate it with :data:`~chatkit_server.testing.stack.ReplayFactory`.
``chatkit_golden``
    ``chatkit_golden(client, "name")`` compares ``client.transcript`` with
    ``<test dir>/golden/<name>.sse`` (``--chatkit-update-golden`` or
    ``CHATKIT_UPDATE_GOLDEN=1`` writes it instead).

pytest loads this module at the start of every session of every project that installs the
package, whether or not a test uses the fixtures. So it imports only pytest and the standard
library; the kit (and with it the server, the agents SDK, uvicorn...) is imported inside the
fixtures, by the first test that asks for one.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from chatkit_server.testing.client import ChatKitClient
    from chatkit_server.testing.stack import ReplayFactory

__all__ = ["chatkit_golden", "chatkit_replay", "pytest_addoption"]

_UPDATE_OPTION = "--chatkit-update-golden"


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
    from chatkit_server.testing.stack import replay_factory

    return replay_factory(tmp_path)


@pytest.fixture
def chatkit_golden(request: pytest.FixtureRequest) -> Callable[[ChatKitClient, str], None]:
    """Compare a client's transcript with ``golden/<name>.sse`` next to the test file."""
    from chatkit_server.testing.golden import assert_golden

    update = bool(request.config.getoption(_UPDATE_OPTION)) or None
    directory = Path(request.path).parent / "golden"

    def check(client: ChatKitClient, name: str) -> None:
        assert_golden(client.transcript, directory / f"{name}.sse", update=update)

    return check
