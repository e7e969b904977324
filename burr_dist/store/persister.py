"""Burr persisters backed by the fenced store: drop-in for ``with_state_persister`` and
``initialize_from``.

A save is one round trip: commit.lua checks the head is ``sequence_id - 1`` (and, for a persister
bound to a lease, that the lease is still current) before it writes anything.
"""

from __future__ import annotations

import logging
from collections.abc import Generator
from typing import TYPE_CHECKING, Any, Literal

from burr.core.persistence import AsyncBaseStatePersister, BaseStatePersister, PersistedStateData
from burr.core.state import State

from burr_dist.errors import (
    BaseMoved,
    ConfigurationError,
    LeaseLost,
    NotDurable,
    SequenceConflict,
    StoreRewound,
)
from burr_dist.observability.history import app_key, state_digest
from burr_dist.store import codec
from burr_dist.store.clients import AsyncRedisStore, RedisStore
from burr_dist.store.core import Call, Committed, Settle, StoreCore
from burr_dist.store.deltas import Base
from burr_dist.store.lease_core import LeaseCore

if TYPE_CHECKING:
    from burr_dist.observability.history import HistorySink
    from burr_dist.observability.tracking import StepTracker

log = logging.getLogger(__name__)


class PersisterCore:
    """What a save and a load mean, shared by the sync and async persisters."""

    def __init__(self, store: StoreCore, lease: LeaseCore | None) -> None:
        self.store = store
        self.lease = lease
        # The last save claimed: (partition, app, sequence, position, status, encoded fields). The
        # fields are bytes the delta base holds anyway; equality is exact and costs nothing unless
        # the same sequence is saved again.
        self._last_saved: tuple[str | None, str, int, str, str, dict[str, bytes]] | None = None
        self.last_commit: Committed | None = None
        self.history: HistorySink | None = None  # chaos runs: every commit's invoke/complete
        self._op: str | None = None
        # The delta base each commit in flight makes once accepted (by app and sequence: one
        # async persister may serve many apps at once).
        self._pending: dict[tuple[str | None, str, int], Base] = {}
        self._tries = 0  # sends of the current commit call (before_try counts them)
        self.tracker: StepTracker | None = None  # tracking records to commit with each step

    def commit_call(
        self,
        partition_key: str | None,
        app_id: str,
        sequence_id: int,
        position: str,
        state: State,
        status: str,
        settle: Settle | None = None,
        keyframe: bool = False,
    ) -> Call | None:
        if self._is_repeat(partition_key, app_id, sequence_id, position, status, state):
            # The same object registered twice (as persister and as hook): Burr calls us twice, one
            # after the other (sync) or concurrently (async hooks run under asyncio.gather); the
            # save is claimed below before it is sent, and given back by on_failure. Only the very
            # same save is skipped: another save of a stored sequence goes to Redis, which refuses it.
            log.debug("duplicate save of %s at %s ignored", app_id, sequence_id)
            return None
        token = ""
        if self.lease is not None:
            self.lease.check_app(partition_key, app_id)
            self.lease.check()
            token = self.lease.token
        write_id = codec.new_write_id()
        blob, pending, fields = self.store.encode(
            partition_key, app_id, sequence_id, position, status, state, write_id, keyframe=keyframe
        )
        if pending is not None:
            self._pending[(partition_key, app_id, sequence_id)] = pending
        track = self.tracker.take(sequence_id) if self.tracker is not None else None
        call = self.store.commit_call(
            partition_key, app_id, sequence_id, position, status, blob, write_id, token, settle, track
        )
        self._last_saved = (partition_key, app_id, sequence_id, position, status, fields)
        self._tries = 0
        if self.history is not None:
            digest = state_digest(state.get_all())
            self._op = self.history.invoke(
                "commit", app_key(partition_key, app_id), sequence_id - 1, sequence_id, digest
            )
        return call

    def _is_repeat(
        self, partition_key: str | None, app_id: str, sequence_id: int, position: str, status: str,
        state: State,
    ) -> bool:  # fmt: skip
        last = self._last_saved
        if last is None or last[:5] != (partition_key, app_id, sequence_id, position, status):
            return False
        return codec.encode_fields(state.get_all()) == last[5]

    def on_commit(self, reply: Any, partition_key: str | None, app_id: str, sequence_id: int) -> Committed:
        self.last_commit = self.store.read_commit(reply, partition_key, app_id, sequence_id)
        pending = self._pending.pop((partition_key, app_id, sequence_id), None)
        if pending is not None:
            self.store.bases.put(partition_key, app_id, pending)
        if self.lease is not None:
            self.lease.head_fresh = False
        self._record("ok")
        return self.last_commit

    def on_failure(
        self, partition_key: str | None, app_id: str, sequence_id: int, error: BaseException
    ) -> None:
        """Undo the dedup claim; record the outcome; turn a head below what this lease already saw
        into StoreRewound (while we hold the lease nobody else can commit, and no commit lowers
        the head: only lost data can)."""
        if self._last_saved is not None and self._last_saved[:3] == (partition_key, app_id, sequence_id):
            self._last_saved = None
        self.store.bases.drop(partition_key, app_id)  # what Redis holds is unknown now
        self._pending.pop((partition_key, app_id, sequence_id), None)
        by_redis = isinstance(error, SequenceConflict) or (
            isinstance(error, LeaseLost) and "holder" in error.context
        )
        if by_redis and isinstance(error, LeaseLost) and self.lease is not None:
            self.lease.mark_lost(f"Redis refused a commit: {error}")  # stop sending doomed saves
        if isinstance(error, NotDurable) and self.lease is not None:
            # Applied on the master but not confirmed by its replicas: a failover now could undo
            # it (and the lease with it). Nothing further may run on this lease; the same commit
            # sent again later is recognised by its write id.
            self.lease.mark_lost(f"commit not confirmed by replicas: {error}")
        # Refused by the script on the only send: certainly not applied. After a retry the first
        # send may have landed before the lease changed hands; anything else (no reply) may have.
        self._record("failed" if by_redis and self._tries <= 1 else "unknown")
        floor = self.known_head()
        actual = getattr(error, "actual", None)
        if (
            isinstance(error, SequenceConflict)
            and floor is not None
            and actual is not None
            and actual < floor
        ):
            raise StoreRewound(
                f"app {app_id!r} (partition {partition_key!r}): Redis holds head {actual}, but this "
                f"worker saw sequence {floor} stored under its current lease. Redis lost data "
                "(restarted without persistence, restored an old backup, failed over to a lagging "
                "replica); refusing to commit on top of it",
                app_id=app_id,
                partition_key=partition_key,
                known=floor,
                actual=actual,
            ) from error

    def save_flow(
        self, partition_key: str | None, app_id: str, sequence_id: int, position: str, state: State,
        status: str, settle: Settle | None,
    ) -> Generator[Call, Any, Committed | None]:  # fmt: skip
        """A save, sans I/O: yields each call to send and receives its reply (or the error its
        send raised, thrown in); returns what the save returns. A delta refused because its base
        moved is sent again as a keyframe."""
        for keyframe in (False, True):
            call = self.commit_call(
                partition_key, app_id, sequence_id, position, state, status, settle, keyframe
            )
            if call is None:
                return None
            try:
                reply = yield call
                return self.on_commit(reply, partition_key, app_id, sequence_id)
            except BaseMoved:
                self.rebase(partition_key, app_id, sequence_id)
            except BaseException as e:
                self.on_failure(partition_key, app_id, sequence_id, e)
                raise
        raise AssertionError("a keyframe commit cannot be refused as BaseMoved")

    def rebase(self, partition_key: str | None, app_id: str, sequence_id: int) -> None:
        """A delta was refused (BaseMoved: certainly not applied); a keyframe follows."""
        self._last_saved = None
        self._pending.pop((partition_key, app_id, sequence_id), None)
        self.store.bases.drop(partition_key, app_id)
        self._record("failed")

    def known_head(self) -> int | None:
        """The highest sequence this persister's lease knows was stored (None: unknown)."""
        if self.lease is None:
            return None
        seen = [s for s in (
            self.last_commit.sequence_id if self.last_commit is not None else None,
            self.lease.head["sequence_id"] if self.lease.head is not None else None,
        ) if s is not None]  # fmt: skip
        return max(seen) if seen else None

    def _record(self, outcome: Literal["ok", "failed", "unknown"]) -> None:
        if self.history is not None and self._op is not None:
            self.history.complete(self._op, outcome)
            self._op = None

    def before_try(self) -> None:
        self._tries += 1
        if self.lease is not None:
            self.lease.check()

    def cached_head(
        self, partition_key: str | None, app_id: str, sequence_id: int | None
    ) -> tuple[bool, PersistedStateData | None]:
        """The head read by the lease's acquire, when it is what is asked for: no round trip."""
        lease = self.lease
        if (
            lease is not None
            and lease.head_fresh
            and sequence_id is None
            and lease.app_id == app_id
            and lease.partition_key == partition_key
        ):
            return True, lease.head
        return False, None


