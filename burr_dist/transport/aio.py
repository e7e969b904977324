"""The asyncio transport: :class:`AsyncTransport`, the twin of :class:`~burr_dist.transport.sync.Transport`
on the same sans-IO core (routing, confirmation and error handling: see transport.py), plus what
only an event loop can do: round trips that concurrent callers ask of one node in one loop
iteration share a pipeline (:class:`_SharedTrips`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

import redis
import redis.asyncio as aioredis
import redis.asyncio.cluster as aiocluster

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

_hiredis_pack: Callable[[Any], bytes] | None
try:
    from hiredis import pack_command as _hiredis_pack
except ImportError:  # redis-py without its hiredis extra
    _hiredis_pack = None

if sys.version_info >= (3, 11):
    from asyncio import timeout as _deadline
else:  # redis-py depends on async-timeout below Python 3.11.3
    from async_timeout import timeout as _deadline

log = logging.getLogger(__name__)


def _apack(conn: Any, commands: list[tuple[Any, ...]]) -> Any:
    """RESP for ``commands``: hiredis' packer where it takes the arguments (redis-py's asyncio
    connection packs in Python: 16 us for a commit against 2.3 us), else redis-py's."""
    if _hiredis_pack is not None:
        try:
            return b"".join([_hiredis_pack(c) for c in commands])
        except TypeError:  # an argument type hiredis does not pack: redis-py's encoder decides
            pass
    return conn.pack_commands(commands)


async def _aroundtrip(conn: Any, commands: list[tuple[Any, ...]]) -> list[Any]:
    """Send ``commands`` and read their replies, all within the connection's socket timeout: one
    deadline for the round trip instead of redis-py's one per reply (a timer set and cancelled
    for each). A timeout fails the round trip with ``redis.TimeoutError``;
    the caller drops the connection, as redis-py would."""
    limit = conn.socket_timeout
    out: list[Any] = []
    try:
        async with _deadline(limit) if limit else contextlib.nullcontext():
            await conn.send_packed_command(_apack(conn, commands))
            # The reads run with no socket timeout of redis-py's own (the connection is ours until
            # it goes back to the pool). Any explicit timeout= would make redis-py before 8.2
            # answer None to a read whose socket failed with the OS's ETIMEDOUT, leaving the
            # connection open and its replies out of step; with none, it raises and disconnects.
            conn.socket_timeout = None
            try:
                for _ in commands:
                    try:
                        out.append(await conn.read_response())
                    except redis.ResponseError as e:
                        out.append(e)
            finally:
                conn.socket_timeout = limit
    except asyncio.TimeoutError:
        raise redis.TimeoutError(
            f"no reply to {len(commands)} commands within the socket timeout ({limit} s)"
        ) from None
    return out


class _SharedTrips:
    """Round trips to one node asked for in the same loop iteration (by concurrent apps: their
    commits, acquires, claims) go out as one pipeline on one connection: one write and one read
    for all of them, on both sides. Nothing changes for each caller: its commands stay together
    and in order (a script runs alone; ASKING stays before its command; a durable batch's WAIT
    covers its writes, and those of batches ahead of it), and its replies are its own. A broken
    connection fails every caller of that round trip with the same transient error: each one
    retries its own batch as before (commit.lua recognises a commit whose reply was lost)."""

    def __init__(self, pool: Any, transport: AsyncTransport) -> None:
        self.pool = pool
        self.transport = transport
        self._waiting: list[tuple[list[tuple[Any, ...]], asyncio.Future[list[Any]]]] = []

    def roundtrip(self, commands: list[tuple[Any, ...]]) -> asyncio.Future[list[Any]]:
        fut: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._waiting.append((commands, fut))
        if len(self._waiting) == 1:  # the first of this iteration: send them all at its end
            asyncio.get_running_loop().call_soon(self._go)
        return fut

    def _go(self) -> None:
        group, self._waiting = self._waiting, []
        task = asyncio.ensure_future(self._send(group))
        _IN_FLIGHT.add(task)
        task.add_done_callback(_IN_FLIGHT.discard)

    async def _send(self, group: list[tuple[list[tuple[Any, ...]], asyncio.Future[list[Any]]]]) -> None:
        try:
            conn = await self.pool.get_connection()
            try:
                self.transport.round_trips += 1
                raw = await _aroundtrip(conn, [c for commands, _ in group for c in commands])
            except BaseException:
                await conn.disconnect()
                raise
            finally:
                await self.pool.release(conn)
        except BaseException as e:
            for _, fut in group:
                if not fut.done():
                    fut.set_exception(e if isinstance(e, Exception) else redis.ConnectionError(repr(e)))
            if not isinstance(e, Exception):
                raise
            return
        at = 0
        for commands, fut in group:
            if not fut.done():  # a caller cancelled meanwhile: its replies are dropped
                fut.set_result(raw[at : at + len(commands)])
            at += len(commands)


