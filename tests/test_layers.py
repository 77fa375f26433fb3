"""The tree keeps its layers (docs/ARCHITECTURE.md): no import cycle between
modules, no import from a lower layer into a higher one, and the pure modules
load no I/O library.

Every import counts: at module level, inside functions and under
``TYPE_CHECKING``, because each of them is a dependency a reader has to hold in
mind and a cycle waiting for the day someone moves it to the top of the file.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import networkx as nx
import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "dtwz"

# Bottom to top. A module belongs to the layer of its longest matching prefix and
# may import its own layer and those below it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("errors", ("dtwz.errors",)),
    ("object formats", ("dtwz.format",)),
    ("security formats", ("dtwz.security",)),
    ("wire", ("dtwz.wire",)),
    ("local store", ("dtwz.store",)),
    ("object service", ("dtwz.service",)),
    ("resolver", ("dtwz.resolver",)),
    ("graph", ("dtwz.graph",)),
    ("client", ("dtwz.client",)),
    ("node process", ("dtwz.node",)),
    ("command line", ("dtwz.cli", "dtwz.__main__")),
]

# (importer, imported): why this edge may break the rule. Keep it short.
ALLOWED: dict[tuple[str, str], str] = {
    ("dtwz", "*"): "the package root re-exports the public API lazily (PEP 562)",
    ("*", "dtwz"): "the package root holds no code: __version__ and the path of the tree",
}

# Modules that encode, decode or decide without I/O: they must stay importable
# (and fuzzable) without an event loop, a socket library or an HTTP stack.
PURE_MODULES = [
    "dtwz.errors",
    "dtwz.format.ids",
    "dtwz.format.layout",
    "dtwz.format.pointers",
    "dtwz.format.views",
    "dtwz.format.names",
    "dtwz.security.keys",
    "dtwz.security.capabilities",
    "dtwz.security.auth",
    "dtwz.wire.kinds",
    "dtwz.wire.messages",
    "dtwz.wire.codec",
    "dtwz.resolver.membership",
    "dtwz.resolver.locations",
    "dtwz.graph.placement",
    "dtwz.graph.code",
]
IO_LIBRARIES = ["asyncio", "zmq", "aiohttp", "http.client"]


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Every dtwz module ``name`` imports, wherever the import statement sits."""
    is_package = path.name == "__init__.py"
    base = name.split(".") if is_package else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "dtwz")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[: len(base) - node.level + 1]
                source = ".".join(anchor + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source.split(".")[0] != "dtwz":
                continue
            for alias in node.names:
                child = f"{source}.{alias.name}"
                found.add(child if child in modules else source)
    found.discard(name)
    return found


def _graph() -> nx.DiGraph[str]:
    modules = _modules()
    graph: nx.DiGraph[str] = nx.DiGraph()
    for name, path in modules.items():
        graph.add_node(name)
        for target in _imports(name, path, modules):
            graph.add_edge(name, target)
    return graph


def _layer(module: str) -> int:
    best, best_len = -1, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    return best


def _allowed(source: str, target: str) -> bool:
    return any(key in ALLOWED for key in [(source, target), (source, "*"), ("*", target)])


def test_every_module_has_a_layer() -> None:
    homeless = sorted(m for m in _modules() if m != "dtwz" and _layer(m) < 0)
    assert not homeless, f"modules in no layer (add them to LAYERS): {homeless}"


def test_no_import_cycles_between_modules() -> None:
    graph = _graph()
    graph.remove_edges_from([e for e in list(graph.edges) if _allowed(*e)])
    cycles = [sorted(c) for c in nx.strongly_connected_components(graph) if len(c) > 1]
    assert not cycles, f"import cycles: {cycles}"


def test_no_import_from_a_lower_layer_into_a_higher_one() -> None:
    upward = []
    for source, target in _graph().edges:
        if _allowed(source, target):
            continue
        if _layer(target) > _layer(source):
            upward.append(
                f"{source} ({LAYERS[_layer(source)][0]}) imports "
                f"{target} ({LAYERS[_layer(target)][0]})"
            )
    assert not upward, "imports against the layers:\n" + "\n".join(sorted(upward))


def test_the_layer_table_sees_the_imports() -> None:
    # guards the checker itself: a known downward import must be found
    graph = _graph()
    assert graph.has_edge("dtwz.store.objects", "dtwz.format.layout")
    assert graph.has_edge("dtwz.node.server", "dtwz.service.objects")


@pytest.mark.parametrize("module", PURE_MODULES)
def test_pure_modules_load_no_io_library(module: str) -> None:
    probe = (
        f"import json, sys; import {module}; "
        f"print(json.dumps([m for m in {IO_LIBRARIES!r} if m in sys.modules]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=PACKAGE.parent,
        check=True,
    )
    assert json.loads(out.stdout) == [], f"importing {module} loads {out.stdout.strip()}"
