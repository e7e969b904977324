"""The sans-IO rules of a lease, shared by :class:`~burr_dist.store.lease.Lease` and
:class:`~burr_dist.store.lease.AsyncLease`: its token, fence, deadline and head.

The server's clock decides expiry (``SET PX``); this process only ever compares its own
monotonic clock against a deadline measured from *before* it sent the request, so its view of the
lease can only be more pessimistic than the server's. Redis enforces fencing regardless:
commit.lua refuses a token that is not the current one.
"""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING, Any

from burr.core.persistence import PersistedStateData

from burr_dist.errors import (
    AppNotRunnable,
    ConfigurationError,
    LeaseLost,
    LeaseNotHeld,
    NotDurable,
)
from burr_dist.keys import check_id
from burr_dist.store.core import Call, Held, NotRunnable, StoreCore

if TYPE_CHECKING:
    pass

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
