"""How burr_dist's own commands reach Redis: routed by hash slot, pipelined per node, confirmed.

A batch of commands is split by the node that owns each command's routing key; each node's part
goes out on one connection as one pipeline. When writes must be confirmed (``wait_replicas`` >
0), the pipeline ends with ``INCR <prefix>:{tag}:sync`` and ``WAIT n timeout`` **on the same
connection**: WAIT only covers the writes of the connection it is sent on (redis-py would route a
bare WAIT to any node: a false confirmation). The INCR is a write in the same slot, so WAIT's
offset covers it and therefore everything the batch read or wrote, including state another
client wrote earlier that a script only read (an acquire that returns a head, a commit retry
that finds its own write). A WAIT that counts fewer replicas raises :class:`NotDurable`.

Errors: NOSCRIPT (a restarted or failed-over node) loads the script and re-sends just the
commands that hit it; MOVED/ASK/TRYAGAIN/CLUSTERDOWN, READONLY, NOREPLICAS, LOADING and lost
connections are transient: the topology is refreshed and the unresolved commands are sent again,
within the :class:`~burr_dist.connection.RetryPolicy`. Every command burr_dist sends through here
is safe to send twice (scripts recognise their own earlier effect; see each script's header).

The logic is sans-IO (:class:`BatchCore`); :class:`Transport` and :class:`AsyncTransport` only
move bytes.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio as aioredis
import redis.asyncio.cluster as aiocluster
from redis.crc import key_slot

from burr_dist.connection import RetryPolicy, is_transient
from burr_dist.errors import NotDurable, RedisUnavailable
from burr_dist.scripts import LuaScript


@dataclass(frozen=True)
class Cmd:
    """One command. ``key`` routes it (its hash slot picks the node); ``script`` is set for an
    EVALSHA so that NOSCRIPT can be answered by loading it."""

    key: str
    args: tuple[Any, ...]
    script: LuaScript | None = None

    @property
    def name(self) -> str:
        return self.script.name if self.script is not None else str(self.args[0])


def hash_tag(key: str) -> str:
    """What Redis Cluster hashes: the text inside the first ``{...}`` when non-empty."""
    start = key.find("{")
    if start >= 0:
        end = key.find("}", start + 1)
        if end > start + 1:
            return key[start + 1 : end]
    return key


@dataclass(frozen=True)
class Durability:
    replicas: int = 0
    timeout_ms: int = 1000
    prefix: str = "burr"

    def tail(self, cmds: Sequence[Cmd]) -> list[tuple[Any, ...]]:
        """The commands that confirm a node's part of a batch (none when not asked to)."""
        if self.replicas <= 0 or not cmds:
            return []
        sync_key = f"{self.prefix}:{{{hash_tag(cmds[0].key)}}}:sync"
        return [("INCR", sync_key), ("WAIT", self.replicas, self.timeout_ms)]


class BatchCore:
    """Sans-IO state of one batch: which commands are resolved, what to send next."""

    def __init__(self, cmds: Sequence[Cmd], durability: Durability, durable: bool) -> None:
        self.cmds = list(cmds)
        self.durability = durability if durable else Durability(0)
        self.replies: list[Any] = [None] * len(cmds)
        self.pending = set(range(len(cmds)))
        self.error: BaseException | None = None  # the last transient error, for the final message

    def packed(self, idx: Sequence[int]) -> list[tuple[Any, ...]]:
        part = [self.cmds[i] for i in idx]
        return [c.args for c in part] + self.durability.tail(part)

    def take(self, idx: Sequence[int], replies: Sequence[Any], node: str) -> list[LuaScript]:
        """Record a node's replies. Returns scripts to load before re-sending (NOSCRIPT)."""
        n = len(idx)
        missing: dict[str, LuaScript] = {}
        refused = False  # a command got a transient error reply (NOREPLICAS, READONLY, TRYAGAIN...)
        for i, reply in zip(idx, replies[:n], strict=True):
            if isinstance(reply, redis.exceptions.NoScriptError) and self.cmds[i].script is not None:
                script = self.cmds[i].script
                assert script is not None
                missing[script.sha] = script
            elif isinstance(reply, BaseException) and is_transient(reply):
                self.error = reply
                refused = True
            elif isinstance(reply, BaseException):
                raise reply
            else:
                self.replies[i] = reply
                self.pending.discard(i)
        tail = replies[n:]
        if tail and not missing:
            wait = tail[-1]
            if isinstance(wait, BaseException):
                if not is_transient(wait):
                    raise wait
                self.error = wait
                self.pending.update(idx)  # unconfirmed: send again (each command is idempotent)
            elif refused:
                # The node refused writes for now (min-replicas-to-write: NOREPLICAS, a demoted
                # master: READONLY): WAIT's count says nothing about a write that did not run.
                # Transient like the refusal itself: the whole part is sent again.
                self.pending.update(idx)
            elif int(wait) < self.durability.replicas:
                raise NotDurable(
                    f"WAIT on {node or 'the master'} confirmed {int(wait)} of {self.durability.replicas} replicas "
                    f"within {self.durability.timeout_ms} ms for {', '.join(sorted({self.cmds[i].name for i in idx}))}: "
                    "the writes may be lost if this master fails now",
                    node=node, acked=int(wait), wanted=self.durability.replicas,
                    commands=sorted({self.cmds[i].name for i in idx}),
                )  # fmt: skip
        return list(missing.values())


