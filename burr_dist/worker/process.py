"""Workers: claim runnable apps, lease them, run Burr steps, commit each one fenced, settle.

:class:`Worker` owns the process's lifecycle (start checks, signals, hand-back on stop, exit on a
rewound store) and composes three parts, each testable alone:

* :class:`~burr_dist.worker.claiming.Claimer`: which apps to claim (fairest queue shard first), their
  leases in one batch, waking up on enqueues, and the outbox of acks riding on its claims;
* :class:`~burr_dist.worker.claim_runner.ClaimRunner`: one claim from build to settle (where sync actions
  run: :class:`~burr_dist.worker.inline.InlinePolicy`);
* :class:`~burr_dist.worker.upkeep.Upkeep`: heartbeat, store epochs, claim deadlines, sweeps.

Their modules document the crash points of a claim and how each recovers.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import socket
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from burr_dist.errors import BurrDistError, StoreRewound
from burr_dist.fleet.client import AsyncFleetClient
from burr_dist.fleet.registry import Registry
from burr_dist.transport.connect import aconnect, resolve_target
from burr_dist.transport.core import Cmd
from burr_dist.worker.claim_runner import ClaimRunner
from burr_dist.worker.claiming import Claim, Claimer, Refused
from burr_dist.worker.config import WorkerConfig
from burr_dist.worker.hooks import NOOP, Observer, Recorder
from burr_dist.worker.inline import InlinePolicy
from burr_dist.worker.safety import check_eviction_policy, check_replicas
from burr_dist.worker.upkeep import Upkeep

if TYPE_CHECKING:
    from burr_dist.observability.history import HistorySink

log = logging.getLogger(__name__)


__all__ = ["Worker", "WorkerConfig"]


class Worker:
    """One worker process. ``await Worker(registry, WorkerConfig(url=...)).run()`` (or the same
    settings as keywords: ``Worker(registry, url=...)``), or ``run_forever()`` with signal handling (first SIGTERM/SIGINT: stop claiming and hand apps back at the next step
    boundary; second: exit at once)."""

    def __init__(
        self,
        registry: Registry,
        config: WorkerConfig | None = None,
        *,
        history: HistorySink | None = None,
        observer: Observer | None = None,
        **settings: Any,
    ) -> None:
        """``config``: every setting (burr_dist/worker/config.py); keyword ``settings`` (``url=``,
        ``concurrency=``, ``prefix=``...: the fields of WorkerConfig and the store's ``prefix``,
        ``finished_ttl``, ``wait_replicas``, ``wait_timeout_ms``) override it."""
        cfg = WorkerConfig.from_keywords(config, **settings)
        if registry.pydantic_modules is not None:
            from burr.integrations.serde import pydantic as burr_pydantic  # needs pydantic

            burr_pydantic.set_allowlist(list(registry.pydantic_modules))
        self.registry = registry
        self.settings = cfg
        self.target = resolve_target(cfg.url)
        self.url = self.target
        self.config = cfg.store_for(self.target)  # the StoreConfig every client of this worker uses
        self.queues = cfg.queues
        self.concurrency = cfg.concurrency
        self.lease_ttl = cfg.lease_ttl
        self.sweep_interval = cfg.sweep_interval
        self.max_steps = cfg.max_steps_per_claim
        self.max_seconds = cfg.max_seconds_per_claim
        self.poll_interval = cfg.poll_interval
        self.id = cfg.worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._pool = ThreadPoolExecutor(
            max_workers=cfg.threads or cfg.concurrency, thread_name_prefix="burr-dist-step"
        )
        self._tasks: set[asyncio.Task[None]] = set()  # claims running, until their last hook returned
        self._held: dict[str, Claim] = {}  # member -> its latest claim, while its task runs
        self._stop: asyncio.Event | None = None  # created in run(), on its loop
        self.stopping = False
        self.completed_claims = 0
        self.allow_evicting_redis = cfg.allow_evicting_redis
        self.history = history
        self.recorder = Recorder(history)
        self.fatal: StoreRewound | None = None
        self.observer = observer or NOOP
        self.track = cfg.track  # Burr tracking records committed with each step (burr-dist ui)
        # Sync actions faster than this run on the event loop (burr_dist/worker/inline.py); 0: never.
        self.inline = InlinePolicy(budget=cfg.inline_ms / 1000)

    @property
    def held_apps(self) -> int:
        """Apps this worker holds a claim on now."""
        return len(self._held)

    @property
    def claim_ms(self) -> int:
        return int(self.lease_ttl * 1000)

    # -- lifecycle -----------------------------------------------------------------------
    def request_stop(self) -> None:
        if not self.stopping:
            log.info("worker %s stopping: no new claims; running apps are handed back", self.id,
                     extra={"event": "worker_stopping", "worker": self.id})  # fmt: skip
        self.stopping = True
        if self._stop is not None:
            self._stop.set()

    def run_forever(self) -> None:
        """Run until SIGTERM/SIGINT (CLI entry point)."""

        async def main() -> None:
            loop = asyncio.get_running_loop()
            signals = 0

            def on_signal() -> None:
                nonlocal signals
                signals += 1
                if signals > 1:
                    log.warning("second signal: exiting now; held leases expire on their own")
                    os._exit(130)
                self.request_stop()

            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, on_signal)
            await self.run()

        asyncio.run(main())

    async def run(self) -> None:
        self._stop = asyncio.Event()
        if self.stopping:
            self._stop.set()
        self.fleet = AsyncFleetClient(aconnect(self.url), self.config)
        for q in self.queues:
            self.fleet.schema.queue_shard(q, 0)  # validates the name
        try:
            primaries = await self.fleet.transport.primaries()
            await check_eviction_policy(primaries, allow=self.allow_evicting_redis)
            await check_replicas(primaries, self.config.wait_replicas)
            await self.fleet.commands([self.fleet.queue_name_cmd(self.queues)])
        except BaseException:
            await self.fleet.aclose()
            raise
        self.claimer = Claimer(self.fleet, self.id, self.lease_ttl, self.poll_interval)
        self.runner = ClaimRunner(
            self.fleet, self.registry, self._pool, worker_id=self.id,
            max_steps=self.max_steps, max_seconds=self.max_seconds, stopping=lambda: self.stopping,
            recorder=self.recorder, on_rewound=self._rewound, observer=self.observer, track=self.track,
            outbox=self.claimer.outbox, inline=self.inline,
        )  # fmt: skip
        self.upkeep = Upkeep(
            self.fleet, self.id, self.queues, self.concurrency, self.lease_ttl, self.sweep_interval,
            self._held, lambda: self.stopping,
        )  # fmt: skip
        background = asyncio.create_task(self.upkeep.run(self._rewound))
        log.info(
            "worker %s started: queues=%s concurrency=%d", self.id, ",".join(self.queues), self.concurrency,
            extra={"event": "worker_started", "worker": self.id, "queue": ",".join(self.queues)},
        )  # fmt: skip
        try:
            await self._claim_loop()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            await self.claimer.flush()
        finally:
            background.cancel()
            await self.claimer.close()
            try:
                workers, me = self.fleet.schema.workers(), self.fleet.schema.worker(self.id)
                await self.fleet.commands([Cmd(workers, ("ZREM", workers, self.id)), Cmd(me, ("DEL", me))])
            except Exception as e:  # the registry entry expires on its own
                log.warning("could not deregister worker %s: %s", self.id, e)
            await self.fleet.aclose()
            self._pool.shutdown(wait=False)
            log.info("worker %s stopped after %d claims", self.id, self.completed_claims,
                     extra={"event": "worker_stopped", "worker": self.id})  # fmt: skip
        if self.fatal is not None:
            raise self.fatal

    def _rewound(self, error: StoreRewound) -> None:
        """Redis lost data: stop committing anything, here and now, and exit with the error."""
        if self.fatal is None:
            self.fatal = error
            log.critical("worker %s stops: %s", self.id, error,
                         extra={"event": "store_rewound", "worker": self.id, "error": str(error)})  # fmt: skip
        for claim in list(self._held.values()):
            if claim.lease is not None:
                claim.lease.mark_lost(f"store rewound: {error}")
        self.request_stop()

    # -- claiming ------------------------------------------------------------------------
    async def _claim_loop(self) -> None:
        assert self._stop is not None
        while not self.stopping:
            claimed = 0
            for queue in self.queues:
                free = self.concurrency - len(self._tasks)
                if free <= 0 or self.stopping:
                    break
                try:
                    claimed += await self._claim_round(queue, free)
                except BurrDistError as e:
                    log.warning("claim on %s failed: %s", queue, e,
                                extra={"event": "claim_failed", "worker": self.id, "queue": queue})  # fmt: skip
            if self.stopping:
                break
            if claimed == 0 or len(self._tasks) >= self.concurrency:
                if len(self._tasks) >= self.concurrency:  # full: only a finished app frees room
                    stop = asyncio.ensure_future(self._stop.wait())
                    done, _ = await asyncio.wait({*self._tasks, stop}, timeout=self.poll_interval,
                                                 return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
                    stop.cancel()
                    if not done:  # no claim soon for the outbox to ride on
                        await self.claimer.flush()
                else:
                    await self.claimer.flush()  # before a wait that may be long
                    await self.claimer.wait_for_work(self.queues, self._stop, set(self._tasks))

    async def _claim_round(self, queue: str, free: int) -> int:
        """Claim and lease up to ``free`` apps of ``queue`` and start them; how many started."""
        claims = await self.claimer.claim(queue, free)
        fresh = []
        for c in claims:
            running = self._held.get(c.member)
            if running is not None and not running.acked:
                # We already run it (a stale duplicate entry reached ready): the claim just
                # re-created the active entry, with a new deadline that is now ours to keep.
                running.deadline = c.deadline
            else:
                # New, or its last claim here acked its entry (handed back, resumed...) and only
                # runs its hooks now: this is the app's next run, started like any other.
                fresh.append(c)
        if not fresh:
            return 0
        ops = [
            (c, self.recorder.invoke_app("acquire", *self.fleet.schema.parse_member(c.member))) for c in fresh
        ]
        try:
            results = await self.claimer.acquire(fresh)
        except Exception:
            for _, op in ops:
                self.recorder.complete(op, "unknown")
            log.exception("lease acquire of %d claimed apps failed", len(fresh),
                          extra={"event": "claim_failed", "worker": self.id, "queue": queue})  # fmt: skip
            return 0  # the active entries are swept back after their deadline
        refused = []
        started = 0
        for i, result in enumerate(results):
            op = ops[i][1]
            if isinstance(result, Refused):
                self.recorder.complete(op, "failed")
                refused.append(result)
                continue
            self.recorder.complete(op, "ok", result.lease)
            if self.fatal is not None and result.lease is not None:  # rewound while acquiring
                result.lease.mark_lost(f"store rewound: {self.fatal}")
            self._held[result.member] = result
            task = asyncio.create_task(self.runner.run(result))
            self._tasks.add(task)
            task.add_done_callback(functools.partial(self._forget, result))
            started += 1
        if started:
            self.observer.claimed(queue, started)
        if refused:
            await self._ack_refused(refused)
        return started

    async def _ack_refused(self, refused: list[Refused]) -> None:
        """Drop the queue entries of apps that cannot run (or put them back for later)."""
        try:
            await self.fleet.run_many(
                [
                    self.fleet.ack_call(
                        r.claim.queue, r.claim.member, r.claim.deadline, r.run_at_ms, claim_ms=self.claim_ms
                    )
                    for r in refused
                ]
            )
        except Exception as e:  # the entries expire and the sweep returns them: nothing is lost
            log.warning(
                "queue ack of %d unrunnable apps failed (the sweep requeues them): %s", len(refused), e
            )

    def _forget(self, claim: Claim, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if self._held.get(claim.member) is claim:  # not the app's next claim, started meanwhile
            del self._held[claim.member]
        self.completed_claims += 1
