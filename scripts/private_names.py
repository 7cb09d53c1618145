"""List every use of another library's private name in a package (``_name``, not ``__dunder__``).

Usage: ``python scripts/private_names.py [PACKAGE_DIR]`` (default ``chatkit_server``);
prints one line per use and the count, ``file:line: what``.

Three kinds of use are found:

* an import from a private module of another library (``from openai._models import ...``);
* an attribute ``x._name`` where ``_name`` is not defined anywhere in the package
  (so it belongs to another library's object);
* a method ``_name`` defined in a class whose base classes (from other libraries)
  already have it: an override of their internals.

``tests/test_private_names.py`` runs it and allows such uses only in ``compat.py``.
"""

from __future__ import annotations

import ast
import importlib
import sys
from collections.abc import Iterator
from pathlib import Path


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _own_names(files: list[Path]) -> set[str]:
    """Private names the package itself defines (functions, classes, attributes, variables)."""
    names: set[str] = set()
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.arg):
                names.add(node.arg)
            elif isinstance(node, ast.alias):
                names.add(node.asname or node.name.split(".")[0])
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names.add(node.target.id)
        # __slots__ entries and dataclass fields are covered by the stores above.
    return {name for name in names if _private(name)}


def _resolve(module: str, name: str) -> object | None:
    try:
        return getattr(importlib.import_module(module), name, None)
    except Exception:  # noqa: BLE001 - a base we cannot import is reported elsewhere
        return None


def uses(root: Path, package: str) -> Iterator[tuple[Path, int, str]]:
    """``(file, line, description)`` of each private name of another library used."""
    files = sorted(root.rglob("*.py"))
    own = _own_names(files)
    for path in files:
        tree = ast.parse(path.read_text())
        imported: dict[str, tuple[str, str]] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                top = node.module.split(".")[0]
                for alias in node.names:
                    imported[alias.asname or alias.name] = (node.module, alias.name)
                if top != package and any(_private(part) for part in node.module.split(".")):
                    yield path, node.lineno, f"import from {node.module}"
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    parts = alias.name.split(".")
                    if parts[0] != package and any(_private(part) for part in parts):
                        yield path, node.lineno, f"import {alias.name}"
            elif isinstance(node, ast.Attribute) and _private(node.attr) and node.attr not in own:
                yield path, node.lineno, f"attribute {node.attr}"
            elif isinstance(node, ast.ClassDef):
                names = [b.value if isinstance(b, ast.Subscript) else b for b in node.bases]
                bases = [
                    _resolve(*imported[base.id])
                    for base in names
                    if isinstance(base, ast.Name)
                    and base.id in imported
                    and imported[base.id][0].split(".")[0] != package
                ]
                for item in node.body:
                    if (
                        isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef))
                        and _private(item.name)
                        and any(hasattr(base, item.name) for base in bases if base is not None)
                    ):
                        yield path, item.lineno, f"override of {item.name} in {node.name}"


def main(argv: list[str]) -> int:
    """Print the uses found under ``argv[1]`` and their count."""
    root = Path(argv[1] if len(argv) > 1 else "chatkit_server")
    found = list(uses(root, root.name))
    for path, line, what in found:
        print(f"{path}:{line}: {what}")
    print(f"{len(found)} uses of private names of other libraries")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
