"""The fenced state store: every Redis operation on app state, sync and async.

Each operation is built once as a pure :class:`Call` (script, keys, args) and its reply is read by
one pure function; :class:`RedisStore` and :class:`AsyncRedisStore` only differ in how they send
the call. A commit is one EVALSHA round trip (see ``scripts/commit.lua``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from burr.core.persistence import PersistedStateData
from tenacity import AsyncRetrying, Retrying

from burr_dist.errors import ConfigurationError, RedisUnavailable
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
from burr_dist.transport.urls import RedisTarget

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

if TYPE_CHECKING:
    from typing_extensions import Self

log = logging.getLogger(__name__)

T = TypeVar("T", Transport, AsyncTransport)


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


def _unpicklable(store: StoreCore) -> TypeError:
    cls = type(store).__name__
    return TypeError(
        f"this {cls} was built from a redis-py client, so it does not know how to reconnect and "
        f"cannot be pickled (Burr hands persisters to process pools and Ray); build it with "
        f"{cls}.from_url(url) or {cls}.from_values(host=..., port=...)"
    )


def values_target(
    host: str, port: int, db: int, password: str | None, username: str | None, ssl: bool
) -> RedisTarget:
    """The target of Burr's ``RedisBasePersister.from_values(host=, port=, db=, password=)``."""
    shown = f"{'rediss' if ssl else 'redis'}://{host}:{port}/{db}"
    return RedisTarget("single", tls=ssl, hosts=((host, port),), db=db, username=username,
                       password=password, redacted=shown)  # fmt: skip


def values_config(namespace: str | None, config: dict[str, Any]) -> dict[str, Any]:
    """Burr's ``namespace`` (a key prefix) is our ``prefix``."""
    if namespace and "prefix" in config:
        raise ConfigurationError("give namespace= or prefix=, not both", namespace=namespace)
    return {**config, "prefix": namespace} if namespace else config


def check_cleanup(store: StoreCore, confirm: bool) -> None:
    if confirm is not True:
        prefix = store.config.prefix
        raise ConfigurationError(
            f"cleanup() deletes every key under the prefix {prefix!r} (every app, queue and "
            "worker record of this deployment); it is meant for tests: pass confirm=True. To close "
            "the connection, as Burr's persisters' cleanup() does, call close()",
            prefix=prefix,
        )


class _Connected(StoreCore, Generic[T]):
    """What the sync and async stores share: the client and transport, made from a URL target on
    first use (after unpickling or close()), and pickling as that target and config. The two
    differ only in how they connect (``_connect``) and which transport they drive."""

    _connect: ClassVar[Callable[[RedisTarget], Any]]

    def __init__(self, client: Any, config: StoreConfig | None = None) -> None:
        super().__init__(config or StoreConfig())
        self.target: RedisTarget | None = None  # known when built from a URL: then it pickles
        self._client: Any = client
        self._transport: T | None = None if client is None else self._transport_for(client)

    def _transport_for(self, client: Any) -> T:
        raise NotImplementedError

    @property
    def client(self) -> Any:
        if self._client is None:
            self._reconnect()
        return self._client

    @property
    def transport(self) -> T:
        if self._transport is None:
            self._reconnect()
        assert self._transport is not None
        return self._transport

    def _reconnect(self) -> None:
        """After unpickling or close(): a new client for the same target (no I/O yet)."""
        if self.target is None:
            raise ConfigurationError(f"this {type(self).__name__} is closed and was built from a client")
        self._client = type(self)._connect(self.target)
        self._transport = self._transport_for(self._client)

    @classmethod
    def from_url(cls, url: str | None = None, **config: Any) -> Self:
        target = resolve_target(url)
        store = cls(cls._connect(target), StoreConfig.for_target(target, **config))
        store.target = target
        return store

    @classmethod
    def from_values(
        cls, host: str = "localhost", port: int = 6379, db: int = 0, password: str | None = None,
        namespace: str | None = None, *, username: str | None = None, ssl: bool = False, **config: Any,
    ) -> Self:  # fmt: skip
        """Burr's ``RedisBasePersister.from_values`` twin: one server; ``namespace`` is the key
        prefix (default ``burr``); other keywords are StoreConfig fields."""
        target = values_target(host, port, db, password, username, ssl)
        store = cls(cls._connect(target), StoreConfig.for_target(target, **values_config(namespace, config)))
        store.target = target
        return store

    # -- pickling (Burr's parallelism hands persisters to process pools and Ray) --------------
    def __getstate__(self) -> dict[str, Any]:
        """The target and the config only: the copy opens its own connections on first use (an
        async one in the event loop that uses it), and starts with no delta bases (its first
        commit is a keyframe)."""
        if self.target is None:
            raise _unpicklable(self)
        return {"target": self.target, "config": self.config}

    def __setstate__(self, state: dict[str, Any]) -> None:
        _Connected.__init__(self, None, state["config"])
        self.target = state["target"]


