"""Tracking records are written by commit.lua with the step they describe: a refused
commit (zombie, conflicting writer) leaves none, a commit retried after a lost reply leaves
exactly one, and they follow the app's retention (keep) and TTL (finished_ttl)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
import redis
from burr.core import ApplicationBuilder, State, action
from burr.visibility import TracerFactory

from burr_dist import Lease, LeaseLost, RedisPersister, RedisStore, SequenceConflict, StoreConfig
from burr_dist.errors import ConfigurationError
from burr_dist.keys import KeySchema
from burr_dist.observability.tracking import WORKER_ATTRIBUTE, StepTracker, graph_digest, resolve_app
from burr_dist.testing.embedded import EmbeddedServer
from burr_dist.transport.connect import RetryPolicy, connect
from burr_dist.worker.process import Worker
from tests.support.proxy import FaultProxy

PK, APP = "user-1", "t1"
KEYS = KeySchema("burr").app(PK, APP)
FAST_RETRY = RetryPolicy(attempts=4, initial=0.01, maximum=0.05, deadline=3.0)


def tracked(store: RedisStore, worker: str, lease: Lease | None = None) -> tuple[RedisPersister, StepTracker]:
    persister = lease.persister if lease is not None else RedisPersister(store)
    tracker = StepTracker(worker=worker, project="proj")
    persister.core.tracker = tracker
    return persister, tracker


def step(persister: RedisPersister, tracker: StepTracker, seq: int, **state: Any) -> None:
    """What Burr and the worker do for one step: the hooks run, then the commit."""
    act = SimpleNamespace(name="inc")
    tracker.pre_run_step(action=act, inputs={"x": seq}, sequence_id=seq, state=None)
    tracker.post_run_step(action=act, result={"n": seq}, sequence_id=seq, exception=None, state=None)
    persister.save(PK, APP, seq, "inc", State(state), "completed")


def records(client: Any) -> dict[int, list[dict[str, Any]]]:
    raw = {k.decode(): v for k, v in client.hgetall(KEYS.track).items()}
    return {int(k): orjson.loads(v) for k, v in raw.items() if k.isdigit()}


def worker_of(recs: list[dict[str, Any]]) -> str:
    return next(r["value"] for r in recs if r["type"] == "attribute" and r["key"] == WORKER_ATTRIBUTE)


def test_records_are_committed_with_the_step_trimmed_to_keep_and_expire(target: Any, client: Any) -> None:
    store = RedisStore(connect(target.url), StoreConfig(keep=3, finished_ttl=30))
    p, t = tracked(store, "w1")
    for seq in range(5):
        step(p, t, seq, n=seq)
    got = records(client)
    assert sorted(got) == [2, 3, 4]  # the same retention as the snapshots
    assert sorted(int(s) for s in client.hkeys(KEYS.snaps)) == [2, 3, 4]
    assert [r["type"] for r in got[4]] == ["begin_entry", "end_entry", "attribute"]
    assert got[4][0]["inputs"] == {"x": 4} and got[4][1]["result"] == {"n": 4}
    assert worker_of(got[4]) == "w1"
    assert all("state" not in r for recs in got.values() for r in recs)  # the snapshot has it
    assert client.hget(KEYS.track, "lo") == b"2"
    store.expire_app(APP, partition_key=PK)
    assert 0 < client.pttl(KEYS.track) <= 30_000
    assert client.pttl(KEYS.snaps) > 0


def test_graph_and_metadata_are_sent_once_per_build(store: RedisStore, client: Any) -> None:
    @action(reads=["n"], writes=["n"])
    def inc(state: State, __tracer: TracerFactory) -> State:
        with __tracer("work") as span:
            span.log_attributes(size=3)
        return state.update(n=state["n"] + 1)

    p, t = tracked(store, "w1")
    app = (
        ApplicationBuilder().with_actions(inc=inc).with_transitions(("inc", "inc")).with_state(n=0)
        .with_entrypoint("inc").with_identifiers(app_id=APP, partition_key=PK).with_hooks(t).build()
    )  # fmt: skip
    sent: list[Any] = []
    real = store.commit_call
    store.commit_call = lambda *a, **kw: sent.append(a[-1]) or real(*a, **kw)  # type: ignore[method-assign]
    for _ in range(2):
        act, _, state = app.step()  # type: ignore[misc]
        p.save(PK, APP, app.sequence_id, act.name, state, "completed")  # type: ignore[arg-type]
    assert [bool(track[1]) for track in sent] == [True, False]  # graph with the first commit only
    stored = orjson.loads(client.hget(KEYS.track, "app"))
    assert t.graph is not None and stored["graph_ref"] == t.graph[0] == graph_digest(t.graph[1])
    assert "graph" not in stored and stored["metadata"]["partition_key"] == PK  # the graph is shared
    assert resolve_app(stored, t.graph[1])["graph"]["entrypoint"] == "inc"
    types = [r["type"] for r in records(client)[1]]
    assert types == ["begin_entry", "begin_span", "attribute", "end_span", "end_entry", "attribute"]


def test_refused_commits_leave_no_tracking_record(store: RedisStore, client: Any) -> None:
    zombie = Lease(store, PK, APP, ttl=0.5).acquire(auto_renew=False)
    pz, tz = tracked(store, "zombie", zombie)
    step(pz, tz, 0, n=0)
    time.sleep(0.8)  # the zombie's lease expires
    rescuer = Lease(store, PK, APP, ttl=10).acquire(wait=3, auto_renew=False)
    pr, tr = tracked(store, "rescuer", rescuer)
    step(pr, tr, 1, n=1)
    zombie.lost_reason, zombie.deadline = None, time.monotonic() + 100  # it believes it holds the lease
    with pytest.raises(LeaseLost, match="refused by Redis"):
        step(pz, tz, 2, n=2)
    # A writer without a lease, behind the head: refused as a conflict.
    pc, tc = tracked(store, "late")
    with pytest.raises(SequenceConflict):
        step(pc, tc, 1, n=99)
    got = records(client)
    assert {seq: worker_of(recs) for seq, recs in got.items()} == {0: "zombie", 1: "rescuer"}
    rescuer.release()


@pytest.fixture
def proxy(server: EmbeddedServer) -> Iterator[FaultProxy]:
    with FaultProxy(server.port) as p:
        yield p


def test_commit_retried_after_a_lost_reply_leaves_one_record(proxy: FaultProxy, client: redis.Redis) -> None:
    store = RedisStore(connect(proxy.url, socket_timeout=2.0), StoreConfig(retry=FAST_RETRY))
    p, t = tracked(store, "w1")
    step(p, t, 0, n=0)
    proxy.set_mode("drop_reply")
    step(p, t, 1, n=1)  # applied, reply lost, retried: the retry finds its own write
    proxy.set_mode("pass")
    assert proxy.stats["dropped_replies"] == 1
    got = records(client)
    assert sorted(got) == [0, 1]
    assert [r["type"] for r in got[1]].count("begin_entry") == 1
    assert set(client.hkeys(KEYS.track)) == {b"0", b"1", b"lo"}


async def test_async_app_under_the_worker_commits_its_records(fleet_server: EmbeddedServer) -> None:
    """An async app (astep, AsyncRedisPersister) under the worker; its factory returns the same
    builder every time: the worker builds from a copy of it, so no build adds a tracker (or
    anything) to it, and each build has its own."""
    from burr_dist import FleetClient, Registry
    from burr_dist.fleet.registry import AppContext
    from burr_dist.worker.process import Worker

    @action(reads=["n"], writes=["n"])
    async def tick(state: State) -> State:
        return state.update(n=state["n"] + 1)

    reg = Registry()
    shared = ApplicationBuilder().with_actions(tick=tick).with_transitions(("tick", "tick"))

    @reg.app("ticker", entrypoint="tick", default_state={"n": 0})
    def ticker(ctx: AppContext) -> ApplicationBuilder:
        return shared

    fleet = FleetClient(connect(fleet_server.url))
    fleet.enqueue("ticker", "tk", partition_key=PK)
    w = Worker(reg, url=fleet_server.url, max_steps_per_claim=2, poll_interval=0.02, worker_id="wa")
    task = asyncio.create_task(w.run())
    keys = KeySchema("burr").app(PK, "tk")
    admin = fleet_server.client()  # inspection: the fleet's URL may carry a restricted ACL user
    try:
        for _ in range(400):
            if len(admin.hkeys(keys.track)) >= 8:  # 6 steps over 3 claims, lo, app
                break
            await asyncio.sleep(0.02)
    finally:
        w.request_stop()
        await task
    head = int(admin.hget(keys.meta, "head"))
    got = {int(k): orjson.loads(v) for k, v in admin.hgetall(keys.track).items() if k.isdigit()}
    admin.close()
    assert sorted(got) == list(range(head + 1))
    assert all(
        [r["type"] for r in recs] == ["begin_entry", "end_entry", "attribute"] for recs in got.values()
    )
    assert not any(isinstance(h, StepTracker) for h in shared.lifecycle_adapters)
    assert shared.state is None and shared.state_initializer is None  # the factory's builder, untouched
    fleet.client.close()


def test_apps_of_one_graph_share_one_stored_graph_and_old_records_still_read(
    fleet_server: EmbeddedServer,
) -> None:
    """Twenty apps of one factory: their track hashes name one graph, stored once (written by
    the worker before the first commit naming it). A record of an older version (graph inline)
    reads as before; a reference to a missing graph reads as an empty graph."""
    from burr_dist import FleetClient
    from tests.support.ui_apps import registry

    fleet = FleetClient(connect(fleet_server.url))
    ids = [f"g{i}" for i in range(20)]
    for app_id in ids:
        fleet.enqueue("memo", app_id, partition_key=PK)
    w = Worker(registry, url=fleet_server.url, poll_interval=0.02, worker_id="wg")
    admin = fleet_server.client()

    async def run() -> None:
        task = asyncio.create_task(w.run())
        try:
            for _ in range(400):
                if all(fleet.show(a, partition_key=PK)["status"] == "waiting" for a in ids):
                    return
                await asyncio.sleep(0.05)
            raise AssertionError("the apps did not reach their approval step")
        finally:
            w.request_stop()
            await task

    asyncio.run(run())
    schema = KeySchema("burr")
    refs = {orjson.loads(admin.hget(schema.app(PK, a).track, "app"))["graph_ref"] for a in ids}
    assert len(refs) == 1
    (ref,) = refs
    graph = admin.get(schema.graph(ref))
    assert graph is not None and graph_digest(graph) == ref
    assert [a["name"] for a in orjson.loads(graph)["actions"]] == ["draft", "review", "publish"]
    graphs = list(admin.scan_iter(match="burr:{fleet}:graph:*"))
    assert graphs == [schema.graph(ref).encode()]
    old = {"graph": {"entrypoint": "x"}, "metadata": {}}
    assert resolve_app(old, None) is old
    assert resolve_app({"graph_ref": ref, "metadata": {}}, None)["graph"]["actions"] == []
    with pytest.raises(ConfigurationError, match="graph digest"):
        schema.graph("../../x")
    admin.close()
    fleet.client.close()


def test_a_delta_refused_and_sent_again_whole_keeps_its_records(target: Any, client: Any) -> None:
    """A delta whose base moved is refused (nothing stored) and sent again as a keyframe: that
    second commit carries the step's records and the graph, taken again from the tracker."""
    from burr_dist.store import codec

    store = RedisStore(connect(target.url))

    def grow(p: RedisPersister, t: StepTracker, seq: int) -> None:
        step(p, t, seq, n=seq, doc="a large field that deltas leave out " * 100)

    pa, ta = tracked(store, "a")
    ta._app = b'{"graph": null}'  # as post_application_create leaves it
    for seq in range(5):
        grow(pa, ta, seq)  # a's delta base: its own step 4
    client.delete(KEYS.meta, KEYS.snaps, KEYS.index, KEYS.track)  # deleted, then written again by b
    pb, tb = tracked(RedisStore(connect(target.url)), "b")  # another process
    for seq in range(5):
        grow(pb, tb, seq)
    sends: list[int] = []
    real = store.run
    store.run = lambda call, before_try=None: sends.append(int(call.args[0])) or real(call, before_try)  # type: ignore[method-assign]
    ta._app, ta._app_at = b'{"graph": "again"}', None  # a rebuilt app: its graph goes with step 5
    grow(pa, ta, 5)  # a delta on b's step 4: refused, then sent whole
    stored = codec.stored_steps(client.hgetall(KEYS.snaps), key=KEYS.snaps)
    assert stored[5]["kind"] == "keyframe" and sends == [5, 5]  # the delta, then the keyframe
    got = records(client)
    assert worker_of(got[5]) == "a" and [r["type"] for r in got[5]].count("begin_entry") == 1
    assert client.hget(KEYS.track, "app") == b'{"graph": "again"}'
