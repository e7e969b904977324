"""One app's fenced state: the sans-IO store calls, the sync and async stores, the snapshot codec
and delta chains, leases, Burr persisters, and ``run_app`` for a single process."""

from __future__ import annotations

import importlib
from typing import Any

# What ``burr_dist.store`` exported before the store became a package: kept for one release,
# imported on first use so that importing a submodule does not load the whole store.
_NAMES = {
    "AsyncRedisStore": "clients",
    "RedisStore": "clients",
    "DEFAULT_KEEP": "core",
    "DURABLE_SCRIPTS": "core",
    "JOB_FIELDS": "core",
    "Acquired": "core",
    "Call": "core",
    "Committed": "core",
    "Held": "core",
    "NotRunnable": "core",
    "Settle": "core",
    "StoreConfig": "core",
    "StoreCore": "core",
    "scored": "core",
}


def __getattr__(name: str) -> Any:
    module = _NAMES.get(name)
    if module is None:
        raise AttributeError(f"module 'burr_dist.store' has no attribute {name!r}")
    return getattr(importlib.import_module(f"burr_dist.store.{module}"), name)
