"""Only chatkit_server/compat.py may use private names of other libraries.

Everything else goes through public APIs, so a library upgrade cannot quietly
change what the server does (see compat.py for the exceptions and their tests).
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from tests.scripts import load_script

ROOT = Path(__file__).resolve().parent.parent


def _script() -> ModuleType:
    return load_script(ROOT / "scripts" / "private_names.py")


def test_private_names_of_other_libraries_appear_only_in_compat() -> None:
    found = list(_script().uses(ROOT / "chatkit_server", "chatkit_server"))
    outside = [f"{path.relative_to(ROOT)}:{line}: {what}" for path, line, what in found]
    outside = [use for use in outside if not use.startswith("chatkit_server/compat.py:")]
    assert outside == []
    # The finder still finds what compat.py does.
    assert any(path.name == "compat.py" for path, _line, _what in found)


def test_the_finder_sees_imports_attributes_and_overrides(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "mod.py").write_text(
        "from openai._models import construct_type\n"
        "from chatkit.server import ChatKitServer\n"
        "class Server(ChatKitServer[int]):\n"
        "    def _process_events(self): ...\n"
        "    def _mine(self): return self._mine_too\n"
        "def f(x):\n"
        "    return x._foreign\n"
    )
    found = [(line, what) for _path, line, what in _script().uses(package, "pkg")]
    assert sorted(found) == [
        (1, "import from openai._models"),
        (4, "override of _process_events in Server"),
        (5, "attribute _mine_too"),
        (7, "attribute _foreign"),
    ]
