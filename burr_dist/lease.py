"""Leases on apps: acquire (with the head snapshot), renew in the background, release.

The server's clock decides expiry (``SET PX``); this process only ever compares its own
monotonic clock against a deadline measured from *before* it sent the request, so its view of the
lease can only be more pessimistic than the server's. Redis enforces fencing regardless:
commit.lua refuses a token that is not the current one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Any

from burr.core.persistence import PersistedStateData

from burr_dist.errors import (
    AppNotRunnable,
    ConfigurationError,
    LeaseLost,
    LeaseNotHeld,
    NotDurable,
    RedisUnavailable,
)
from burr_dist.keys import check_id
from burr_dist.store import AsyncRedisStore, Call, Held, NotRunnable, RedisStore, StoreCore

if TYPE_CHECKING:
    from burr_dist.persister import AsyncRedisPersister, RedisPersister

log = logging.getLogger(__name__)

DEFAULT_TTL = 30.0


class LeaseCore:
    """State and rules of one lease, shared by Lease and AsyncLease."""

    def __init__(
        self, store: StoreCore, partition_key: str | None, app_id: str, ttl: float, worker: str = ""
    ) -> None:
        check_id("app_id", app_id)
        self.worker = worker  # fleet mode: the job record must allow the claim (acquire.lua)
        self.job: dict[str, str] = {}
        self.entry: Any = None  # fleet mode: the queue entry (claiming.Claim) it was claimed through
        if ttl <= 0.05:
            raise ConfigurationError(f"lease ttl must be > 0.05 s, got {ttl!r}", ttl=ttl)
        self.store = store
        self.partition_key = partition_key
        self.app_id = app_id
        self.ttl = ttl
        self.token = ""
        self.fence = 0
        self.head: PersistedStateData | None = None
        self.head_fresh = False  # head is the stored head until a persister of this lease commits
        self.deadline = 0.0
        self.lost_reason: str | None = None
        self.released = False

    @property
    def ttl_ms(self) -> int:
        return int(self.ttl * 1000)

    @property
    def renew_every(self) -> float:
        return self.ttl / 3

    def acquire_call(self) -> Call:
        return self.store.acquire_call(
            self.partition_key, self.app_id, os.urandom(8).hex(), self.ttl_ms, self.worker
        )

    def on_acquire(self, reply: Any, sent_at: float) -> None:
        result = self.store.read_acquire(reply, self.partition_key, self.app_id)
        if isinstance(result, Held):
            raise LeaseNotHeld(
                f"app {self.app_id!r} (partition {self.partition_key!r}) is leased by "
                f"{result.holder} for another {result.pttl_ms} ms",
                app_id=self.app_id,
                partition_key=self.partition_key,
                holder=result.holder,
                pttl_ms=result.pttl_ms,
            )
        if isinstance(result, NotRunnable):
            raise AppNotRunnable(
                f"app {self.app_id!r} (partition {self.partition_key!r}) cannot be claimed: {result.status}",
                app_id=self.app_id,
                partition_key=self.partition_key,
                status=result.status,
                run_at_ms=result.run_at_ms,
            )
        self.token, self.fence, self.head, self.job = result.token, result.fence, result.head, result.job
        self.head_fresh = True
        self.deadline = sent_at + self.ttl
        log.debug("leased %s/%s fence=%s", self.partition_key, self.app_id, self.fence)

    def on_not_durable(self, error: NotDurable) -> None:
        """A renewal WAIT did not confirm: a failover could bring back an older lease state (an
        expired one another worker may take), so this lease counts as lost."""
        self.mark_lost(f"renewal not confirmed by replicas: {error}")

    def on_renew(self, ok: Any, sent_at: float) -> None:
        if int(ok) == 1:
            self.deadline = sent_at + self.ttl
        else:
            self.mark_lost("Redis says the lease is no longer ours (expired or taken over)")

    def mark_lost(self, reason: str) -> None:
        if self.lost_reason is None and not self.released:
            self.lost_reason = reason
            log.warning("lease on %s/%s lost: %s", self.partition_key, self.app_id, reason)

    def check(self) -> None:
        """Raise LeaseLost unless this lease is still believed valid; no I/O."""
        if self.released:
            raise LeaseNotHeld(f"lease on app {self.app_id!r} was released", app_id=self.app_id)
        if self.lost_reason is None and time.monotonic() >= self.deadline:
            self.mark_lost("local deadline passed without a successful renewal")
        if self.lost_reason is not None:
            raise LeaseLost(
                f"lease on app {self.app_id!r} (partition {self.partition_key!r}) lost: {self.lost_reason}",
                app_id=self.app_id,
                partition_key=self.partition_key,
                fence=self.fence,
            )

    def check_app(self, partition_key: str | None, app_id: str) -> None:
        if app_id != self.app_id or partition_key != self.partition_key:
            raise LeaseNotHeld(
                f"save for app {app_id!r} (partition {partition_key!r}) through the persister of the "
                f"lease on {self.app_id!r} (partition {self.partition_key!r})",
                app_id=app_id,
                partition_key=partition_key,
            )

    @property
    def valid(self) -> bool:
        return not self.released and self.lost_reason is None and time.monotonic() < self.deadline


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
        from burr_dist.persister import RedisPersister

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
        from burr_dist.persister import AsyncRedisPersister

        return AsyncRedisPersister(self.store, lease=self)

    async def __aenter__(self) -> AsyncLease:
        if not self.token:
            await self.acquire()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.release()