def evalsha(script: LuaScript, keys: Sequence[str], args: Sequence[Any]) -> Cmd:
    return Cmd(keys[0], ("EVALSHA", script.sha, len(keys), *keys, *args), script)


class _Retry:
    """Full-jitter backoff within a RetryPolicy (attempts and a deadline)."""

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy
        self.attempt = 0
        self.give_up = time.monotonic() + policy.deadline

    def next_wait(self) -> float | None:
        self.attempt += 1
        if self.attempt >= self.policy.attempts or time.monotonic() >= self.give_up:
            return None
        return random.uniform(0, min(self.policy.maximum, self.policy.initial * 2**self.attempt))


# Transient replies that mean "not now" from the right node: the slot map did not change, so the
# transport resends without asking the cluster again (a refresh costs round trips, and redis-py
# may ask an unresponsive node first and wait socket_timeout for it).
_SAME_TOPOLOGY = ("NOREPLICAS", "TRYAGAIN", "LOADING", "MASTERDOWN")


def topology_may_have_changed(error: BaseException | None) -> bool:
    """False for errors after which the same node will serve the retry."""
    if isinstance(error, (redis.exceptions.TryAgainError, redis.exceptions.BusyLoadingError)):
        return False
    return not (isinstance(error, redis.ResponseError) and str(error).startswith(_SAME_TOPOLOGY))


def _unavailable(batch: BatchCore, error: BaseException | None) -> RedisUnavailable:
    names = sorted({batch.cmds[i].name for i in batch.pending})
    return RedisUnavailable(f"Redis unreachable running {', '.join(names)}: {error}", commands=names)


class Transport:
    """Synchronous transport over a redis-py ``Redis`` (one server or Sentinel) or ``RedisCluster``."""

    def __init__(self, client: Any, durability: Durability, policy: RetryPolicy) -> None:
        self.client = client
        self.durability = durability
        self.policy = policy
        self.cluster = isinstance(client, redis.RedisCluster)

    def _pool(self, key: str) -> tuple[str, Any]:
        if not self.cluster:
            return "", self.client.connection_pool
        node = self.client.get_node_from_key(key)
        return node.name, node.redis_connection.connection_pool

    def refresh(self) -> None:
        if self.cluster:
            self.client.nodes_manager.initialize()

    def execute(
        self, cmds: Sequence[Cmd], *, durable: bool = True, before_try: Callable[[], None] | None = None
    ) -> list[Any]:
        """Send ``cmds``; their replies in order. Raises the first non-transient error reply,
        NotDurable when WAIT falls short, RedisUnavailable when retries run out."""
        batch = BatchCore(cmds, self.durability, durable)
        retry = _Retry(self.policy)
        while batch.pending:
            if before_try is not None:
                before_try()  # e.g. a lease check: a lost lease stops the retries
            try:
                groups: dict[str, tuple[Any, list[int]]] = {}
                for i in sorted(batch.pending):
                    name, pool = self._pool(batch.cmds[i].key)
                    groups.setdefault(name, (pool, []))[1].append(i)
                for name, (pool, idx) in groups.items():
                    self._send(batch, pool, idx, name)
            except BaseException as e:
                if not is_transient(e):
                    raise
                batch.error = e
            if batch.pending:
                wait = retry.next_wait()
                if wait is None:
                    raise _unavailable(batch, batch.error)
                time.sleep(wait)
                if topology_may_have_changed(batch.error):
                    self.refresh()
        return batch.replies

    def _send(self, batch: BatchCore, pool: Any, idx: list[int], node: str) -> None:
        conn = pool.get_connection()
        try:
            for _ in range(3):  # NOSCRIPT rounds: load, then send the same commands again
                replies = _roundtrip(conn, batch.packed(idx))
                missing = batch.take(idx, replies, node)
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


