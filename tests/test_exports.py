"""The public surface: what the README imports exists where it says, and every public module's ``__all__`` is right."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
README = ROOT / "README.md"

_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
_DOTTED = re.compile(r"`(antiphon(?:\.\w+)+)")


def isort_key(name: str) -> tuple[int, list[str | int]]:
    """ruff's RUF022 order: SCREAMING_CASE, then CamelCase, then the rest; digits compare as numbers."""
    category = 0 if name.upper() == name else 1 if name[:1].isupper() else 2
    return category, [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def public_modules() -> list[str]:
    """Every module of the package whose dotted name has no part starting with ``_`` (``__init__`` aside)."""
    names = []
    for path in sorted((SRC / "antiphon").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        if parts[-1] == "__main__" or any(p.startswith("_") for p in parts):
            continue
        names.append(".".join(parts))
    return names


def _source(module: str) -> ast.Module:
    path = SRC / Path(*module.split("."))
    file = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    return ast.parse(file.read_text(), str(file))


def defined_names(module: str) -> set[str]:
    """Public names a module defines at top level: classes, functions, constants, and (packages) its re-exports.

    Not counted: loggers and type variables (module plumbing), and names a plain module imports (they are the
    other module's). A package's ``from antiphon... import X`` is a re-export and counts.
    """
    tree = _source(module)
    is_package = (SRC / Path(*module.split("."))).is_dir()
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            value = node.value
            if isinstance(value, ast.Call) and isinstance(value.func, ast.Attribute | ast.Name):
                called = value.func.attr if isinstance(value.func, ast.Attribute) else value.func.id
                if called in ("getLogger", "TypeVar", "ParamSpec"):
                    continue
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
        elif is_package and isinstance(node, ast.ImportFrom) and (node.module or "").startswith("antiphon"):
            names.update(a.asname or a.name for a in node.names)
    return {n for n in names if not n.startswith("_")}


@pytest.mark.parametrize("module", public_modules())
def test_all_is_sorted_complete_and_importable(module: str) -> None:
    """`__all__` exists, is sorted, names only what the module has, and lists every public name it defines."""
    mod = importlib.import_module(module)
    exported = getattr(mod, "__all__", None)
    assert isinstance(exported, list), f"{module} has no __all__ list"
    assert exported == sorted(exported, key=isort_key), f"{module}.__all__ is not in isort order (ruff's RUF022)"
    assert len(set(exported)) == len(exported), f"{module}.__all__ repeats a name"
    missing_objects = [n for n in exported if not hasattr(mod, n)]
    assert not missing_objects, f"{module}.__all__ names what it does not have: {missing_objects}"
    unlisted = sorted(defined_names(module) - set(exported) - {"__version__"})
    assert not unlisted, f"{module} defines public names missing from __all__: {unlisted}"


def readme_imports() -> list[tuple[str, str]]:
    """``(module, name)`` for every ``from antiphon... import name`` in the README's Python blocks."""
    found = []
    for lang, block in _FENCE.findall(README.read_text()):
        if lang != "python":
            continue
        for node in ast.walk(ast.parse(block)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "antiphon":
                found.extend((node.module, a.name) for a in node.names if node.module)
    return sorted(set(found))


def readme_references() -> list[str]:
    """Every ``antiphon.x.y`` the README's prose names in backticks (outside code blocks)."""
    prose = _FENCE.sub("", README.read_text())
    return sorted(set(_DOTTED.findall(prose)))


@pytest.mark.parametrize(("module", "name"), readme_imports())
def test_readme_imports_work_and_are_public(module: str, name: str) -> None:
    """Each name a README example imports is there, and in that module's `__all__`."""
    mod = importlib.import_module(module)
    assert hasattr(mod, name), f"from {module} import {name}: no such name"
    assert name in getattr(mod, "__all__", ()), f"{name} is not in {module}.__all__"


@pytest.mark.parametrize("dotted", readme_references())
def test_readme_dotted_names_resolve(dotted: str) -> None:
    """Each `antiphon.module.name` in the README's text is a module, or a public name of one."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for i, attr in enumerate(parts[cut:]):
            assert hasattr(obj, attr), f"{dotted}: {'.'.join(parts[: cut + i])} has no {attr!r}"
            if i == 0:
                assert attr in getattr(obj, "__all__", ()), f"{dotted}: {attr!r} is not in __all__"
            obj = getattr(obj, attr)
        return
    pytest.fail(f"{dotted}: no such module")


def test_the_readme_is_read() -> None:
    """The parsers above find the README's examples (so the parametrized tests cannot pass vacuously)."""
    assert len(readme_imports()) > 10 and ("antiphon.tools", "open_tool_client") in readme_imports()
    assert "antiphon.engine.tls.server_context" in readme_references()
    assert len(public_modules()) > 40
