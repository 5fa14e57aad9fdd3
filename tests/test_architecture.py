"""The package's import structure: no cycles, one direction of dependencies, Ultralytics behind one adapter.

Every module of ``yolo13_attn`` (and of ``kernels/``, installed as ``yolo13_attn.kernels``) is parsed
with ``ast``; the imports a module runs when it is imported (module level, class bodies, ``try``/``if``
blocks; not function bodies, not ``if TYPE_CHECKING:``) make the graph. Importing ``a.b.c`` also runs
the package ``a.b``'s ``__init__``, so that is an edge too (the root ``yolo13_attn`` aside: every module
lives under it).
"""

from __future__ import annotations

import ast
import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = "yolo13_attn"

#: the layers, lowest first: a module may import its own layer and the layers below it, nothing above
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    # Triton kernels and their torch glue; the CUDA extension's loader and torch glue
    ("kernels", ("yolo13_attn.kernels", "yolo13_attn.kernel_glue", "yolo13_attn.triton_ops", "yolo13_attn.cuda_ops")),
    ("ops", ("yolo13_attn.ops",)),  # the reference math and the input checks
    ("backends", ("yolo13_attn.backends",)),
    ("functional", ("yolo13_attn.functional",)),  # the public ops, dispatched to a backend
    ("nn", ("yolo13_attn.nn",)),  # the YOLOv13 layers
    # the Ultralytics adapter imports nothing of the package; the integration package's __init__ only the adapter
    ("ultralytics_api", ("yolo13_attn.integration.ultralytics_api",)),
    ("patching", ("yolo13_attn.binding", "yolo13_attn.layer_kinds", "yolo13_attn.patching", "yolo13_attn.profiling")),
    ("integration", ("yolo13_attn.integration",)),
    ("public", ("yolo13_attn", "yolo13_attn.__main__", "yolo13_attn.testing")),
)
EXACT_LAYER = {"yolo13_attn.integration": "ultralytics_api"}

#: imports that go against the layer order today, each with the reason; remove an entry when it is fixed
#: (the test fails on an entry that no longer occurs, so this list only shrinks)
KNOWN_UPWARD_IMPORTS: dict[tuple[str, str], str] = {}

#: Ultralytics modules a module other than the adapter may import (all imports, function bodies included):
#: the layers subclass Ultralytics' public building blocks; the demo uses the public API like a user
ULTRALYTICS_OUTSIDE_ADAPTER: dict[str, set[str]] = {
    "yolo13_attn.nn.area_attention": {"ultralytics.nn.modules.block", "ultralytics.nn.modules.conv"},
    "yolo13_attn.nn.blocks": {"ultralytics.nn.modules.block", "ultralytics.nn.modules.conv"},
    "yolo13_attn.nn.hypergraph": {"ultralytics.nn.modules.conv"},
    "yolo13_attn.nn.head": {"ultralytics.nn.modules.head"},
    "yolo13_attn.__main__": {"ultralytics", "ultralytics.utils"},
}


# ---- the graph --------------------------------------------------------------------------------------------


def _source_files() -> dict[str, Path]:
    """``{module name: file}`` for every module of the package and of its kernels."""
    package = Path(importlib.util.find_spec(ROOT).origin).parent
    kernels = Path(importlib.util.find_spec(f"{ROOT}.kernels").origin).parent
    files = {}
    for base, prefix in ((package, ROOT), (kernels, f"{ROOT}.kernels")):
        for path in base.rglob("*.py"):
            parts = path.relative_to(base).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            files[".".join((prefix, *parts))] = path
    return files