def _unleased_state(persister: RedisPersister | AsyncRedisPersister) -> dict[str, Any]:
    """What a pickled persister carries: its store (which pickles as its target and config)."""
    return {"store": persister.store}


class RedisPersister(BaseStatePersister):
    """Sync Burr persister. Pass ``lease=`` (or use ``Lease.persister``) to fence every save.

    Differences from Burr's ``RedisBasePersister`` a migrating user meets: ``load`` answers the
    same (None when not stored); ``list_app_ids`` is newest first by first commit (Burr's: highest
    saved sequence first); ``cleanup`` deletes this prefix's keys and needs ``confirm=True``
    (Burr's only closes the connection: :meth:`close` here).

    Pickling (Burr's parallelism hands persisters to process pools and Ray): a persister built
    with ``from_url`` / ``from_values`` pickles as its URL target and config and reconnects on
    first use. Its lease is NOT carried across: the copy is unleased, its saves are unfenced
    compare-and-set commits (a sequence conflict still refuses a stale save). One built on a
    raw redis-py client refuses to pickle.
    """

    def __init__(self, store: RedisStore, lease: LeaseCore | None = None) -> None:
        self.store = store
        self.core = PersisterCore(store, lease)

    @classmethod
    def from_url(cls, url: str | None = None, **config: Any) -> RedisPersister:
        return cls(RedisStore.from_url(url, **config))

    @classmethod
    def from_values(
        cls, host: str = "localhost", port: int = 6379, db: int = 0, password: str | None = None,
        namespace: str | None = None, **config: Any,
    ) -> RedisPersister:  # fmt: skip
        """Burr's ``RedisBasePersister.from_values(host=, port=, db=, password=, namespace=)``
        twin; ``namespace`` is the key prefix, other keywords go to StoreConfig (or
        ``username=``, ``ssl=``)."""
        return cls(RedisStore.from_values(host, port, db, password, namespace, **config))

    def __getstate__(self) -> dict[str, Any]:
        return _unleased_state(self)

    def __setstate__(self, state: dict[str, Any]) -> None:
        RedisPersister.__init__(self, state["store"])

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> RedisPersister:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def cleanup(self, *, confirm: bool = False) -> int:
        """DESTRUCTIVE, for tests: delete every key under this persister's prefix (every app of
        every partition, and the fleet's records). Refused unless ``confirm=True``; to close
        the connection as Burr's ``cleanup()`` does, call :meth:`close`."""
        return self.store.cleanup(confirm=confirm)

    def load_or_raise(
        self, partition_key: str | None, app_id: str, sequence_id: int | None = None
    ) -> PersistedStateData:
        """``load``, but SnapshotNotFound (naming the retained range) instead of None."""
        return self.store.load_or_raise(partition_key, app_id, sequence_id)

    def is_initialized(self) -> bool:
        return True

    def load(
        self, partition_key: str | None, app_id: str | None, sequence_id: int | None = None, **kwargs: Any
    ) -> PersistedStateData | None:
        """The latest step, or ``sequence_id``'s; None when it is not stored (an unknown app, a
        sequence never saved or older than ``keep``), as Burr's ``BaseStateLoader`` says: then
        ``initialize_from`` starts from its defaults. :meth:`load_or_raise` raises instead."""
        if app_id is None:
            return None
        hit, head = self.core.cached_head(partition_key, app_id, sequence_id)
        if hit:
            return head
        return self.store.load(partition_key, app_id, sequence_id)

    def list_app_ids(self, partition_key: str | None, **kwargs: Any) -> list[str]:
        """Newest first, by each app's first commit (Burr's Redis persister: highest saved
        sequence first; its SQLite persister: latest save first)."""
        return self.store.list_app_ids(partition_key)

    def save(
        self,
        partition_key: str | None,
        app_id: str,
        sequence_id: int,
        position: str,
        state: State,
        status: Literal["completed", "failed"],
        **kwargs: Any,
    ) -> None:
        self.save_and_settle(partition_key, app_id, sequence_id, position, state, status)

    def save_and_settle(
        self, partition_key: str | None, app_id: str, sequence_id: int, position: str, state: State,
        status: str, settle: Settle | None = None,
    ) -> Committed | None:  # fmt: skip
        """``save``, and with ``settle`` (the worker, on a claim's last step) the settle of the
        lease in the same script: one round trip instead of two. None for a duplicate save."""
        flow = self.core.save_flow(partition_key, app_id, sequence_id, position, state, status, settle)
        try:
            call = next(flow)
            while True:
                try:
                    reply = self.store.run(call, before_try=self.core.before_try)
                except BaseException as e:
                    call = flow.throw(e)
                else:
                    call = flow.send(reply)
        except StopIteration as done:
            return done.value


