"""The package layout's rules: old module paths still import (with a warning), the runtime never
imports the testing package, and no two modules import each other (directly or in a ring)."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import burr_dist
from burr_dist._moved import MOVED

PKG = Path(burr_dist.__file__).parent


@pytest.mark.parametrize("old", sorted(MOVED))
def test_an_old_module_path_is_the_new_module_with_a_warning(old: str) -> None:
    new = importlib.import_module(MOVED[old])
    sys.modules.pop(old, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        aliased = importlib.import_module(old)
    assert aliased is new  # one module object: patching either name patches both
    assert new.__spec__ is not None and new.__spec__.name == MOVED[old]
    assert [str(w.message) for w in caught if w.category is DeprecationWarning] == [
        f"{old} moved to {MOVED[old]}; the old path goes away in the next release"
    ]


def test_old_package_exports_still_resolve() -> None:
    from burr_dist.store import RedisStore, StoreConfig
    from burr_dist.worker import Worker

    assert (RedisStore.__module__, StoreConfig.__module__) == (
        "burr_dist.store.clients",
        "burr_dist.store.core",
    )
    assert Worker.__module__ == "burr_dist.worker.process"
    with pytest.raises(ImportError, match="nothing"):
        from burr_dist.store import nothing  # type: ignore[attr-defined]  # noqa: F401


def test_the_runtime_never_imports_the_testing_package() -> None:
    code = (
        "import sys, burr_dist, burr_dist.cli, burr_dist.worker.process, burr_dist.ui.backend, "
        "burr_dist.observability.metrics; "
        "print(sorted(m for m in sys.modules if m.startswith('burr_dist.testing')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _module_imports(path: Path) -> set[str]:
    """burr_dist modules that `path` imports at module level (TYPE_CHECKING blocks excluded)."""
    found: set[str] = set()
    tree = ast.parse(path.read_text())
    nodes = [n for n in tree.body if not (isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test))]
    for node in nodes:
        for sub in ast.walk(node):
            if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            if isinstance(sub, ast.ImportFrom) and sub.module and sub.module.startswith("burr_dist"):
                for alias in sub.names:
                    full = f"{sub.module}.{alias.name}"
                    found.add(
                        full if (PKG.parent / (full.replace(".", "/") + ".py")).exists() else sub.module
                    )
            elif isinstance(sub, ast.Import):
                found.update(a.name for a in sub.names if a.name.startswith("burr_dist"))
    return found


def test_no_import_circles() -> None:
    graph: dict[str, set[str]] = {}
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG.parent).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        graph[name] = {m for m in _module_imports(path) if m != name}
    state: dict[str, int] = {}
    rings: list[list[str]] = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                rings.append([*trail[trail.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not rings, rings
