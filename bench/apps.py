"""Apps and no-op jobs for bench/fleet.py.

``one``: a single action, no transitions: exactly one step. ``ten``: one action that loops until
``n == 10``: exactly ten steps. ``noop`` / ``anoop``: the RQ and arq jobs compared against them.
"""

from __future__ import annotations

from typing import Any

from burr.core import ApplicationBuilder, State, action, expr

from burr_dist import Registry
from burr_dist.registry import AppContext

registry = Registry()
STEPS = {"one": 1, "ten": 10}


@action(reads=["n"], writes=["n"])
def tick(state: State) -> State:
    return state.update(n=state["n"] + 1)


@registry.app("one", entrypoint="tick", default_state={"n": 0})
def one(ctx: AppContext) -> ApplicationBuilder:
    return ApplicationBuilder().with_actions(tick=tick)


@registry.app("ten", entrypoint="tick", default_state={"n": 0})
def ten(ctx: AppContext) -> ApplicationBuilder:
    return ApplicationBuilder().with_actions(tick=tick).with_transitions(("tick", "tick", expr("n < 10")))


def noop() -> None:
    """RQ job."""


async def anoop(ctx: dict[str, Any]) -> None:
    """arq job."""