class AsyncRedisPersister(AsyncBaseStatePersister):
    """Async Burr persister (use with ``abuild()``); same semantics as RedisPersister, pickling
    included (an unpickled copy is unleased and opens its connections in the loop that uses it)."""

    def __init__(self, store: AsyncRedisStore, lease: LeaseCore | None = None) -> None:
        self.store = store
        self.core = PersisterCore(store, lease)

    @classmethod
    def from_url(cls, url: str | None = None, **config: Any) -> AsyncRedisPersister:
        return cls(AsyncRedisStore.from_url(url, **config))

    @classmethod
    def from_values(
        cls, host: str = "localhost", port: int = 6379, db: int = 0, password: str | None = None,
        namespace: str | None = None, **config: Any,
    ) -> AsyncRedisPersister:  # fmt: skip
        """Burr's ``AsyncRedisBasePersister.from_values`` twin (see RedisPersister.from_values)."""
        return cls(AsyncRedisStore.from_values(host, port, db, password, namespace, **config))

    def __getstate__(self) -> dict[str, Any]:
        return _unleased_state(self)

    def __setstate__(self, state: dict[str, Any]) -> None:
        AsyncRedisPersister.__init__(self, state["store"])

    async def close(self) -> None:
        await self.store.aclose()

    async def __aenter__(self) -> AsyncRedisPersister:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def cleanup(self, *, confirm: bool = False) -> int:
        """DESTRUCTIVE, for tests: see RedisPersister.cleanup."""
        return await self.store.cleanup(confirm=confirm)

    async def load_or_raise(
        self, partition_key: str | None, app_id: str, sequence_id: int | None = None
    ) -> PersistedStateData:
        return await self.store.load_or_raise(partition_key, app_id, sequence_id)

    async def is_initialized(self) -> bool:
        return True

    async def load(
        self, partition_key: str | None, app_id: str | None, sequence_id: int | None = None, **kwargs: Any
    ) -> PersistedStateData | None:
        if app_id is None:
            return None
        hit, head = self.core.cached_head(partition_key, app_id, sequence_id)
        if hit:
            return head
        return await self.store.load(partition_key, app_id, sequence_id)

    async def list_app_ids(self, partition_key: str | None, **kwargs: Any) -> list[str]:
        """Newest first, by each app's first commit (see RedisPersister.list_app_ids)."""
        return await self.store.list_app_ids(partition_key)

    async def save(
        self,
        partition_key: str | None,
        app_id: str,
        sequence_id: int,
        position: str,
        state: State,
        status: Literal["completed", "failed"],
        **kwargs: Any,
    ) -> None:
        await self.save_and_settle(partition_key, app_id, sequence_id, position, state, status)

    async def save_and_settle(
        self, partition_key: str | None, app_id: str, sequence_id: int, position: str, state: State,
        status: str, settle: Settle | None = None,
    ) -> Committed | None:  # fmt: skip
        flow = self.core.save_flow(partition_key, app_id, sequence_id, position, state, status, settle)
        try:
            call = next(flow)
            while True:
                try:
                    reply = await self.store.run(call, before_try=self.core.before_try)
                except BaseException as e:
                    call = flow.throw(e)
                else:
                    call = flow.send(reply)
        except StopIteration as done:
            return done.value


