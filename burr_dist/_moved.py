"""Old module paths (before the package was laid out by layer) keep working for one release.

``import burr_dist.codec`` returns the module ``burr_dist.store.codec`` itself (not a copy, so
monkeypatching either name patches both) and warns once with a DeprecationWarning naming the new
path. ``burr_dist.store``, ``burr_dist.worker`` and ``burr_dist.transport`` are packages now; the
first two still export what the old modules exported (``from burr_dist.store import StoreConfig``).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from collections.abc import Sequence
from types import ModuleType

MOVED = {
    "burr_dist.urls": "burr_dist.transport.urls",
    "burr_dist.connection": "burr_dist.transport.connect",
    "burr_dist.async_transport": "burr_dist.transport.aio",
    "burr_dist.store_core": "burr_dist.store.core",
    "burr_dist.codec": "burr_dist.store.codec",
    "burr_dist.deltas": "burr_dist.store.deltas",
    "burr_dist.persister": "burr_dist.store.persister",
    "burr_dist.lease": "burr_dist.store.lease",
    "burr_dist.runner": "burr_dist.store.standalone",
    "burr_dist.fleet_core": "burr_dist.fleet.core",
    "burr_dist.queue": "burr_dist.fleet.client",
    "burr_dist.registry": "burr_dist.fleet.registry",
    "burr_dist.migrate": "burr_dist.fleet.migrate",
    "burr_dist.claiming": "burr_dist.worker.claiming",
    "burr_dist.upkeep": "burr_dist.worker.upkeep",
    "burr_dist.inline": "burr_dist.worker.inline",
    "burr_dist.safety": "burr_dist.worker.safety",
    "burr_dist.running": "burr_dist.worker.claim_runner",
    "burr_dist.observe": "burr_dist.worker.hooks",
    "burr_dist.metrics": "burr_dist.observability.metrics",
    "burr_dist.logs": "burr_dist.observability.logs",
    "burr_dist.tracking": "burr_dist.observability.tracking",
    "burr_dist.trackers": "burr_dist.observability.burr_compat",
    "burr_dist.embedded": "burr_dist.testing.embedded",
    "burr_dist.topology_servers": "burr_dist.testing.topologies",
    "burr_dist.sentinel_servers": "burr_dist.testing.sentinel",
    "burr_dist.chaos": "burr_dist.testing",
    "burr_dist.chaos.history": "burr_dist.testing.history",
}


class _Alias(importlib.abc.Loader):
    def __init__(self, target: str) -> None:
        self.target = target
        self.spec: importlib.machinery.ModuleSpec | None = None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        warnings.warn(
            f"{spec.name} moved to {self.target}; the old path goes away in the next release",
            DeprecationWarning,
            stacklevel=2,
        )
        module = importlib.import_module(self.target)
        self.spec = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        # The import system has just set __spec__ to the alias's spec; the module keeps its own.
        module.__spec__ = self.spec


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        new = MOVED.get(fullname)
        return None if new is None else importlib.machinery.ModuleSpec(fullname, _Alias(new))


def install() -> None:
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())  # before path finders: a stale old file never wins
