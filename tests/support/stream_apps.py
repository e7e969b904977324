"""Apps whose actions stream slowly, for tests/test_streaming.py (and docs/guides/streaming.md).

Each streaming action yields its tokens ``DELAY`` seconds apart, so a reader in another process
can see the first ones long before the step commits.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Generator
from typing import Any

from burr.core import ApplicationBuilder, State, action
from burr.core.action import streaming_action

from burr_dist import Registry
from burr_dist.fleet.registry import AppContext

registry = Registry()
DELAY = 0.2
TOKENS = ["Streams", " reach", " clients", " live", "."]

Tokens = Generator[tuple[dict[str, Any], State | None], None, None]


@streaming_action(reads=["prompt"], writes=["answer"])
def write_answer(state: State) -> Tokens:
    for token in TOKENS:
        time.sleep(DELAY)
        yield {"token": token}, None
    text = "".join(TOKENS)
    yield {"answer": text}, state.update(answer=text)


@registry.app("stream_sync")
def stream_sync(ctx: AppContext) -> ApplicationBuilder[Any]:
    """A sync app: one streaming step (run on the worker's thread pool), then it completes."""
    return (
        ApplicationBuilder()
        .with_actions(write_answer=write_answer)
        .with_transitions()
        .with_state(prompt="hi", answer="")
        .with_entrypoint("write_answer")
    )


@streaming_action(reads=[], writes=["answer", "history"])
async def reply(state: State, question: str) -> AsyncGenerator[tuple[dict[str, Any], State | None], None]:
    words = [f"{question}:", *TOKENS]
    for word in words:
        await asyncio.sleep(DELAY)
        yield {"token": word}, None
    text = "".join(words)
    yield {"answer": text}, state.update(answer=text).append(history=text)


@registry.app("stream_chat", halt_after=["reply"])
def stream_chat(ctx: AppContext) -> ApplicationBuilder[Any]:
    """An async streaming action that parks after each answer (halt_after) until resumed with
    the next question: each resume streams a new step."""
    return (
        ApplicationBuilder()
        .with_actions(reply=reply)
        .with_transitions(("reply", "reply"))
        .with_state(answer="", history=[])
        .with_entrypoint("reply")
    )


class Opaque:
    """No codec stores it."""


@streaming_action(reads=[], writes=["done"])
def odd_items(state: State) -> Tokens:
    yield {"token": "fine"}, None
    yield {"token": Opaque()}, None  # written as an error record; the step goes on
    yield {"token": "also fine"}, None
    yield {"done": True}, state.update(done=True)


@registry.app("stream_odd")
def stream_odd(ctx: AppContext) -> ApplicationBuilder[Any]:
    return (
        ApplicationBuilder()
        .with_actions(odd_items=odd_items)
        .with_transitions()
        .with_state(done=False)
        .with_entrypoint("odd_items")
    )


@action(reads=["n"], writes=["n"])
def bump(state: State) -> State:
    return state.update(n=state["n"] + 1)


@registry.app("no_stream")
def no_stream(ctx: AppContext) -> ApplicationBuilder[Any]:
    """No streaming action: its run must write no stream key."""
    return (
        ApplicationBuilder()
        .with_actions(bump=bump)
        .with_transitions()
        .with_state(n=0)
        .with_entrypoint("bump")
    )
