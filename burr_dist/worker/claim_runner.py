"""Running one claim: build the app from its lease, step it, commit every step fenced, then settle
the app (with its last commit when it can) and hand its queue ack to the worker's outbox.

Where steps run: async actions on the event loop; sync actions on the loop too once the inline
policy saw them fast in the thread pool, else in the pool (burr_dist/worker/inline.py). Commits always
go through the async persister on the loop: no sync client, no thread hop for I/O.

Crash points after the lease (see burr_dist/worker/claiming.py for those before it):

3. Mid-run: every committed step is durable; an uncommitted step is re-run by the next holder.
   A worker paused past its TTL cannot commit: commit.lua checks the lease token.
4. settle.lua (app bucket) records the outcome and deletes the lease only if the lease is still
   ours; only then ack.lua (queue shard) drops the active entry (and requeues the app if it runs
   again), and only if the entry is this worker's claim (by its deadline), never the claim of a
   worker that took the app over. A refused settle acks nothing: the entry expires and is swept,
   as for a crash. If the worker dies between the two, the stale active entry is swept back to
   ready and the next claim reads a terminal or waiting record (acquire.lua: not runnable) and
   drops it, or a due queued record and runs it, which is what settle asked for. (The two cannot
   share a script: they are different slots, and an ack must not follow a refused settle. The
   ack waits in the outbox for the worker's next claim round trip: burr_dist/worker/claiming.py.)
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
from burr.core import Application

from burr_dist.errors import ConfigurationError, LeaseError, LeaseLost, SequenceConflict, StoreRewound
from burr_dist.fleet.registry import AppContext, AppSpec, FleetEvent, Registry
from burr_dist.observability.burr_compat import resume_without_parent
from burr_dist.observability.tracking import StepTracker, StoredGraphs
from burr_dist.store.core import Committed, Settle
from burr_dist.store.lease import AsyncLease
from burr_dist.store.persister import AsyncLoadedState, AsyncRedisPersister, LoadedState
from burr_dist.transport.core import Cmd
from burr_dist.worker.claiming import Claim, Outbox
from burr_dist.worker.hooks import NOOP, Observer, Recorder
from burr_dist.worker.inline import InlinePolicy

if TYPE_CHECKING:
    from burr_dist.fleet.client import AsyncFleetClient

log = logging.getLogger(__name__)


@dataclass
class _Run:
    """One claim in progress: what the step loop knows and how the claim ended."""

    spec: AppSpec
    lease: AsyncLease
    persister: Any
    pending: dict[str, Any] | None  # inputs given by resume, until a step consumed them
    app: Application | None = None
    consumed: bool = False
    steps: int = 0
    started: float = field(default_factory=time.monotonic)
    end: str = ""  # completed | waiting | handed_back | cancelled | action_failed
    waiting_for: str = ""
    position: str = ""  # the action that failed
    error: Exception | None = None
    settled: tuple[str, int, int] | None = None  # the last commit also settled: (status, run_at, attempts)
    release_op: str | None = None  # chaos history: the settle sent with the last commit
    # The next action as _plan_settle found it after the last step (the commit leaves the state
    # alone): the loop's next _decide takes it instead of asking Burr again (an expr() condition
    # compiles its expression on every evaluation).
    next_action: Any = None
    next_known: bool = False


class ClaimRunner:
    """Runs claims of one worker. Shares the worker's thread pool (sync apps) and stop flag."""

    def __init__(
        self,
        fleet: AsyncFleetClient,
        registry: Registry,
        pool: ThreadPoolExecutor,
        *,
        worker_id: str,
        max_steps: int,
        max_seconds: float,
        stopping: Callable[[], bool],
        recorder: Recorder,
        on_rewound: Callable[[StoreRewound], None],
        observer: Observer = NOOP,
        track: bool = True,
        outbox: Outbox | None = None,
        inline: InlinePolicy | None = None,
    ) -> None:
        self.fleet = fleet
        self.outbox = outbox  # None: each ack is its own round trip
        self.track = track
        self.inline = inline or InlinePolicy()  # where sync actions run: burr_dist/worker/inline.py
        self.registry = registry
        self._pool = pool
        self.id = worker_id
        self.max_steps = max_steps
        self.max_seconds = max_seconds
        self._stopping = stopping
        self.recorder = recorder
        self.on_rewound = on_rewound
        self.observer = observer
        self.history = recorder.history
        self.config = fleet.config
        self.graphs = StoredGraphs()  # tracking graphs stored by this process

    @property
    def stopping(self) -> bool:
        return self._stopping()

    async def run(self, claim: Claim) -> None:
        """Run an acquired claim to its settle; never raises (a lost lease ends it quietly)."""
        lease = claim.lease
        assert lease is not None
        lease.entry = claim
        name = lease.job.get("name", "")
        try:
            await self._run_claim(lease, name)
        except StoreRewound as e:
            self.observer.claim_ended_by(name, e)
            self.on_rewound(e)
            await lease.detach()
            await self._emit("lease_lost", name, lease, None, str(e))
            return
        except LeaseError as e:
            self.observer.claim_ended_by(name, e)
            log.warning("lease on %s lost: %s", claim.member, e, extra=self._fields(lease, "lease_lost", e))
            await lease.detach()
            await self._emit("lease_lost", name, lease, None, str(e))
            return  # the app belongs to whoever holds the lease now; its queue entry too
        except Exception as e:
            # Infrastructure trouble (Redis unreachable...): no settle possible; the lease expires
            # and the sweep requeues the app.
            self.observer.claim_ended_by(name, e)
            log.exception("claim of %s aborted", claim.member, extra=self._fields(lease, "claim_aborted", e))
            await lease.detach()
            await self._emit("lease_lost", name, lease, None, repr(e))
            return

    def _fields(
        self, lease: AsyncLease, event: str, error: BaseException | str | None = None, **more: Any
    ) -> dict[str, Any]:
        """``extra`` of a log record (burr_dist.observability.logs): the event name and the app's ids
        (``sequence_id=`` when the caller knows the app's head)."""
        return {"event": event, "app_id": lease.app_id, "partition_key": lease.partition_key,
                "worker": self.id, "error": None if error is None else str(error), **more}  # fmt: skip

    def _event(
        self, kind: str, spec_name: str, lease: AsyncLease, app: Application | None, error: str | None = None
    ) -> FleetEvent:
        return FleetEvent(
            kind=kind, name=spec_name, app_id=lease.app_id, partition_key=lease.partition_key,
            sequence_id=app.sequence_id if app is not None else None,
            position=app.state.get("__PRIOR_STEP") if app is not None else None, worker=self.id, error=error,
        )  # fmt: skip

    async def _emit(
        self, kind: str, spec_name: str, lease: AsyncLease, app: Application | None, error: str | None = None
    ) -> None:
        if self.registry.wants(kind):
            await self.registry.emit(self._event(kind, spec_name, lease, app, error))

    async def _settle(self, lease: AsyncLease, status: str, **kw: Any) -> tuple[str, int | None]:
        """settle.lua, then (only once it succeeded) ack.lua (see the module doc)."""
        # While we hold the lease nobody else changes attempts, so our count is the truth; it
        # differs from the stored one once a step of this claim committed after failures.
        kw.setdefault("attempts", str(int(lease.job.get("attempts") or 0)))
        lease.check()  # settle.lua checks the token too; this stops a worker that saw the store rewind
        op = self.recorder.invoke("release", lease)
        try:
            reply = await self.fleet.run(
                self.fleet.settle_call(lease.partition_key, lease.app_id, lease.token, status, **kw)
            )
        except BaseException:
            self.recorder.complete(op, "unknown")
            raise
        self.recorder.complete(op, "ok" if int(reply[0]) else "failed")
        await lease.detach()
        if int(reply[0]) == 0:
            raise LeaseLost(f"settle of {lease.app_id!r} refused: lease no longer ours", app_id=lease.app_id)
        settled = reply[1].decode() if isinstance(reply[1], bytes) else str(reply[1])
        return await self._after_settle(lease, settled, int(reply[2]))

    async def _after_settle(self, lease: AsyncLease, settled: str, run_at: int) -> tuple[str, int | None]:
        """The queue side once the settle succeeded: ack (and requeue), expiry of a finished app."""
        claim: Claim = lease.entry
        again = run_at if settled == "queued" else None
        ack = self.fleet.ack_call(claim.queue, claim.member, claim.deadline, again, claim_ms=lease.ttl_ms)
        cmds = [ack.cmd()]
        if settled == "completed" and self.config.finished_ttl:
            cmds += self.fleet.expire_cmds(lease.partition_key, lease.app_id, None)
        if self.outbox is not None:
            # The worker's next claim round trip carries it, ahead of the claim: a claim of this
            # app (requeued by the ack) can only come after it, so the claim counts as acked.
            self.outbox.put(cmds)
        else:
            try:
                await self.fleet.commands(cmds, durable=True)
            except Exception as e:  # settled: the entry expires, the sweep requeues it, the claim drops it
                log.warning(
                    "queue ack of %s failed after its settle (the sweep requeues it): %s", claim.member, e
                )
        claim.acked = True
        return settled, run_at

    async def _run_claim(self, lease: AsyncLease, name: str) -> tuple[str, int | None]:
        job = lease.job
        try:
            spec = self.registry.get(name)
            app, persister = await self._build(spec, lease, job)
        except Exception as e:
            return await self._build_failed(lease, name, e)
        graph = self.graphs.missing(persister.core.tracker)
        if graph is not None:
            await self._store_graph(*graph)
        head = lease.head["sequence_id"] if lease.head is not None else None
        inputs_at = job.get("inputs_at", "-")
        pending = job.get("inputs") if inputs_at == ("" if head is None else str(head)) else None
        run = _Run(spec, lease, persister, orjson.loads(pending) if pending else None, app)
        await self._emit("claimed", name, lease, run.app)
        await self._steps(run)
        return await self._finish(run)

    async def _store_graph(self, digest: str, encoded: bytes) -> None:
        """Store a tracking graph (before the first commit that names it), once per process."""
        key = self.fleet.schema.graph(digest)
        try:
            await self.fleet.commands([Cmd(key, ("SET", key, encoded, "NX"))], durable=True)
        except Exception as e:  # tracking must not fail the app; a later build stores it
            log.warning("tracking graph %s not stored: %s", digest, e, extra={"event": "graph_not_stored"})
            return
        self.graphs.stored(digest)

    def _decide(self, run: _Run) -> tuple[str, Any]:
        """What to do next with a claimed app (no I/O): step, or end the claim and how."""
        assert run.app is not None
        if run.next_known:
            nxt, run.next_action, run.next_known = run.next_action, None, False
        else:
            nxt = run.app.get_next_action()
        if nxt is None:
            return "completed", None
        if nxt.name in run.spec.halt_before and run.pending is None:
            return "waiting", nxt.name
        if self.stopping or run.steps >= self.max_steps or time.monotonic() - run.started >= self.max_seconds:
            return "handed_back", None
        return "step", nxt

    def _plan_settle(self, run: _Run) -> Settle | None:
        """Called once a step ran, before its commit: account for the step and, when the claim
        ends after it, the settle to send with the commit (one round trip instead of two)."""
        if run.pending is not None:
            run.pending, run.consumed = None, True
        run.steps += 1
        run.end, info = self._decide(run)
        if run.end == "step":
            run.next_action, run.next_known = info, True
            return None
        run.waiting_for = info if run.end == "waiting" else ""
        settle = {
            "completed": Settle("completed", attempts="reset", consumed=run.consumed),
            "waiting": Settle("waiting", attempts="0", waiting_for=run.waiting_for, consumed=run.consumed),
            "handed_back": Settle("queued", attempts="0", consumed=run.consumed),
        }[run.end]
        run.release_op = self.recorder.invoke("release", run.lease)
        return settle

    def _step_done(self, run: _Run, committed: Committed | None) -> bool:
        """Book-keeping after a committed step; True when the claim ends here."""
        # A committed step ends a run of failures: attempts count consecutive failures (the
        # settles of this claim send the count it holds, see _settle).
        run.lease.job["attempts"] = "0"
        if run.release_op is not None:
            self.recorder.complete(run.release_op, "ok")
            run.release_op = None
        if committed is not None and committed.settled is not None:
            run.settled = committed.settled
            if committed.settled[0] == "cancelled":
                run.end = "cancelled"
            return True
        if committed is not None and committed.cancel_requested:
            run.end = "cancelled"
            return True
        run.end = ""
        return False

    def _commit_failed(self, run: _Run) -> None:
        if run.release_op is not None:
            self.recorder.complete(run.release_op, "unknown")
            run.release_op = None

    @staticmethod
    def _inputs(run: _Run, nxt: Any) -> dict[str, Any] | None:
        if run.pending is None:
            return None
        required, optional = nxt.inputs
        return {k: v for k, v in run.pending.items() if k in (*required, *optional)}

    async def _steps(self, run: _Run) -> None:
        """Step and commit until the claim ends. Async actions run on the loop; a sync action runs
        on the loop too when the inline policy knows it as fast, otherwise in the thread pool.
        Every commit goes through the async persister (no sync client, no thread for I/O)."""
        assert run.app is not None
        while True:
            run.end, info = self._decide(run)
            if run.end != "step":
                run.waiting_for = info if run.end == "waiting" else ""
                return
            run.lease.check()
            try:
                action, _, state = await self._step(run, info)
            except Exception as e:
                if isinstance(e, (LeaseError, SequenceConflict)):
                    raise
                run.end, run.position, run.error = "action_failed", info.name, e
                return
            try:
                settle = self._plan_settle(run)
                started = time.perf_counter()
                committed = await run.persister.save_and_settle(
                    run.lease.partition_key, run.lease.app_id, run.app.sequence_id, action.name, state,
                    "completed", settle,
                )  # fmt: skip
            except BaseException:
                self._commit_failed(run)
                raise
            self.observer.committed(run.spec.name, "completed", time.perf_counter() - started)
            ends = self._step_done(run, committed)
            await self._emit("step_committed", run.spec.name, run.lease, run.app)
            if ends:
                return

    async def _step(self, run: _Run, nxt: Any) -> Any:
        """One Burr step of ``run``'s app: (action, result, state)."""
        app = run.app
        assert app is not None
        inputs = self._inputs(run, nxt)
        if nxt.is_async():
            return await app.astep(inputs=inputs)
        name, action = run.spec.name, nxt.name
        if action not in run.spec.blocking and self.inline.inline(name, action):
            return self.inline.run(name, action, lambda: app.step(inputs=inputs))
        out, seconds = await asyncio.get_running_loop().run_in_executor(self._pool, _timed_step, app, inputs)
        self.inline.observe(name, action, seconds, inline=False)
        return out

    async def _finish(self, run: _Run) -> tuple[str, int | None]:
        """Settle (with the queue ack) as the claim's end asks, and tell the hooks."""
        lease, name, app, consumed = run.lease, run.spec.name, run.app, run.consumed
        assert app is not None
        if run.settled is not None:  # the last commit settled too
            status, run_at, _ = run.settled
            await lease.detach()
            result = await self._after_settle(lease, status, run_at)
            await self._emit(
                {"waiting": "parked", "queued": "handed_back"}.get(status, status), name, lease, app
            )
            self._log_settled(lease, app, {"queued": "handed_back"}.get(status, status))
            return result
        if run.end == "action_failed":
            assert run.error is not None
            return await self._action_failed(
                run.spec, lease, app, run.persister, run.position, run.error, consumed
            )
        if run.end == "completed":
            result = await self._settle(lease, "completed", attempts="reset", consumed=consumed)
        elif run.end == "waiting":
            result = await self._settle(lease, "waiting", waiting_for=run.waiting_for, consumed=consumed)
        elif run.end == "cancelled":
            result = await self._settle(lease, "cancelled", consumed=consumed)
        else:
            result = await self._settle(lease, "queued", consumed=consumed)
        kind = {"waiting": "parked"}.get(run.end, run.end)
        await self._emit(kind, name, lease, app)
        self._log_settled(lease, app, run.end)
        return result

    def _log_settled(self, lease: AsyncLease, app: Application, outcome: str) -> None:
        if log.isEnabledFor(logging.DEBUG):  # one record per claim: debug, and built only when wanted
            log.debug("app %s settled: %s", lease.app_id, outcome,
                      extra=self._fields(lease, "settled", outcome=outcome, sequence_id=app.sequence_id))  # fmt: skip

    async def _build_failed(self, lease: AsyncLease, name: str, e: Exception) -> tuple[str, int | None]:
        log.error(
            "app %s cannot be built: %s",
            lease.app_id,
            e,
            extra=self._fields(
                lease, "build_failed", e, sequence_id=lease.head and lease.head["sequence_id"]
            ),
        )
        result = await self._settle(lease, "failed", attempts="incr", error=f"build failed: {e!r}")
        await self._emit("failed", name, lease, None, repr(e))
        return result

    async def _action_failed(
        self, spec: AppSpec, lease: AsyncLease, app: Application, persister: AsyncRedisPersister,
        position: str, error: Exception, consumed: bool,
    ) -> tuple[str, int | None]:  # fmt: skip
        if isinstance(error, (LeaseError, SequenceConflict)):
            raise error
        # Burr's contract: a failed step is saved with the state from before the action; the
        # rebuilt app re-runs the action at the next sequence id.
        self.observer.action_failed(spec.name)
        started = time.perf_counter()
        assert app.sequence_id is not None
        await persister.save(
            lease.partition_key, lease.app_id, app.sequence_id, position, app.state, "failed"
        )
        self.observer.committed(spec.name, "failed", time.perf_counter() - started)
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
            log.info("app %s: %s failed (attempt %d of %d), retry scheduled", lease.app_id, position, attempts,
                     spec.retry.max_attempts,
                     extra=self._fields(lease, "retry_scheduled", text, sequence_id=app.sequence_id))  # fmt: skip
        else:
            result = await self._settle(
                lease, "failed", attempts=str(attempts), error=text, consumed=consumed
            )
            await self._emit("failed", spec.name, lease, app, text)
            log.warning("app %s failed: %s failed %d times", lease.app_id, position, attempts,
                        extra=self._fields(lease, "app_failed", text, sequence_id=app.sequence_id))  # fmt: skip
        return result

    async def _build(
        self, spec: AppSpec, lease: AsyncLease, job: dict[str, str]
    ) -> tuple[Application, AsyncRedisPersister]:
        """The app, built from its lease, and the persister its steps commit through. The lease's
        acquire loaded the head, so a build costs no round trip (a fork reads its source).
        An app with an async action is built with ``abuild()``, an all-sync one with ``build()``
        (Burr refuses a sync step of an ``abuild()`` app, and a sync action may have to run on a
        pool thread), each from a loader holding the state read here."""
        # What initialize_from will load (Burr's rule: the fork's source, else this app), read
        # before the factory runs: nothing awaits between its builder's set-up and its build.
        key: tuple[str | None, str, int | None] = (lease.partition_key, lease.app_id, None)
        if lease.head is None and job.get("fork_app"):
            key = (job["fork_pk"], job["fork_app"], int(job["fork_seq"]))
        persister = AsyncRedisPersister(self.fleet, lease)
        persister.core.history = self.history
        loaded = await persister.load(*key)
        builder, is_async = self._prepare(spec, lease, job, persister)
        if is_async:
            builder.state_initializer = AsyncLoadedState(key, loaded)
            return await builder.abuild(), persister
        builder.state_initializer = LoadedState(key, loaded)
        return builder.build(), persister

    def _prepare(
        self, spec: AppSpec, lease: AsyncLease, job: dict[str, str], persister: AsyncRedisPersister
    ) -> tuple[Any, bool]:
        """The builder (identifiers and initialize_from added; ``persister`` gets its tracker)
        and whether an action is async. No I/O."""
        builder = spec.factory(AppContext(spec.name, lease.app_id, lease.partition_key))
        resume_without_parent(builder)  # a .with_tracker() that fails a resume otherwise
        graph = builder.graph_builder
        if graph is None:
            raise ConfigurationError(
                f"factory of {spec.name!r} returned a builder without actions", name=spec.name
            )
        is_async = any(a.is_async() for a in graph.actions)
        unknown = spec.blocking.difference(a.name for a in graph.actions)
        if unknown:
            raise ConfigurationError(
                f"app {spec.name!r}: blocking= names {sorted(unknown)}, not actions of its graph "
                f"({sorted(a.name for a in graph.actions)})", name=spec.name,
            )  # fmt: skip
        if self.track:  # issue 11: one tracker per build, its records committed with each step
            tracker = StepTracker(worker=self.id, project=spec.name)
            # A factory that hands out the same builder again still has the last build's tracker
            # (with_hooks appends; Burr dedups hooks by identity only): one tracker per app.
            adapters = [h for h in builder.lifecycle_adapters if not isinstance(h, StepTracker)]
            builder.lifecycle_adapters = [*adapters, tracker]
            persister.core.tracker = tracker
        state = {**spec.default_state, **(orjson.loads(job["state"]) if job.get("state") else {})}
        fork: dict[str, Any] = {}
        if lease.head is None and job.get("fork_app"):
            fork = {"fork_from_app_id": job["fork_app"], "fork_from_partition_key": job["fork_pk"],
                    "fork_from_sequence_id": int(job["fork_seq"])}  # fmt: skip
        builder = builder.with_identifiers(app_id=lease.app_id, partition_key=lease.partition_key).initialize_from(  # type: ignore[arg-type]
            persister, resume_at_next_action=True, default_state=state,
            default_entrypoint=job.get("entrypoint") or spec.entrypoint, **fork,
        )  # fmt: skip
        return builder, is_async


def _timed_step(app: Application, inputs: dict[str, Any] | None) -> tuple[Any, float]:
    """A sync step on a pool thread, and how long it took there (the hop is not counted)."""
    started = time.perf_counter()
    out = app.step(inputs=inputs)
    return out, time.perf_counter() - started
