"""No import cycle in the gpubp package: every module can be imported first, and a lower layer never needs an
upper one. Imports count at any depth (inside functions too: a cycle through a late import is still one);
``if TYPE_CHECKING:`` blocks, which never run, do not count."""

from __future__ import annotations

import ast
from pathlib import Path

import gpubp

PACKAGE = Path(gpubp.__file__).resolve().parent


def module_files() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name, for its ``__init__.py``)."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = ("gpubp",) + path.relative_to(PACKAGE).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


class Imports(ast.NodeVisitor):
    """The Import and ImportFrom nodes of a module, at any depth, outside ``if TYPE_CHECKING:`` bodies."""

    def __init__(self, tree: ast.AST) -> None:
        self.nodes: list[ast.Import | ast.ImportFrom] = []
        self.visit(tree)

    def visit_If(self, node: ast.If) -> None:
        if is_type_checking(node.test):
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import | ast.ImportFrom) -> None:
        self.nodes.append(node)

    visit_ImportFrom = visit_Import


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that module ``name`` imports: ``import a.b`` is a.b; ``from .a import b`` is a,
    or a.b when that is a module; ``from . import x`` is x when x is a module, else the package."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in Imports(ast.parse(path.read_text(), str(path))).nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in modules)
            continue
        base = node.module or ""
        if node.level:
            anchor = package.split(".")
            anchor = anchor[:len(anchor) - (node.level - 1)]
            base = ".".join(anchor + ([node.module] if node.module else []))
        for alias in node.names:
            target = f"{base}.{alias.name}"
            if target in modules:
                found.add(target)
            elif base in modules:
                found.add(base)
    found.discard(name)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every elementary cycle, each once: listed from its smallest module name."""
    found = []

    def walk(start: str, node: str, path: list[str]) -> None:
        for nxt in sorted(graph[node]):
            if nxt == start:
                found.append(path + [start])
            elif nxt > start and nxt not in path:
                walk(start, nxt, path + [nxt])

    for start in sorted(graph):
        walk(start, start, [start])
    return found


def test_the_graph_sees_late_and_relative_imports():
    graph = import_graph()
    assert "gpubp.network" in graph["gpubp"]
    assert "gpubp.backend.arrays" in graph["gpubp.backend"]
    assert "gpubp.network" in graph["gpubp.serialization"]  # ``from .network import Network``
    assert "gpubp.training" in graph["gpubp.network"]       # imported inside Network.fit


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(cycle) for cycle in found)


def test_every_cycle_is_listed_once():
    graph = {"a": {"b"}, "b": {"a", "c"}, "c": {"a", "d"}, "d": set()}
    assert cycles(graph) == [["a", "b", "a"], ["a", "b", "c", "a"]]
