"""Dependencies point one way: engines <- service <- clients (STYLE.md).

Every module under the three packages is parsed (not imported), and every import in it is
checked, function-level and ``TYPE_CHECKING`` ones included, as are ``import_module``
calls with a literal name: a module may import its own layer and the layers below it,
never one above.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("engines", "service", "clients")  # lowest first

# Imports of a higher layer that exist today, as (importing module, imported module).
# Each is a known defect waiting for its fix; remove the entry with the fix. A new
# violation is not added here: it fails the test.
KNOWN_VIOLATIONS: set[tuple[str, str]] = set()


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_source_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def source_modules() -> Iterator[tuple[str, Path]]:
    for layer in LAYERS:
        for path in sorted((ROOT / layer).rglob("*.py")):
            yield module_name(path), path


def _resolve(node: ast.ImportFrom, importer: str, is_package: bool) -> str:
    """The absolute module an ``from ... import`` names (relative ones resolved)."""
    if not node.level:
        return node.module or ""
    package = importer.split(".") if is_package else importer.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def imported_modules(path: Path, importer: str) -> Iterator[tuple[str, int]]:
    """(module, line) of every import in ``path``, wherever in the file it stands."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(node, importer, is_package)
            for alias in node.names:  # `from clients import dashboard` imports a module
                sub = f"{base}.{alias.name}"
                yield (sub if is_source_module(sub) else base), node.lineno
        elif isinstance(node, ast.Call) and _is_import_module(node.func):
            if node.args and isinstance(node.args[0], ast.Constant):
                if isinstance(node.args[0].value, str):
                    yield node.args[0].value, node.lineno


def _is_import_module(func: ast.expr) -> bool:
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    return name in ("import_module", "__import__")


def layer_of(module: str) -> int | None:
    top = module.split(".", 1)[0]
    return LAYERS.index(top) if top in LAYERS else None


def upward_imports() -> dict[tuple[str, str], str]:
    """{(importer, imported): "path:line"} of every import of a higher layer."""
    found: dict[tuple[str, str], str] = {}
    for importer, path in source_modules():
        own = layer_of(importer)
        for imported, line in imported_modules(path, importer):
            theirs = layer_of(imported)
            if theirs is not None and own is not None and theirs > own:
                found.setdefault((importer, imported), f"{path.relative_to(ROOT)}:{line}")
    return found


def test_the_walk_sees_every_kind_of_import(tmp_path: Path) -> None:
    src = tmp_path / "mod.py"
    src.write_text(
        "import engines.errors\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from clients import nosuchmodule\n"
        "def f():\n"
        "    from ..api import app\n"
        "    import importlib\n"
        "    return importlib.import_module('clients.dashboard')\n"
    )
    found = dict((line, name) for name, line in imported_modules(src, "service.sub.mod"))
    assert found[1] == "engines.errors"
    assert found[4] == "clients"  # not a module: the name comes from the package
    assert found[6] == "service.api.app"  # relative, resolved
    assert found[8] == "clients.dashboard"
    assert layer_of(found[4]) == layer_of(found[8]) == LAYERS.index("clients")


def test_no_module_imports_a_higher_layer() -> None:
    found = upward_imports()
    new = {pair: where for pair, where in found.items() if pair not in KNOWN_VIOLATIONS}
    assert not new, "imports of a higher layer (engines <- service <- clients):\n" + "\n".join(
        f"  {where}: {importer} imports {imported}"
        for (importer, imported), where in sorted(new.items(), key=lambda kv: kv[1])
    )


def test_known_violations_are_still_there() -> None:
    """An entry of KNOWN_VIOLATIONS whose import is gone must leave the list."""
    fixed = KNOWN_VIOLATIONS - set(upward_imports())
    assert not fixed, f"fixed, remove from KNOWN_VIOLATIONS: {sorted(fixed)}"


@pytest.mark.parametrize("layer", LAYERS)
def test_every_layer_has_modules(layer: str) -> None:
    assert any(name.split(".")[0] == layer for name, _ in source_modules())
