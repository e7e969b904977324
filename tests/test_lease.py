"""Leases on a real server: head in the acquire reply, exclusivity, fencing tokens, renewal,
release, and fencing enforced by Redis itself (not only by the local clock)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import redis
from burr.core import State

from burr_dist import (
    AsyncLease,
    AsyncRedisStore,
    Lease,
    LeaseLost,
    LeaseNotHeld,
    RedisPersister,
    RedisStore,
)
from burr_dist.keys import KeySchema

pytestmark = pytest.mark.topologies()
PK = "user-1"
KEYS = KeySchema("burr")


def app_dump(client: redis.Redis, app_id: str = "a1") -> tuple[dict, dict]:
    k = KEYS.app(PK, app_id)
    return client.hgetall(k.meta), client.hgetall(k.snaps)


def commit(p, seq: int, **state) -> None:  # type: ignore[no-untyped-def]
    p.save(PK, "a1", seq, "inc", State(state), "completed")


# -- acquire ---------------------------------------------------------------------------------


def test_acquire_returns_head_in_the_same_call(store: RedisStore) -> None:
    new = Lease(store, PK, "fresh", ttl=2).acquire(auto_renew=False)
    assert new.head is None
    assert new.fence == 1
    new.release()

    unleased = RedisPersister(store)
    for seq in range(3):
        commit(unleased, seq, n=seq + 1)
    lease = Lease(store, PK, "a1", ttl=2).acquire(auto_renew=False)
    try:
        assert lease.head is not None
        assert lease.head["sequence_id"] == 2
        assert lease.head["state"]["n"] == 3
        assert lease.head["status"] == "completed"
        # The persister of the lease answers Burr's first load from that head.
        assert lease.persister.load(PK, "a1")["sequence_id"] == 2
    finally:
        lease.release()


def test_second_acquire_raises_lease_not_held(store: RedisStore, client: redis.Redis) -> None:
    first = Lease(store, PK, "a1", ttl=2).acquire(auto_renew=False)
    try:
        with pytest.raises(LeaseNotHeld) as ei:
            Lease(store, PK, "a1", ttl=2).acquire()
        assert ei.value.holder == first.token
        assert 0 < ei.value.pttl_ms <= 2000
        assert client.get(KEYS.app(PK, "a1").lease) == first.token.encode()
    finally:
        first.release()


def test_acquire_with_wait_gets_the_lease_when_the_holder_lets_go(store: RedisStore) -> None:
    first = Lease(store, PK, "a1", ttl=2).acquire(auto_renew=False)
    threading.Timer(0.3, first.release).start()
    started = time.monotonic()
    second = Lease(store, PK, "a1", ttl=2).acquire(wait=3, auto_renew=False)
    try:
        assert 0.25 < time.monotonic() - started < 2.5
        assert second.fence == first.fence + 1
    finally:
        second.release()


def test_fencing_tokens_strictly_increase(store: RedisStore) -> None:
    fences, tokens = [], []
    for _ in range(3):
        lease = Lease(store, PK, "a1", ttl=1).acquire(auto_renew=False)
        fences.append(lease.fence)
        tokens.append(lease.token)
        lease.release()
    expiring = Lease(store, PK, "a1", ttl=0.2).acquire(auto_renew=False)  # taken over after expiry
    fences.append(expiring.fence)
    time.sleep(0.3)
    after = Lease(store, PK, "a1", ttl=1).acquire(auto_renew=False)
    fences.append(after.fence)
    tokens.append(after.token)
    after.release()

    assert fences == sorted(set(fences))
    assert fences[0] >= 1
    assert len(set(tokens)) == len(tokens)
    assert after.token.startswith(f"{after.fence}.")


# -- renewal and release ---------------------------------------------------------------------


def test_renewal_keeps_the_lease_past_its_ttl(store: RedisStore, client: redis.Redis) -> None:
    lease = Lease(store, PK, "a1", ttl=1).acquire()  # renews every ~0.33 s
    try:
        time.sleep(2.5)
        assert lease.valid
        assert client.get(KEYS.app(PK, "a1").lease) == lease.token.encode()
        assert client.pttl(KEYS.app(PK, "a1").lease) > 0
        commit(lease.persister, 0, n=1)
        with pytest.raises(LeaseNotHeld):
            Lease(store, PK, "a1", ttl=1).acquire()
    finally:
        assert lease.release() is True
    assert store.head_sequence("a1", partition_key=PK) == 0


def test_release_then_reacquire(store: RedisStore, client: redis.Redis) -> None:
    first = Lease(store, PK, "a1", ttl=2).acquire()
    p1 = first.persister
    commit(p1, 0, n=1)
    assert first.release() is True
    assert first.release() is False  # idempotent
    assert client.exists(KEYS.app(PK, "a1").lease) == 0

    with pytest.raises(LeaseNotHeld, match="released"):
        commit(p1, 1, n=2)  # a released lease fences its persister locally

    with Lease(store, PK, "a1", ttl=2) as second:
        assert second.fence > first.fence
        assert second.head["sequence_id"] == 0
        commit(second.persister, 1, n=2)
    assert store.head_sequence("a1", partition_key=PK) == 1
    assert client.exists(KEYS.app(PK, "a1").lease) == 0


def test_persister_of_an_expired_lease_raises_without_writing(store: RedisStore, client: redis.Redis) -> None:
    lease = Lease(store, PK, "a1", ttl=1).acquire(auto_renew=False)
    p = lease.persister
    commit(p, 0, n=1)
    before = app_dump(client)
    time.sleep(1.2)
    assert not lease.valid
    with pytest.raises(LeaseLost, match="deadline"):
        commit(p, 1, n=2)
    assert app_dump(client) == before
    lease.release()


def test_redis_refuses_a_stale_lease_holder(store: RedisStore, client: redis.Redis) -> None:
    """A process whose local view is stale (paused, clock jump) must be fenced by Redis."""
    a = Lease(store, PK, "a1", ttl=1).acquire(auto_renew=False)
    pa = a.persister
    commit(pa, 0, n=1, by="a")
    time.sleep(1.2)  # expires on the server
    b = Lease(store, PK, "a1", ttl=5).acquire(auto_renew=False)
    assert b.head["state"]["by"] == "a"
    before = app_dump(client)

    a.deadline = time.monotonic() + 100  # A still believes it holds the lease
    assert a.valid
    with pytest.raises(LeaseLost, match="refused by Redis") as ei:
        commit(pa, 1, n=2, by="a")
    assert ei.value.holder == b.token
    assert app_dump(client) == before

    # Same once B has moved on: A is fenced out, not merely in conflict.
    pb = b.persister
    commit(pb, 1, n=2, by="b")
    after_b = app_dump(client)
    with pytest.raises(LeaseLost):
        commit(pa, 2, n=3, by="a")
    assert app_dump(client) == after_b
    assert store.load(PK, "a1")["state"]["by"] == "b"
    b.release()


def test_fenced_renewal_reports_the_lease_lost(store: RedisStore) -> None:
    a = Lease(store, PK, "a1", ttl=0.5).acquire(auto_renew=False)
    time.sleep(0.7)
    b = Lease(store, PK, "a1", ttl=5).acquire(auto_renew=False)
    a.deadline = time.monotonic() + 100
    with pytest.raises(LeaseLost):
        a.renew()  # Redis answers 0: the token is not the current one
    assert not a.valid
    assert a.release() is False  # does not delete B's lease
    assert store.client.get(KEYS.app(PK, "a1").lease) == b.token.encode()
    b.release()


def test_two_persisters_of_one_lease_see_each_others_commits(store: RedisStore) -> None:
    lease = Lease(store, PK, "a1", ttl=5).acquire(auto_renew=False)
    try:
        commit(lease.persister, 0, n=1)
        again = lease.persister.load(PK, "a1")  # a second persister of the same lease
        assert again is not None
        assert again["sequence_id"] == 0
    finally:
        lease.release()


# -- async -----------------------------------------------------------------------------------


async def test_async_acquire_head_exclusivity_and_release(astore: AsyncRedisStore) -> None:
    a = await AsyncLease(astore, PK, "a1", ttl=2).acquire()
    assert a.head is None
    await a.persister.save(PK, "a1", 0, "inc", State({"n": 1}), "completed")
    with pytest.raises(LeaseNotHeld) as ei:
        await AsyncLease(astore, PK, "a1", ttl=2).acquire()
    assert ei.value.holder == a.token
    assert 0 < ei.value.pttl_ms <= 2000
    assert await a.release() is True

    async with AsyncLease(astore, PK, "a1", ttl=2) as b:
        assert b.fence > a.fence
        assert b.head["sequence_id"] == 0
        assert b.head["state"]["n"] == 1
    assert await astore.head_sequence("a1", partition_key=PK) == 0


async def test_async_renewal_and_redis_fencing(astore: AsyncRedisStore, client: redis.Redis) -> None:
    kept = await AsyncLease(astore, PK, "kept", ttl=1).acquire()  # auto renewal task
    stale = await AsyncLease(astore, PK, "a1", ttl=1).acquire(auto_renew=False)
    ps = stale.persister
    await ps.save(PK, "a1", 0, "inc", State({"n": 1, "by": "a"}), "completed")
    await asyncio.sleep(1.5)
    assert kept.valid
    await kept.persister.save(PK, "kept", 0, "inc", State({"n": 1}), "completed")

    b = await AsyncLease(astore, PK, "a1", ttl=5).acquire(auto_renew=False)
    before = app_dump(client)
    stale.deadline = time.monotonic() + 100
    with pytest.raises(LeaseLost, match="refused by Redis") as ei:
        await ps.save(PK, "a1", 1, "inc", State({"n": 2, "by": "a"}), "completed")
    assert ei.value.holder == b.token
    assert app_dump(client) == before
    await b.release()
    await kept.release()
    assert await astore.head_sequence("kept", partition_key=PK) == 0
