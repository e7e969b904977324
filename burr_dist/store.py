"""The fenced state store: every Redis operation on app state, sync and async.

Each operation is built once as a pure :class:`Call` (script, keys, args) and its reply is read by
one pure function; :class:`RedisStore` and :class:`AsyncRedisStore` only differ in how they send
the call. A commit is one EVALSHA round trip (see ``scripts/commit.lua``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis
import redis.asyncio as aioredis
from burr.core.persistence import PersistedStateData
from tenacity import (
    AsyncRetrying,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_random_exponential,
)

from burr_dist import codec
from burr_dist.connection import TRANSIENT, RetryPolicy, aconnect, connect
from burr_dist.errors import (
    ConfigurationError,
    LeaseLost,
    RedisUnavailable,
    SequenceConflict,
    SnapshotNotFound,
)
from burr_dist.keys import AppKeys, KeySchema
from burr_dist.scripts import LuaScript, script

log = logging.getLogger(__name__)

DEFAULT_KEEP = 100


@dataclass(frozen=True)
class StoreConfig:
    """Settings of a store. ``keep``: snapshots retained per app (the head included).
    ``finished_ttl``: seconds a finished app's keys live after :meth:`RedisStore.expire_app`
    (None keeps them). ``max_state_bytes``: largest snapshot accepted."""

    prefix: str = "burr"
    keep: int = DEFAULT_KEEP
    max_state_bytes: int = codec.DEFAULT_MAX_BYTES
    finished_ttl: float | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    def __post_init__(self) -> None:
        if not isinstance(self.keep, int) or self.keep < 1:
            raise ConfigurationError(f"keep must be an int >= 1, got {self.keep!r}", keep=self.keep)
        if self.max_state_bytes < 1:
            raise ConfigurationError("max_state_bytes must be positive", max_state_bytes=self.max_state_bytes)
        if self.finished_ttl is not None and self.finished_ttl <= 0:
            raise ConfigurationError("finished_ttl must be positive or None", finished_ttl=self.finished_ttl)


@dataclass(frozen=True)
class Call:
    script: LuaScript
    keys: tuple[str, ...]
    args: tuple[str | bytes | int, ...]


@dataclass(frozen=True)
class Committed:
    sequence_id: int
    replayed: bool  # True when a retry found its own write already committed
    cancel_requested: bool = False


@dataclass(frozen=True)
class Acquired:
    token: str
    fence: int
    head: PersistedStateData | None
    job: dict[str, str] = field(default_factory=dict)  # the fleet record, in fleet mode


@dataclass(frozen=True)
class NotRunnable:
    status: str  # "missing", a status that cannot run, or "scheduled" (then run_at is set)
    run_at_ms: int | None = None


@dataclass(frozen=True)
class Held:
    holder: str
    pttl_ms: int


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


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


class StoreCore:
    """Pure logic shared by the sync and async stores: builds calls, reads replies."""

    def __init__(self, config: StoreConfig) -> None:
        self.config = config
        self.schema = KeySchema(config.prefix)
        self._keys: dict[tuple[str | None, str], AppKeys] = {}

    def keys(self, partition_key: str | None, app_id: str) -> AppKeys:
        # Cached: encoding ids is a measurable part of the per-step cost. Bounded by clearing.
        found = self._keys.get((partition_key, app_id))
        if found is None:
            if len(self._keys) > 4096:
                self._keys.clear()
            found = self._keys[(partition_key, app_id)] = self.schema.app(partition_key, app_id)
        return found

    def retrying_kwargs(self) -> dict[str, Any]:
        p = self.config.retry
        return {
            "stop": stop_after_attempt(p.attempts) | stop_after_delay(p.deadline),
            "wait": wait_random_exponential(multiplier=p.initial, max=p.maximum),  # full jitter
            "retry": retry_if_exception_type(TRANSIENT),
            "reraise": True,
        }

    # -- commit --------------------------------------------------------------------------
    def commit_call(
        self,
        partition_key: str | None,
        app_id: str,
        sequence_id: int,
        position: str,
        status: str,
        blob: bytes,
        write_id: str,
        token: str = "",
    ) -> Call:
        k = self.keys(partition_key, app_id)
        return Call(
            script("commit"),
            (k.meta, k.snaps, k.lease, k.index, k.job),
            (sequence_id, blob, position, status, write_id, self.config.keep, token, app_id),
        )

    @staticmethod
    def read_commit(
        reply: Sequence[Any], partition_key: str | None, app_id: str, sequence_id: int
    ) -> Committed:
        code = int(reply[0])
        if code in (1, 2):
            return Committed(sequence_id, replayed=code == 2, cancel_requested=bool(reply[2]))
        if code == -1:
            head = int(reply[1])
            raise SequenceConflict(
                f"commit of app {app_id!r} (partition {partition_key!r}) at sequence {sequence_id} "
                f"refused: stored head is {head}, expected {sequence_id - 1}",
                app_id=app_id,
                partition_key=partition_key,
                expected=sequence_id - 1,
                actual=head,
            )
        holder = _s(reply[1])
        raise LeaseLost(
            f"commit of app {app_id!r} (partition {partition_key!r}) at sequence {sequence_id} "
            f"refused by Redis: this worker's lease is no longer current "
            f"({'held by ' + holder if holder else 'expired'})",
            app_id=app_id,
            partition_key=partition_key,
            sequence_id=sequence_id,
            holder=holder or None,
        )

    # -- load ----------------------------------------------------------------------------
    def load_call(self, partition_key: str | None, app_id: str, sequence_id: int | None) -> Call:
        k = self.keys(partition_key, app_id)
        return Call(script("load"), (k.meta, k.snaps), ("" if sequence_id is None else sequence_id,))

    def read_load(
        self, reply: Sequence[Any], partition_key: str | None, app_id: str, sequence_id: int | None
    ) -> PersistedStateData | None:
        head, blob, oldest = reply
        k = self.keys(partition_key, app_id)
        if blob:
            return codec.decode_snapshot(
                blob,
                key=f"{k.snaps}#{_s(sequence_id if sequence_id is not None else head)}",
                partition_key=partition_key,
            )
        if sequence_id is None or not head:
            return None  # no app: Burr starts a new one
        raise SnapshotNotFound(
            f"app {app_id!r} (partition {partition_key!r}) has no snapshot {sequence_id}: "
            f"retained sequences are {_s(oldest)}..{_s(head)}",
            app_id=app_id,
            partition_key=partition_key,
            sequence_id=sequence_id,
            oldest=int(oldest) if oldest else None,
            head=int(head),
        )

    # -- leases --------------------------------------------------------------------------
    def acquire_call(
        self, partition_key: str | None, app_id: str, nonce: str, ttl_ms: int, worker: str = ""
    ) -> Call:
        k = self.keys(partition_key, app_id)
        return Call(script("acquire"), (k.meta, k.snaps, k.lease, k.job), (nonce, ttl_ms, worker))

    def read_acquire(
        self, reply: Sequence[Any], partition_key: str | None, app_id: str
    ) -> Acquired | Held | NotRunnable:
        code = int(reply[0])
        if code == 0:
            return Held(holder=_s(reply[1]), pttl_ms=int(reply[2]))
        if code == -1:
            return NotRunnable(status=_s(reply[1]))
        if code == -2:
            return NotRunnable(status="scheduled", run_at_ms=int(reply[1]))
        _, token, fence, head, blob, flat = reply
        k = self.keys(partition_key, app_id)
        state = (
            codec.decode_snapshot(blob, key=f"{k.snaps}#{_s(head)}", partition_key=partition_key)
            if blob
            else None
        )
        job = {_s(flat[i]): _s(flat[i + 1]) for i in range(0, len(flat), 2)}
        return Acquired(token=_s(token), fence=int(fence), head=state, job=job)

    def renew_call(self, partition_key: str | None, app_id: str, token: str, ttl_ms: int) -> Call:
        return Call(script("renew"), (self.keys(partition_key, app_id).lease,), (token, ttl_ms))

    def release_call(self, partition_key: str | None, app_id: str, token: str) -> Call:
        return Call(script("release"), (self.keys(partition_key, app_id).lease,), (token,))


class RedisStore(StoreCore):
    """Synchronous store over a ``redis.Redis`` client.

    Argument order: ``load(partition_key, app_id, sequence_id)`` and ``list_app_ids(partition_key)``
    follow Burr's persister contract. Every other method that names an app takes the app id first
    and the partition key only by keyword (``head_sequence(app_id, partition_key="p")``).
    """

    def __init__(self, client: redis.Redis, config: StoreConfig | None = None) -> None:
        super().__init__(config or StoreConfig())
        self.client = client

    @classmethod
    def from_url(cls, url: str | None = None, **config: Any) -> RedisStore:
        return cls(connect(url), StoreConfig(**config))

    def run(self, call: Call, before_try: Callable[[], None] | None = None) -> Any:
        """EVALSHA with NOSCRIPT fallback, retried on connection errors.

        Safe to retry every script here: commit.lua recognises its own write id, the others are
        reads or token-checked."""
        if before_try is not None:
            before_try()
        try:
            return self._eval(call)
        except TRANSIENT:
            pass  # retried below: every script here is safe to send again
        try:
            for attempt in Retrying(**self.retrying_kwargs()):
                with attempt:
                    if before_try is not None:
                        before_try()
                    return self._eval(call)
        except TRANSIENT as e:
            raise RedisUnavailable(
                f"Redis unreachable running {call.script.name}: {e}", script=call.script.name
            ) from e

    def _eval(self, call: Call) -> Any:
        # One pooled connection, EVALSHA sent directly: this is the per-step path, and redis-py's
        # per-command wrapper costs about as much as the script itself. Errors disconnect the
        # connection (read_response does) and our own retry policy decides what happens next.
        # Any: redis-py 8 annotates only some of these methods (mypy strict rejects the rest).
        pool: Any = self.client.connection_pool
        conn = pool.get_connection()
        try:
            try:
                conn.send_command("EVALSHA", call.script.sha, len(call.keys), *call.keys, *call.args)
                return conn.read_response()
            except redis.exceptions.NoScriptError:
                conn.send_command("SCRIPT", "LOAD", call.script.source)
                conn.read_response()
                conn.send_command("EVALSHA", call.script.sha, len(call.keys), *call.keys, *call.args)
                return conn.read_response()
        except BaseException:
            conn.disconnect()
            raise
        finally:
            pool.release(conn)

    def load(
        self, partition_key: str | None, app_id: str, sequence_id: int | None = None
    ) -> PersistedStateData | None:
        reply = self.run(self.load_call(partition_key, app_id, sequence_id))
        return self.read_load(reply, partition_key, app_id, sequence_id)

    def list_app_ids(self, partition_key: str | None) -> list[str]:
        return [
            _s(m)
            for m in self._with_retry(
                self.client.zrevrange, self.schema.partition_index(partition_key), 0, -1
            )
        ]

    def head_sequence(self, app_id: str, *, partition_key: str | None = None) -> int | None:
        """The stored head's sequence id, None when the app has no committed step."""
        head = self._with_retry(self.client.hget, self.keys(partition_key, app_id).meta, "head")
        return None if head is None else int(head)

    def expire_app(self, app_id: str, *, partition_key: str | None = None, ttl: float | None = None) -> None:
        """Let a finished app's keys expire after ``ttl`` (default ``finished_ttl``) seconds."""
        seconds = ttl if ttl is not None else self.config.finished_ttl
        if seconds is None:
            return
        k = self.keys(partition_key, app_id)
        ms = int(seconds * 1000)

        def expire() -> Any:  # a fresh pipeline per try: execute() empties it even when it fails
            pipe = self.client.pipeline(transaction=True)
            pipe.pexpire(k.meta, ms)
            pipe.pexpire(k.snaps, ms)
            return pipe.execute()

        self._with_retry(expire)

    def _with_retry(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Call ``fn`` with our retry policy. Only for idempotent commands and pipelines of them."""
        refill = _pipeline_refill(fn)
        try:
            for attempt in Retrying(**self.retrying_kwargs()):
                with attempt:
                    refill()
                    return fn(*args)
        except TRANSIENT as e:
            raise RedisUnavailable(f"Redis unreachable: {e}") from e


class AsyncRedisStore(StoreCore):
    """Asynchronous store over a ``redis.asyncio.Redis`` client; same logic as RedisStore."""

    def __init__(self, client: aioredis.Redis, config: StoreConfig | None = None) -> None:
        super().__init__(config or StoreConfig())
        self.client = client

    @classmethod
    def from_url(cls, url: str | None = None, **config: Any) -> AsyncRedisStore:
        return cls(aconnect(url), StoreConfig(**config))

    async def run(self, call: Call, before_try: Callable[[], None] | None = None) -> Any:
        if before_try is not None:
            before_try()
        try:
            return await self._eval(call)
        except TRANSIENT:
            pass  # retried below: every script here is safe to send again
        try:
            async for attempt in AsyncRetrying(**self.retrying_kwargs()):
                with attempt:
                    if before_try is not None:
                        before_try()
                    return await self._eval(call)
        except TRANSIENT as e:
            raise RedisUnavailable(
                f"Redis unreachable running {call.script.name}: {e}", script=call.script.name
            ) from e

    async def _eval(self, call: Call) -> Any:
        # Same direct path as RedisStore._eval.
        pool: Any = self.client.connection_pool
        conn = await pool.get_connection()
        try:
            try:
                await conn.send_command("EVALSHA", call.script.sha, len(call.keys), *call.keys, *call.args)
                return await conn.read_response()
            except redis.exceptions.NoScriptError:
                await conn.send_command("SCRIPT", "LOAD", call.script.source)
                await conn.read_response()
                await conn.send_command("EVALSHA", call.script.sha, len(call.keys), *call.keys, *call.args)
                return await conn.read_response()
        except BaseException:
            await conn.disconnect()
            raise
        finally:
            await pool.release(conn)

    async def load(
        self, partition_key: str | None, app_id: str, sequence_id: int | None = None
    ) -> PersistedStateData | None:
        reply = await self.run(self.load_call(partition_key, app_id, sequence_id))
        return self.read_load(reply, partition_key, app_id, sequence_id)

    async def list_app_ids(self, partition_key: str | None) -> list[str]:
        members = await self._with_retry(
            self.client.zrevrange, self.schema.partition_index(partition_key), 0, -1
        )
        return [_s(m) for m in members]

    async def head_sequence(self, app_id: str, *, partition_key: str | None = None) -> int | None:
        head = await self._with_retry(self.client.hget, self.keys(partition_key, app_id).meta, "head")
        return None if head is None else int(head)

    async def expire_app(
        self, app_id: str, *, partition_key: str | None = None, ttl: float | None = None
    ) -> None:
        seconds = ttl if ttl is not None else self.config.finished_ttl
        if seconds is None:
            return
        k = self.keys(partition_key, app_id)
        ms = int(seconds * 1000)

        async def expire() -> Any:  # a fresh pipeline per try: execute() empties it even when it fails
            pipe = self.client.pipeline(transaction=True)
            pipe.pexpire(k.meta, ms)
            pipe.pexpire(k.snaps, ms)
            return await pipe.execute()

        await self._with_retry(expire)

    async def _with_retry(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Async twin of RedisStore._with_retry."""
        refill = _pipeline_refill(fn)
        try:
            async for attempt in AsyncRetrying(**self.retrying_kwargs()):
                with attempt:
                    refill()
                    return await fn(*args)
        except TRANSIENT as e:
            raise RedisUnavailable(f"Redis unreachable: {e}") from e
