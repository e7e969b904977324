"""Apps whose outcomes are known in advance, for the metrics and log tests (tests/test_metrics.py).

* ``count``: ``target`` ticks, then done (completes, ``target + 1`` steps).
* ``always_fails``: its only action raises; two attempts, so one retry, then failed.
* ``fails_once``: fails until the file named in its state exists (the failure creates it): one
  retry, then completes.
"""

from __future__ import annotations

import os

from burr.core import ApplicationBuilder, State, action, expr

from burr_dist import Registry, RetryPolicy
from burr_dist.fleet.registry import AppContext

registry = Registry()
QUICK = RetryPolicy(max_attempts=2, initial_delay=0.05, max_delay=0.05)


@action(reads=["n"], writes=["n"])
def tick(state: State) -> State:
    return state.update(n=state["n"] + 1)


@action(reads=["n"], writes=["done"])
def finish(state: State) -> State:
    return state.update(done=True)


@registry.app("count", entrypoint="tick", default_state={"n": 0, "target": 3})
def count(ctx: AppContext) -> ApplicationBuilder:
    return (
        ApplicationBuilder()
        .with_actions(tick=tick, finish=finish)
        .with_transitions(("tick", "tick", expr("n < target")), ("tick", "finish"))
    )


@action(reads=[], writes=["x"])
def explode(state: State) -> State:
    raise RuntimeError("always fails")


@registry.app("always_fails", entrypoint="explode", retry=QUICK)
def always_fails(ctx: AppContext) -> ApplicationBuilder:
    return (
        ApplicationBuilder()
        .with_actions(explode=explode, finish=finish)
        .with_transitions(("explode", "finish"))
    )


@action(reads=["marker"], writes=["x"])
def flaky(state: State) -> State:
    if not os.path.exists(state["marker"]):
        open(state["marker"], "w").close()
        raise ConnectionError("first call fails")
    return state.update(x=1)


@registry.app("fails_once", entrypoint="flaky", default_state={"n": 0}, retry=QUICK)
def fails_once(ctx: AppContext) -> ApplicationBuilder:
    return ApplicationBuilder().with_actions(flaky=flaky, finish=finish).with_transitions(("flaky", "finish"))
