"""Workers: claim runnable apps, lease them, run Burr steps, commit each one fenced, settle.

Crash points of one claim and how each recovers (queue keys and app keys are in different slots):

1. claim.lua moved the app from ``ready`` to ``active`` (deadline = now + lease TTL), then the
   worker died: the deadline passes and sweep.lua (any worker) moves it back to ``ready``.
2. acquire.lua took the lease and marked the record running, then the worker died: the lease
   expires on the server's clock; the active deadline, extended together with the lease, expires
   with it; the sweep requeues it and the next claim finds the lease free and the record running,
   which is runnable.
3. Mid-run: every committed step is durable; an uncommitted step is re-run by the next holder.
   A worker paused past its TTL cannot commit: commit.lua checks the lease token.
4. settle.lua recorded the outcome and deleted the lease, then the worker died before updating the
   queue: the stale ``active`` entry is swept back to ``ready``; the next claim reads a terminal or
   waiting record (acquire.lua returns not-runnable) and drops the entry, or a due queued record
   and runs it, which is what settle asked for.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import socket
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from burr.core import Application

from burr_dist.connection import aconnect, connect, resolve_target
from burr_dist.errors import (
    AppNotRunnable,
    BurrDistError,
    ConfigurationError,
    LeaseError,
    LeaseLost,
    LeaseNotHeld,
    NotDurable,
    SequenceConflict,
    StoreRewound,
)
from burr_dist.lease import AsyncLease
from burr_dist.persister import AsyncRedisPersister, RedisPersister
from burr_dist.queue import DEFAULT_QUEUE, AsyncFleetClient
from burr_dist.registry import AppContext, AppSpec, FleetEvent, Registry
from burr_dist.safety import EpochWatch, check_eviction_policy
from burr_dist.store import RedisStore, StoreConfig, scored
from burr_dist.transport import Cmd

if TYPE_CHECKING:
    from burr_dist.chaos.history import HistoryRecorder

log = logging.getLogger(__name__)


class _ActionFailed(Exception):
    """The Burr action raised (as opposed to the commit that follows it)."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


def _step_and_commit(app: Application, persister: RedisPersister, lease: AsyncLease, inputs: Any) -> None:
    try:
        action, _, state = app.step(inputs=inputs)  # type: ignore[misc]
    except Exception as e:
        raise _ActionFailed(e) from e
    assert app.sequence_id is not None
    persister.save(lease.partition_key, lease.app_id, app.sequence_id, action.name, state, "completed")