def _loaded(
    key: tuple[str | None, str, int | None], answer: PersistedStateData | None, asked: tuple[Any, ...]
) -> PersistedStateData | None:
    if asked == key:
        return answer
    if asked[0] == key[0] and asked[1] != key[1]:
        # A sub-application of the app (Burr's MapStates, MapActions, TaskBasedParallelAction...
        # cascade the parent's initializer to them, asking for ids of their own in the parent's
        # partition): the worker does not store sub-applications yet, so each one starts new,
        # as under Burr without a persister.
        return None
    raise ConfigurationError(f"load of {asked!r} asked of a loader holding {key!r}", app_id=asked[1])


class LoadedState(BaseStatePersister):
    """A loader for ``initialize_from`` whose one answer the worker read beforehand (by its
    async persister, before the factory ran): the build then does no I/O and nothing awaits
    between the factory and the build. A sync app is built with ``build()`` (so that Burr lets
    it step synchronously, on a pool thread when it must); see AsyncLoadedState for ``abuild()``.
    It only loads, and only what it was given."""

    def __init__(self, key: tuple[str | None, str, int | None], answer: PersistedStateData | None) -> None:
        self.key = key
        self.answer = answer

    def is_initialized(self) -> bool:
        return True

    def load(
        self, partition_key: str | None, app_id: str | None, sequence_id: int | None = None, **kwargs: Any
    ) -> PersistedStateData | None:
        return _loaded(self.key, self.answer, (partition_key, app_id, sequence_id))

    def list_app_ids(self, partition_key: str | None, **kwargs: Any) -> list[str]:
        raise ConfigurationError("LoadedState lists nothing: it holds one loaded state")

    def save(self, *args: Any, **kwargs: Any) -> None:
        raise ConfigurationError("LoadedState saves nothing: commits go through the worker's persister")


class AsyncLoadedState(AsyncBaseStatePersister):
    """LoadedState for ``abuild()`` (Burr asks an async app for an async initializer)."""

    def __init__(self, key: tuple[str | None, str, int | None], answer: PersistedStateData | None) -> None:
        self.key = key
        self.answer = answer

    async def is_initialized(self) -> bool:
        return True

    async def load(
        self, partition_key: str | None, app_id: str | None, sequence_id: int | None = None, **kwargs: Any
    ) -> PersistedStateData | None:
        return _loaded(self.key, self.answer, (partition_key, app_id, sequence_id))

    async def list_app_ids(self, partition_key: str | None, **kwargs: Any) -> list[str]:
        raise ConfigurationError("AsyncLoadedState lists nothing: it holds one loaded state")

    async def save(self, *args: Any, **kwargs: Any) -> None:
        raise ConfigurationError("AsyncLoadedState saves nothing: commits go through the worker's persister")
