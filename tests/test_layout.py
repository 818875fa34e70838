"""The package's shape: no import loops, a public API editors can resolve, scenarios found by folder."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import labkit
from labkit.core import scenario as registry

PACKAGE = Path(labkit.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every labkit module this file imports, at its top or inside a function (both can loop)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("labkit"):
            for alias in node.names:  # `from labkit.llm import upstream` imports a module
                sub = f"{node.module}.{alias.name}"
                found.add(sub if (PACKAGE.parent / sub.replace(".", "/")).with_suffix(".py").exists() else node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("labkit"))
    return found


def _graph() -> dict[str, set[str]]:
    graph = {_module_name(p): _imports(p) for p in PACKAGE.rglob("*.py")}
    return {m: {i for i in deps if i in graph and i != m and i != "labkit"} for m, deps in graph.items()
            if m != "labkit"}  # the top level only re-exports, lazily


def test_no_module_imports_another_in_a_loop():
    graph = _graph()
    loops = []

    def visit(module: str, path: list[str]) -> None:
        for dep in graph[module]:
            if dep in path:
                loops.append(" -> ".join(path[path.index(dep):] + [dep]))
            elif dep not in done:
                visit(dep, path + [dep])
        done.add(module)

    done: set[str] = set()
    for module in graph:
        if module not in done:
            visit(module, [module])
    assert not loops, loops


def test_the_public_api_is_what_editors_see():
    """The lazy names and the TYPE_CHECKING imports list the same API, and every name resolves."""
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    checked = next(n for n in tree.body if isinstance(n, ast.If) and getattr(n.test, "id", "") == "TYPE_CHECKING")
    seen = {f"{node.module}:{a.name}" for node in checked.body for a in node.names}
    assert seen == {f"labkit.{where}:{name}" for name, where in labkit._WHERE.items()}
    for name in labkit.__all__:
        assert getattr(labkit, name) is getattr(importlib.import_module(f"labkit.{labkit._WHERE[name]}"), name)


def test_every_scenario_module_defines_a_scenario_and_nothing_else_lives_there():
    registered = {s.name: s for s in registry.all_scenarios()}
    for module in pkgutil.iter_modules(importlib.import_module("labkit.scenarios").__path__):
        mod = importlib.import_module(f"labkit.scenarios.{module.name}")
        own = [v for v in vars(mod).values() if isinstance(v, registry.Scenario)]
        assert own and all(registered.get(s.name) is s for s in own), module.name
