"""The few-lines API for a plain Burr app: lease it, build it from the store, run it until it
halts, release.

    def build(persister, app_id, partition_key):
        return (ApplicationBuilder().with_actions(...).with_transitions(...)
                .initialize_from(persister, resume_at_next_action=True,
                                 default_state={...}, default_entrypoint="start")
                .with_state_persister(persister)
                .with_identifiers(app_id=app_id, partition_key=partition_key))

    outcome = run_app(store, build, app_id="chat-7", partition_key="user-1", halt_before=["ask_human"])
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Union

from burr.core import Application, ApplicationBuilder, State

from burr_dist.store.clients import AsyncRedisStore, RedisStore
from burr_dist.store.lease import AsyncLease, Lease
from burr_dist.store.lease_core import DEFAULT_TTL
from burr_dist.store.persister import AsyncRedisPersister, RedisPersister

Built = Union[Application, ApplicationBuilder]  # noqa: UP007 (a runtime alias on Python 3.10)
Factory = Callable[[RedisPersister, str, "str | None"], Built]
AsyncFactory = Callable[[AsyncRedisPersister, str, "str | None"], Built | Awaitable[Built]]


@dataclass(frozen=True)
class Outcome:
    """Where a run stopped. ``finished`` is True when the app has no next action."""

    app_id: str
    partition_key: str | None
    sequence_id: int | None
    state: State
    position: str | None
    next_action: str | None
    steps: int

    @property
    def finished(self) -> bool:
        return self.next_action is None


def _outcome(app: Application, app_id: str, partition_key: str | None, steps: int) -> Outcome:
    nxt = app.get_next_action()
    return Outcome(
        app_id=app_id,
        partition_key=partition_key,
        sequence_id=app.sequence_id,
        state=app.state,
        position=app.state.get("__PRIOR_STEP"),
        next_action=nxt.name if nxt is not None else None,
        steps=steps,
    )


def _halted(
    app: Application, halt_before: Sequence[str], halt_after: Sequence[str], last: str | None
) -> bool:
    if last is not None and last in halt_after:
        return True
    nxt = app.get_next_action()
    return nxt is None or nxt.name in halt_before


def run_app(
    store: RedisStore,
    factory: Factory,
    *,
    app_id: str,
    partition_key: str | None = None,
    halt_before: Sequence[str] = (),
    halt_after: Sequence[str] = (),
    inputs: dict[str, Any] | None = None,
    max_steps: int | None = None,
    ttl: float = DEFAULT_TTL,
    wait: float = 0.0,
) -> Outcome:
    """Lease the app, build it (resume, fork or new, as the factory's builder says), step it until
    it finishes, reaches ``halt_before``/``halt_after`` or ``max_steps``, then release.
    ``inputs`` go to the first step only. Raises LeaseNotHeld if another worker holds the app."""
    with Lease(store, partition_key, app_id, ttl).acquire(wait=wait) as lease:
        built = factory(lease.persister, app_id, partition_key)
        app = built.build() if isinstance(built, ApplicationBuilder) else built
        steps = 0
        last = None
        while not _halted(app, halt_before, halt_after, last) and (max_steps is None or steps < max_steps):
            lease.check()
            action, _, _ = app.step(inputs=inputs if steps == 0 else None)  # type: ignore[misc]
            last = action.name
            steps += 1
        return _outcome(app, app_id, partition_key, steps)


async def arun_app(
    store: AsyncRedisStore,
    factory: AsyncFactory,
    *,
    app_id: str,
    partition_key: str | None = None,
    halt_before: Sequence[str] = (),
    halt_after: Sequence[str] = (),
    inputs: dict[str, Any] | None = None,
    max_steps: int | None = None,
    ttl: float = DEFAULT_TTL,
    wait: float = 0.0,
) -> Outcome:
    """Async twin of :func:`run_app`: the factory may be async and the app is built with abuild()."""
    lease = await AsyncLease(store, partition_key, app_id, ttl).acquire(wait=wait)
    async with lease:
        built = factory(lease.persister, app_id, partition_key)
        if isinstance(built, Awaitable):
            built = await built
        app = await built.abuild() if isinstance(built, ApplicationBuilder) else built
        steps = 0
        last = None
        while not _halted(app, halt_before, halt_after, last) and (max_steps is None or steps < max_steps):
            lease.check()
            action, _, _ = await app.astep(inputs=inputs if steps == 0 else None)  # type: ignore[misc]
            last = action.name
            steps += 1
        return _outcome(app, app_id, partition_key, steps)
