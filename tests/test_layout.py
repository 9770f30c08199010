"""The package's shape (the redesign's rules, read from the source with ``ast``): the imports inside ``mudsc`` form a
DAG, function-level imports included; no function over 100 lines and no module over 700; no module-level boolean
switches; applications live in subpackages, not beside the library modules."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path
from typing import Dict, List, Set

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mudsc"
MAX_FUNCTION_LINES = 100
MAX_MODULE_LINES = 700


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES: Dict[str, Path] = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
EXTENSIONS = {"mudsc._core", "mudsc._C"}  # compiled modules: leaves of the graph


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _imports(name: str) -> Set[str]:
    """Modules of ``mudsc`` that module ``name`` imports anywhere in its source (functions included)."""
    tree = ast.parse(MODULES[name].read_text())
    package = name if _is_package(name) else name.rpartition(".")[0]
    out: Set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names if alias.name in MODULES)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(base + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base.split(".")[0] != "mudsc":
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if sub not in EXTENSIONS:
                    out.add(sub if sub in MODULES else base)
    out.discard(name)
    return {m for m in out if m in MODULES}


def _find_cycle(graph: Dict[str, Set[str]]) -> List[str]:
    """One import cycle as a list of modules (first == last), or [] when the graph is a DAG."""
    state: Dict[str, int] = {}
    stack: List[str] = []

    def visit(node: str) -> List[str]:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return []


def test_the_checker_finds_a_cycle():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) == []


def test_relative_imports_resolve_to_modules():
    """The resolver itself: a few imports the package is known to have."""
    assert "mudsc.maps" in _imports("mudsc.similarity")
    assert "mudsc._native" in _imports("mudsc.backends")  # `from . import _native`: a submodule, not the package
    assert "mudsc.spec" in _imports("mudsc.methods.descent")


def test_no_import_cycle():
    graph = {name: _imports(name) for name in MODULES}
    cycle = _find_cycle(graph)
    assert not cycle, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_function_and_module_lengths(name):
    source = MODULES[name].read_text()
    lines = source.count("\n") + 1
    assert lines <= MAX_MODULE_LINES, f"{MODULES[name].relative_to(PACKAGE.parent)} has {lines} lines"
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            assert length <= MAX_FUNCTION_LINES, f"{name}.{node.name} (line {node.lineno}) has {length} lines"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_level_boolean_switch(name):
    """Configuration is passed as arguments: a module-level ``NAME = True/False`` is a hidden switch."""
    for node in ast.parse(MODULES[name].read_text()).body:
        value = node.value if isinstance(node, (ast.Assign, ast.AnnAssign)) else None
        if isinstance(value, ast.Constant) and isinstance(value.value, bool):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names = [ast.unparse(t) for t in targets]
            pytest.fail(f"{name} line {node.lineno}: module-level boolean {names} = {value.value}")


def test_applications_are_not_in_the_package_root():
    root = {p.stem for p in PACKAGE.glob("*.py")}
    apps = root & {"demo", "solver_demo", "cli", "cli_merge", "mnist", "problems"}
    assert not apps, f"applications beside the library modules: {sorted(apps)} (they belong in mudsc/cli, mudsc/demo)"


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n.startswith("mudsc.reference.")))
def test_reference_twins_mirror_the_native_modules(name):
    """gsplat's rule: ``mudsc.reference.X`` is the twin of ``mudsc.X``, with the same public names."""
    twin = importlib.import_module(name)
    native = importlib.import_module("mudsc." + name.rpartition(".")[2])
    assert twin.__all__, f"{name} declares no __all__"
    missing = [n for n in twin.__all__ if not hasattr(native, n)]
    assert not missing, f"{native.__name__} lacks the twins of {missing}"
