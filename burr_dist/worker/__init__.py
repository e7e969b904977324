"""Workers: the process that claims apps (``process``), its claim loop (``claiming``), what runs
one claim (``claim_runner``), upkeep, inline stepping, safety checks, and lease-operation hooks."""

from __future__ import annotations

import importlib
from typing import Any


def __getattr__(name: str) -> Any:  # ``from burr_dist.worker import Worker``, as before
    if name == "Worker":
        return importlib.import_module("burr_dist.worker.process").Worker
    raise AttributeError(f"module 'burr_dist.worker' has no attribute {name!r}")
