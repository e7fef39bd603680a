"""The architecture, checked on the import graph (parsed, not grepped): sans-IO proto/, faces apart, engine below faces.

Every ``import`` and ``from ... import`` statement of every module counts, wherever it stands (inside a
function, under ``TYPE_CHECKING``), relative imports resolved. antiphon's own imports are followed
transitively, so proto/ cannot reach Trio through a helper module either.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

FACES = ("chat", "tools", "media")
"""The faces; each also has its sans-IO half under proto/ (``proto.utcp`` is the tools face's)."""
PROTO_FACES = {"chat": "chat", "tools": "utcp", "media": "media"}

IO_MODULES = frozenset(
    {
        # concurrency and event loops
        "trio", "trio_websocket", "anyio", "asyncio", "uvloop", "threading", "multiprocessing",
        "concurrent", "selectors", "select", "signal", "subprocess",
        # networks, files, databases (socket is checked apart: see PURE_SOCKET)
        "ssl", "http", "urllib3", "requests", "httpx", "aiohttp", "websockets", "picows",
        "sqlite3", "psycopg", "psycopg_pool", "coredis", "prometheus_client", "shutil", "tempfile",
    }
)  # fmt: skip
"""Top-level modules proto/ must never import: anything that waits, spawns or touches the network or disk."""

PURE_SOCKET = frozenset({"inet_aton", "inet_ntoa", "inet_pton", "inet_ntop", "AF_INET", "AF_INET6"})
"""What proto/ may use of ``socket``: address parsing, which never does I/O (the UTCP URL rule needs
``inet_aton``'s reading of ``127.1`` and ``0x7f000001``)."""


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted((SRC / "antiphon").rglob("*.py"))}


@cache
def direct_imports(module: str) -> frozenset[str]:
    """Every module ``module`` imports, by absolute dotted name (``from a import b`` counts ``a`` and ``a.b``)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return frozenset(found)


@cache
def reachable(module: str) -> frozenset[str]:
    """What importing ``module`` imports, following antiphon's own modules transitively (parents included)."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        current = todo.pop()
        for name in direct_imports(current):
            if name in seen:
                continue
            seen.add(name)
            parts = name.split(".")
            for i in range(1, len(parts) + 1):  # importing a.b.c runs a and a.b first
                prefix = ".".join(parts[:i])
                if prefix in MODULES and prefix != "antiphon" and prefix not in seen | {current}:
                    seen.add(prefix)
                    todo.append(prefix)
            if name in MODULES and name != current:
                todo.append(name)
    return frozenset(seen)


def in_package(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


PROTO = sorted(m for m in MODULES if in_package(m, "antiphon.proto"))


def socket_uses(module: str) -> set[str]:
    """The names ``module`` takes from ``socket``: ``socket.x`` attributes and ``from socket import x``."""
    tree = ast.parse(MODULES[module].read_text())
    used: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "socket":
            used.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "socket":
            used.add(node.attr)
        elif isinstance(node, ast.Name) and node.id == "socket" and not isinstance(getattr(node, "ctx", None), ast.Load):
            used.add("<rebound>")
    return used


@pytest.mark.parametrize("module", PROTO)
def test_proto_never_reaches_io(module: str) -> None:
    """A proto/ module imports no I/O library, and of antiphon only proto/ and errors, even indirectly."""
    names = reachable(module)
    io = sorted(n for n in names if n.split(".")[0] in IO_MODULES)
    assert not io, f"{module} imports I/O: {io}"
    allowed = ("antiphon.proto", "antiphon.errors")
    ours = sorted(n for n in names if in_package(n, "antiphon") and not any(in_package(n, a) for a in allowed))
    assert not ours, f"{module} imports antiphon's I/O layers: {ours}"
    if "socket" in direct_imports(module):
        impure = sorted(socket_uses(module) - PURE_SOCKET)
        assert not impure, f"{module} uses socket beyond address parsing: {impure}"


@pytest.mark.parametrize("face", FACES)
def test_faces_never_import_each_other(face: str) -> None:
    """Nothing in a face (its Trio half or its proto/ half) imports another face, directly or indirectly."""
    own = [m for m in MODULES if in_package(m, f"antiphon.{face}") or in_package(m, f"antiphon.proto.{PROTO_FACES[face]}")]
    assert own
    others = [f"antiphon.{f}" for f in FACES if f != face] + [f"antiphon.proto.{PROTO_FACES[f]}" for f in FACES if f != face]
    for module in own:
        crossing = sorted(n for n in reachable(module) if any(in_package(n, o) for o in others))
        assert not crossing, f"{module} (the {face} face) imports another face: {crossing}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if in_package(m, "antiphon.engine")))
def test_the_engine_imports_no_face_and_no_cli(module: str) -> None:
    """engine/ is below every face: it imports none of them, nor the CLI."""
    above = [f"antiphon.{f}" for f in FACES] + ["antiphon.cli", "antiphon.logs"]
    crossing = sorted(n for n in reachable(module) if any(in_package(n, a) for a in above))
    assert not crossing, f"{module} imports from above the engine: {crossing}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m not in ("antiphon", "antiphon.cli", "antiphon.__main__")))
def test_nothing_below_the_root_imports_the_root(module: str) -> None:
    """``import antiphon`` (or ``from antiphon import x``) is the top's: it brings the chat face along."""
    assert "antiphon" not in direct_imports(module), f"{module} imports the package root"


def test_the_graph_is_read() -> None:
    """The import parser sees real edges (so the tests above cannot pass vacuously)."""
    assert "trio" in direct_imports("antiphon.engine.session")
    assert "antiphon.proto.close" in reachable("antiphon.engine.session")
    assert "cattrs" in reachable("antiphon.proto.chat.messages")
    assert "antiphon.errors" in reachable("antiphon.proto.chat.messages")
    assert len(PROTO) > 15
    assert socket_uses("antiphon.proto.utcp.urls") == {"inet_aton", "inet_ntoa"}
