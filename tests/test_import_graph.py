"""Imports inside ``verl_oel`` point one way, and every module can be the first one a process imports.

A cycle that is "broken" by an import inside a function still ties two modules into one: neither can be
read, moved or tested alone. So the graph counts every import (top level and inside functions, absolute
and relative, and ``import_module("verl_oel...")`` with a literal name) and must be acyclic.

How a package ``__init__`` relates to its submodules: importing ``verl_oel.pkg.mod`` from outside ``pkg``
runs ``verl_oel/pkg/__init__.py`` first, so it is an edge to ``verl_oel.pkg`` too; from inside ``pkg`` the
package is already importing, so it is not. ``from verl_oel.pkg import name`` where ``name`` is not a
submodule reads the ``__init__``, which is an edge to ``verl_oel.pkg`` from anywhere: a submodule that
imports a name its own ``__init__`` re-exports from it is a real cycle.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "verl_oel"


def module_files(root: Path = ROOT) -> dict[str, Path]:
    """Every module of the package, by dotted name (a package by its own name, for its ``__init__``)."""
    modules = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _is_package(name: str, modules: dict[str, Path]) -> bool:
    return modules[name].name == "__init__.py"


def _absolute(node: ast.ImportFrom, importer: str, modules: dict[str, Path]) -> str:
    if not node.level:
        return node.module or ""
    base = importer.split(".")
    if not _is_package(importer, modules):
        base.pop()
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imported_modules(importer: str, modules: dict[str, Path]) -> set[str]:
    """The package's modules that ``importer`` can import, anywhere in its source."""
    tree = ast.parse(modules[importer].read_text(), filename=str(modules[importer]))
    targets: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(node, importer, modules)
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                targets.add(submodule if submodule in modules else source)
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "id", getattr(node.func, "attr", None)) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            targets.add(node.args[0].value)
    edges = set()
    for target in targets:
        if target.split(".")[0] != PACKAGE:
            continue
        while target not in modules:  # `import verl_oel.pkg.name` of a name: the module that holds it
            target = target.rpartition(".")[0]
        edges.add(target)
        parts = target.split(".")
        for depth in range(2, len(parts)):  # the packages above it that `importer` is not inside
            package = ".".join(parts[:depth])
            if not (importer + ".").startswith(package + "."):
                edges.add(package)
    edges.discard(importer)
    return edges


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    modules = module_files(root)
    return {name: imported_modules(name, modules) for name in modules}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as ``[a, b, ..., a]``, or None; depth-first search with three colours."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return path[path.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_graph_sees_every_kind_of_import(tmp_path):
    package = tmp_path / PACKAGE
    (package / "pkg").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "pkg" / "__init__.py").write_text("from .mod import thing\n")
    (package / "pkg" / "mod.py").write_text("def f():\n    from verl_oel import top\n")
    (package / "pkg" / "other.py").write_text("from verl_oel.pkg import thing\nfrom . import mod\n")
    (package / "top.py").write_text("import verl_oel.pkg.mod\nimport_module('verl_oel.pkg.other')\n")
    graph = import_graph(tmp_path)
    assert graph["verl_oel.pkg.mod"] == {"verl_oel.top"}
    assert graph["verl_oel.pkg.other"] == {"verl_oel.pkg", "verl_oel.pkg.mod"}
    assert graph["verl_oel.top"] == {"verl_oel.pkg", "verl_oel.pkg.mod", "verl_oel.pkg.other"}
    cycle = find_cycle(graph)
    assert cycle[0] == cycle[-1] and {"verl_oel.pkg.mod", "verl_oel.top"} <= set(cycle)
    (package / "pkg" / "mod.py").write_text("thing = 1\n")
    assert find_cycle(import_graph(tmp_path)) is None


def test_imports_inside_verl_oel_have_no_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


_THIRD_PARTY_IMPORTED = """
import importlib, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
print("\\n".join(sorted(n for n in sys.modules if n.split(".")[0] not in ("verl", "verl_oel", "__main__"))))
"""

_IMPORT_EACH_FIRST = """
import importlib, os, sys, traceback
for library in sys.stdin.read().split():
    try:
        importlib.import_module(library)
    except Exception:
        pass  # a library that needs another imported first; the child imports it then
assert not any(name.split(".")[0] in ("verl", "verl_oel") for name in sys.modules)
failed = []
for name in sys.argv[1:]:
    child = os.fork()
    if child == 0:
        try:
            importlib.import_module(name)
        except BaseException:
            traceback.print_exc()
            os._exit(1)
        os._exit(0)
    if os.waitpid(child, 0)[1]:
        failed.append(name)
print("failed:", failed)
sys.exit(1 if failed else 0)
"""


def test_every_module_imports_first_in_a_fresh_interpreter():
    """Each module is the first of verl and verl_oel that its process imports: a cycle through verl's
    plugin entry point (``import verl`` loads ``verl_oel.plugin``) shows only there.

    Importing torch, vLLM and the rest anew for each of ~60 modules would take minutes, so each module
    gets a child forked from a parent that has already imported every third-party module the package
    imports, and nothing of verl or verl_oel (one parent: the preload is most of the time, ~90 s in all
    on 2 cores)."""
    names = sorted(module_files())
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    libraries = subprocess.run(
        [sys.executable, "-c", _THIRD_PARTY_IMPORTED, *names],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout
    run = subprocess.run(
        [sys.executable, "-c", _IMPORT_EACH_FIRST, *names],
        cwd=ROOT,
        env=env,
        input=libraries,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-6000:]
