"""A worker's background upkeep, on Redis time: heartbeat, store epochs, claim deadlines, sweeps.

Every round (``min(sweep_interval, lease_ttl / 3)``):

* heartbeat.lua registers the worker (host, pid, queues, concurrency, running apps);
* epoch.lua bumps the store epoch on every primary (one bucket each) and compares it with what
  this worker saw before: another id or a counter that went back means Redis lost data, and the
  worker stops (:class:`~burr_dist.errors.StoreRewound`);
* touch.lua extends the active-entry deadlines of the apps this worker runs, and remembers the new
  deadline (ack.lua drops only the entry whose deadline this worker set);
* every ``sweep_interval``, sweep.lua returns expired claims of every shard to ``ready``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from burr_dist.errors import NotDurable, StoreRewound
from burr_dist.worker.safety import EpochWatch

if TYPE_CHECKING:
    from burr_dist.fleet.client import AsyncFleetClient
    from burr_dist.worker.claiming import Claim

log = logging.getLogger(__name__)


class Upkeep:
    def __init__(
        self,
        fleet: AsyncFleetClient,
        worker_id: str,
        queues: tuple[str, ...],
        concurrency: int,
        lease_ttl: float,
        sweep_interval: float,
        held: dict[str, Claim],
        stopping: Callable[[], bool],
    ) -> None:
        self.fleet = fleet
        self.worker_id = worker_id
        self.queues = queues
        self.concurrency = concurrency
        self.lease_ttl = lease_ttl
        self.sweep_interval = sweep_interval
        self.held = held
        self.stopping = stopping
        self.epochs: dict[str, EpochWatch] = {}  # epoch key -> what this worker saw there

    @property
    def every(self) -> float:
        return min(self.sweep_interval, self.lease_ttl / 3)

    async def run(self, on_rewound: Callable[[StoreRewound], None]) -> None:
        last_sweep = 0.0
        while True:
            try:
                rewound = await self.round(sweep=time.monotonic() - last_sweep >= self.sweep_interval)
                if time.monotonic() - last_sweep >= self.sweep_interval:
                    last_sweep = time.monotonic()
                if rewound is not None:
                    on_rewound(rewound)
                    return
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("worker background round failed: %s", e)
            await asyncio.sleep(self.every)

    async def round(self, *, sweep: bool) -> StoreRewound | None:
        """One upkeep round; the StoreRewound to stop with, if Redis lost data."""
        await self.heartbeat()
        rewound = await self.check_epochs()
        if rewound is not None:
            return rewound
        await self.touch()
        if sweep:
            await self.sweep()
        return None

    async def heartbeat(self) -> None:
        ttl_ms = int(max(3 * self.every, self.lease_ttl) * 1000)
        await self.fleet.run(self.fleet.heartbeat_call(self.worker_id, ttl_ms, {
            "host": socket.gethostname(), "pid": str(os.getpid()), "queues": ",".join(self.queues),
            "concurrency": str(self.concurrency), "running": str(len(self.held)),
            "state": "stopping" if self.stopping() else "running",
        }))  # fmt: skip

    async def check_epochs(self) -> StoreRewound | None:
        """Bump the store epoch on every primary and compare with what this worker saw there
        before. An epoch write that WAIT did not confirm is not remembered."""
        buckets = await self.fleet.transport.bucket_per_node(self.fleet.schema)
        try:
            replies = await self.fleet.run_many(
                [self.fleet.epoch_call(b, os.urandom(8).hex()) for b in buckets]
            )
        except NotDurable as e:
            log.warning("store epoch not confirmed by replicas: %s", e)
            return None
        for bucket, (epoch_id, n) in zip(buckets, replies, strict=True):
            key = self.fleet.schema.epoch(bucket)
            watch = self.epochs.setdefault(key, EpochWatch(key))
            rewound = watch.observe(
                epoch_id.decode() if isinstance(epoch_id, bytes) else str(epoch_id), int(n)
            )
            if rewound is not None:
                return rewound
        return None

    async def touch(self) -> None:
        by_shard: dict[tuple[str, int], list[Claim]] = {}
        for claim in list(self.held.values()):
            if claim.acked:  # its entry is gone, or already another claim's (of any worker)
                continue
            by_shard.setdefault((claim.queue, self.fleet.schema.shard_of(claim.member)), []).append(claim)
        if not by_shard:
            return
        calls = [
            self.fleet.touch_call(
                q, shard, int(self.lease_ttl * 1000), [(c.member, c.deadline) for c in claims]
            )
            for (q, shard), claims in by_shard.items()
        ]
        for claims, reply in zip(by_shard.values(), await self.fleet.run_many(calls), strict=True):
            deadline = int(reply[0])
            for claim, extended in zip(claims, reply[1:], strict=True):
                if int(extended):
                    claim.deadline = deadline

    async def sweep(self) -> None:
        calls = [
            self.fleet.sweep_call(q, s) for q in self.queues for s in range(self.fleet.schema.queue_shards)
        ]
        moved = sum(len(m) for m in await self.fleet.run_many(calls))
        if moved:
            log.info("swept %d expired claims back to %s", moved, ",".join(self.queues),
                     extra={"event": "swept", "worker": self.worker_id, "queue": ",".join(self.queues)})  # fmt: skip
