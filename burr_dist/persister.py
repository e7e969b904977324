"""Burr persisters backed by the fenced store: drop-in for ``with_state_persister`` and
``initialize_from``.

A save is one round trip: commit.lua checks the head is ``sequence_id - 1`` (and, for a persister
bound to a lease, that the lease is still current) before it writes anything.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from burr.core.persistence import AsyncBaseStatePersister, BaseStatePersister, PersistedStateData
from burr.core.state import State

from burr_dist import codec
from burr_dist.lease import LeaseCore
from burr_dist.store import AsyncRedisStore, Call, Committed, RedisStore, StoreCore

log = logging.getLogger(__name__)


class PersisterCore:
    """What a save and a load mean, shared by the sync and async persisters."""

    def __init__(self, store: StoreCore, lease: LeaseCore | None) -> None:
        self.store = store
        self.lease = lease
        self._last_saved: tuple[str | None, str, int] | None = None
        self.last_commit: Committed | None = None

    def commit_call(
        self,
        partition_key: str | None,
        app_id: str,
        sequence_id: int,
        position: str,
        state: State,
        status: str,
    ) -> Call | None:
        if self._last_saved == (partition_key, app_id, sequence_id):
            # The same object registered twice (as persister and as hook): Burr calls us twice, one
            # after the other (sync) or concurrently (async hooks run under asyncio.gather); the
            # save is claimed below before it is sent, and given back by on_failure.
            log.debug("duplicate save of %s at %s ignored", app_id, sequence_id)
            return None
        token = ""
        if self.lease is not None:
            self.lease.check_app(partition_key, app_id)
            self.lease.check()
            token = self.lease.token
        write_id = codec.new_write_id()
        blob = codec.encode_snapshot(
            write_id=write_id,
            partition_key=partition_key,
            app_id=app_id,
            sequence_id=sequence_id,
            position=position,
            status=status,
            state=state,
            max_bytes=self.store.config.max_state_bytes,
        )
        call = self.store.commit_call(
            partition_key, app_id, sequence_id, position, status, blob, write_id, token
        )
        self._last_saved = (partition_key, app_id, sequence_id)
        return call

    def on_commit(self, reply: Any, partition_key: str | None, app_id: str, sequence_id: int) -> None:
        self.last_commit = self.store.read_commit(reply, partition_key, app_id, sequence_id)
        self._last_saved = (partition_key, app_id, sequence_id)
        if self.lease is not None:
            self.lease.head_fresh = False

    def on_failure(self, partition_key: str | None, app_id: str, sequence_id: int) -> None:
        if self._last_saved == (partition_key, app_id, sequence_id):
            self._last_saved = None

    def before_try(self) -> None:
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


class RedisPersister(BaseStatePersister):
    """Sync Burr persister. Pass ``lease=`` (or use ``Lease.persister``) to fence every save."""

    def __init__(self, store: RedisStore, lease: LeaseCore | None = None) -> None:
        self.store = store
        self.core = PersisterCore(store, lease)

    @classmethod
    def from_url(cls, url: str | None = None, **config: Any) -> RedisPersister:
        return cls(RedisStore.from_url(url, **config))

    def is_initialized(self) -> bool:
        return True

    def load(
        self, partition_key: str | None, app_id: str | None, sequence_id: int | None = None, **kwargs: Any
    ) -> PersistedStateData | None:
        if app_id is None:
            return None
        hit, head = self.core.cached_head(partition_key, app_id, sequence_id)
        if hit:
            return head
        return self.store.load(partition_key, app_id, sequence_id)

    def list_app_ids(self, partition_key: str | None, **kwargs: Any) -> list[str]:
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
        call = self.core.commit_call(partition_key, app_id, sequence_id, position, state, status)
        if call is not None:
            try:
                reply = self.store.run(call, before_try=self.core.before_try)
                self.core.on_commit(reply, partition_key, app_id, sequence_id)
            except BaseException:
                self.core.on_failure(partition_key, app_id, sequence_id)
                raise


class AsyncRedisPersister(AsyncBaseStatePersister):
    """Async Burr persister (use with ``abuild()``); same semantics as RedisPersister."""

    def __init__(self, store: AsyncRedisStore, lease: LeaseCore | None = None) -> None:
        self.store = store
        self.core = PersisterCore(store, lease)

    @classmethod
    def from_url(cls, url: str | None = None, **config: Any) -> AsyncRedisPersister:
        return cls(AsyncRedisStore.from_url(url, **config))

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
        call = self.core.commit_call(partition_key, app_id, sequence_id, position, state, status)
        if call is not None:
            try:
                reply = await self.store.run(call, before_try=self.core.before_try)
                self.core.on_commit(reply, partition_key, app_id, sequence_id)
            except BaseException:
                self.core.on_failure(partition_key, app_id, sequence_id)
                raise
