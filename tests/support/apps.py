"""Small Burr apps and a sync/async driver, so persister tests run once per flavour.

The counter app: ``inc`` adds one to ``n`` while ``n < limit``, then ``done`` sets ``finished``
and the app halts. ``flaky`` makes ``inc`` raise once when ``n`` reaches a value.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from burr.core import ApplicationBuilder, State, action, expr
from burr.core.persistence import PersisterHook, PersisterHookAsync

from burr_dist import AsyncRedisPersister, AsyncRedisStore, RedisPersister, RedisStore, StoreConfig
from burr_dist.transport.connect import aconnect, connect


class Flaky:
    """``inc`` raises ``RuntimeError`` the first ``times`` times it runs with ``n == at``."""

    def __init__(self, at: int, times: int = 1) -> None:
        self.at = at
        self.left = times
        self.raised = 0

    def maybe_raise(self, n: int) -> None:
        if n == self.at and self.left > 0:
            self.left -= 1
            self.raised += 1
            raise RuntimeError(f"flaky inc at n={n}")


def counter_actions(is_async: bool, flaky: Flaky | None = None) -> dict[str, Any]:
    if is_async:

        @action(reads=["n"], writes=["n"])
        async def inc(state: State) -> State:
            if flaky is not None:
                flaky.maybe_raise(state["n"])
            await asyncio.sleep(0)
            return state.update(n=state["n"] + 1)

        @action(reads=["n"], writes=["finished"])
        async def done(state: State) -> State:
            return state.update(finished=True)

    else:

        @action(reads=["n"], writes=["n"])
        def inc(state: State) -> State:  # type: ignore[misc]
            if flaky is not None:
                flaky.maybe_raise(state["n"])
            return state.update(n=state["n"] + 1)

        @action(reads=["n"], writes=["finished"])
        def done(state: State) -> State:  # type: ignore[misc]
            return state.update(finished=True)

    return {"inc": inc, "done": done}


def counter_builder(
    persister: Any,
    app_id: str,
    partition_key: str | None,
    *,
    is_async: bool = False,
    limit: int = 5,
    flaky: Flaky | None = None,
    fork_from_app_id: str | None = None,
    fork_from_sequence_id: int | None = None,
    fork_from_partition_key: str | None = None,
    hooks: tuple[Any, ...] = (),
) -> ApplicationBuilder:
    builder = (
        ApplicationBuilder()
        .with_actions(**counter_actions(is_async, flaky))
        .with_transitions(("inc", "inc", expr(f"n < {limit}")), ("inc", "done"))
        .initialize_from(
            persister,
            resume_at_next_action=True,
            default_state={"n": 0},
            default_entrypoint="inc",
            fork_from_app_id=fork_from_app_id,
            fork_from_sequence_id=fork_from_sequence_id,
            fork_from_partition_key=fork_from_partition_key,
        )
        .with_state_persister(persister)
        .with_identifiers(app_id=app_id, partition_key=partition_key)
    )
    if hooks:
        builder = builder.with_hooks(*hooks)
    return builder


class Driver:
    """Runs the same test body against RedisPersister (build/step) or AsyncRedisPersister
    (abuild/astep). Async calls run on a private event loop owned by the driver."""

    def __init__(self, url: str, is_async: bool) -> None:
        self.url = url
        self.is_async = is_async
        self.loop = asyncio.new_event_loop() if is_async else None
        self._clients: list[Any] = []

    @property
    def name(self) -> str:
        return "async" if self.is_async else "sync"

    def run(self, value: Any) -> Any:
        """Await ``value`` in async mode; return it as is in sync mode."""
        if self.loop is not None:
            return self.loop.run_until_complete(value)
        return value

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return self.run(fn(*args, **kwargs))

    def store(self, **config: Any) -> RedisStore | AsyncRedisStore:
        cfg = StoreConfig(**config)
        if self.is_async:
            ac = aconnect(self.url)
            self._clients.append(ac)
            return AsyncRedisStore(ac, cfg)
        c = connect(self.url)
        self._clients.append(c)
        return RedisStore(c, cfg)

    def persister(self, **config: Any) -> RedisPersister | AsyncRedisPersister:
        store = self.store(**config)
        if self.is_async:
            return AsyncRedisPersister(store)  # type: ignore[arg-type]
        return RedisPersister(store)  # type: ignore[arg-type]

    def hook_for(self, persister: Any) -> Any:
        """Burr's own wrapper, as a user would add it a second time by hand."""
        return PersisterHookAsync(persister) if self.is_async else PersisterHook(persister)

    def builder(
        self, persister: Any, app_id: str, partition_key: str | None, **kw: Any
    ) -> ApplicationBuilder:
        return counter_builder(persister, app_id, partition_key, is_async=self.is_async, **kw)

    def build(self, builder: ApplicationBuilder) -> Any:
        return self.run(builder.abuild()) if self.is_async else builder.build()

    def app(self, persister: Any, app_id: str, partition_key: str | None, **kw: Any) -> Any:
        return self.build(self.builder(persister, app_id, partition_key, **kw))

    def step(self, app: Any) -> Any:
        return self.run(app.astep()) if self.is_async else app.step()

    def steps(self, app: Any, n: int) -> None:
        for _ in range(n):
            self.step(app)

    def close(self) -> None:
        for c in self._clients:
            if self.is_async:
                self.run(c.aclose())
            else:
                c.close()
        if self.loop is not None:
            self.loop.close()