_IN_FLIGHT: set[asyncio.Task[None]] = set()  # shared round trips being sent (the loop keeps weak refs)


class AsyncTransport:
    """The asyncio twin of :class:`Transport`; nodes of one batch are sent to concurrently, and
    round trips of concurrent callers to one node share a pipeline (:class:`_SharedTrips`)."""

    def __init__(self, client: Any, durability: Durability, policy: RetryPolicy) -> None:
        self.client = client
        self.durability = durability
        self.policy = policy
        self.cluster = isinstance(client, aiocluster.RedisCluster)
        self.round_trips = 0
        self._pools: dict[str, aioredis.ConnectionPool] = {}
        self._shared: dict[str, _SharedTrips] = {}  # node -> its round trips being gathered

    async def _pool(self, key: str) -> tuple[str, Any]:
        if not self.cluster:
            return "", self.client.connection_pool
        await self.client.initialize()  # a no-op once the client knows the slot map
        node = self.client.get_node_from_key(key)
        pool = self._pools.get(node.name)
        if pool is None:
            pool = self._pools[node.name] = aioredis.ConnectionPool(
                connection_class=node.connection_class, **node.connection_kwargs
            )
        return node.name, pool

    async def _pool_at(self, host: str, port: int) -> tuple[str, Any]:
        node = self.client.get_node(host=host, port=port)
        if node is None:
            await self.refresh()
            node = self.client.get_node(host=host, port=port)
        if node is None:
            raise redis.ConnectionError(f"ASK redirection to {host}:{port}, a node the cluster does not list")
        return await self._pool_for_node(node)

    async def refresh(self) -> None:
        if self.cluster:
            try:
                await self.client.nodes_manager.initialize()
            except Exception as e:  # mid-failover: the next attempt tries again
                log.debug("cluster topology refresh failed: %s", e)

    async def execute(
        self, cmds: Sequence[Cmd], *, durable: bool = True, before_try: Callable[[], None] | None = None
    ) -> list[Any]:
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
                    name, pool = await (
                        self._pool(batch.cmds[i].key) if asked is None else self._pool_at(*asked)
                    )
                    groups.setdefault((name, asked is not None), (pool, []))[1].append(i)
                if len(groups) == 1:
                    (((name, asking), (pool, idx)),) = groups.items()
                    await self._send(batch, pool, idx, name, asking)
                else:
                    results = await asyncio.gather(
                        *(
                            self._send(batch, p, idx, name, asking)
                            for (name, asking), (p, idx) in groups.items()
                        ),
                        return_exceptions=True,
                    )
                    for r in results:
                        if isinstance(r, BaseException):
                            raise r
            except BaseException as e:
                if not is_transient(e):
                    _count_error(e)
                    raise
                COUNTS.count(COUNTS.retries, e)
                batch.error = e
                batch.asked.clear()
                batch.only_asked = False
            if batch.pending:
                if batch.only_asked and hops < ASK_HOPS:
                    hops += 1
                    continue
                hops = 0
                wait = retry.next_wait()
                if wait is None:
                    COUNTS.count(COUNTS.errors, "RedisUnavailable")
                    raise _unavailable(batch, batch.error)
                await asyncio.sleep(wait)
                if topology_may_have_changed(batch.error):
                    await self.refresh()
        return batch.replies

    async def _send(
        self, batch: BatchCore, pool: Any, idx: list[int], node: str, asking: bool = False
    ) -> None:
        shared = self._shared.get(node)
        if shared is None or shared.pool is not pool:
            shared = self._shared[node] = _SharedTrips(pool, self)
        for _ in range(3):
            raw = await shared.roundtrip(batch.packed(idx, asking, node))
            missing = batch.take(idx, batch.unpack(idx, raw, asking), node)
            if not missing:
                return
            for script in missing:
                await shared.roundtrip([("SCRIPT", "LOAD", script.source)])
            idx = [i for i in idx if i in batch.pending]

    async def bucket_per_node(self, schema: Any) -> list[int]:
        if not self.cluster:
            return [0]
        await self.client.initialize()
        seen: dict[str, int] = {}
        for b in range(schema.buckets):
            seen.setdefault(self.client.get_node_from_key(schema.epoch(b)).name, b)
        return sorted(seen.values())

    async def primaries(self) -> list[Any]:
        if not self.cluster:
            return [self.client]
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
        self._shared.clear()
