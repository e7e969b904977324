"""Running one claim: build the app from its lease, step it, commit every step fenced, then settle
the app (with its last commit when it can) and hand its queue ack to the worker's outbox.

How the app is built from the factory's builder: burr_dist/worker/building.py. Where steps run:
an app built with ``abuild()`` steps through ``astep`` on the event loop (sync actions too, as
Burr runs them); an all-sync app's actions run on the loop once the inline policy saw them fast
in the thread pool, else in the pool (burr_dist/worker/inline.py). Commits always go through the
async persister on the loop: no sync client, no thread hop for I/O.

Runs and inputs, as Burr's ``run(halt_before=, halt_after=, inputs=)``: a resume starts a run; its
inputs reach every step of it (each action takes those it declares) until the app parks again
(halt_before / halt_after) or completes, across hand-offs between workers; its first step runs
even when its action is in halt_before. Inputs that no action declares park the app again with
the reason in ``last_error``. A failure of the app's own (an action raising, a state the store
refuses, a build that raises: burr_dist/worker/failures.py) is recorded and retried under the
app's RetryPolicy, then ``failed``; infrastructure trouble ends the claim without a settle.

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
from typing import TYPE_CHECKING, Any

from burr.core import Application

from burr_dist.errors import LeaseError, LeaseLost, SequenceConflict, SerializationError, StoreRewound
from burr_dist.fleet.registry import AppSpec, FleetEvent, Registry, RetryPolicy
from burr_dist.observability.tracking import StoredGraphs
from burr_dist.store.core import Committed, Settle
from burr_dist.store.lease import AsyncLease
from burr_dist.store.persister import AsyncRedisPersister
from burr_dist.transport.core import Cmd
from burr_dist.worker.building import AppFactory
from burr_dist.worker.claiming import Claim, Outbox
from burr_dist.worker.failures import describe, is_poison
from burr_dist.worker.hooks import NOOP, Observer, Recorder
from burr_dist.worker.inline import InlinePolicy
from burr_dist.worker.run_state import (
    Limits,
    Run,
    accepts_json,
    decide,
    declared_inputs,
    new_run,
    settle_for,
    undeclared,
)

if TYPE_CHECKING:
    from burr_dist.fleet.client import AsyncFleetClient

log = logging.getLogger(__name__)


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
        self.limits = Limits(stopping, max_steps, max_seconds)
        self.recorder = recorder
        self.on_rewound = on_rewound
        self.observer = observer
        self.history = recorder.history
        self.config = fleet.config
        self.graphs = StoredGraphs()  # tracking graphs stored by this process
        self.factory = AppFactory(worker_id, track)  # builders as users write them: building.py

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
            if claim.unreadable is not None:  # its snapshot: no build can read it
                await self._poisoned(lease, name, claim.unreadable, "load", None)
            else:
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
            # and the sweep requeues the app. (The app's own failures settle: failures.py.)
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
        spec: AppSpec | None = None
        try:
            spec = self.registry.get(name)
            persister = AsyncRedisPersister(self.fleet, lease)
            persister.core.history = self.history
            built = await self.factory.build(spec, lease, persister)
        except Exception as e:
            if not is_poison(e, user_code=True):
                raise
            return await self._poisoned(lease, name, e, "build", spec)
        graph = self.graphs.missing(persister.core.tracker)
        if graph is not None:
            await self._store_graph(*graph)
        run = new_run(spec, lease, built)
        await self._emit("claimed", name, lease, run.app)
        refused = undeclared(run)
        if refused:
            return await self._inputs_refused(run, refused)
        await self._steps(run)
        return await self._finish(run)

    async def _inputs_refused(self, run: Run, names: list[str]) -> tuple[str, int | None]:
        """Park the app again, its state untouched, the inputs dropped and the reason recorded:
        the client cannot check names against a graph it does not have."""
        nxt = run.app.get_next_action()
        text = (f"inputs {names} are declared by no action of app {run.spec.name!r} (declared: "
                f"{declared_inputs(run.app)}); nothing ran: resume it again with the right names")  # fmt: skip
        log.warning(
            "app %s: %s", run.lease.app_id, text, extra=self._fields(run.lease, "inputs_refused", text)
        )
        result = await self._settle(
            run.lease,
            "waiting",
            waiting_for=nxt.name if nxt is not None else "",
            error=text,
            consumed=True,
            accepts=accepts_json(run.app),
        )
        await self._emit("parked", run.spec.name, run.lease, run.app, text)
        return result

    async def _store_graph(self, digest: str, encoded: bytes) -> None:
        """Store a tracking graph (before the first commit that names it), once per process."""
        key = self.fleet.schema.graph(digest)
        try:
            await self.fleet.commands([Cmd(key, ("SET", key, encoded, "NX"))], durable=True)
        except Exception as e:  # tracking must not fail the app; a later build stores it
            log.warning("tracking graph %s not stored: %s", digest, e, extra={"event": "graph_not_stored"})
            return
        self.graphs.stored(digest)

    def _plan_settle(self, run: Run, action: Any) -> Settle | None:
        """Called once a step ran, before its commit: account for the step and, when the claim
        ends after it, the settle to send with the commit (one round trip instead of two)."""
        run.steps += 1
        run.end, info = decide(run, self.limits, action)
        if run.end == "step":
            run.next_action, run.next_known = info, True
            return None
        run.waiting_for = info if run.end == "waiting" else ""
        settle = settle_for(run)
        run.release_op = self.recorder.invoke("release", run.lease)
        return settle

    def _step_done(self, run: Run, committed: Committed | None) -> bool:
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

    def _commit_failed(self, run: Run, error: BaseException) -> None:
        if run.release_op is not None:
            # A refused encode sent nothing: the settle it carried certainly did not happen.
            self.recorder.complete(
                run.release_op, "failed" if isinstance(error, SerializationError) else "unknown"
            )
            run.release_op = None

    async def _steps(self, run: Run) -> None:
        """Step and commit until the claim ends. Every commit goes through the async persister
        (no sync client, no thread for I/O)."""
        while True:
            run.end, info = decide(run, self.limits)
            if run.end != "step":
                run.waiting_for = info if run.end == "waiting" else ""
                return
            run.lease.check()
            run.seq_before = run.app.sequence_id
            try:
                action, _, state = await self._step(run, info)
            except Exception as e:
                if isinstance(e, (LeaseError, SequenceConflict)):
                    raise
                run.end, run.position, run.error = "action_failed", info.name, e
                return
            if not await self._commit(run, action, state):
                return
            await self._emit("step_committed", run.spec.name, run.lease, run.app)
            if self._step_done(run, run.persister.core.last_commit):
                return

    async def _commit(self, run: Run, action: Any, state: Any) -> bool:
        """Commit the step just run (with the claim's settle when it is the last); False when
        the commit was refused for the app's own reason (a poison pill: run.end says so)."""
        try:
            settle = self._plan_settle(run, action)
            started = time.perf_counter()
            await run.persister.save_and_settle(
                run.lease.partition_key, run.lease.app_id, run.app.sequence_id, action.name, state,
                "completed", settle,
            )  # fmt: skip
        except BaseException as e:
            self._commit_failed(run, e)
            if not isinstance(e, Exception) or not is_poison(e):
                raise
            run.end, run.position, run.error = "poisoned", action.name, e
            return False
        self.observer.committed(run.spec.name, "completed", time.perf_counter() - started)
        return True

    async def _step(self, run: Run, nxt: Any) -> Any:
        """One Burr step of ``run``'s app: (action, result, state). An abuild() app steps with
        astep, as Burr's arun does (Burr refuses step() on it): async actions on the loop, and
        sync ones too (Burr's choice; inline.py warns when one is slow). A sync app's sync
        action runs on the loop when the inline policy knows it as fast, else in the pool."""
        app, inputs = run.app, run.inputs
        name, action = run.spec.name, nxt.name
        if run.is_async:
            if nxt.is_async():
                return await app.astep(inputs=inputs)
            started = time.perf_counter()
            try:
                return await app.astep(inputs=inputs)
            finally:
                self.inline.on_loop(name, action, time.perf_counter() - started)
        if action not in run.spec.blocking and self.inline.inline(name, action):
            return self.inline.run(name, action, lambda: app.step(inputs=inputs))
        out, seconds = await asyncio.get_running_loop().run_in_executor(self._pool, _timed_step, app, inputs)
        self.inline.observe(name, action, seconds, inline=False)
        return out

    async def _finish(self, run: Run) -> tuple[str, int | None]:
        """Settle (with the queue ack) as the claim's end asks, and tell the hooks."""
        lease, name, app = run.lease, run.spec.name, run.app
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
            return await self._action_failed(run)
        if run.end == "poisoned":
            assert run.error is not None
            return await self._poisoned(lease, name, run.error, f"commit of {run.position!r}", run.spec, app)
        status = {"handed_back": "queued"}.get(run.end, run.end)
        kw: dict[str, Any] = {"consumed": run.consumed}
        if run.end == "completed":
            kw["attempts"] = "reset"
        elif run.end == "waiting":
            kw["waiting_for"], kw["accepts"] = run.waiting_for, accepts_json(run.app)
        result = await self._settle(lease, status, **kw)
        await self._emit({"waiting": "parked"}.get(run.end, run.end), name, lease, app)
        self._log_settled(lease, app, run.end)
        return result

    def _log_settled(self, lease: AsyncLease, app: Application[Any], outcome: str) -> None:
        if log.isEnabledFor(logging.DEBUG):  # one record per claim: debug, and built only when wanted
            log.debug("app %s settled: %s", lease.app_id, outcome,
                      extra=self._fields(lease, "settled", outcome=outcome, sequence_id=app.sequence_id))  # fmt: skip

    async def _action_failed(self, run: Run) -> tuple[str, int | None]:
        """An action raised. Burr's contract: the failed step is saved with the state from before
        the action; the rebuilt app re-runs the action at the next sequence id."""
        assert run.error is not None
        spec, lease, app = run.spec, run.lease, run.app
        self.observer.action_failed(spec.name)
        # Only a step Burr counted has a sequence to save at (a step refused before it ran, e.g.
        # a wrong use of the async API, leaves the id alone: saving it would conflict).
        expected = 0 if run.seq_before is None else run.seq_before + 1
        if app.sequence_id == expected:
            started = time.perf_counter()
            try:
                await run.persister.save(
                    lease.partition_key, lease.app_id, expected, run.position, app.state, "failed"
                )
            except Exception as e:
                if not is_poison(e):
                    raise
                log.warning("app %s: failed step %s not saved: %s", lease.app_id, expected, e,
                            extra=self._fields(lease, "failed_step_not_saved", e))  # fmt: skip
            else:
                self.observer.committed(spec.name, "failed", time.perf_counter() - started)
        return await self._retry_or_fail(lease, spec.name, spec.retry, describe(run.error), app, run.consumed)

    async def _poisoned(
        self, lease: AsyncLease, name: str, error: Exception, where: str, spec: AppSpec | None,
        app: Application[Any] | None = None,
    ) -> tuple[str, int | None]:  # fmt: skip
        """A failure of the app's own that is not an action raising (failures.py): recorded and
        retried like one; nothing more is saved (what is stored is the last good step)."""
        text = describe(error, where)
        log.error("app %s: %s", lease.app_id, text, extra=self._fields(lease, "app_error", text))
        policy = spec.retry if spec is not None else RetryPolicy()
        return await self._retry_or_fail(lease, name, policy, text, app, False)

    async def _retry_or_fail(
        self, lease: AsyncLease, name: str, policy: RetryPolicy, text: str, app: Application[Any] | None,
        consumed: bool,
    ) -> tuple[str, int | None]:  # fmt: skip
        """Settle a failed attempt: queued again after the policy's backoff, or failed for good."""
        attempts = int(lease.job.get("attempts") or 0) + 1
        seq = app.sequence_id if app is not None else None
        if attempts < policy.max_attempts:
            result = await self._settle(lease, "queued", delay=policy.delay(attempts), attempts=str(attempts),
                                        error=text, consumed=consumed)  # fmt: skip
            await self._emit("retry_scheduled", name, lease, app, text)
            log.info("app %s: attempt %d of %d failed, retry scheduled", lease.app_id, attempts,
                     policy.max_attempts, extra=self._fields(lease, "retry_scheduled", text, sequence_id=seq))  # fmt: skip
        else:
            result = await self._settle(
                lease, "failed", attempts=str(attempts), error=text, consumed=consumed
            )
            await self._emit("failed", name, lease, app, text)
            log.warning("app %s failed: %d attempts failed", lease.app_id, attempts,
                        extra=self._fields(lease, "app_failed", text, sequence_id=seq))  # fmt: skip
        return result


def _timed_step(app: Application[Any], inputs: dict[str, Any] | None) -> tuple[Any, float]:
    """A sync step on a pool thread, and how long it took there (the hop is not counted)."""
    started = time.perf_counter()
    out = app.step(inputs=inputs)
    return out, time.perf_counter() - started