FILES = _source_files()


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(body: list[ast.stmt], *, functions: bool) -> Iterator[ast.Import | ast.ImportFrom]:
    """The import statements of ``body``: those run at import time, or (``functions``) all of them."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if functions:
                yield from _import_nodes(node.body, functions=True)
        elif isinstance(node, ast.If) and _is_type_checking(node):
            continue
        else:
            for field in ("body", "orelse", "finalbody", "handlers"):
                children = getattr(node, field, None)
                if isinstance(children, list):
                    yield from _import_nodes([c for c in children if isinstance(c, ast.AST)], functions=functions)


def _imported_modules(module: str, *, functions: bool = False) -> set[str]:
    """Every module (internal or not) that importing ``module`` imports by its statements."""
    tree = ast.parse(FILES[module].read_text(), str(FILES[module]))
    package = module if FILES[module].name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in _import_nodes(tree.body, functions=functions):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
            continue
        if node.level:
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            base = f"{base}.{node.module}" if node.module else base
        else:
            base = node.module
        for alias in node.names:
            candidate = f"{base}.{alias.name}"
            is_module = candidate in FILES if candidate.startswith(ROOT) else _is_submodule(candidate)
            found.add(candidate if is_module else base)
    return found


def _is_submodule(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _with_parent_packages(importer: str, target: str) -> set[str]:
    """``target`` and the packages between the root and it whose ``__init__`` the import runs."""
    parts = target.split(".")
    parents = {".".join(parts[:i]) for i in range(2, len(parts))}
    return {target} | {p for p in parents if p in FILES and not importer.startswith(p + ".")}


def _graph() -> dict[str, set[str]]:
    graph = {}
    for module in FILES:
        internal = {m for m in _imported_modules(module) if m == ROOT or m.startswith(ROOT + ".")}
        unknown = {m for m in internal if m not in FILES}
        assert not unknown, f"{module} imports {sorted(unknown)}, which is not a module of the package"
        graph[module] = set().union(*(_with_parent_packages(module, m) for m in internal)) - {module}
    return graph


GRAPH = _graph()


def layer_of(module: str) -> str:
    if module in EXACT_LAYER:
        return EXACT_LAYER[module]
    matches = [
        (len(prefix), name)
        for name, prefixes in LAYERS
        for prefix in prefixes
        if module == prefix or module.startswith(prefix + ".")
    ]
    assert matches, f"{module} belongs to no layer: add it to LAYERS in {__file__}"
    return max(matches)[1]


RANK = {name: i for i, (name, _) in enumerate(LAYERS)}


# ---- the tests --------------------------------------------------------------------------------------------


def test_the_graph_sees_every_module_and_its_imports():
    """Guards the test itself: the walk found the package, the kernels and the imports known to exist."""
    assert {"yolo13_attn.patching", "yolo13_attn.kernels.area_attention_fwd", "yolo13_attn.ops.reference"} <= set(FILES)
    assert "yolo13_attn.binding" in GRAPH["yolo13_attn.patching"]
    assert "yolo13_attn.kernels" in GRAPH["yolo13_attn.triton_ops.area"]
    assert "yolo13_attn.integration" in GRAPH["yolo13_attn.patching"]  # the package __init__ the import runs


def test_no_import_cycles():
    """Module-level imports form no cycle (imports inside functions are not counted)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(GRAPH[module]):
            if state.get(target) == 1:
                cycle = path[path.index(target) :] + [target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        path.pop()
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module)


def test_imports_follow_the_layer_order():
    """kernels <- ops <- backends <- nn <- (Ultralytics adapter) <- patching <- integration <- public face."""
    upward = {
        (module, target)
        for module, targets in GRAPH.items()
        for target in targets
        if RANK[layer_of(target)] > RANK[layer_of(module)]
    }
    unexpected = sorted(upward - set(KNOWN_UPWARD_IMPORTS))
    assert not unexpected, "imports against the layer order: " + ", ".join(
        f"{m} ({layer_of(m)}) -> {t} ({layer_of(t)})" for m, t in unexpected
    )
    fixed = sorted(set(KNOWN_UPWARD_IMPORTS) - upward)
    assert not fixed, f"fixed, remove from KNOWN_UPWARD_IMPORTS: {fixed}"


def test_no_module_imports_the_public_face():
    """No module of the package imports ``yolo13_attn`` itself (its ``__init__`` imports everything)."""
    assert not [module for module, targets in GRAPH.items() if ROOT in targets]


def test_kernels_import_only_triton_torch_and_each_other():
    for module in (m for m in FILES if m.startswith(f"{ROOT}.kernels")):
        outside = {
            m
            for m in _imported_modules(module, functions=True)
            if m.split(".")[0] not in {"triton", "torch", "__future__", "math", "functools"}
            and not m.startswith(f"{ROOT}.kernels")
        }
        assert not outside, f"{module} imports {sorted(outside)}"


def test_ultralytics_is_touched_only_through_the_adapter():
    """Outside ``integration/ultralytics_api.py`` only the layers' building blocks and the demo's public API."""
    found = {}
    for module in FILES:
        ultralytics = {m for m in _imported_modules(module, functions=True) if m.split(".")[0] == "ultralytics"}
        if ultralytics and module != "yolo13_attn.integration.ultralytics_api":
            found[module] = ultralytics
    assert found == ULTRALYTICS_OUTSIDE_ADAPTER


def test_the_adapter_imports_nothing_of_the_package():
    """So every layer above ``nn`` may use it without importing anything else of the package."""
    for module in ("yolo13_attn.integration.ultralytics_api", "yolo13_attn.integration"):
        assert GRAPH[module] <= {"yolo13_attn.integration.ultralytics_api"}, module
