"""Faults between the client and Redis, injected by a real TCP proxy: a commit whose reply is
lost was applied on the server; the store's retry must recognise its own write (no duplicate
step, no false conflict)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from burr.core import State

from burr_dist import (
    AsyncRedisPersister,
    AsyncRedisStore,
    Lease,
    LeaseLost,
    RedisPersister,
    RedisStore,
    RedisUnavailable,
    StoreConfig,
)
from burr_dist.keys import KeySchema
from burr_dist.store import codec
from burr_dist.testing.embedded import EmbeddedServer
from burr_dist.testing.history import (
    FinalState,
    HistoryRecorder,
    app_key,
    check,
    load_history,
    operations,
    state_digest,
)
from burr_dist.transport.connect import RetryPolicy, aconnect, connect
from tests.support.proxy import FaultProxy

PK, APP = "user-1", "a1"
KEYS = KeySchema("burr").app(PK, APP)
FAST_RETRY = RetryPolicy(attempts=4, initial=0.01, maximum=0.05, deadline=3.0)


@pytest.fixture
def proxy(server: EmbeddedServer) -> Iterator[FaultProxy]:
    with FaultProxy(server.port) as p:
        yield p


def proxied_store(proxy: FaultProxy, socket_timeout: float = 2.0) -> RedisStore:
    store = RedisStore(connect(proxy.url, socket_timeout=socket_timeout), StoreConfig(retry=FAST_RETRY))
    replies: list[bool] = []
    real = store.read_commit

    def recording(*args, **kwargs):  # type: ignore[no-untyped-def]
        committed = real(*args, **kwargs)
        replies.append(committed.replayed)
        return committed

    store.read_commit = recording  # type: ignore[method-assign]
    store.replays = replies  # type: ignore[attr-defined]
    return store


def save(p, seq: int, **state) -> None:  # type: ignore[no-untyped-def]
    p.save(PK, APP, seq, "inc", State(state), "completed")


def stored(client: redis.Redis) -> dict[int, dict]:
    return codec.stored_steps(client.hgetall(KEYS.snaps), key=KEYS.snaps)


def test_lost_commit_reply_is_retried_without_a_duplicate_step(
    proxy: FaultProxy, client: redis.Redis
) -> None:
    store = proxied_store(proxy)
    p = RedisPersister(store)
    save(p, 0, n=1)
    assert proxy.stats["connections"] == 1

    proxy.set_mode("drop_reply")
    save(p, 1, n=2, tag="through-a-lost-reply")  # succeeds: the retry finds its own write

    assert proxy.stats["dropped_replies"] == 1
    assert proxy.stats["connections"] == 2  # the retry came on a new connection
    assert store.replays == [False, True]
    assert int(client.hget(KEYS.meta, "head")) == 1  # advanced by exactly one
    snaps = stored(client)
    assert sorted(snaps) == [0, 1]
    assert snaps[1]["state"]["tag"] == "through-a-lost-reply"
    assert client.hget(KEYS.meta, "wid").decode() == snaps[1]["w"]  # the write that was retried

    save(p, 2, n=3)  # the next step goes on normally
    assert int(client.hget(KEYS.meta, "head")) == 2
    assert store.replays == [False, True, False]
    assert store.load(PK, APP)["state"]["n"] == 3


def test_lost_reply_under_a_lease(proxy: FaultProxy, client: redis.Redis) -> None:
    store = proxied_store(proxy)
    with Lease(store, PK, APP, ttl=5) as lease:
        p = lease.persister
        save(p, 0, n=1)
        proxy.set_mode("drop_reply")
        save(p, 1, n=2)
        save(p, 2, n=3)
    assert proxy.stats["dropped_replies"] == 1
    assert store.replays == [False, True, False]
    assert sorted(stored(client)) == [0, 1, 2]
    assert client.exists(KEYS.lease) == 0


def test_reset_mid_command_is_not_applied_and_is_retried(proxy: FaultProxy, client: redis.Redis) -> None:
    store = proxied_store(proxy)
    p = RedisPersister(store)
    save(p, 0, n=1)
    proxy.set_mode("reset")
    save(p, 1, n=2)
    assert proxy.stats["resets"] == 1
    assert store.replays == [False, False]  # the first attempt never ran on the server
    assert int(client.hget(KEYS.meta, "head")) == 1
    assert sorted(stored(client)) == [0, 1]


def test_expire_app_survives_a_reset(proxy: FaultProxy, client: redis.Redis) -> None:
    store = proxied_store(proxy)
    save(RedisPersister(store), 0, n=1)
    proxy.set_mode("reset")
    store.expire_app(APP, partition_key=PK, ttl=60)
    assert proxy.stats["resets"] == 1
    assert 0 < client.pttl(KEYS.meta) <= 60_000
    assert 0 < client.pttl(KEYS.snaps) <= 60_000


def test_blackhole_gives_redis_unavailable_and_writes_nothing(proxy: FaultProxy, client: redis.Redis) -> None:
    store = proxied_store(proxy, socket_timeout=0.3)
    p = RedisPersister(store)
    save(p, 0, n=1)
    proxy.set_mode("blackhole")
    started = time.monotonic()
    with pytest.raises(RedisUnavailable):
        save(p, 1, n=2)
    assert time.monotonic() - started < 5
    assert proxy.stats["blackholed_chunks"] >= 1
    assert int(client.hget(KEYS.meta, "head")) == 0

    proxy.set_mode("pass")
    proxy.close_all()
    save(p, 1, n=2)
    assert int(client.hget(KEYS.meta, "head")) == 1


def test_delay_is_applied(proxy: FaultProxy) -> None:
    store = proxied_store(proxy)
    p = RedisPersister(store)
    save(p, 0, n=1)
    proxy.set_mode("delay", seconds=0.2)
    started = time.monotonic()
    assert store.load(PK, APP)["sequence_id"] == 0
    assert time.monotonic() - started >= 0.4  # request and reply each held 0.2 s
    proxy.set_mode("pass")
    started = time.monotonic()
    save(p, 1, n=2)
    assert time.monotonic() - started < 0.2


async def test_async_lost_commit_reply(proxy: FaultProxy, client: redis.Redis) -> None:
    ac = aconnect(proxy.url, socket_timeout=2.0)
    store = AsyncRedisStore(ac, StoreConfig(retry=FAST_RETRY))
    p = AsyncRedisPersister(store)
    try:
        await p.save(PK, APP, 0, "inc", State({"n": 1}), "completed")
        proxy.set_mode("drop_reply")
        await p.save(PK, APP, 1, "inc", State({"n": 2}), "completed")
        await p.save(PK, APP, 2, "inc", State({"n": 3}), "completed")
    finally:
        await ac.aclose()
    assert proxy.stats["dropped_replies"] == 1
    assert int(client.hget(KEYS.meta, "head")) == 2
    assert [s["state"]["n"] for _, s in sorted(stored(client).items())] == [1, 2, 3]


async def test_async_round_trip_has_one_deadline_the_socket_timeout(
    proxy: FaultProxy, client: redis.Redis
) -> None:
    """A round trip whose replies never come fails after the socket timeout (its own deadline:
    the reads have no timer each), as a transient error: retried, then RedisUnavailable, with
    nothing written. Replies flowing again, the next save goes through."""
    ac = aconnect(proxy.url, socket_timeout=0.3)
    retry = RetryPolicy(attempts=2, initial=0.01, maximum=0.01, deadline=5.0)
    store = AsyncRedisStore(ac, StoreConfig(retry=retry))
    p = AsyncRedisPersister(store)
    try:
        await p.save(PK, APP, 0, "inc", State({"n": 1}), "completed")
        proxy.set_mode("blackhole")
        started = time.monotonic()
        with pytest.raises(RedisUnavailable) as info:
            await p.save(PK, APP, 1, "inc", State({"n": 2}), "completed")
        took = time.monotonic() - started
        assert 0.6 <= took < 2.0, took  # two tries of 0.3 s each (plus reconnects), not 0.3 s per reply
        # The first try ends at the round trip's deadline (without one a read here has no timer
        # and would wait forever); a reconnect's handshake may time out in redis-py's own read.
        assert "imeout" in str(info.value), info.value
        assert int(client.hget(KEYS.meta, "head")) == 0
        proxy.set_mode("pass")
        proxy.close_all()
        await p.save(PK, APP, 1, "inc", State({"n": 2}), "completed")
    finally:
        await ac.aclose()
    assert int(client.hget(KEYS.meta, "head")) == 1


class _ReplyLostThenTakeover(RedisStore):
    """Sends the first commit for real, then loses its reply, and while the worker is without an
    answer its lease expires and another worker takes the app (``between``)."""

    def __init__(self, client: redis.Redis, between: Callable[[], None]) -> None:
        super().__init__(client, StoreConfig())
        armed = [True]
        real = self.transport._send

        def send(batch: Any, pool: Any, idx: list[int], node: str, asking: bool = False) -> None:
            real(batch, pool, idx, node, asking)
            if armed[0] and any(batch.cmds[i].name == "commit" for i in idx):
                armed[0] = False
                between()
                batch.pending.update(idx)  # the reply never arrived
                raise redis.ConnectionError("connection reset: reply lost")

        self.transport._send = send  # type: ignore[method-assign]


def test_refused_retry_of_an_applied_commit_is_recorded_unknown(
    server: EmbeddedServer, client: redis.Redis, tmp_path: Path
) -> None:
    """The retry is refused (the lease moved on), but the first send landed: the history must say
    'unknown', not 'failed', or the checker reports a stored state nobody wrote."""
    keys = KeySchema("burr").app(PK, "chat")
    rescuer = RedisStore(connect(server.url))

    def takeover() -> None:
        client.pexpire(keys.lease, 1)
        while client.exists(keys.lease):
            time.sleep(0.001)
        Lease(rescuer, PK, "chat", ttl=30).acquire(auto_renew=False)

    lease = Lease(_ReplyLostThenTakeover(connect(server.url), takeover), PK, "chat", ttl=30)
    p = lease.acquire(auto_renew=False).persister
    p.core.history = HistoryRecorder(tmp_path / "w0.jsonl", "w0")
    with pytest.raises(LeaseLost):
        p.save(PK, "chat", 0, "step", State({"by": "w0"}), "completed")
    assert not lease.valid  # refused by Redis: the lease is known lost, no more doomed saves
    head = rescuer.load(PK, "chat")
    assert head is not None and head["state"]["by"] == "w0"  # the first send did land
    events = load_history(tmp_path)
    assert [(o.op, o.new_seq, o.outcome) for o in operations(events)] == [("commit", 0, "unknown")]
    final = {app_key(PK, "chat"): FinalState("held", 0, {0: state_digest(head["state"].get_all())})}
    assert check(events, final) == []


class _FirstCommitReplyLost(RedisStore):
    """Sends the first commit for real and loses its reply (the retry must recognise it)."""

    def __init__(self, client: redis.Redis) -> None:
        super().__init__(client, StoreConfig(retry=FAST_RETRY))
        armed = [True]
        real = self.transport._send

        def send(batch: Any, pool: Any, idx: list[int], node: str, asking: bool = False) -> None:
            real(batch, pool, idx, node, asking)
            if armed[0] and any(batch.cmds[i].name == "commit" for i in idx):
                armed[0] = False
                batch.pending.update(idx)
                raise redis.ConnectionError("connection reset: reply lost")

        self.transport._send = send  # type: ignore[method-assign]


def test_a_commit_that_settled_is_recognised_when_its_reply_was_lost(server: EmbeddedServer) -> None:
    """A claim's last step commits and settles (releasing the lease) in one script. Its retry
    finds the lease gone: it must recognise its own write and settle, not report a lost lease."""
    from burr_dist import FleetClient
    from burr_dist.store.core import Settle

    fleet = FleetClient.from_url(server.url)
    fleet.enqueue("counter", "s1")
    store = _FirstCommitReplyLost(connect(server.url))
    lease = Lease(store, "default", "s1", ttl=30, worker="w0").acquire(auto_renew=False)
    committed = lease.persister.save_and_settle(
        "default", "s1", 0, "tick", State({"n": 1}), "completed", Settle("completed", attempts="reset")
    )
    assert committed is not None and committed.replayed
    assert committed.settled is not None and committed.settled[0] == "completed"
    job = fleet.show("s1")
    assert (job["status"], job["sequence_id"], job["lease_holder"]) == ("completed", 0, None)
    assert fleet.overview()["apps"]["completed"] == 1 and fleet.overview()["apps"]["running"] == 0


def test_a_commit_with_a_settle_is_fenced_like_any_other(server: EmbeddedServer) -> None:
    from burr_dist import FleetClient
    from burr_dist.store.core import Settle

    fleet = FleetClient.from_url(server.url)
    fleet.enqueue("counter", "s2")
    store = RedisStore(connect(server.url))
    lease = Lease(store, "default", "s2", ttl=30, worker="w0").acquire(auto_renew=False)
    keys = KeySchema("burr").app("default", "s2")
    store.client.delete(keys.lease)  # expired; nobody took it yet
    with pytest.raises(LeaseLost):
        lease.persister.save_and_settle(
            "default", "s2", 0, "tick", State({"n": 1}), "completed", Settle("completed")
        )
    job = fleet.show("s2")
    assert (job["status"], job["sequence_id"]) == ("running", None)  # nothing written, nothing settled


async def test_concurrent_commits_share_a_round_trip_and_survive_its_lost_reply(
    proxy: FaultProxy, client: redis.Redis
) -> None:
    """Commits of 20 apps made in one loop iteration go out as one pipeline (one round trip, not
    20). When that pipeline's reply is lost (the proxy forwards it, Redis runs all 20 commits,
    the connection closes), every caller retries its own commit and recognises it: each app
    holds exactly its steps, none is refused as a conflict."""
    import asyncio

    ac = aconnect(proxy.url, socket_timeout=2.0)
    store = AsyncRedisStore(ac, StoreConfig(retry=FAST_RETRY))
    apps = [f"c{i}" for i in range(20)]
    persisters = [AsyncRedisPersister(store) for _ in apps]
    replayed: list[bool] = []
    real = store.read_commit

    def recording(*args: Any, **kwargs: Any) -> Any:
        committed = real(*args, **kwargs)
        replayed.append(committed.replayed)
        return committed

    store.read_commit = recording  # type: ignore[method-assign]
    try:
        await asyncio.gather(*(p.save(PK, a, 0, "inc", State({"n": 1}), "completed")
                               for p, a in zip(persisters, apps, strict=True)))  # fmt: skip
        assert store.transport.round_trips <= 3  # on a fresh server: NOSCRIPT, SCRIPT LOAD, again
        before = store.transport.round_trips
        replayed.clear()
        proxy.set_mode("drop_reply")
        await asyncio.gather(*(p.save(PK, a, 1, "inc", State({"n": 2}), "completed")
                               for p, a in zip(persisters, apps, strict=True)))  # fmt: skip
        # One request carried all 20 commits: its reply was the one dropped, and every retry
        # found its commit already applied (retries back off with jitter: they need not share).
        assert proxy.stats["dropped_replies"] == 1
        assert replayed == [True] * 20
        assert store.transport.round_trips - before >= 2
    finally:
        await ac.aclose()
    schema = KeySchema("burr")
    for a in apps:
        assert int(client.hget(schema.app(PK, a).meta, "head")) == 1
        got = {
            int(k): codec.parse_entry(v, key=a) for k, v in client.hgetall(schema.app(PK, a).snaps).items()
        }
        assert sorted(got) == [0, 1], (a, sorted(got))
