"""Lua scripts shipped as package data, read once at first use (no I/O at import time)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from importlib import resources


@dataclass(frozen=True)
class LuaScript:
    name: str
    source: str
    sha: str


@cache
def script(name: str) -> LuaScript:
    source = resources.files(__package__).joinpath(f"{name}.lua").read_text(encoding="utf-8")
    return LuaScript(name=name, source=source, sha=hashlib.sha1(source.encode()).hexdigest())
