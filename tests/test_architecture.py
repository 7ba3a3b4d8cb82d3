"""The package's shape (issue 16 targets): no import circle among auditor's modules, no private name imported
across modules, no module over 400 lines. The import graph is read from the source with ``ast`` (nothing is
imported), so every ``import`` counts, the lazy ones inside functions too: a lazy import hides a circle from
Python's import machinery, not from the design. Only ``if TYPE_CHECKING:`` blocks are left out (never run)."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import networkx as nx

import auditor

ROOT = Path(auditor.__file__).resolve().parent
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    out = {}
    for p in sorted(ROOT.rglob("*.py")):
        parts = p.relative_to(ROOT.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


@functools.lru_cache(maxsize=None)
def _imports(name: str) -> tuple:
    """(target module, imported names, line) of every auditor import in module ``name``."""
    return tuple(_walk_imports(name))


def _walk_imports(name: str):
    path = MODULES[name]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _type_checking_lines(tree)
    package = name if _is_package(name) else name.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "auditor":
                    yield a.name, [], node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == "auditor":
                yield target, [a.name for a in node.names], node.lineno


def _resolve(target: str) -> str:
    """The module a dotted import target names (the nearest existing one)."""
    while target and target not in MODULES:
        target = target.rsplit(".", 1)[0] if "." in target else ""
    return target


@functools.lru_cache(maxsize=None)
def import_graph() -> nx.DiGraph:
    g = nx.DiGraph()
    g.add_nodes_from(MODULES)
    for name in MODULES:
        for target, names, _ in _imports(name):
            mods = [f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES]  # `from pkg import submodule`
            if len(mods) < len(names) or not names:
                mods.append(_resolve(target))
            for m in mods:
                if m and m != name:
                    g.add_edge(name, m)
    return g


def test_no_import_circle():
    g = import_graph()
    # a strongly connected component of more than one module is a circle (one cycle of each is named); a package
    # whose __init__ re-exports its submodules while one of them imports the package back is one too
    circles = [" -> ".join(f"{a}" for a, _ in nx.find_cycle(g.subgraph(c)))
               for c in nx.strongly_connected_components(g) if len(c) > 1]
    assert circles == [], "import circles:\n" + "\n".join(sorted(circles))


def test_no_private_name_imported_across_modules():
    offenders = []
    for name in MODULES:
        for target, names, line in _imports(name):
            for n in names:
                if n.startswith("_") and not n.startswith("__"):
                    offenders.append(f"{name}:{line} imports {n} from {target}")
            if any(part.startswith("_") and not part.startswith("__") for part in target.split(".")):
                offenders.append(f"{name}:{line} imports the private module {target}")
    assert offenders == []


def test_no_module_over_400_lines():
    big = {name: n for name, p in MODULES.items()
           if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert big == {}, f"split these by job: {big}"


def test_the_graph_sees_lazy_imports():
    """The checker itself: a lazy import inside a function is an edge (the cli wires every stage lazily)."""
    g = import_graph()
    assert g.number_of_edges() > 300
    assert g.has_edge("auditor.cli", "auditor.cliutil")
    assert g.has_edge("auditor.index.cli", "auditor.index.runner")  # imported inside _run


def test_tests_do_not_import_each_other():
    """Shared builders live in tests/support/; a test file never imports another test file (issue 16 item 9)."""
    tests = Path(__file__).resolve().parent
    offenders = []
    for p in sorted(tests.rglob("*.py")):
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{p.relative_to(tests)} imports {n}" for n in names
                          if n.split(".")[-1].startswith(("test_", "conftest"))]
    assert offenders == []
