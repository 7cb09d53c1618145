"""The pytest plugin loads without the server: it is imported by every pytest session of
every project that installs the package, so a heavy import there slows all of them."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from importlib.metadata import entry_points
from pathlib import Path

import chatkit_server

PLUGIN = "chatkit_server.testing.pytest_plugin"
# Bounds a wedged child, not its speed: a cold start is a few seconds on a loaded machine.
TIMEOUT = 120

# Run inside a fresh pytest that loads only this plugin. The first test sees sys.modules as
# the session left it after loading plugins and collecting; the second shows the fixtures and
# the option hook work when their imports are deferred.
INNER = textwrap.dedent(
    """
    import sys

    HEAVY = ("agents", "chatkit", "uvicorn", "openai", "sqlalchemy", "starlette", "httpx",
             "pydantic", "anyio", "aiohttp")

    def test_loading_the_plugin_imports_nothing_heavy():
        loaded = sorted({name.split(".")[0] for name in sys.modules} & set(HEAVY))
        assert loaded == []
        ours = sorted(name for name in sys.modules if name.startswith("chatkit_server"))
        assert ours == ["chatkit_server", "chatkit_server.testing", "PLUGIN"]

    def test_golden_fixture_imports_what_it_needs(chatkit_golden, tmp_path):
        class Client:
            transcript = [("threads.create", ['{"type": "thread.created"}'])]

        chatkit_golden(Client(), "written")
        assert "chatkit_server.testing.golden" in sys.modules
    """
).replace("PLUGIN", PLUGIN)


def test_the_entry_point_is_the_module_tested_here() -> None:
    [entry] = [e for e in entry_points(group="pytest11") if e.name == "chatkit_server"]
    assert entry.value == PLUGIN


def test_a_pytest_session_with_the_plugin_imports_no_server(tmp_path: Path) -> None:
    (tmp_path / "test_inner.py").write_text(INNER, encoding="utf-8")
    root = Path(chatkit_server.__file__).resolve().parents[1]
    env = {
        **os.environ,
        # This checkout first, as for the outer session; and no other plugin, since the
        # ones installed beside it (anyio's, hypothesis) import some of HEAVY themselves.
        "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
        "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
    }
    env.pop("CHATKIT_UPDATE_GOLDEN", None)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            PLUGIN,
            "-p",
            "no:cacheprovider",
            "--chatkit-update-golden",
            "-q",
            "test_inner.py",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout
    # The option reached the fixture: it wrote the golden file instead of comparing.
    written = (tmp_path / "golden" / "written.sse").read_text(encoding="utf-8")
    assert written.startswith(": threads.create")
