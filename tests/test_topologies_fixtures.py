"""The topology fixtures themselves: a cluster that serves every slot, failovers that happen, TLS
that is really required. Quick checks, so that a failing burr_dist test on a topology points at
burr_dist and not at the fixture."""

from __future__ import annotations

import os
import time

import pytest
import redis
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.retry import Retry

from burr_dist.testing.embedded import EmbeddedServer, TLSFiles
from burr_dist.testing.sentinel import EmbeddedSentinel
from burr_dist.testing.topologies import ACL_RULES, CLUSTER_SLOTS, EmbeddedCluster, create_acl_user


def _keys_on_every_primary(c: EmbeddedCluster, rc: redis.RedisCluster, prefix: str) -> None:
    """Write keys through the cluster client until each primary holds one; read them back."""
    primaries = c.primaries()
    hit: dict[int, str] = {}
    for i in range(200):
        key = f"{prefix}{i}"
        rc.set(key, i)
        assert rc.get(key) == str(i).encode()
        hit.setdefault(c.owner(key_slot(key.encode())).port, key)
        if len(hit) == len(primaries):
            break
    assert sorted(hit) == sorted(n.port for n in primaries)
    for node in primaries:
        with node.client() as direct:
            assert direct.exists(hit[node.port]) == 1  # the key really lives on that process


def test_cluster_covers_every_slot_and_serves_keys_on_each_primary(cluster: EmbeddedCluster) -> None:
    creds = f"{cluster.auth[0]}:{cluster.auth[1]}@" if cluster.auth else ""  # BURR_DIST_TEST_ACL=1
    assert cluster.url == "redis+cluster://" + creds + ",".join(f"127.0.0.1:{p}" for _, p in cluster.seeds)
    primaries = cluster.primaries()
    assert len(primaries) == 3 and all(cluster.replicas_of(p) == [] for p in primaries)
    with primaries[0].client() as c:
        ranges = c.execute_command("CLUSTER", "SLOTS")
    assert sum(r[1] - r[0] + 1 for r in ranges) == CLUSTER_SLOTS
    assert len({r[2][1] for r in ranges}) == 3
    rc = cluster.client()
    try:
        _keys_on_every_primary(cluster, rc, "burr:fixture:")
    finally:
        rc.close()


def test_cluster_is_flushed_between_tests(cluster: EmbeddedCluster) -> None:
    for node in cluster.primaries():
        with node.client() as c:
            assert c.dbsize() == 0


def test_migrate_slot_moves_keys_and_clients_follow(cluster: EmbeddedCluster) -> None:
    rc = cluster.client()
    try:
        keys = [f"burr:{{mig}}:{i}" for i in range(250)]
        for k in keys:
            rc.set(k, k)
        slot = key_slot(b"mig")
        src = cluster.owner(slot)
        dst = next(n for n in cluster.primaries() if n is not src)
        batches: list[int] = []
        assert cluster.migrate_slot(slot, src, dst, batch=100, between_batches=batches.append) == 250
        assert batches == [100, 200, 250]
        assert cluster.owner(slot) is dst
        with src.client() as c:
            assert c.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 0
        assert rc.mget(keys) == [k.encode() for k in keys]  # through MOVED
    finally:
        rc.close()


def test_acl_user_is_limited_to_the_prefix(cluster: EmbeddedCluster) -> None:
    create_acl_user(cluster, "burr-test", "s3cret", ACL_RULES)
    rc = cluster.client(username="burr-test", password="s3cret")  # needs CLUSTER SLOTS
    try:
        rc.set("burr:acl", 1)
        assert rc.get("burr:acl") == b"1"
        with pytest.raises(redis.exceptions.NoPermissionError):
            rc.set("other:acl", 1)
        node = cluster.primaries()[0]
        with node.client(username="burr-test", password="s3cret") as c:
            assert c.config_get("maxmemory-policy")
            for refused in (
                c.flushall,
                lambda: c.info("replication"),
                lambda: c.config_set("maxmemory", "1"),
            ):
                with pytest.raises(redis.exceptions.NoPermissionError):
                    refused()
    finally:
        rc.close()
        for n in cluster.reachable():
            with n.client() as c:
                c.execute_command("ACL", "DELUSER", "burr-test")


