"""No import cycles inside the landuse package.

The graph is read from the source (every import statement, including those inside
functions, which only put a cycle off until the function runs), not from what Python has
imported: a module importing another at module level or lazily depends on it either way.
"""

from __future__ import annotations

import ast
from pathlib import Path

import landuse

PACKAGE_DIR = Path(landuse.__file__).resolve().parent

def module_files(package_dir: Path) -> dict[str, Path]:
    """Dotted module name -> source file of every module of the package."""
    modules = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def imported_modules(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that ``module`` imports anywhere in its source."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    targets: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            for alias in node.names:  # ``from pkg import module`` names the module itself
                submodule = f"{base}.{alias.name}"
                targets.append(submodule if submodule in modules else base)
    found = set()
    for target in targets:
        while target and target not in modules:  # ``import a.b.C``: the module a.b
            target = target.rpartition(".")[0]
        if target and target != module:
            found.add(target)
    return found


def import_cycles(package_dir: Path) -> list[list[str]]:
    """Groups of modules that import each other, directly or around a loop (the strongly
    connected components of more than one module), each sorted, sorted."""
    modules = module_files(package_dir)
    graph = {name: imported_modules(name, path, modules) for name, path in modules.items()}
    order: dict[str, int] = {}
    lowest: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(name: str) -> None:
        order[name] = lowest[name] = len(order)
        stack.append(name)
        for other in sorted(graph[name]):
            if other not in order:
                visit(other)
                lowest[name] = min(lowest[name], lowest[other])
            elif other in stack:
                lowest[name] = min(lowest[name], order[other])
        if lowest[name] == order[name]:
            group = stack[stack.index(name):]
            del stack[stack.index(name):]
            if len(group) > 1:
                cycles.append(sorted(group))

    for name in sorted(graph):
        if name not in order:
            visit(name)
    return sorted(cycles)


def test_the_package_has_no_import_cycles():
    assert import_cycles(PACKAGE_DIR) == []


def test_cycles_are_found_through_function_level_imports(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg.sub import b\n")
    (package / "sub" / "b.py").write_text("def f():\n    from .. import a\n")
    (package / "c.py").write_text("import pkg.a\n")
    assert import_cycles(package) == [["pkg.a", "pkg.sub.b"]]
