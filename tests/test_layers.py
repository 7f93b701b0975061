"""The package's layers: imports only point down (or sideways), never in a circle, and sit at the
top of their files except where a comment says why (an optional dependency)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "deeplab_edu"

# runtime/outputs -> fetch/checkpoint -> data/models -> crf/metrics/inference -> train/evaluate/
# search/runs/viz -> cli; a module may import from its own layer or any layer below it
LAYERS = {
    "deeplab_edu": 0,
    "deeplab_edu.runtime": 0,
    "deeplab_edu.outputs": 0,
    "deeplab_edu.fetch": 1,
    "deeplab_edu.checkpoint": 1,
    "deeplab_edu.data": 2,
    "deeplab_edu.models": 2,
    "deeplab_edu.crf": 3,
    "deeplab_edu.metrics": 3,
    "deeplab_edu.inference": 3,
    "deeplab_edu.train": 4,
    "deeplab_edu.runs": 4,
    "deeplab_edu.evaluate": 4,
    "deeplab_edu.crf_search": 4,
    "deeplab_edu.crf_training": 4,
    "deeplab_edu.viz": 4,
    "deeplab_edu.exercises": 4,
    "deeplab_edu.grading": 4,
    "deeplab_edu.cli": 5,
    "deeplab_edu.__main__": 5,
}
# the imports allowed inside functions: optional dependencies, named with the reason
# (resource: POSIX only; deeplab_edu.exercises: a refused function's stand-in runs in its own
# module, and reaches the checker through this import)
LATE_IMPORTS = {"pydensecrf.densecrf", "IPython.display", "resource", "deeplab_edu.exercises"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer(module: str) -> int:
    while module not in LAYERS:
        module = module.rsplit(".", 1)[0]
    return LAYERS[module]


def imports(path: Path) -> list[tuple[str, bool, int]]:
    """(imported module, at the top of the file?, line) for every import in a file, resolving
    ``from package import name`` to the submodule when ``name`` is one."""
    found = []
    tree = ast.parse(path.read_text())
    inside = {  # the imports inside a function or class (not run when the module is imported)
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
        for inner in ast.walk(node)
    }
    top = {id(node) for node in ast.walk(tree)} - inside
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, id(node) in top, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                target = candidate if candidate in MODULES else node.module
                found.append((target, id(node) in top, node.lineno))
    return found


def graph() -> dict[str, set[str]]:
    return {
        name: {target for target, _, _ in imports(path) if target in MODULES and target != name}
        for name, path in MODULES.items()
    }


def test_every_module_has_a_layer():
    assert all(layer(name) >= 0 for name in MODULES)


def test_no_import_runs_up_the_layers():
    upward = [
        f"{name} (layer {layer(name)}) imports {target} (layer {layer(target)})"
        for name, targets in graph().items()
        for target in targets
        if layer(target) > layer(name)
    ]
    assert upward == []


def test_no_circle_of_imports():
    edges, state, circles = graph(), {}, []

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for target in sorted(edges[node]):
            if state.get(target) == "open":
                circles.append(" -> ".join([*path[path.index(target) :], target]))
            elif target not in state:
                visit(target, [*path, target])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert circles == []


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_are_at_the_top_of_the_file(name):
    path = MODULES[name]
    lines = path.read_text().splitlines()
    late = [
        f"{path.name}:{line}: {target}"
        for target, at_top, line in imports(path)
        if not at_top and not (target in LATE_IMPORTS and "#" in lines[line - 1])
    ]
    assert late == []


def test_the_walk_sees_a_circle_and_an_upward_import(tmp_path, monkeypatch):
    # the checks above must be able to fail: a fake package with both defects
    fake = tmp_path / "deeplab_edu"
    (fake / "crf").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "runtime.py").write_text("from deeplab_edu.crf import lattice\n")
    (fake / "crf" / "__init__.py").write_text("")
    (fake / "crf" / "lattice.py").write_text("def f():\n    import deeplab_edu.runtime\n")
    this = sys.modules[__name__]
    monkeypatch.setattr(this, "PACKAGE", fake)
    monkeypatch.setattr(this, "MODULES", {module_name(p): p for p in fake.rglob("*.py")})
    with pytest.raises(AssertionError):
        test_no_import_runs_up_the_layers()
    with pytest.raises(AssertionError):
        test_no_circle_of_imports()
    with pytest.raises(AssertionError):
        test_imports_are_at_the_top_of_the_file("deeplab_edu.crf.lattice")


MAX_LINES = 40  # of code, docstring left out


def test_the_crf_functions_are_short_enough_to_read():
    """Every function of crf/ fits on a screen (issue: the readable core), unless its docstring
    says why not ("Long because ...")."""
    long = []
    for path in sorted((PACKAGE / "crf").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            docstring = ast.get_docstring(node) or ""
            body = node.body[1:] if docstring and len(node.body) > 1 else node.body
            lines = (node.end_lineno or node.lineno) - body[0].lineno + 1
            if lines > MAX_LINES and "Long because" not in docstring:
                long.append(f"{path.name}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, long
