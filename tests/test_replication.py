"""Replication safety (``wait_replicas=1``) on a Sentinel-managed pair and on a Cluster with a
replica per primary: a write its replica did not confirm raises NotDurable within about
``wait_timeout_ms`` and the lease it was made under counts as lost; once the replica is back the
same commit, sent again, is recognised as a replay. With ``min-replicas-to-write 1`` on the server
a stopped replica makes the master answer NOREPLICAS: transient, retried until the deadline, then
RedisUnavailable (never a plain ResponseError)."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest
import redis
from burr.core import State
from redis.crc import key_slot

from burr_dist import FleetClient, Lease, LeaseLost, RedisStore, StoreConfig
from burr_dist.errors import NotDurable, RedisUnavailable
from burr_dist.store.core import Call, Committed
from burr_dist.testing.embedded import EmbeddedServer, find_server_binary
from burr_dist.testing.sentinel import EmbeddedSentinel
from burr_dist.testing.topologies import EmbeddedCluster
from burr_dist.transport.connect import RetryPolicy
from burr_dist.transport.core import BatchCore, Cmd, Durability
from tests.conftest import KINDS
from tests.support.targets import ACL, Target, add_acl_users

PK = "user-1"
WAIT_MS = 500
T = TypeVar("T")


@dataclass
class Replicated:
    """A fresh Sentinel or Cluster deployment whose every primary has one replica."""

    target: Target

    @property
    def url(self) -> str:
        return self.target.url_with(wait_replicas=1, wait_timeout_ms=WAIT_MS)

    def replicas(self) -> list[EmbeddedServer]:
        env = self.target.env
        if isinstance(env, EmbeddedCluster):
            return [r for p in env.primaries() for r in env.replicas_of(p)]
        assert isinstance(env, EmbeddedSentinel)
        return list(env.replica_servers)

    def primaries(self) -> list[EmbeddedServer]:
        return self.target.primaries()

    def pause(self, nodes: list[EmbeddedServer]) -> None:
        """SIGSTOP (a Cluster then leaves them out of reachable() and primaries())."""
        for n in nodes:
            if isinstance(self.target.env, EmbeddedCluster):
                self.target.env.pause(n)
            else:
                n.signal(signal.SIGSTOP)

    def resume(self, nodes: list[EmbeddedServer]) -> None:
        for n in nodes:
            if isinstance(self.target.env, EmbeddedCluster):
                self.target.env.resume(n)
            else:
                n.signal(signal.SIGCONT)


PARAMS = [
    pytest.param(f"{topology}-{kind}", id=f"{topology}-{kind}", marks=() if plain else (pytest.mark.ha,))
    for topology in ("sentinel", "cluster")
    for kind in KINDS
    for plain in [(topology, kind) == ("sentinel", KINDS[0])]
]


def start(name: str, extra: list[str] | None = None) -> Replicated:
    topology, kind = name.split("-")
    binary = find_server_binary(kind)
    env: EmbeddedSentinel | EmbeddedCluster
    if topology == "sentinel":
        env = EmbeddedSentinel(binary, extra=extra).start()
    else:
        env = EmbeddedCluster(binary, replicas_per_master=1, extra=extra).start()
    target = Target(name, topology, False, kind, env)
    if ACL:
        add_acl_users(target)
    return Replicated(target)


@pytest.fixture(params=PARAMS)
def replicated(request: pytest.FixtureRequest) -> Iterator[Replicated]:
    r = start(request.param)
    yield r
    r.target.stop()


@pytest.fixture(params=PARAMS)
def guarded(request: pytest.FixtureRequest) -> Iterator[Replicated]:
    """As ``replicated``, with ``min-replicas-to-write 1`` and ``min-replicas-max-lag 1`` on every
    data node: a master whose replica stopped acknowledging refuses writes (NOREPLICAS)."""
    r = start(request.param, ["--min-replicas-to-write", "1", "--min-replicas-max-lag", "1"])
    yield r
    r.target.stop()


def until_confirmed(send: Callable[[], T], timeout: float = 15.0) -> T:
    """``send()`` again while replicas are catching up (NotDurable), up to ``timeout`` seconds."""
    give_up = time.monotonic() + timeout
    while True:
        try:
            return send()
        except NotDurable:
            if time.monotonic() > give_up:
                raise
            time.sleep(0.1)


class Recorder:
    """Wraps ``store.run`` to keep every call sent (to send the same commit again)."""

    def __init__(self, store: RedisStore) -> None:
        self.calls: list[Call] = []
        real = store.run

        def run(call: Call, before_try: Any = None) -> Any:
            self.calls.append(call)
            return real(call, before_try)

        store.run = run  # type: ignore[method-assign]

    def last(self, script: str) -> Call:
        return next(c for c in reversed(self.calls) if c.script.name == script)


def replicating(store: RedisStore) -> None:
    """Until a write on every primary is confirmed (a replica that just synced may be slow to
    ack under load)."""
    keys = [f"{store.schema.bucket_tag(b)}:warmup" for b in store.transport.bucket_per_node(store.schema)]
    until_confirmed(lambda: store.commands([Cmd(k, ("INCR", k)) for k in keys], durable=True))


def test_unconfirmed_writes_raise_not_durable_lose_the_lease_and_replay(replicated: Replicated) -> None:
    store = RedisStore.from_url(replicated.url)
    assert (store.config.wait_replicas, store.config.wait_timeout_ms) == (1, WAIT_MS)
    fleet = FleetClient.from_url(replicated.url)
    for s in (store, fleet):
        replicating(s)
    sent = Recorder(store)
    lease = Lease(store, PK, "a1", ttl=20).acquire(auto_renew=False)
    p = lease.persister
    p.save(PK, "a1", 0, "inc", State({"n": 1}), "completed")  # confirmed: the replica is up
    renewing = Lease(store, PK, "a2", ttl=20).acquire(auto_renew=False)
    replicas = replicated.replicas()
    replicated.pause(replicas)
    try:
        started = time.monotonic()
        with pytest.raises(NotDurable) as ei:
            p.save(PK, "a1", 1, "inc", State({"n": 2}), "completed")
        took = time.monotonic() - started
        assert WAIT_MS / 1000 * 0.9 <= took < WAIT_MS / 1000 + 1.0, took
        assert (ei.value.acked, ei.value.wanted, ei.value.commands) == (0, 1, ["commit"])
        assert not lease.valid and "not confirmed by replicas" in (lease.lost_reason or "")
        before = len(sent.calls)
        with pytest.raises(LeaseLost, match="not confirmed by replicas"):
            p.save(PK, "a1", 2, "inc", State({"n": 3}), "completed")  # nothing more runs on it
        assert len(sent.calls) == before  # refused locally, nothing sent

        with pytest.raises(NotDurable):
            renewing.renew()
        assert not renewing.valid and "renewal not confirmed" in (renewing.lost_reason or "")
        with pytest.raises(NotDurable) as acq:
            Lease(store, PK, "a3", ttl=20).acquire(auto_renew=False)
        assert acq.value.commands == ["acquire"]
        with pytest.raises(NotDurable) as enq:
            fleet.enqueue("counter", app_id="e1")
        assert set(enq.value.commands) & {"enqueue", "SADD"}  # the first node whose WAIT fell short
    finally:
        replicated.resume(replicas)

    commit = sent.last("commit")
    assert commit.args[0] == 1  # the step that raised NotDurable
    done: Committed = until_confirmed(lambda: store.read_commit(store.run(commit), PK, "a1", 1))
    assert done.replayed and done.sequence_id == 1  # the master had applied it: recognised by write id
    assert store.head_sequence("a1", partition_key=PK) == 1
    meta = store.keys(PK, "a1").meta
    copies = []
    for replica in replicas:  # the replica of the master that owns the app's slot holds it too
        with replica.client() as c:
            if isinstance(replicated.target.env, EmbeddedCluster):
                c.execute_command("READONLY")
            try:
                copies.append(c.hget(meta, "head"))
            except redis.exceptions.MovedError:  # a replica of another slot range
                continue
    assert copies == [b"1"]
    # Enqueue again: it recognises its own record and confirms it this time.
    res = until_confirmed(lambda: fleet.enqueue("counter", app_id="e1"))
    assert res.app_id == "e1" and res.status == "queued"
    store.client.close()
    fleet.client.close()


def _probe_key(r: Replicated, node: EmbeddedServer) -> str:
    """A key ``node`` serves (on a Cluster, one of its slots)."""
    env = r.target.env
    if not isinstance(env, EmbeddedCluster):
        return "burr:probe"
    me = next(v for v in env.view(node) if "myself" in v.flags)
    return next(k for k in (f"burr:probe:{i}" for i in range(100_000)) if me.owns(key_slot(k.encode())))


def _wait_for_noreplicas(r: Replicated, timeout: float = 15.0) -> None:
    """Until every primary refuses writes (its replica's last ack is older than the max lag)."""
    give_up = time.monotonic() + timeout
    for node in r.primaries():
        key = _probe_key(r, node)
        with node.client() as c:
            while True:
                try:
                    c.set(key, "x")
                except redis.ResponseError as e:
                    if str(e).startswith("NOREPLICAS"):
                        break
                    raise
                assert time.monotonic() < give_up, "the master never refused a write"
                time.sleep(0.2)


@pytest.mark.parametrize("wait_replicas", [1, 0])
def test_noreplicas_is_transient_until_the_deadline(guarded: Replicated, wait_replicas: int) -> None:
    deadline = 1.5
    config = {"retry": RetryPolicy(attempts=1000, initial=0.05, maximum=0.2, deadline=deadline)}
    url = guarded.target.url_with(wait_replicas=wait_replicas, wait_timeout_ms=WAIT_MS)
    store = RedisStore.from_url(url, **config)
    assert isinstance(store.config, StoreConfig) and store.config.wait_replicas == wait_replicas
    replicating(store)
    lease = Lease(store, PK, "a1", ttl=30).acquire(auto_renew=False)
    commit = store.commit_call(
        PK, "a1", 0, "inc", "completed", b'{"w":"0123456789abcdef"}', "0123456789abcdef", lease.token
    )
    replicas = guarded.replicas()
    guarded.pause(replicas)
    try:
        _wait_for_noreplicas(guarded)
        started = time.monotonic()
        with pytest.raises(RedisUnavailable) as ei:
            store.run(commit)
        took = time.monotonic() - started
        assert not isinstance(ei.value, redis.ResponseError)
        assert "NOREPLICAS" in str(ei.value) and "commit" in str(ei.value), ei.value
        assert deadline * 0.9 <= took < deadline + 1.5, took
        with pytest.raises(RedisUnavailable, match="NOREPLICAS"):
            Lease(store, PK, "a2", ttl=30).acquire(auto_renew=False)
    finally:
        guarded.resume(replicas)
    # Refused before it ran: sent again once the replica is back, it commits for the first time.
    reply = until_confirmed(lambda: _retry_noreplicas(lambda: store.run(commit)))
    assert int(reply[0]) == 1
    assert store.head_sequence("a1", partition_key=PK) == 0
    store.client.close()


def _retry_noreplicas(send: Callable[[], T], timeout: float = 15.0) -> T:
    give_up = time.monotonic() + timeout
    while True:
        try:
            return send()
        except RedisUnavailable:
            if time.monotonic() > give_up:
                raise
            time.sleep(0.2)


# -- the transport's reading of a confirmed batch (no server) ----------------------------------


def test_a_refused_write_in_a_confirmed_batch_is_sent_again_not_reported_not_durable() -> None:
    cmds = [Cmd("burr:{a}:x", ("HSET", "burr:{a}:x", "f", "1")), Cmd("burr:{a}:y", ("GET", "burr:{a}:y"))]
    batch = BatchCore(cmds, Durability(replicas=1), durable=True)
    noreplicas = redis.ResponseError("NOREPLICAS Not enough good replicas to write.")
    # HSET refused, GET answered, INCR refused, WAIT counted 0 (nothing new to replicate).
    assert batch.take([0, 1], [noreplicas, b"v", noreplicas, 0], "node") == []
    assert batch.pending == {0, 1} and batch.error is noreplicas
    # The same part confirmed on the next send.
    batch.take([0, 1], [1, b"v", 7, 1], "node")
    assert batch.pending == set() and batch.replies == [1, b"v"]
    # A short WAIT after writes that did run is NotDurable.
    batch = BatchCore(cmds, Durability(replicas=1), durable=True)
    with pytest.raises(NotDurable):
        batch.take([0, 1], [1, b"v", 7, 0], "node")
