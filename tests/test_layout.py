"""The package's shape: no import cycle, and the serving path never reaches for the tools.

Read from the source with ast (nothing is imported), so a lazy import inside a function counts
as much as one at the top of a module. Imports under ``if TYPE_CHECKING:`` are left out of
the cycle check: they never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "processor"

# The path of a transaction: none of these may import processor.tools (seeding, the
# evaluator, JSON records, the demo), however lazily.
SERVING = ["service", "flow", "wire", "engine", "cache", "store", "program"]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _type_checking_block(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.If)
        and isinstance(node.test, ast.Name)
        and node.test.id == "TYPE_CHECKING"
    )


def imports_of(name: str, *, top_level_only: bool) -> set[str]:
    """The processor modules ``name`` imports (a package's submodule when named from it)."""
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    found: set[str] = set()

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if _type_checking_block(child):
                continue
            inside = top and not isinstance(
                child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda
            )
            if top_level_only and not inside:
                continue
            if isinstance(child, ast.Import):
                found.update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                for alias in child.names:
                    submodule = f"{child.module}.{alias.name}"
                    # `from package import module` needs the module, not the package's names.
                    found.add(submodule if submodule in MODULES else child.module)
            visit(child, inside)

    visit(tree, True)
    return {module for module in found if module in MODULES and module != name}


def test_the_package_has_no_import_cycle() -> None:
    graph = {name: imports_of(name, top_level_only=True) for name in MODULES}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def walk(name: str) -> None:
        state[name] = 1
        path.append(name)
        for imported in sorted(graph[name]):
            if state.get(imported) == 1:
                cycle = [*path[path.index(imported) :], imported]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if imported not in state:
                walk(imported)
        path.pop()
        state[name] = 2

    for name in MODULES:
        if name not in state:
            walk(name)


@pytest.mark.parametrize("area", SERVING)
def test_the_serving_path_never_imports_the_tools(area: str) -> None:
    offending = {
        name: sorted(
            module
            for module in imports_of(name, top_level_only=False)
            if module.startswith("processor.tools")
        )
        for name in MODULES
        if name == f"processor.{area}" or name.startswith(f"processor.{area}.")
    }
    offending = {name: found for name, found in offending.items() if found}
    assert not offending, f"processor.{area} imports the tools: {offending}"


def test_every_package_folder_has_an_init_saying_what_it_holds() -> None:
    for folder in sorted(path for path in PACKAGE.rglob("*") if path.is_dir()):
        if folder.name in {"__pycache__", "migrations"}:
            continue
        init = folder / "__init__.py"
        assert init.exists(), f"{folder.relative_to(ROOT)} has no __init__.py"
        assert ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))), (
            f"{init.relative_to(ROOT)} has no docstring saying what the package holds"
        )


def test_no_bare_assert_in_the_package() -> None:
    # `python -O` removes asserts: invariants use processor.errors.check / present instead.
    found = [
        f"{path.relative_to(ROOT)}:{node.lineno}"
        for path in MODULES.values()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Assert)
    ]
    assert not found, f"bare asserts: {found}"
