"""The shape of the package (docs/ARCHITECTURE.md), checked on its source.

Each concept has one home: modes are compared by name only inside ``scoring_modes``,
composition methods only inside ``composition_methods``; no module reaches into
another's private names; and modules depend on each other without cycles, imports
inside functions included (a lazy import is still a dependency).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "xcross_registry"


def _modules() -> dict[str, ast.Module]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = ast.parse(path.read_text(), str(path))
    return found


def _runtime_nodes(tree: ast.AST):
    """Every node of ``tree`` except those under ``if TYPE_CHECKING:`` (annotations only)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from (n for child in node.orelse for n in [child, *_runtime_nodes(child)])
            continue
        yield node
        yield from _runtime_nodes(node)


def _imports(name: str, tree: ast.Module, modules: set[str]):
    """(imported module, imported names) for every relative or package import that runs."""
    package = name if (PACKAGE.parent / name.replace(".", "/") / "__init__.py").exists() \
        else name.rpartition(".")[0]
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("xcross_registry"):
                continue
            names = [alias.name for alias in node.names]
            objects = [n for n in names if f"{target}.{n}" not in modules]
            if objects:
                yield target, objects
            for sub in sorted(set(names) - set(objects)):  # `from . import api`: the submodule
                yield f"{target}.{sub}", []
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("xcross_registry"):
                    yield alias.name, []


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, tree in modules.items():
        for target, _ in _imports(name, tree, set(modules)):
            while target not in modules and "." in target:
                target = target.rpartition(".")[0]
            if target != name:
                graph[name].add(target)
    return graph


def test_no_module_imports_another_modules_private_names():
    modules = _modules()
    private = [f"{name} imports {target}.{imported}"
               for name, tree in modules.items()
               for target, names in _imports(name, tree, set(modules)) if target != name
               for imported in names if imported.startswith("_") and not imported.startswith("__")]
    assert private == []


def test_the_module_import_graph_has_no_cycle():
    graph = _graph()
    state: dict[str, int] = {}
    path: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert cycles == []


COMPARE = re.compile(r"""\b(mode|method)\b\s*(==|!=|\bin\b|\bnot in\b)\s*[("'\[]""")


def test_modes_and_methods_are_compared_by_name_only_in_their_tables():
    homes = (PACKAGE / "scoring_modes", PACKAGE / "composition_methods",
             PACKAGE / "composition_methods.py")
    offending = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if any(home == path or home in path.parents for home in homes):
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if COMPARE.search(line.split("#")[0]):
                offending.append(f"{path.relative_to(PACKAGE.parent)}:{number}: {line.strip()}")
    assert offending == []


def test_every_subpackage_is_installed():
    """A subpackage missing from pyproject's list works in an editable install and is
    absent from the wheel: a fresh machine's `pip install .` would fail at import."""
    import tomllib

    listed = set(tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())
                 ["tool"]["setuptools"]["packages"])
    found = {".".join(path.parent.relative_to(PACKAGE.parent).parts)
             for path in PACKAGE.rglob("__init__.py")}
    assert found - listed == set()
