"""A store that went back in time (Redis lost acknowledged writes) is detected, not built upon:
per app by the commit path, fleet-wide by the epoch the workers' heartbeats carry."""

from __future__ import annotations

import asyncio

import pytest
import redis
from burr.core import State

from burr_dist import Lease, RedisStore
from burr_dist.errors import SequenceConflict, StoreRewound
from burr_dist.keys import KeySchema
from burr_dist.testing.embedded import EmbeddedServer
from burr_dist.worker.process import Worker
from tests.support.fleet import registry

KEYS = KeySchema("burr")


def test_commit_below_what_the_lease_saw_raises_store_rewound(store: RedisStore, client: redis.Redis) -> None:
    with Lease(store, "p", "a", ttl=30) as lease:
        p = lease.persister
        for seq in range(3):
            p.save("p", "a", seq, "inc", State({"n": seq}), "completed")
        # Redis loses the last write (an old backup restored, a lagging replica promoted).
        k = KEYS.app("p", "a")
        client.hset(k.meta, "head", 1)
        client.hdel(k.snaps, 2)
        with pytest.raises(StoreRewound) as err:
            p.save("p", "a", 3, "inc", State({"n": 3}), "completed")
        assert (err.value.known, err.value.actual) == (2, 1)
        assert isinstance(err.value.__cause__, SequenceConflict)
        assert client.hget(k.meta, "head") == b"1"  # nothing written on top


def test_an_ordinary_conflict_is_not_a_rewind(store: RedisStore) -> None:
    with Lease(store, "p", "b", ttl=30) as lease:
        p = lease.persister
        p.save("p", "b", 0, "inc", State({"n": 0}), "completed")
        with pytest.raises(SequenceConflict) as err:
            p.save("p", "b", 5, "inc", State({"n": 5}), "completed")  # a caller's bug: skipped seqs
        assert not isinstance(err.value, StoreRewound)


@pytest.mark.parametrize("loss", ["counter_back", "new_id"])
async def test_worker_stops_when_the_store_epoch_goes_back(server: EmbeddedServer, loss: str) -> None:
    worker = Worker(registry, url=server.url, lease_ttl=1.0, sweep_interval=0.1, worker_id="w1")
    task = asyncio.create_task(worker.run())
    client = redis.Redis(port=server.port)
    epoch = KEYS.epoch()
    for _ in range(200):
        if int(client.hget(epoch, "n") or 0) >= 2:
            break
        await asyncio.sleep(0.02)
    assert int(client.hget(epoch, "n") or 0) >= 2, "the worker never heartbeated"
    if loss == "counter_back":
        client.hset(epoch, "n", 0)  # what restoring an older backup looks like
    else:
        client.delete(epoch)  # what a restart with nothing looks like
    with pytest.raises(StoreRewound, match="Redis lost data") as err:
        await asyncio.wait_for(task, 10)
    assert err.value.key == epoch
    client.close()


def test_cli_worker_exits_7_when_redis_lost_data(server: EmbeddedServer) -> None:
    import subprocess
    import sys

    from burr_dist.cli import EXIT_STORE_REWOUND
    from tests.support.fleet import ROOT, wait_until

    client = redis.Redis(port=server.port)
    cmd = [sys.executable, "-m", "burr_dist.cli", "--redis-url", server.url, "worker", "tests.chaos.apps",
           "--lease-ttl", "1", "--sweep-interval", "0.1"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: int(client.hget(KEYS.epoch(), "n") or 0) >= 2, 30, "the worker's heartbeats")
        client.delete(KEYS.epoch())  # Redis came back empty
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        client.close()
    assert proc.returncode == EXIT_STORE_REWOUND, stderr
    assert "Redis lost data" in stderr.splitlines()[-1], stderr  # the last line says why
