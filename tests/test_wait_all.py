"""wait_replicas="all": a write is confirmed by as many replicas as its node has had online (at
least one), counted where the WAIT is sent: a replica added later is covered without a
configuration change, and one that leaves does not lower the count (the failover chaos row
"2 repl., wait all" shows why); a fixed count keeps accepting what fewer replicas confirmed."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest
from burr.core import State

from burr_dist import ConfigurationError, NotDurable, RedisPersister, RedisStore, StoreConfig
from burr_dist.testing.embedded import EmbeddedServer, wait_for
from burr_dist.transport.connect import connect
from burr_dist.transport.urls import parse_url


def online(primary: EmbeddedServer, n: int) -> None:
    def count() -> int | None:
        info = primary.info("replication")
        up = sum("online" in str(info.get(f"slave{i}")) for i in range(4))
        return up if up == n else None

    wait_for(count, 30, f"{n} replicas online")


@pytest.fixture
def primary() -> Iterator[EmbeddedServer]:
    with EmbeddedServer(extra=["--repl-diskless-sync-delay", "0"]) as p:
        yield p


def replica_of(primary: EmbeddedServer) -> EmbeddedServer:
    return EmbeddedServer(extra=["--replicaof", "127.0.0.1", str(primary.port)]).start()


def save(p: RedisPersister, seq: int) -> None:
    p.save("t", "app", seq, "step", State({"n": seq}), "completed")


def test_all_follows_the_replicas_the_node_has(primary: EmbeddedServer) -> None:
    first = replica_of(primary)
    second: EmbeddedServer | None = None
    try:
        online(primary, 1)
        store = RedisStore(connect(primary.url), StoreConfig(wait_replicas="all", wait_timeout_ms=2000))
        fixed = RedisStore(connect(primary.url), StoreConfig(wait_replicas=1, wait_timeout_ms=2000))
        p, seen = RedisPersister(store), store.transport.durability.seen
        save(p, 0)
        assert list(seen.values()) == [1]
        second = replica_of(primary)  # a replica added while the app runs
        online(primary, 2)
        save(p, 1)  # WAIT asked for 1, ROLE listed 2: sent again, confirmed by both
        assert list(seen.values()) == [2]
        second.signal(signal.SIGSTOP)  # online for the master still, but confirms nothing
        try:
            with pytest.raises(NotDurable, match="confirmed 1 of 2 replicas") as e:
                save(p, 2)
            assert (e.value.acked, e.value.wanted) == (1, 2)
            RedisPersister(fixed).save(
                "t", "other", 0, "step", State({"n": 0}), "completed"
            )  # 1 of 1: accepted
        finally:
            second.signal(signal.SIGCONT)
        # A replica that leaves (killed here; promoted away in a failover) does not lower the count:
        # writes fail as not durable instead of being confirmed by the replicas that remain.
        second.stop()
        second = None
        online(primary, 1)
        with pytest.raises(NotDurable, match="confirmed 1 of 2 replicas"):
            save(p, 2)
        assert list(seen.values()) == [2]
    finally:
        for r in (first, second):
            if r is not None:
                r.stop()


def test_all_with_no_replica_confirms_nothing(primary: EmbeddedServer) -> None:
    store = RedisStore(connect(primary.url), StoreConfig(wait_replicas="all", wait_timeout_ms=200))
    with pytest.raises(NotDurable, match="confirmed 0 of 1 replicas"):
        save(RedisPersister(store), 0)


def test_the_setting_is_checked() -> None:
    assert parse_url("redis://h:1?wait_replicas=all").wait_replicas == "all"
    assert StoreConfig.for_target(parse_url("redis://h:1?wait_replicas=all")).wait_replicas == "all"
    for bad in ("some", -1, True):
        with pytest.raises(ConfigurationError, match="wait_replicas must be an int >= 0 or 'all'"):
            StoreConfig(wait_replicas=bad)  # type: ignore[arg-type]