class Worker:
    """One worker process. ``await Worker(registry, url=...).run()``, or ``run_forever()`` with
    signal handling (first SIGTERM/SIGINT: stop claiming and hand apps back at the next step
    boundary; second: exit at once)."""

    def __init__(
        self,
        registry: Registry,
        *,
        url: str | None = None,
        prefix: str = "burr",
        queues: Sequence[str] = (DEFAULT_QUEUE,),
        concurrency: int = 8,
        threads: int | None = None,
        lease_ttl: float = 10.0,
        sweep_interval: float = 1.0,
        max_steps_per_claim: int = 100,
        max_seconds_per_claim: float = 30.0,
        poll_interval: float = 0.1,
        finished_ttl: float | None = None,
        worker_id: str | None = None,
        allow_evicting_redis: bool = False,
        history: HistoryRecorder | None = None,
        wait_replicas: int | None = None,
        wait_timeout_ms: int | None = None,
    ) -> None:
        if concurrency < 1:
            raise ConfigurationError("concurrency must be >= 1", concurrency=concurrency)
        if lease_ttl <= 0.3:
            raise ConfigurationError("lease_ttl must be > 0.3 s", lease_ttl=lease_ttl)
        self.registry = registry
        self.target = resolve_target(url)
        self.url = self.target
        self.config = StoreConfig.for_target(
            self.target, prefix=prefix, finished_ttl=finished_ttl,
            wait_replicas=wait_replicas, wait_timeout_ms=wait_timeout_ms,
        )  # fmt: skip
        self.queues = tuple(queues)
        self.concurrency = concurrency
        self.lease_ttl = lease_ttl
        self.sweep_interval = sweep_interval
        self.max_steps = max_steps_per_claim
        self.max_seconds = max_seconds_per_claim
        self.poll_interval = poll_interval
        self.id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._pool = ThreadPoolExecutor(
            max_workers=threads or concurrency, thread_name_prefix="burr-dist-step"
        )
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._held: dict[str, str] = {}  # member -> queue, while this worker runs the app
        self._stop: asyncio.Event | None = None  # created in run(), on its loop
        self.stopping = False
        self.completed_claims = 0
        self.allow_evicting_redis = allow_evicting_redis
        self.history = history
        self._leases: dict[str, AsyncLease] = {}  # member -> lease, while held
        self._epochs: dict[str, EpochWatch] = {}  # epoch key -> what this worker saw there
        self.fatal: StoreRewound | None = None

    @property
    def claim_ms(self) -> int:
        return int(self.lease_ttl * 1000)

    # -- lifecycle -----------------------------------------------------------------------
    def request_stop(self) -> None:
        if not self.stopping:
            log.info("worker %s stopping: no new claims; running apps are handed back", self.id)
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
        self.sync_store = RedisStore(connect(self.url), self.config)
        for q in self.queues:
            self.fleet.schema.queue_shard(q, 0)  # validates the name
        try:
            await check_eviction_policy(
                await self.fleet.transport.primaries(), allow=self.allow_evicting_redis
            )
            await self.fleet.commands([self.fleet.queue_name_cmd(self.queues)])
        except BaseException:
            await self.fleet.aclose()
            self.sync_store.client.close()
            raise
        background = asyncio.create_task(self._background())
        log.info(
            "worker %s started: queues=%s concurrency=%d", self.id, ",".join(self.queues), self.concurrency
        )
        try:
            await self._claim_loop()
            if self._tasks:
                await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        finally:
            background.cancel()
            try:
                workers, me = self.fleet.schema.workers(), self.fleet.schema.worker(self.id)
                await self.fleet.commands([Cmd(workers, ("ZREM", workers, self.id)), Cmd(me, ("DEL", me))])
            except Exception as e:  # the registry entry expires on its own
                log.warning("could not deregister worker %s: %s", self.id, e)
            await self.fleet.aclose()
            self.sync_store.client.close()
            self._pool.shutdown(wait=False)
            log.info("worker %s stopped after %d claims", self.id, self.completed_claims)
        if self.fatal is not None:
            raise self.fatal

    def _rewound(self, error: StoreRewound) -> None:
        """Redis lost data: stop committing anything, here and now, and exit with the error."""
        if self.fatal is None:
            self.fatal = error
            log.critical("worker %s stops: %s", self.id, error)
        for lease in list(self._leases.values()):
            lease.mark_lost(f"store rewound: {error}")
        self.request_stop()

    async def _claim_loop(self) -> None:
        assert self._stop is not None
        while not self.stopping:
            claimed = 0
            for queue in self.queues:
                free = self.concurrency - len(self._tasks)
                if free <= 0 or self.stopping:
                    break
                try:
                    members = await self._claim(queue, free)
                except BurrDistError as e:
                    log.warning("claim on %s failed: %s", queue, e)
                    members = []
                for member in members:
                    if member in self._tasks:
                        # We already run it (a stale duplicate entry reached ready): the claim
                        # just re-created the active entry our touches keep alive. A second task
                        # would replace the first in _tasks, which is then neither counted, nor
                        # touched, nor awaited (nor handed back) on shutdown.
                        continue
                    self._held[member] = queue
                    task = asyncio.create_task(self._handle(queue, member))
                    self._tasks[member] = task
                    task.add_done_callback(functools.partial(self._forget, member))
                    claimed += 1
            if claimed == 0 or len(self._tasks) >= self.concurrency:
                waits: set[asyncio.Future[Any]] = {asyncio.ensure_future(self._stop.wait())}
                waits |= set(self._tasks.values())
                await asyncio.wait(waits, timeout=self.poll_interval, return_when=asyncio.FIRST_COMPLETED)
                for w in waits:
                    if w not in self._tasks.values() and not w.done():
                        w.cancel()

    async def _claim(self, queue: str, free: int) -> list[str]:
        """Claim up to ``free`` apps of ``queue``, oldest due first across its shards: one read of
        every shard's earliest entry (one round trip per node), then claims shard by shard."""
        heads = await self.fleet.commands(self.fleet.peek_cmds(queue))
        order = sorted((scored(h)[0][1], shard) for shard, h in enumerate(heads) if h)
        out: list[str] = []
        for _, shard in order:
            if len(out) >= free:
                break
            got = await self.fleet.run(self.fleet.claim_call(queue, shard, free - len(out), self.claim_ms))
            out += [m.decode() if isinstance(m, bytes) else str(m) for m in got]
        return out

    def _forget(self, member: str, _task: asyncio.Task[None]) -> None:
        self._tasks.pop(member, None)
        self._held.pop(member, None)
        self._leases.pop(member, None)
        self.completed_claims += 1

    async def _background(self) -> None:
        """Heartbeat, extend claim deadlines of held apps, sweep expired claims: all on Redis time."""
        every = min(self.sweep_interval, self.lease_ttl / 3)
        last_sweep = 0.0
        while True:
            try:
                await self.fleet.run(self.fleet.heartbeat_call(self.id, int(max(3 * every, self.lease_ttl) * 1000), {
                    "host": socket.gethostname(), "pid": str(os.getpid()), "queues": ",".join(self.queues),
                    "concurrency": str(self.concurrency), "running": str(len(self._tasks)),
                    "state": "stopping" if self.stopping else "running",
                }))  # fmt: skip
                rewound = await self._check_epochs()
                if rewound is not None:
                    self._rewound(rewound)
                    return
                by_shard: dict[tuple[str, int], list[str]] = {}
                for member, queue in list(self._held.items()):
                    by_shard.setdefault((queue, self.fleet.schema.shard_of(member)), []).append(member)
                if by_shard:
                    await self.fleet.run_many(
                        [
                            self.fleet.touch_call(q, shard, self.claim_ms, m)
                            for (q, shard), m in by_shard.items()
                        ]
                    )
                if time.monotonic() - last_sweep >= self.sweep_interval:
                    last_sweep = time.monotonic()
                    calls = [
                        self.fleet.sweep_call(q, shard)
                        for q in self.queues
                        for shard in range(self.fleet.schema.queue_shards)
                    ]
                    moved = sum(len(m) for m in await self.fleet.run_many(calls))
                    if moved:
                        log.info("swept %d expired claims back to %s", moved, ",".join(self.queues))
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("worker background round failed: %s", e)
            await asyncio.sleep(every)

    async def _check_epochs(self) -> StoreRewound | None:
        """Bump the store epoch on every primary (one bucket each) and compare with what this
        worker saw there before. An epoch write WAIT did not confirm is not remembered."""
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
            watch = self._epochs.setdefault(key, EpochWatch(key))
            rewound = watch.observe(
                epoch_id.decode() if isinstance(epoch_id, bytes) else str(epoch_id), int(n)
            )
            if rewound is not None:
                return rewound
        return None

    # -- one claim -----------------------------------------------------------------------
    async def _ack(
        self, queue: str, member: str, status: str | None, run_at_ms: int | None, *, after_ms: int = 0
    ) -> None:
        """Queue side of a settle: drop the active entry; re-add to ready if it runs again
        (``after_ms`` from now on the server's clock, when ``run_at_ms`` is None). If Redis cannot
        take it (a failover, NotDurable), the active entry stays until its deadline and the sweep
        puts it back in ready, where the next claim reads the record and does what was asked."""
        try:
            if status == "queued" and run_at_ms is None:
                run_at_ms = await self.fleet.server_time_ms() + after_ms
            again = run_at_ms if status == "queued" else None
            await self.fleet.run(self.fleet.ack_call(queue, member, again))
        except Exception as e:
            log.warning("queue ack of %s failed (the sweep requeues it): %s", member, e)

    async def _emit(
        self, kind: str, spec_name: str, lease: AsyncLease, app: Application | None, error: str | None = None
    ) -> None:
        await self.registry.emit(FleetEvent(
            kind=kind, name=spec_name, app_id=lease.app_id, partition_key=lease.partition_key,
            sequence_id=app.sequence_id if app is not None else None,
            position=app.state.get("__PRIOR_STEP") if app is not None else None, worker=self.id, error=error,
        ))  # fmt: skip

    async def _handle(self, queue: str, member: str) -> None:
        pk, app_id = self.fleet.schema.parse_member(member)
        lease = AsyncLease(self.fleet, pk, app_id, self.lease_ttl, worker=self.id)
        op = self._invoke("acquire", lease)
        try:
            await lease.acquire()
        except AppNotRunnable as e:
            self._complete(op, "failed")
            # Terminal, waiting, cancelled or missing: the entry is stale. Not due yet: put it back.
            await self._ack(queue, member, "queued" if e.status == "scheduled" else None, e.run_at_ms)
            return
        except LeaseNotHeld as e:
            self._complete(op, "failed")
            # Someone still holds it (a slow worker): try again once its lease would have expired.
            await self._ack(queue, member, "queued", None, after_ms=max(e.pttl_ms, 100))
            return
        except Exception:
            self._complete(op, "unknown")
            log.exception("claim of %s failed", member)
            return  # the active entry is swept back after its deadline
        self._complete(op, "ok", lease)
        if self.fatal is not None:  # rewound while this acquire was in flight
            lease.mark_lost(f"store rewound: {self.fatal}")
        self._leases[member] = lease
        name = lease.job.get("name", "")
        try:
            outcome = await self._run_claim(lease, name)
        except StoreRewound as e:
            self._rewound(e)
            await lease.detach()
            await self._emit("lease_lost", name, lease, None, str(e))
            return
        except LeaseError as e:
            log.warning("lease on %s lost: %s", member, e)
            await lease.detach()
            await self._emit("lease_lost", name, lease, None, str(e))
            return  # the app belongs to whoever holds the lease now; its queue entry too
        except Exception as e:
            # Infrastructure trouble (Redis unreachable...): no settle possible; the lease expires
            # and the sweep requeues the app.
            log.exception("claim of %s aborted", member)
            await lease.detach()
            await self._emit("lease_lost", name, lease, None, repr(e))
            return
        status, run_at = outcome
        await self._ack(queue, member, status, run_at)

    def _invoke(self, op: str, lease: AsyncLease) -> str | None:
        if self.history is None:
            return None
        from burr_dist.chaos.history import app_key

        return self.history.invoke(op, app_key(lease.partition_key, lease.app_id))

    def _complete(self, op_id: str | None, outcome: Any, lease: AsyncLease | None = None) -> None:
        if self.history is None or op_id is None:
            return
        from burr_dist.chaos.history import state_digest

        head = lease.head if lease is not None else None
        if head is None:
            self.history.complete(op_id, outcome)
        else:
            self.history.complete(op_id, outcome, head["sequence_id"], state_digest(head["state"].get_all()))

    async def _settle(self, lease: AsyncLease, status: str, **kw: Any) -> tuple[str, int | None]:
        # While we hold the lease nobody else changes attempts, so our count is the truth; it
        # differs from the stored one once a step of this claim committed after failures.
        kw.setdefault("attempts", str(int(lease.job.get("attempts") or 0)))
        lease.check()  # settle.lua checks the token too; this stops a worker that saw the store rewind
        op = self._invoke("release", lease)
        try:
            reply = await self.fleet.run(
                self.fleet.settle_call(lease.partition_key, lease.app_id, lease.token, status, **kw)
            )
        except BaseException:
            self._complete(op, "unknown")
            raise
        self._complete(op, "ok" if int(reply[0]) else "failed")
        await lease.detach()
        if int(reply[0]) == 0:
            raise LeaseLost(f"settle of {lease.app_id!r} refused: lease no longer ours", app_id=lease.app_id)
        settled = reply[1].decode() if isinstance(reply[1], bytes) else str(reply[1])
        if status == "completed" and self.config.finished_ttl:
            await self.fleet.expire_app(lease.partition_key, lease.app_id)
        return settled, int(reply[2])

    async def _run_claim(self, lease: AsyncLease, name: str) -> tuple[str, int | None]:
        job = lease.job
        try:
            spec = self.registry.get(name)
            app, persister, is_async = await self._build(spec, lease, job)
        except Exception as e:
            log.error("app %s cannot be built: %s", lease.app_id, e)
            result = await self._settle(lease, "failed", attempts="incr", error=f"build failed: {e!r}")
            await self._emit("failed", name, lease, None, repr(e))
            return result
        await self._emit("claimed", name, lease, app)
        head = lease.head["sequence_id"] if lease.head is not None else None
        inputs_at = job.get("inputs_at", "-")
        pending = job.get("inputs") if inputs_at == ("" if head is None else str(head)) else None
        pending_obj = None
        if pending:
            import orjson

            pending_obj = orjson.loads(pending)
        consumed = False
        started = time.monotonic()
        steps = 0
        loop = asyncio.get_running_loop()
        while True:
            nxt = app.get_next_action()
            if nxt is None:
                result = await self._settle(lease, "completed", attempts="reset", consumed=consumed)
                await self._emit("completed", name, lease, app)
                return result
            if nxt.name in spec.halt_before and pending_obj is None:
                result = await self._settle(lease, "waiting", waiting_for=nxt.name, consumed=consumed)
                await self._emit("parked", name, lease, app)
                return result
            if self.stopping or steps >= self.max_steps or time.monotonic() - started >= self.max_seconds:
                result = await self._settle(lease, "queued", consumed=consumed)
                await self._emit("handed_back", name, lease, app)
                return result
            step_inputs = None
            if pending_obj is not None:
                required, optional = nxt.inputs
                step_inputs = {k: v for k, v in pending_obj.items() if k in (*required, *optional)}
            lease.check()
            try:
                if is_async:
                    try:
                        action, _, state = await app.astep(inputs=step_inputs)  # type: ignore[misc]
                    except Exception as e:
                        raise _ActionFailed(e) from e
                    await persister.save(
                        lease.partition_key, lease.app_id, app.sequence_id, action.name, state, "completed"
                    )
                else:
                    # Step and commit in one hand-off to the pool: each extra hop costs GIL contention.
                    await loop.run_in_executor(
                        self._pool, _step_and_commit, app, persister, lease, step_inputs
                    )
            except _ActionFailed as failed:
                return await self._action_failed(
                    spec, lease, app, persister, is_async, nxt.name, failed.error, consumed
                )
            if pending_obj is not None:
                pending_obj, consumed = None, True
            steps += 1
            # A committed step ends a run of failures: attempts count consecutive failures (the
            # settles of this claim send the count it holds, see _settle).
            lease.job["attempts"] = "0"
            await self._emit("step_committed", name, lease, app)
            last = persister.core.last_commit
            if last is not None and last.cancel_requested:
                result = await self._settle(lease, "cancelled", consumed=consumed)
                await self._emit("cancelled", name, lease, app)
                return result

    async def _action_failed(
        self, spec: AppSpec, lease: AsyncLease, app: Application, persister: Any, is_async: bool,
        position: str, error: Exception, consumed: bool,
    ) -> tuple[str, int | None]:  # fmt: skip
        if isinstance(error, (LeaseError, SequenceConflict)):
            raise error
        # Burr's contract: a failed step is saved with the state from before the action; the
        # rebuilt app re-runs the action at the next sequence id.
        await self._save(persister, is_async, lease, app.sequence_id, position, app.state, "failed")
        attempts = int(lease.job.get("attempts") or 0) + 1
        text = f"{type(error).__name__}: {error}"
        if attempts < spec.retry.max_attempts:
            result = await self._settle(
                lease,
                "queued",
                delay=spec.retry.delay(attempts),
                attempts=str(attempts),
                error=text,
                consumed=consumed,
            )
            await self._emit("retry_scheduled", spec.name, lease, app, text)
        else:
            result = await self._settle(
                lease, "failed", attempts=str(attempts), error=text, consumed=consumed
            )
            await self._emit("failed", spec.name, lease, app, text)
        return result

    async def _save(
        self,
        persister: Any,
        is_async: bool,
        lease: AsyncLease,
        seq: int | None,
        position: str,
        state: Any,
        status: str,
    ) -> None:
        assert seq is not None
        if is_async:
            await persister.save(lease.partition_key, lease.app_id, seq, position, state, status)
        else:
            await asyncio.get_running_loop().run_in_executor(
                self._pool, persister.save, lease.partition_key, lease.app_id, seq, position, state, status
            )

    async def _build(
        self, spec: AppSpec, lease: AsyncLease, job: dict[str, str]
    ) -> tuple[Application, Any, bool]:
        import orjson

        builder = spec.factory(AppContext(spec.name, lease.app_id, lease.partition_key))
        graph = builder.graph_builder
        if graph is None:
            raise ConfigurationError(
                f"factory of {spec.name!r} returned a builder without actions", name=spec.name
            )
        is_async = any(a.is_async() for a in graph.actions)
        persister: Any = (
            AsyncRedisPersister(self.fleet, lease) if is_async else RedisPersister(self.sync_store, lease)
        )
        persister.core.history = self.history
        state = {**spec.default_state, **(orjson.loads(job["state"]) if job.get("state") else {})}
        fork: dict[str, Any] = {}
        if lease.head is None and job.get("fork_app"):
            fork = {"fork_from_app_id": job["fork_app"], "fork_from_partition_key": job["fork_pk"],
                    "fork_from_sequence_id": int(job["fork_seq"])}  # fmt: skip
        builder = builder.with_identifiers(app_id=lease.app_id, partition_key=lease.partition_key).initialize_from(  # type: ignore[arg-type]
            persister, resume_at_next_action=True, default_state=state,
            default_entrypoint=job.get("entrypoint") or spec.entrypoint, **fork,
        )  # fmt: skip
        if is_async:
            return await builder.abuild(), persister, True
        app = await asyncio.get_running_loop().run_in_executor(self._pool, builder.build)
        return app, persister, False
