"""The apps bench/fleet.py runs, and the jobs that run them on RQ and arq.

``one``: a single action, no transitions: exactly one step. ``ten``: one action that loops until
``n == 10``: exactly ten steps. ``one_async`` / ``ten_async``: the same with an ``async`` action.

burr_dist runs them from ``registry``. The peers run the SAME apps (same factory, entrypoint and
default state) the way a user without burr_dist would: an arq job (``arq_burr``) builds the app
with Burr's ``AsyncRedisBasePersister`` (``initialize_from`` + ``with_state_persister``,
``abuild``) and steps it until it is done; an RQ job (``rq_burr``) does the same with Burr's sync
``RedisBasePersister`` and ``build``. Burr's sync persister cannot build an async app, so RQ runs
the sync-action apps only. ``noop`` / ``anoop``: the queues' own ceilings (a job that does nothing).
"""

from __future__ import annotations

from typing import Any

from burr.core import Application, ApplicationBuilder, State, action, expr

from burr_dist import Registry
from burr_dist.fleet.registry import AppContext

registry = Registry()
STEPS = {"one": 1, "ten": 10, "one_async": 1, "ten_async": 10}
PEER_PARTITION = "bench"  # Burr's Redis persister cannot save partition_key=None


@action(reads=["n"], writes=["n"])
def tick(state: State) -> State:
    return state.update(n=state["n"] + 1)


@action(reads=["n"], writes=["n"])
async def atick(state: State) -> State:
    return state.update(n=state["n"] + 1)


def _loop(act: Any, steps: int) -> ApplicationBuilder:
    builder = ApplicationBuilder().with_actions(tick=act)
    return builder.with_transitions(("tick", "tick", expr(f"n < {steps}"))) if steps > 1 else builder


@registry.app("one", entrypoint="tick", default_state={"n": 0})
def one(ctx: AppContext) -> ApplicationBuilder:
    return _loop(tick, 1)


@registry.app("ten", entrypoint="tick", default_state={"n": 0})
def ten(ctx: AppContext) -> ApplicationBuilder:
    return _loop(tick, 10)


@registry.app("one_async", entrypoint="tick", default_state={"n": 0})
def one_async(ctx: AppContext) -> ApplicationBuilder:
    return _loop(atick, 1)


@registry.app("ten_async", entrypoint="tick", default_state={"n": 0})
def ten_async(ctx: AppContext) -> ApplicationBuilder:
    return _loop(atick, 10)


def peer_builder(kind: str, app_id: str, persister: Any) -> ApplicationBuilder:
    """The app ``kind`` as a user builds it with Burr's own persister: loaded, saved every step."""
    spec = registry.get(kind)
    return (
        spec.factory(AppContext(kind, app_id, PEER_PARTITION))
        .with_identifiers(app_id=app_id, partition_key=PEER_PARTITION)
        .initialize_from(
            persister,
            resume_at_next_action=True,
            default_state=spec.default_state,
            default_entrypoint=spec.entrypoint,
        )
        .with_state_persister(persister)
    )


async def arq_burr(ctx: dict[str, Any], kind: str, app_id: str, namespace: str) -> int:
    """arq job: one Burr app, loaded and saved by Burr's AsyncRedisBasePersister (one per worker
    process, on the worker's own ``redis.asyncio`` client, made at start-up: ``ctx["burr_redis"]``)."""
    from burr.integrations.persisters.b_redis import AsyncRedisBasePersister

    persisters = ctx.setdefault("burr_persisters", {})
    if namespace not in persisters:
        persisters[namespace] = AsyncRedisBasePersister(ctx["burr_redis"], namespace=namespace)
    app: Application = await peer_builder(kind, app_id, persisters[namespace]).abuild()
    while app.get_next_action() is not None:
        await app.astep()
    return app.sequence_id or 0


_sync_persisters: dict[tuple[str, str], Any] = {}


def rq_burr(kind: str, app_id: str, namespace: str, url: str) -> int:
    """RQ job: one Burr app, loaded and saved by Burr's sync RedisBasePersister (one per worker
    process: a persister per job would close the shared connection pool in its ``__del__``)."""
    import redis
    from burr.integrations.persisters.b_redis import RedisBasePersister

    if (url, namespace) not in _sync_persisters:
        _sync_persisters[url, namespace] = RedisBasePersister(redis.Redis.from_url(url), namespace=namespace)
    app: Application = peer_builder(kind, app_id, _sync_persisters[url, namespace]).build()
    while app.get_next_action() is not None:
        app.step()
    return app.sequence_id or 0


def noop() -> None:
    """RQ job."""


async def anoop(ctx: dict[str, Any]) -> None:
    """arq job."""
