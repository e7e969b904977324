"""The UI backend (burr_dist/ui/backend.py) on a 3-primary Cluster: the fleet's apps and their
steps are found on every primary; an open app that did not change is answered from what was read
(the UI polls it every 500 ms); a new step is read alone; steps past the snapshots' retention show
no state."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from burr_dist import FleetClient, Lease, RedisStore, StoreConfig
from burr_dist.testing.topologies import EmbeddedCluster
from burr_dist.transport.connect import connect
from burr_dist.worker.process import Worker
from tests.support.ui_apps import registry

pytest.importorskip("fastapi", reason="the UI backend needs the ui extra (pip install 'burr_dist[ui]')")

from burr_dist.ui.backend import RedisBackend
from tests.test_tracking import step, tracked


async def run_until(url: str, fleet: FleetClient, app_id: str, pk: str, status: str, worker: str) -> None:
    w = Worker(registry, url=url, lease_ttl=2, sweep_interval=0.2, poll_interval=0.05, worker_id=worker)
    task = asyncio.create_task(w.run())
    try:
        for _ in range(400):
            if fleet.show(app_id, partition_key=pk)["status"] == status:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(fleet.show(app_id, partition_key=pk))
    finally:
        w.request_stop()
        await task


async def test_backend_on_a_cluster_lists_apps_and_reads_steps_incrementally(
    cluster: EmbeddedCluster,
) -> None:
    fleet = FleetClient(connect(cluster.url))
    apps = [f"memo-{i}" for i in range(6)]  # spread over the three primaries
    for app_id in apps:
        fleet.enqueue("memo", app_id, partition_key="team-a")
    for app_id in apps:
        await run_until(cluster.url, fleet, app_id, "team-a", "waiting", "worker-a")
    fleet.resume("memo-0", {"approved": True}, partition_key="team-a")
    await run_until(cluster.url, fleet, "memo-0", "team-a", "completed", "worker-b")

    backend = RedisBackend(dist_url=cluster.url, list_seconds=0)
    request: Any = None
    (project,) = await backend.list_projects(request)
    assert (project.name, project.num_apps) == ("memo", 6)
    page, total = await backend.list_apps(request, "memo", "team-a", limit=100, offset=0)
    assert total == 6 and {a.app_id for a in page} == set(apps)
    assert {a.app_id: a.num_steps for a in page}["memo-0"] == 3

    logs = await backend.get_application_logs(request, "memo", "memo-0", "team-a")
    assert [s.step_start_log.action for s in logs.steps] == ["draft", "review", "publish"]
    # The graph, stored once for all six apps (in the fleet's slot), read through the app's reference.
    assert [a.name for a in logs.application.actions] == ["draft", "review", "publish"]
    workers = [[a.value for a in s.attributes if a.key == "burr_dist.worker"] for s in logs.steps]
    assert workers == [["worker-a"], ["worker-b"], ["worker-b"]]
    again = await backend.get_application_logs(request, "memo", "memo-0", "team-a")
    assert again is logs  # nothing changed: answered from what was read

    sent: list[Any] = []
    real = backend.fleet.commands
    backend.fleet.commands = lambda cmds, **kw: sent.append([c.args[0] for c in cmds]) or real(cmds, **kw)  # type: ignore[method-assign]
    await backend.get_application_logs(request, "memo", "memo-0", "team-a")
    assert sent == [["HMGET", "HMGET"]]  # one round trip per poll of an unchanged app
    await backend.get_application_logs(request, "memo", "memo-1", "team-a")
    fleet.client.close()


async def test_steps_past_the_snapshots_retention_show_no_state(store: RedisStore) -> None:
    keep3 = RedisStore(store.client, StoreConfig(keep=3))
    with Lease(keep3, "user-1", "t1", ttl=10) as lease:
        p, t = tracked(keep3, "w1", lease)
        for seq in range(5):
            step(p, t, seq, n=seq)
    view = await asyncio.to_thread(RedisBackend(fleet=FleetClient(store.client))._refresh, "user-1", "t1")
    assert sorted(view.records) == [2, 3, 4] and view.states == {2: {"n": 2}, 3: {"n": 3}, 4: {"n": 4}}
    # Snapshot 2 is gone while its records are kept (a snapshot retention smaller than the
    # records'): step 2 is still listed, without a state.
    k = keep3.keys("user-1", "t1")
    store.client.hdel(k.snaps, "2")
    store.client.hset(k.meta, "oldest", "3")
    view = await asyncio.to_thread(RedisBackend(fleet=FleetClient(store.client))._refresh, "user-1", "t1")
    assert sorted(view.records) == [2, 3, 4] and sorted(view.states) == [3, 4]


async def test_a_zombies_refused_commit_leaves_no_trace_in_the_ui(store: RedisStore) -> None:
    import time

    from burr_dist import LeaseLost

    zombie = Lease(store, "user-1", "t1", ttl=0.5).acquire(auto_renew=False)
    pz, tz = tracked(store, "zombie", zombie)
    step(pz, tz, 0, n=0)
    time.sleep(0.8)
    rescuer = Lease(store, "user-1", "t1", ttl=10).acquire(wait=3, auto_renew=False)
    pr, tr = tracked(store, "rescuer", rescuer)
    step(pr, tr, 1, n=1)
    zombie.lost_reason, zombie.deadline = None, time.monotonic() + 100
    with pytest.raises(LeaseLost):
        step(pz, tz, 2, n=2)
    view = await asyncio.to_thread(RedisBackend(fleet=FleetClient(store.client))._refresh, "user-1", "t1")
    assert view.workers() == {0: "zombie", 1: "rescuer"}
    assert view.states == {0: {"n": 0}, 1: {"n": 1}}
    rescuer.release()
