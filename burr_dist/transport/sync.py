"""The sync transport: sends a :class:`~burr_dist.transport.core.BatchCore` batch over redis-py
connections, one pipeline per node (the rules live in ``transport/core.py``)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis

from burr_dist.transport.connect import RetryPolicy, is_transient
from burr_dist.transport.core import (
    ASK_HOPS,
    COUNTS,
    BatchCore,
    Cmd,
    Durability,
    _count_error,
    _Retry,
    _unavailable,
    topology_may_have_changed,
)

log = logging.getLogger(__name__)


class Transport:
    """Synchronous transport over a redis-py ``Redis`` (one server or Sentinel) or ``RedisCluster``."""

    def __init__(self, client: Any, durability: Durability, policy: RetryPolicy) -> None:
        self.client = client
        self.durability = durability
        self.policy = policy
        self.cluster = isinstance(client, redis.RedisCluster)
        self.round_trips = 0  # pipelines sent (one per node per batch), for benchmarks

    def _pool(self, key: str) -> tuple[str, Any]:
        if not self.cluster:
            return "", self.client.connection_pool
        node = self.client.get_node_from_key(key)
        return node.name, node.redis_connection.connection_pool

    def _pool_at(self, host: str, port: int) -> tuple[str, Any]:
        """The node an ASK named (the client may not know it yet)."""
        node = self.client.get_node(host=host, port=port)
        if node is None or node.redis_connection is None:
            self.refresh()
            node = self.client.get_node(host=host, port=port)
        if node is None or node.redis_connection is None:
            raise redis.ConnectionError(f"ASK redirection to {host}:{port}, a node the cluster does not list")
        return node.name, node.redis_connection.connection_pool

    def refresh(self) -> None:
        if self.cluster:
            try:
                self.client.nodes_manager.initialize()
            except Exception as e:  # mid-failover: the next attempt tries again
                log.debug("cluster topology refresh failed: %s", e)

    def execute(
        self, cmds: Sequence[Cmd], *, durable: bool = True, before_try: Callable[[], None] | None = None
    ) -> list[Any]:
        """Send ``cmds``; their replies in order. Raises the first non-transient error reply,
        NotDurable when WAIT falls short, RedisUnavailable when retries run out."""
        batch = BatchCore(cmds, self.durability, durable)
        retry = _Retry(self.policy)
        hops = 0
        while batch.pending:
            if before_try is not None:
                before_try()  # e.g. a lease check: a lost lease stops the retries
            batch.only_asked = True
            try:
                groups: dict[tuple[str, bool], tuple[Any, list[int]]] = {}
                for i in sorted(batch.pending):
                    asked = batch.asked.get(i) if self.cluster else None
                    name, pool = self._pool(batch.cmds[i].key) if asked is None else self._pool_at(*asked)
                    groups.setdefault((name, asked is not None), (pool, []))[1].append(i)
                for (name, asking), (pool, idx) in groups.items():
                    self._send(batch, pool, idx, name, asking)
            except BaseException as e:
                if not is_transient(e):
                    _count_error(e)
                    raise
                COUNTS.count(COUNTS.retries, e)
                batch.error = e
                batch.asked.clear()  # e.g. the node an ASK named is gone: back to the slot map
                batch.only_asked = False
            if batch.pending:
                if batch.only_asked and hops < ASK_HOPS:
                    hops += 1
                    continue  # follow the ASK now
                hops = 0
                wait = retry.next_wait()
                if wait is None:
                    COUNTS.count(COUNTS.errors, "RedisUnavailable")
                    raise _unavailable(batch, batch.error)
                time.sleep(wait)
                if topology_may_have_changed(batch.error):
                    self.refresh()
        return batch.replies

    def _send(self, batch: BatchCore, pool: Any, idx: list[int], node: str, asking: bool = False) -> None:
        conn = pool.get_connection()
        try:
            for _ in range(3):  # NOSCRIPT rounds: load, then send the same commands again
                self.round_trips += 1
                raw = _roundtrip(conn, batch.packed(idx, asking, node))
                missing = batch.take(idx, batch.unpack(idx, raw, asking), node)
                if not missing:
                    return
                for script in missing:
                    _roundtrip(conn, [("SCRIPT", "LOAD", script.source)])
                idx = [i for i in idx if i in batch.pending]
        except BaseException:
            conn.disconnect()
            raise
        finally:
            pool.release(conn)

    def bucket_per_node(self, schema: Any) -> list[int]:
        """One bucket owned by each primary (the lowest-numbered), for per-node keys."""
        if not self.cluster:
            return [0]
        seen: dict[str, int] = {}
        for b in range(schema.buckets):
            seen.setdefault(self.client.get_node_from_key(schema.epoch(b)).name, b)
        return sorted(seen.values())

    def primaries(self) -> list[Any]:
        """One redis-py client per primary (one element outside Cluster), for SCAN and CONFIG."""
        if not self.cluster:
            return [self.client]
        return [n.redis_connection for n in self.client.get_primaries()]


def _roundtrip(conn: Any, commands: list[tuple[Any, ...]]) -> list[Any]:
    conn.send_packed_command(conn.pack_commands(commands))
    out: list[Any] = []
    for _ in commands:
        try:
            out.append(conn.read_response())
        except redis.ResponseError as e:
            out.append(e)
    return out