async def _aroundtrip(conn: Any, commands: list[tuple[Any, ...]]) -> list[Any]:
    await conn.send_packed_command(conn.pack_commands(commands))
    out: list[Any] = []
    for _ in commands:
        try:
            out.append(await conn.read_response())
        except redis.ResponseError as e:
            out.append(e)
    return out


class AsyncTransport:
    """The asyncio twin of :class:`Transport`; nodes of one batch are sent to concurrently."""

    def __init__(self, client: Any, durability: Durability, policy: RetryPolicy) -> None:
        self.client = client
        self.durability = durability
        self.policy = policy
        self.cluster = isinstance(client, aiocluster.RedisCluster)
        self._pools: dict[str, aioredis.ConnectionPool] = {}

    async def _pool(self, key: str) -> tuple[str, Any]:
        if not self.cluster:
            return "", self.client.connection_pool
        if self.client._initialize:  # first use: the client learns the slot map
            await self.client.initialize()
        node = self.client.get_node_from_key(key)
        pool = self._pools.get(node.name)
        if pool is None:
            pool = self._pools[node.name] = aioredis.ConnectionPool(
                connection_class=node.connection_class, **node.connection_kwargs
            )
        return node.name, pool

    async def refresh(self) -> None:
        if self.cluster:
            await self.client.nodes_manager.initialize()

    async def execute(
        self, cmds: Sequence[Cmd], *, durable: bool = True, before_try: Callable[[], None] | None = None
    ) -> list[Any]:
        batch = BatchCore(cmds, self.durability, durable)
        retry = _Retry(self.policy)
        while batch.pending:
            if before_try is not None:
                before_try()  # e.g. a lease check: a lost lease stops the retries
            try:
                groups: dict[str, tuple[Any, list[int]]] = {}
                for i in sorted(batch.pending):
                    name, pool = await self._pool(batch.cmds[i].key)
                    groups.setdefault(name, (pool, []))[1].append(i)
                if len(groups) == 1:
                    ((name, (pool, idx)),) = groups.items()
                    await self._send(batch, pool, idx, name)
                else:
                    results = await asyncio.gather(
                        *(self._send(batch, p, idx, name) for name, (p, idx) in groups.items()),
                        return_exceptions=True,
                    )
                    for r in results:
                        if isinstance(r, BaseException):
                            raise r
            except BaseException as e:
                if not is_transient(e):
                    raise
                batch.error = e
            if batch.pending:
                wait = retry.next_wait()
                if wait is None:
                    raise _unavailable(batch, batch.error)
                await asyncio.sleep(wait)
                if topology_may_have_changed(batch.error):
                    await self.refresh()
        return batch.replies

    async def _send(self, batch: BatchCore, pool: Any, idx: list[int], node: str) -> None:
        conn = await pool.get_connection()
        try:
            for _ in range(3):
                replies = await _aroundtrip(conn, batch.packed(idx))
                missing = batch.take(idx, replies, node)
                if not missing:
                    return
                for script in missing:
                    await _aroundtrip(conn, [("SCRIPT", "LOAD", script.source)])
                idx = [i for i in idx if i in batch.pending]
        except BaseException:
            await conn.disconnect()
            raise
        finally:
            await pool.release(conn)

    async def bucket_per_node(self, schema: Any) -> list[int]:
        if not self.cluster:
            return [0]
        if self.client._initialize:
            await self.client.initialize()
        seen: dict[str, int] = {}
        for b in range(schema.buckets):
            seen.setdefault(self.client.get_node_from_key(schema.epoch(b)).name, b)
        return sorted(seen.values())

    async def primaries(self) -> list[Any]:
        if not self.cluster:
            return [self.client]
        if self.client._initialize:
            await self.client.initialize()
        out = []
        for node in self.client.get_primaries():
            _, pool = await self._pool_for_node(node)
            out.append(aioredis.Redis(connection_pool=pool))
        return out

    async def _pool_for_node(self, node: Any) -> tuple[str, Any]:
        pool = self._pools.get(node.name)
        if pool is None:
            pool = self._pools[node.name] = aioredis.ConnectionPool(
                connection_class=node.connection_class, **node.connection_kwargs
            )
        return node.name, pool

    async def aclose(self) -> None:
        for pool in self._pools.values():
            await pool.disconnect()
        self._pools.clear()


def slot_of(key: str) -> int:
    return int(key_slot(key.encode()))
