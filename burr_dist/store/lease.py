"""Leases on apps, sync and async: acquire (with the head snapshot), renew in the background,
release. The rules they share are :class:`~burr_dist.store.lease_core.LeaseCore`.

The server's clock decides expiry (``SET PX``); this process only ever compares its own
monotonic clock against a deadline measured from *before* it sent the request, so its view of the
lease can only be more pessimistic than the server's. Redis enforces fencing regardless:
commit.lua refuses a token that is not the current one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from burr_dist.errors import (
    LeaseLost,
    LeaseNotHeld,
    NotDurable,
    RedisUnavailable,
)
from burr_dist.store.clients import AsyncRedisStore, RedisStore

if TYPE_CHECKING:
    from burr_dist.store.persister import AsyncRedisPersister, RedisPersister
from burr_dist.store.lease_core import (
    DEFAULT_TTL,
    LeaseCore,
)

log = logging.getLogger(__name__)


class Lease(LeaseCore):
    """A held lease (sync). Use as a context manager, or call :meth:`release`."""

    store: RedisStore

    def __init__(
        self,
        store: RedisStore,
        partition_key: str | None,
        app_id: str,
        ttl: float = DEFAULT_TTL,
        worker: str = "",
    ) -> None:
        super().__init__(store, partition_key, app_id, ttl, worker)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self, *, wait: float = 0.0, auto_renew: bool = True) -> Lease:
        """Take the lease; with ``wait`` > 0, retry until then while someone else holds it."""
        give_up = time.monotonic() + wait
        while True:
            sent = time.monotonic()
            try:
                self.on_acquire(self.store.run(self.acquire_call()), sent)
                break
            except LeaseNotHeld as e:
                if time.monotonic() >= give_up:
                    raise
                time.sleep(min(max(e.pttl_ms / 1000, 0.01), 0.25, max(give_up - time.monotonic(), 0.01)))
        if auto_renew:
            self._thread = threading.Thread(
                target=self._renew_loop, name=f"burr-dist-lease-{self.app_id}", daemon=True
            )
            self._thread.start()
        return self

    def renew(self) -> None:
        self.check()
        sent = time.monotonic()
        call = self.store.renew_call(self.partition_key, self.app_id, self.token, self.ttl_ms)
        try:
            ok = self.store.run(call, before_try=self.check)
        except NotDurable as e:
            self.on_not_durable(e)
            raise
        self.on_renew(ok, sent)
        self.check()

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.renew_every):
            try:
                self.renew()
            except (LeaseLost, LeaseNotHeld, NotDurable):
                return
            except (RedisUnavailable, Exception) as e:  # keep trying until the local deadline passes
                log.warning("renewing lease on %s failed: %s", self.app_id, e)
                if time.monotonic() >= self.deadline:
                    self.mark_lost(f"renewal failed until the deadline: {e}")
                    return

    def release(self) -> bool:
        """Give the lease back; True if it was still ours. Never raises for a lost lease."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=self.ttl)
        if self.released:
            return False
        self.released = True
        try:
            return bool(self.store.run(self.store.release_call(self.partition_key, self.app_id, self.token)))
        except RedisUnavailable as e:
            log.warning("release of %s failed (it will expire): %s", self.app_id, e)
            return False

    @property
    def persister(self) -> RedisPersister:
        from burr_dist.store.persister import RedisPersister

        return RedisPersister(self.store, lease=self)

    def __enter__(self) -> Lease:
        if not self.token:
            self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class AsyncLease(LeaseCore):
    """A held lease (async); renewal runs as a task on the running loop."""

    store: AsyncRedisStore

    def __init__(
        self,
        store: AsyncRedisStore,
        partition_key: str | None,
        app_id: str,
        ttl: float = DEFAULT_TTL,
        worker: str = "",
    ) -> None:
        super().__init__(store, partition_key, app_id, ttl, worker)
        self._task: asyncio.Task[None] | None = None
        # Renewal starts as a timer: most claims end before a first renewal is due, and a timer
        # costs far less than a task started and cancelled per claim.
        self._timer: asyncio.TimerHandle | None = None

    async def acquire(self, *, wait: float = 0.0, auto_renew: bool = True) -> AsyncLease:
        give_up = time.monotonic() + wait
        while True:
            sent = time.monotonic()
            try:
                self.on_acquire(await self.store.run(self.acquire_call()), sent)
                break
            except LeaseNotHeld as e:
                if time.monotonic() >= give_up:
                    raise
                await asyncio.sleep(
                    min(max(e.pttl_ms / 1000, 0.01), 0.25, max(give_up - time.monotonic(), 0.01))
                )
        if auto_renew:
            self._arm()
        return self

    def _arm(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(self.renew_every, self._start_renewing)

    def _start_renewing(self) -> None:
        self._timer = None
        if not self.released:
            self._task = asyncio.create_task(self._renew_loop(), name=f"burr-dist-lease-{self.app_id}")

    def adopt(self, reply: Any, sent_at: float, *, auto_renew: bool = True) -> AsyncLease:
        """Take the reply of an acquire sent in a batch (``acquire_call()``) as this lease's
        acquire: raises like :meth:`acquire` when it was not granted."""
        self.on_acquire(reply, sent_at)
        if auto_renew:
            self._arm()
        return self

    async def renew(self) -> None:
        self.check()
        sent = time.monotonic()
        call = self.store.renew_call(self.partition_key, self.app_id, self.token, self.ttl_ms)
        try:
            ok = await self.store.run(call, before_try=self.check)
        except NotDurable as e:
            self.on_not_durable(e)
            raise
        self.on_renew(ok, sent)
        self.check()

    async def _renew_loop(self) -> None:
        while True:  # started by the timer, a renewal interval after the acquire
            try:
                await self.renew()
            except (LeaseLost, LeaseNotHeld, NotDurable):
                return
            except Exception as e:
                log.warning("renewing lease on %s failed: %s", self.app_id, e)
                if time.monotonic() >= self.deadline:
                    self.mark_lost(f"renewal failed until the deadline: {e}")
                    return
            await asyncio.sleep(self.renew_every)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def release(self) -> bool:
        self._disarm()
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self.released:
            return False
        self.released = True
        try:
            return bool(
                await self.store.run(self.store.release_call(self.partition_key, self.app_id, self.token))
            )
        except RedisUnavailable as e:
            log.warning("release of %s failed (it will expire): %s", self.app_id, e)
            return False

    async def detach(self) -> None:
        """Stop renewing without touching Redis: settle.lua already released the lease."""
        self.released = True
        self._disarm()
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    @property
    def persister(self) -> AsyncRedisPersister:
        from burr_dist.store.persister import AsyncRedisPersister

        return AsyncRedisPersister(self.store, lease=self)

    async def __aenter__(self) -> AsyncLease:
        if not self.token:
            await self.acquire()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.release()
