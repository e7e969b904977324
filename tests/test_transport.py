"""The transport on replies a failover or a slot migration produces: BatchCore (its sans-IO half)
on hand-made replies, and both transports on a real Cluster with a slot half migrated."""

from __future__ import annotations

import pytest
import redis
from burr.core import State

from burr_dist import AsyncRedisPersister, AsyncRedisStore, Lease, RedisStore
from burr_dist.errors import NotDurable
from burr_dist.testing.topologies import EmbeddedCluster
from burr_dist.transport.connect import is_transient
from burr_dist.transport.core import BatchCore, Cmd, Durability, slot_of

CMDS = [Cmd("burr:{7}:a", ("SET", "burr:{7}:a", "1"))]
WAIT1 = Durability(1, 100)
ON_REPLICA = redis.ResponseError(
    "WAIT cannot be used with replica instances. Please also note that since Redis 4.0 if a replica is "
    "configured to be writable (which is not the default) writes to replicas are just local and are not "
    "propagated."
)


def test_wait_on_a_node_that_became_a_replica_is_transient() -> None:
    """A restarted old master rejoins as a replica at the same address: the command is MOVED and
    WAIT is refused there. The batch is sent again (after a refresh), not failed for good."""
    assert is_transient(ON_REPLICA)
    batch = BatchCore(CMDS, WAIT1, durable=True)
    moved = redis.exceptions.MovedError("3 127.0.0.1:7001")
    assert batch.take([0], [moved, moved, ON_REPLICA], "n1") == []
    assert batch.pending == {0}


def test_a_refused_incr_leaves_the_batch_unconfirmed() -> None:
    """The command ran but the INCR that WAIT's offset must cover was redirected (its key moved
    away mid-migration): WAIT's count proves nothing about what the command read."""
    batch = BatchCore(CMDS, WAIT1, durable=True)
    ask = redis.exceptions.AskError("3 127.0.0.1:7002")
    assert batch.take([0], ["OK", ask, 1], "n1") == []
    assert batch.pending == {0}


def test_short_wait_is_not_durable() -> None:
    batch = BatchCore(CMDS, WAIT1, durable=True)
    with pytest.raises(NotDurable):
        batch.take([0], ["OK", 5, 0], "n1")
    ok = BatchCore(CMDS, WAIT1, durable=True)
    ok.take([0], ["OK", 6, 1], "n1")
    assert ok.pending == set() and ok.replies == ["OK"]


def test_ask_resends_to_the_named_node_after_asking() -> None:
    batch = BatchCore(CMDS, WAIT1, durable=True)
    ask = redis.exceptions.AskError("3 127.0.0.1:7002")
    assert batch.take([0], [ask, 6, 1], "n1") == []
    assert batch.asked == {0: ("127.0.0.1", 7002)} and batch.pending == {0}
    packed = batch.packed([0], asking=True)
    assert packed[:3] == [("ASKING",), CMDS[0].args, ("ASKING",)]
    # Not the slot's sync key (the source may still hold it: MIGRATE would then fail with BUSYKEY),
    # a fresh one that expires.
    assert packed[3][:2] == ("SET", packed[3][1]) and packed[3][1].startswith("burr:{7}:sync:")
    assert packed[3][3:] == ("PX", 10_000) and packed[4] == ("WAIT", 1, 100)
    replies = batch.unpack([0], ["OK", "OK", "OK", "OK", 1], asking=True)
    assert replies == ["OK", "OK", "OK", 1]
    batch.take([0], replies, "n2")
    assert batch.pending == set() and batch.replies == ["OK"]


def _half_migrated(cluster: EmbeddedCluster, key: str) -> tuple[int, str, str]:
    """Move every key of ``key``'s slot to another primary, leaving the slot MIGRATING/IMPORTING
    (the source answers ASK for them). Returns (slot, source id, target id)."""
    slot = slot_of(key)
    src = cluster.owner(slot)
    dst = next(n for n in cluster.primaries() if n is not src)
    src_id, dst_id = cluster.node_id(src), cluster.node_id(dst)
    with dst.client() as c:
        c.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
    with src.client() as c:
        c.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
        keys = c.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1000)
        c.execute_command("MIGRATE", "127.0.0.1", dst.port, "", 0, 5000, "KEYS", *keys)
    return slot, src_id, dst_id


def _finish(cluster: EmbeddedCluster, slot: int, owner_id: str) -> None:
    for node in cluster.primaries():
        with node.client() as c:
            c.execute_command("CLUSTER", "SETSLOT", slot, "NODE", owner_id)


async def test_commands_follow_ask_while_a_slot_migrates(cluster: EmbeddedCluster) -> None:
    """Commits and loads of an app whose keys already moved reach them through ASK, at once,
    while the slot is still migrating (they were retried on the source until the retries ran
    out). The fleet record exists and the app is leased, as in a worker: a script whose keys
    are not all there gets TRYAGAIN on the target (Redis's rule), which stays transient."""
    store = RedisStore.from_url(cluster.url)
    astore = AsyncRedisStore.from_url(cluster.url)
    try:
        keys = store.keys("p", "app")
        store.client.hset(keys.job, "name", "t")
        lease = Lease(store, "p", "app", ttl=60).acquire(auto_renew=False)
        persister, apersister = lease.persister, AsyncRedisPersister(astore, lease)
        for seq in range(2):
            persister.save("p", "app", seq, "tick", State({"n": seq}), "completed")
        slot, _, dst_id = _half_migrated(cluster, keys.meta)
        try:
            persister.save("p", "app", 2, "tick", State({"n": 2}), "completed")
            await apersister.save("p", "app", 3, "tick", State({"n": 3}), "completed")
            loaded = await apersister.load("p", "app")
            assert loaded is not None and loaded["sequence_id"] == 3
            loaded = persister.load("p", "app")
            assert loaded is not None and loaded["state"]["n"] == 3
        finally:
            _finish(cluster, slot, dst_id)
        persister.save("p", "app", 4, "tick", State({"n": 4}), "completed")  # through MOVED
        assert lease.release()
    finally:
        store.client.close()
        await astore.client.aclose()
