"""What a claim does next, without I/O: the run in progress (:class:`Run`), the decision after
each step (:func:`decide`: step again, park, complete, hand back), the settle that goes with the
last commit (:func:`settle_for`), and the input names an app declares (what a park records for
control.lua to check a resume against). The claim runner (claim_runner.py) does the I/O."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from burr.core import Application

from burr_dist.fleet.registry import AppSpec
from burr_dist.store.core import Settle
from burr_dist.store.lease import AsyncLease
from burr_dist.worker.building import Built


@dataclass
class Run:
    """One claim in progress: what the step loop knows and how the claim ended."""

    spec: AppSpec
    lease: AsyncLease
    persister: Any
    # Inputs of the current run (given by resume or enqueue): passed to every step, as Burr's
    # run(inputs=...) does, until the app parks or completes (then the settle clears them).
    inputs: dict[str, Any] | None
    app: Application[Any]
    is_async: bool  # built with abuild(): every step through astep
    # The first step of this claim runs even when its action is in halt_before: it starts a run
    # (the step a resume asked for) or re-runs a failed step. Burr's run() also always runs one
    # step before it tests a halt condition.
    pass_halt: bool = False
    steps: int = 0
    started: float = field(default_factory=time.monotonic)
    end: str = ""  # completed | waiting | handed_back | cancelled | action_failed | poisoned
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
    seq_before: int | None = None  # the app's sequence id before the step in progress

    @property
    def consumed(self) -> bool:
        """Whether the settle clears the run's inputs: only when the run ended."""
        return self.inputs is not None and self.end in ("completed", "waiting", "cancelled")


@dataclass(frozen=True)
class Limits:
    """When a claim hands its app back: the worker stopping, or the claim's step/second budget."""

    stopping: Callable[[], bool]
    max_steps: int
    max_seconds: float


def declared_inputs(app: Application[Any]) -> list[str]:
    """The input names the app's actions declare (Burr's own ``__`` inputs left out)."""
    return sorted({
        n for a in app.graph.actions for names in a.optional_and_required_inputs for n in names
        if not n.startswith("__")
    })  # fmt: skip


def accepts_json(app: Application[Any]) -> str:
    """What a park records for control.lua to check a resume's input names against."""
    return orjson.dumps(declared_inputs(app)).decode()


def new_run(spec: AppSpec, lease: AsyncLease, built: Built) -> Run:
    """The claim's run: its inputs (set by resume or enqueue until the run that used them
    parks or completes: inputs_at "-") and whether its first step passes halt_before."""
    job, head = lease.job, lease.head
    at = job.get("inputs_at", "-")
    inputs = orjson.loads(job["inputs"]) if at != "-" and job.get("inputs") else None
    head_seq = head["sequence_id"] if head is not None else None
    resumed = inputs is not None and at == ("" if head_seq is None else str(head_seq))
    rerun = head is not None and head["status"] == "failed"
    return Run(spec, lease, built.persister, inputs, built.app, built.is_async, pass_halt=resumed or rerun)


def undeclared(run: Run) -> list[str]:
    """Input names no action of the app declares (Burr would drop them without a word). A
    resume is refused at once by control.lua against what the park recorded (``accepts``);
    this catches what that check cannot: inputs given at enqueue, or an app parked by an older
    worker that recorded none."""
    if not run.inputs:
        return []
    return sorted(set(run.inputs) - set(declared_inputs(run.app)))


def decide(run: Run, limits: Limits, prior: Any = None) -> tuple[str, Any]:
    """What to do next with a claimed app (no I/O): step, or end the claim and how.
    ``prior``: the action that just ran (its halt_after), None before the claim's first step."""
    if run.next_known:
        nxt, run.next_action, run.next_known = run.next_action, None, False
    else:
        nxt = run.app.get_next_action()
    if nxt is None:
        return "completed", None
    # Burr's order: halt_before first, then halt_after; both park before the next action.
    if nxt.name in run.spec.halt_before and not (run.pass_halt and run.steps == 0):
        return "waiting", nxt.name
    if prior is not None and prior.name in run.spec.halt_after:
        return "waiting", nxt.name
    if (
        limits.stopping()
        or run.steps >= limits.max_steps
        or time.monotonic() - run.started >= limits.max_seconds
    ):
        return "handed_back", None
    return "step", nxt


def settle_for(run: Run) -> Settle:
    """The settle of a claim that ends after the step just run (run.end is not "step")."""
    if run.end == "completed":
        return Settle("completed", attempts="reset", consumed=run.consumed)
    if run.end == "waiting":
        return Settle("waiting", attempts="0", waiting_for=run.waiting_for, consumed=run.consumed,
                      accepts=accepts_json(run.app))  # fmt: skip
    return Settle("queued", attempts="0", consumed=run.consumed)  # handed_back
