"""The fenced state store: every Redis operation on app state, sync and async.

Each operation is built once as a pure :class:`Call` (script, keys, args) and its reply is read by
one pure function; :class:`RedisStore` and :class:`AsyncRedisStore` only differ in how they send
the call. A commit is one EVALSHA round trip (see ``scripts/commit.lua``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from burr.core.persistence import PersistedStateData
from tenacity import AsyncRetrying, Retrying

from burr_dist.errors import RedisUnavailable
from burr_dist.store.core import (
    DEFAULT_KEEP,
    DURABLE_SCRIPTS,
    JOB_FIELDS,
    Acquired,
    Call,
    Committed,
    Held,
    NotRunnable,
    Settle,
    StoreConfig,
    StoreCore,
    _s,
    scored,
)
from burr_dist.transport.aio import AsyncTransport
from burr_dist.transport.connect import aconnect, connect, is_transient, resolve_target
from burr_dist.transport.core import Cmd
from burr_dist.transport.sync import Transport

__all__ = [
    "DEFAULT_KEEP",
    "DURABLE_SCRIPTS",
    "JOB_FIELDS",
    "Acquired",
    "AsyncRedisStore",
    "Call",
    "Committed",
    "Held",
    "NotRunnable",
    "RedisStore",
    "Settle",
    "StoreConfig",
    "StoreCore",
    "_s",
    "scored",
]

log = logging.getLogger(__name__)


def _pipeline_refill(fn: Callable[..., Any]) -> Callable[[], None]:
    """For a pipeline's ``execute``: a function that puts its commands back before a retry.

    redis-py empties a pipeline's command stack when execute() ends, even when it failed, so a
    retried execute() would silently send nothing and return [].
    """
    owner = getattr(fn, "__self__", None)
    stack = getattr(owner, "command_stack", None)
    if getattr(fn, "__name__", "") != "execute" or not isinstance(stack, list):
        return lambda: None
    saved = list(stack)

    def refill() -> None:
        if not owner.command_stack:  # type: ignore[union-attr]
            owner.command_stack.extend(saved)  # type: ignore[union-attr]

    return refill


class RedisStore(StoreCore):
    """Synchronous store over a redis-py client: ``Redis`` (one server, or a Sentinel-managed
    master) or ``RedisCluster``; :meth:`from_url` makes the right one.

    Argument order: ``load(partition_key, app_id, sequence_id)`` and ``list_app_ids(partition_key)``
    follow Burr's persister contract. Every other method that names an app takes the app id first
    and the partition key only by keyword (``head_sequence(app_id, partition_key="p")``).
    """

    def __init__(self, client: Any, config: StoreConfig | None = None) -> None:
        super().__init__(config or StoreConfig())
        self.client = client
        self.transport = Transport(client, self.config.durability(), self.config.retry)

    @classmethod
    def from_url(cls, url: str | None = None, **config: Any) -> RedisStore:
        target = resolve_target(url)
        return cls(connect(target), StoreConfig.for_target(target, **config))

    def run(self, call: Call, before_try: Callable[[], None] | None = None) -> Any:
        """EVALSHA routed to the slot's node, retried on transient errors, confirmed by WAIT
        when the script is one a guarantee rests on. Every script is safe to send again:
        commit.lua recognises its own write id, acquire.lua its nonce, settle.lua and
        control.lua their request, and the others are reads or token-checked."""
        return self.transport.execute([call.cmd()], durable=call.durable, before_try=before_try)[0]

    def run_many(self, calls: Sequence[Call]) -> list[Any]:
        """Several calls in as few round trips as the topology allows (one per node)."""
        return self.transport.execute([c.cmd() for c in calls], durable=any(c.durable for c in calls))

    def commands(self, cmds: Sequence[Cmd], *, durable: bool = False) -> list[Any]:
        return self.transport.execute(cmds, durable=durable)

    def load(
        self, partition_key: str | None, app_id: str, sequence_id: int | None = None
    ) -> PersistedStateData | None:
        reply = self.run(self.load_call(partition_key, app_id, sequence_id))
        return self.read_load(reply, partition_key, app_id, sequence_id)

    def list_app_ids(self, partition_key: str | None) -> list[str]:
        return self.read_app_ids(self.commands(self.list_cmds(partition_key)))

    def head_sequence(self, app_id: str, *, partition_key: str | None = None) -> int | None:
        """The stored head's sequence id, None when the app has no committed step."""
        return self.read_head(self.commands([self.head_cmd(partition_key, app_id)])[0])

    def expire_app(self, app_id: str, *, partition_key: str | None = None, ttl: float | None = None) -> None:
        """Let a finished app's keys expire after ``ttl`` (default ``finished_ttl``) seconds."""
        cmds = self.expire_cmds(partition_key, app_id, ttl)
        if cmds:
            self.commands(cmds)

    def _with_retry(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Call ``fn`` (a redis-py client method) with our retry policy. Only for idempotent
        commands and non-transactional pipelines of them (Cluster splits those by node)."""
        refill = _pipeline_refill(fn)
        try:
            for attempt in Retrying(**self.retrying_kwargs()):
                with attempt:
                    refill()
                    return fn(*args)
        except Exception as e:
            if is_transient(e):
                raise RedisUnavailable(f"Redis unreachable: {e}") from e
            raise


class AsyncRedisStore(StoreCore):
    """Asynchronous store over a ``redis.asyncio`` client; same logic as RedisStore."""

    def __init__(self, client: Any, config: StoreConfig | None = None) -> None:
        super().__init__(config or StoreConfig())
        self.client = client
        self.transport = AsyncTransport(client, self.config.durability(), self.config.retry)

    @classmethod
    def from_url(cls, url: str | None = None, **config: Any) -> AsyncRedisStore:
        target = resolve_target(url)
        return cls(aconnect(target), StoreConfig.for_target(target, **config))

    async def run(self, call: Call, before_try: Callable[[], None] | None = None) -> Any:
        replies = await self.transport.execute([call.cmd()], durable=call.durable, before_try=before_try)
        return replies[0]

    async def run_many(self, calls: Sequence[Call]) -> list[Any]:
        return await self.transport.execute([c.cmd() for c in calls], durable=any(c.durable for c in calls))

    async def commands(self, cmds: Sequence[Cmd], *, durable: bool = False) -> list[Any]:
        return await self.transport.execute(cmds, durable=durable)

    async def aclose(self) -> None:
        await self.transport.aclose()
        await self.client.aclose()

    async def load(
        self, partition_key: str | None, app_id: str, sequence_id: int | None = None
    ) -> PersistedStateData | None:
        reply = await self.run(self.load_call(partition_key, app_id, sequence_id))
        return self.read_load(reply, partition_key, app_id, sequence_id)

    async def list_app_ids(self, partition_key: str | None) -> list[str]:
        return self.read_app_ids(await self.commands(self.list_cmds(partition_key)))

    async def head_sequence(self, app_id: str, *, partition_key: str | None = None) -> int | None:
        return self.read_head((await self.commands([self.head_cmd(partition_key, app_id)]))[0])

    async def expire_app(
        self, app_id: str, *, partition_key: str | None = None, ttl: float | None = None
    ) -> None:
        cmds = self.expire_cmds(partition_key, app_id, ttl)
        if cmds:
            await self.commands(cmds)

    async def _with_retry(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Async twin of RedisStore._with_retry."""
        refill = _pipeline_refill(fn)
        try:
            async for attempt in AsyncRetrying(**self.retrying_kwargs()):
                with attempt:
                    refill()
                    return await fn(*args)
        except Exception as e:
            if is_transient(e):
                raise RedisUnavailable(f"Redis unreachable: {e}") from e
            raise