@pytest.mark.slow
def test_killing_a_primary_promotes_its_replica(cluster_ha: EmbeddedCluster) -> None:
    victim = cluster_ha.primaries()[0]
    (replica,) = cluster_ha.replicas_of(victim)
    rc = cluster_ha.client()
    try:
        _keys_on_every_primary(cluster_ha, rc, "burr:ha:")
        start = time.monotonic()
        cluster_ha.kill(victim)
        assert cluster_ha.wait_failover(victim, timeout=15) is replica
        assert time.monotonic() - start < 10
        assert victim not in cluster_ha.reachable()
        _keys_on_every_primary(cluster_ha, rc, "burr:ha2:")
        cluster_ha.restart(victim)  # rejoins as the replica of its successor
        assert cluster_ha.replicas_of(replica) == [victim]
    finally:
        rc.close()


@pytest.mark.slow
def test_killing_the_sentinel_master_elects_the_replica(sentinel: EmbeddedSentinel) -> None:
    assert sentinel.url == "redis+sentinel://" + ",".join(f"127.0.0.1:{p}" for _, p in sentinel.seeds) + (
        "/mymaster"
    )
    old = sentinel.master()
    assert old is sentinel.master_server
    client = sentinel.client(socket_timeout=1.0)
    try:
        client.set("burr:s", "before")
        assert client.execute_command("WAIT", 1, 2000) == 1
        start = time.monotonic()
        assert sentinel.kill_master() is old
        new = sentinel.wait_new_master(old, timeout=20)
        assert new is sentinel.replica_servers[0]
        assert time.monotonic() - start < 15
        assert client.get("burr:s") == b"before"  # the Sentinel client found the new master
        client.set("burr:s", "after")
        with new.client() as direct:
            assert direct.get("burr:s") == b"after"
        sentinel.restart(old)  # back as a replica of the new master, in sync
        with old.client() as direct:
            assert direct.get("burr:s") == b"after"
    finally:
        client.close()


@pytest.mark.slow
def test_forced_failover_swaps_master_and_replica(sentinel: EmbeddedSentinel) -> None:
    old = sentinel.force_failover()
    new = sentinel.wait_new_master(old, timeout=20)
    assert new is sentinel.replica_servers[0]
    assert sentinel.master() is new


def test_stop_leaves_no_process_and_no_directory(sentinel: EmbeddedSentinel) -> None:
    procs = [s.proc for s in [*sentinel.sentinels, *sentinel.data_servers]]
    sentinel.stop()
    assert all(p is not None and p.poll() is not None for p in procs)
    assert not os.path.exists(sentinel.dir)


def _refused(**kwargs: object) -> None:
    c = redis.Redis(socket_timeout=2.0, socket_connect_timeout=2.0, retry=Retry(NoBackoff(), 0), **kwargs)
    try:
        with pytest.raises(redis.ConnectionError):
            c.ping()
    finally:
        c.close()


def test_tls_server_needs_tls_and_a_client_certificate(
    tls_server: EmbeddedServer, tls_files: TLSFiles
) -> None:
    assert tls_server.url.startswith(f"rediss://127.0.0.1:{tls_server.port}/0?ssl_ca_certs=")
    c = redis.Redis.from_url(tls_server.url)
    try:
        assert c.ping()
    finally:
        c.close()
    _refused(host="127.0.0.1", port=tls_server.port)  # plain TCP
    _refused(host="127.0.0.1", port=tls_server.port, ssl=True, ssl_ca_certs=tls_files.ca)  # no cert


@pytest.mark.slow
def test_tls_cluster_serves_keys_on_each_primary(tls_cluster: EmbeddedCluster) -> None:
    assert tls_cluster.url.startswith("rediss+cluster://127.0.0.1:")
    _refused(host="127.0.0.1", port=tls_cluster.seeds[0][1])
    rc = tls_cluster.client()
    try:
        _keys_on_every_primary(tls_cluster, rc, "burr:tls:")
    finally:
        rc.close()


@pytest.mark.slow
def test_tls_sentinel_fails_over(tls_sentinel: EmbeddedSentinel) -> None:
    assert tls_sentinel.url.startswith("rediss+sentinel://127.0.0.1:")
    assert "/mymaster?ssl_ca_certs=" in tls_sentinel.url
    client = tls_sentinel.client(socket_timeout=1.0)
    try:
        client.set("burr:t", 1)
        new = tls_sentinel.wait_new_master(tls_sentinel.force_failover(), timeout=20)
        assert new is tls_sentinel.replica_servers[0]
        assert client.get("burr:t") == b"1"
    finally:
        client.close()
