"""Example Burr apps for a burr_dist fleet. Start workers on them with:

    burr-dist worker examples.apps --concurrency 8

(a) ``approval``: drafts a document in several steps, then waits for a human to approve it.
(b) ``flaky_tool``: calls a tool that fails now and then; burr_dist retries it with backoff.
(c) ``async_research``: an async app whose actions await I/O; runs concurrently on the loop.
(d) ``counter``: N trivial steps (used by the benchmarks and tests).
"""

from __future__ import annotations

import asyncio
import os
import random
import time

from burr.core import ApplicationBuilder, State, action, expr

from burr_dist import Registry, RetryPolicy
from burr_dist.fleet.registry import AppContext

registry = Registry()


# (a) multi-step app with a human approval step -------------------------------------------------
@action(reads=["topic"], writes=["outline"])
def outline(state: State) -> State:
    return state.update(outline=[f"{state['topic']}: part {i}" for i in range(1, 4)])


@action(reads=["outline"], writes=["draft"])
def write_draft(state: State) -> State:
    return state.update(draft=" / ".join(state["outline"]))


@action(reads=["draft"], writes=["approved", "reviewer"])
def human_review(state: State, approved: bool, reviewer: str = "someone") -> State:
    return state.update(approved=bool(approved), reviewer=reviewer)


@action(reads=["draft", "approved"], writes=["published"])
def publish(state: State) -> State:
    return state.update(published=state["approved"])


@registry.app("approval", entrypoint="outline", default_state={"topic": "burr"}, halt_before=["human_review"])
def approval(ctx: AppContext) -> ApplicationBuilder:
    return (
        ApplicationBuilder()
        .with_actions(outline=outline, write_draft=write_draft, human_review=human_review, publish=publish)
        .with_transitions(
            ("outline", "write_draft"), ("write_draft", "human_review"), ("human_review", "publish")
        )
    )


# (b) a tool call that fails now and then ------------------------------------------------------
FAIL_RATE = float(os.environ.get("BURR_DIST_EXAMPLE_FAIL_RATE", "0.3"))


@action(reads=["query"], writes=["result", "calls"])
def call_tool(state: State) -> State:
    if random.random() < FAIL_RATE:
        raise ConnectionError("tool endpoint timed out (simulated)")
    return state.update(result=f"answer to {state['query']}", calls=state.get("calls", 0) + 1)


@action(reads=["result"], writes=["summary"])
def summarize(state: State) -> State:
    return state.update(summary=state["result"].upper())


@registry.app(
    "flaky_tool",
    entrypoint="call_tool",
    default_state={"query": "weather", "calls": 0},
    retry=RetryPolicy(max_attempts=8, initial_delay=0.05, max_delay=0.5),
)
def flaky_tool(ctx: AppContext) -> ApplicationBuilder:
    return (
        ApplicationBuilder()
        .with_actions(call_tool=call_tool, summarize=summarize)
        .with_transitions(("call_tool", "summarize"))
    )


# (c) an async app ------------------------------------------------------------------------------
@action(reads=["question"], writes=["sources"])
async def search(state: State) -> State:
    await asyncio.sleep(0.01)  # stands in for an HTTP call
    return state.update(sources=[f"{state['question']} source {i}" for i in range(3)])


@action(reads=["sources"], writes=["notes"])
async def read_sources(state: State) -> State:
    await asyncio.sleep(0.01)
    return state.update(notes=[s.upper() for s in state["sources"]])


@action(reads=["notes"], writes=["answer"])
async def answer(state: State) -> State:
    return state.update(answer=f"{len(state['notes'])} notes")


@registry.app("async_research", entrypoint="search", default_state={"question": "why redis"})
def async_research(ctx: AppContext) -> ApplicationBuilder:
    return (
        ApplicationBuilder()
        .with_actions(search=search, read_sources=read_sources, answer=answer)
        .with_transitions(("search", "read_sources"), ("read_sources", "answer"))
    )


# (d) N trivial steps --------------------------------------------------------------------------
STEP_DELAY = float(os.environ.get("BURR_DIST_EXAMPLE_STEP_DELAY", "0"))


@action(reads=["n"], writes=["n"])
def tick(state: State) -> State:
    if STEP_DELAY:
        time.sleep(STEP_DELAY)  # stands in for real work, so a demo can kill a worker mid-app
    return state.update(n=state["n"] + 1)


@action(reads=["n"], writes=["done"])
def finish(state: State) -> State:
    return state.update(done=True)


@registry.app("counter", entrypoint="tick", default_state={"n": 0, "target": 10})
def counter(ctx: AppContext) -> ApplicationBuilder:
    return (
        ApplicationBuilder()
        .with_actions(tick=tick, finish=finish)
        .with_transitions(("tick", "tick", expr("n < target")), ("tick", "finish"))
    )
