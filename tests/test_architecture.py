"""The import rules of the code base, checked on every test run (read these before adding an import).

Packages, from the centre out::

    model/      what a trained model needs to run (layers, bundle, preprocessing, Predictor, registry fetch)
    training/   makes models            -> may import model
    service/    serves and scores       -> may import model, never training
    celltype/   the notebook API        -> may import model and service, never training
    cli/        assembles `celltype`    -> may import any of them
    benchmarks/ measures everything     -> may import any of them

Rules (every ``import``/``from ... import`` counts, at module level or inside a function, and so do the
subcommand modules ``cli/main.py`` loads by name from ``COMMAND_MODULES``):

1. ``model`` imports none of ``training``, ``service``, ``cli``, ``benchmarks``.
2. ``service`` never imports ``training``, and ``training`` never imports ``service``.
3. Only ``cli`` and ``benchmarks`` may import ``cli`` or ``benchmarks``; ``model``, ``training`` and
   ``service`` never import the notebook package ``celltype``, which imports no ``training``.
4. In ``model``, only the registry package and the pyfunc modules import ``mlflow``.
5. No import circle between modules: if A imports B (directly or through others), B does not import A.
   An import inside a function is still an import; a circle hidden that way is still a circle. Move what
   both need into a third module both import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("model", "training", "service", "celltype", "cli", "benchmarks")
FORBIDDEN = {
    "model": {"training", "service", "celltype", "cli", "benchmarks"},
    "training": {"service", "celltype", "cli", "benchmarks"},
    "service": {"training", "celltype", "cli", "benchmarks"},
    "celltype": {"training", "cli", "benchmarks"},
}
"""Package -> the packages it must never import (rules 1-3)."""
MLFLOW_IN_MODEL = ("model.registry", "model.pyfunc", "model.pyfunc_model")
"""Modules of ``model`` allowed to import mlflow (rule 4): the module itself and its submodules."""


def module_name(path: Path) -> str:
    """Dotted module name of a source file under :data:`ROOT` (a package's ``__init__`` is the package)."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_files() -> dict[str, Path]:
    """Every module of :data:`PACKAGES`, by dotted name."""
    return {module_name(path): path for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))}


def imported_names(path: Path, module: str) -> set[str]:
    """Absolute dotted names ``path`` imports anywhere in its body (``from a import b`` gives ``a`` and ``a.b``)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                prefix = ".".join([*base, *([node.module] if node.module else [])])
            else:
                prefix = node.module or ""
            names.add(prefix)
            names.update(f"{prefix}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "COMMAND_MODULES" for t in node.targets):
            names.update(ast.literal_eval(node.value))  # cli.main imports these by name (importlib)
    return names


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports (names resolved to the modules that exist)."""
    files = source_files()
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        targets = set()
        for name in imported_names(path, module):
            while name and name not in files:
                name = name.rpartition(".")[0]
            if name and name != module:
                targets.add(name)
        graph[module] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles of ``graph``: one list of modules per strongly connected component of size > 1."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


GRAPH = import_graph()


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_packages_import_only_towards_the_centre(package: str) -> None:
    wrong = sorted(
        f"{module} imports {target}"
        for module, targets in GRAPH.items()
        if module.split(".")[0] == package
        for target in targets
        if target.split(".")[0] in FORBIDDEN[package]
    )
    assert not wrong, f"forbidden imports (see the rules in {Path(__file__).name}):\n" + "\n".join(wrong)


def test_mlflow_is_imported_only_by_the_registry_and_pyfunc_modules_of_model() -> None:
    files = source_files()
    wrong = sorted(
        module
        for module, path in files.items()
        if module.split(".")[0] == "model"
        and not any(module == allowed or module.startswith(allowed + ".") for allowed in MLFLOW_IN_MODEL)
        and any(name.split(".")[0] == "mlflow" for name in imported_names(path, module))
    )
    assert not wrong, f"model modules importing mlflow outside {MLFLOW_IN_MODEL}: {wrong}"


def test_no_import_circles() -> None:
    found = cycles(GRAPH)
    assert not found, "import circles (modules that import each other, directly or through others):\n" + "\n".join(
        " <-> ".join(component) for component in found
    )


def test_the_checker_sees_circles_and_relative_imports() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    assert "model.errors" in GRAPH["model.preprocessing"]
    assert "training.cli" in GRAPH["cli.main"]  # the subcommand modules it loads with importlib