class RedisStore(_Connected[Transport]):
    """Synchronous store over a redis-py client: ``Redis`` (one server, or a Sentinel-managed
    master) or ``RedisCluster``; :meth:`from_url` makes the right one.

    Argument order: ``load(partition_key, app_id, sequence_id)`` and ``list_app_ids(partition_key)``
    follow Burr's persister contract. Every other method that names an app takes the app id first
    and the partition key only by keyword (``head_sequence(app_id, partition_key="p")``).
    """

    _connect = staticmethod(connect)

    def _transport_for(self, client: Any) -> Transport:
        return Transport(client, self.config.durability(), self.config.retry)

    def close(self) -> None:
        """Close the connections. A store built from a URL reconnects if used again."""
        client, self._client, self._transport = self._client, None, None
        if client is not None:
            client.close()
        if self.target is None:
            self._client = client  # redis-py reconnects on demand; keep what we were given
            self._transport = None if client is None else self._transport_for(client)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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
        """The step, or None when it is not stored (an unknown app, a sequence never saved or
        older than the ``keep`` window), as Burr's loaders answer."""
        reply = self.run(self.load_call(partition_key, app_id, sequence_id))
        return self.read_load(reply, partition_key, app_id, sequence_id)

    def load_or_raise(
        self, partition_key: str | None, app_id: str, sequence_id: int | None = None
    ) -> PersistedStateData:
        """``load``, raising SnapshotNotFound (with the retained range) instead of returning None."""
        reply = self.run(self.load_call(partition_key, app_id, sequence_id))
        found = self.read_load(reply, partition_key, app_id, sequence_id, strict=True)
        assert found is not None
        return found

    def list_app_ids(self, partition_key: str | None) -> list[str]:
        """The partition's app ids, newest first by first commit. (Burr's Redis persister lists
        the highest saved sequence first, its SQLite persister the latest save first.)"""
        return self.read_app_ids(self.commands(self.list_cmds(partition_key)))

    def cleanup(self, *, confirm: bool = False) -> int:
        """DESTRUCTIVE, for tests: delete every key under this store's prefix (SCAN on every
        primary, then UNLINK per key, routed by slot). Refused unless ``confirm=True``.
        Returns the number of keys deleted. (Burr's ``cleanup()`` only closes the connection:
        that is :meth:`close` here.)"""
        check_cleanup(self, confirm)
        pattern = self.schema.scan_pattern()
        keys: list[str] = []
        for node in self.transport.primaries():
            keys += [
                _s(k) for k in self._with_retry(lambda n=node: list(n.scan_iter(match=pattern, count=1000)))
            ]
        return sum(int(n) for n in self.commands([Cmd(k, ("UNLINK", k)) for k in keys])) if keys else 0

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


class AsyncRedisStore(_Connected[AsyncTransport]):
    """Asynchronous store over a ``redis.asyncio`` client; same logic as RedisStore."""

    _connect = staticmethod(aconnect)  # no I/O: connections open on first command

    def _transport_for(self, client: Any) -> AsyncTransport:
        return AsyncTransport(client, self.config.durability(), self.config.retry)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def run(self, call: Call, before_try: Callable[[], None] | None = None) -> Any:
        replies = await self.transport.execute([call.cmd()], durable=call.durable, before_try=before_try)
        return replies[0]

    async def run_many(self, calls: Sequence[Call]) -> list[Any]:
        return await self.transport.execute([c.cmd() for c in calls], durable=any(c.durable for c in calls))

    async def commands(self, cmds: Sequence[Cmd], *, durable: bool = False) -> list[Any]:
        return await self.transport.execute(cmds, durable=durable)

    async def aclose(self) -> None:
        """Close the connections. A store built from a URL reconnects if used again."""
        client, transport = self._client, self._transport
        if transport is not None:
            await transport.aclose()
        if client is not None:
            await client.aclose()
        if self.target is not None:
            self._client = self._transport = None

    async def close(self) -> None:
        """``aclose`` (the name Burr's async persisters use)."""
        await self.aclose()

    async def load(
        self, partition_key: str | None, app_id: str, sequence_id: int | None = None
    ) -> PersistedStateData | None:
        reply = await self.run(self.load_call(partition_key, app_id, sequence_id))
        return self.read_load(reply, partition_key, app_id, sequence_id)

    async def load_or_raise(
        self, partition_key: str | None, app_id: str, sequence_id: int | None = None
    ) -> PersistedStateData:
        reply = await self.run(self.load_call(partition_key, app_id, sequence_id))
        found = self.read_load(reply, partition_key, app_id, sequence_id, strict=True)
        assert found is not None
        return found

    async def list_app_ids(self, partition_key: str | None) -> list[str]:
        """Newest first by first commit (see RedisStore.list_app_ids)."""
        return self.read_app_ids(await self.commands(self.list_cmds(partition_key)))

    async def cleanup(self, *, confirm: bool = False) -> int:
        """DESTRUCTIVE, for tests: RedisStore.cleanup, async."""
        check_cleanup(self, confirm)
        pattern = self.schema.scan_pattern()
        keys: list[str] = []
        for node in await self.transport.primaries():
            keys += [_s(k) async for k in node.scan_iter(match=pattern, count=1000)]
        return sum(int(n) for n in await self.commands([Cmd(k, ("UNLINK", k)) for k in keys])) if keys else 0

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
