"""Lua scripts shipped as package data, read once at first use (no I/O at import time).

Every script starts with ``#!lua`` (Redis 7 function flags: without it a script may reach keys of
other slots it did not declare); ``_prelude.lua`` (shared helpers) is inserted after that line.
"""

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


def _read(name: str) -> str:
    return resources.files(__package__).joinpath(f"{name}.lua").read_text(encoding="utf-8")


@cache
def script(name: str) -> LuaScript:
    text = _read(name)
    first, _, body = text.partition("\n")
    if not first.startswith("#!lua"):
        raise ValueError(f"scripts/{name}.lua must start with a #!lua line")
    source = f"{first}\n{_read('_prelude')}{body}"
    return LuaScript(name=name, source=source, sha=hashlib.sha1(source.encode()).hexdigest())


def known_scripts() -> list[LuaScript]:
    """Every script of the package (not the prelude), by name."""
    names = sorted(
        f.name[: -len(".lua")]
        for f in resources.files(__package__).iterdir()
        if f.name.endswith(".lua") and not f.name.startswith("_")
    )
    return [script(n) for n in names]
