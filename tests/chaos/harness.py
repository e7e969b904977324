"""One chaos run: enqueue apps, run real worker processes that record their histories, inject
faults, wait until every app completed, observe what Redis holds, and check the history.

A scenario is a loop that calls :meth:`ChaosRun.done` and injects faults; :meth:`ChaosRun.finish`
returns a :class:`Report` whose row goes into the table ``make chaos`` prints (tests/chaos/conftest).
Sizes come from ``CHAOS_SIZE``: ``small`` (default, run by ``make test``) or ``large``.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import redis
from burr.core.state import State

from burr_dist import FleetClient
from burr_dist.fleet.core import EnqueueRequest
from burr_dist.store import codec
from burr_dist.testing.embedded import EmbeddedServer
from burr_dist.testing.history import (
    Anomaly,
    FinalState,
    HistoryRecorder,
    Recovery,
    app_key,
    check,
    load_history,
    recoveries,
    state_digest,
    summary,
)
from tests.support.fleet import WorkerProc, start_worker

LARGE = os.environ.get("CHAOS_SIZE", "small") == "large"
LEASE_TTL = 1.5
SWEEP = 0.3
RECOVERY_BOUND = LEASE_TTL + SWEEP + 1.0  # the promise after a SIGKILL
TIMEOUT = 240.0 if LARGE else 90.0  # for every app to complete once the faults stop


def size(small: tuple[int, int], large: tuple[int, int] = (200, 25)) -> tuple[int, int]:
    """(apps, steps per app) for this run's CHAOS_SIZE."""
    return large if LARGE else small


def spread(small: float, large: float) -> float:
    """A stagger for this run's size: large runs inject more faults, so their apps must keep
    arriving for longer."""
    return large if LARGE else small


@dataclass
class Row:
    scenario: str
    apps: int
    steps: int  # ok commits in the history
    faults: int
    anomalies: int
    recovery_max: float | None  # seconds; None when no fault aimed at a worker holding apps
    seconds: float
    note: str = ""
    lost: int | None = None  # acknowledged (ok) commits the store no longer holds; None: not counted


RESULTS: list[Row] = []


class Endpoint(Protocol):
    """What a run needs of the store under test: its URL (one server, a Cluster, a Sentinel)."""

    @property
    def url(self) -> str: ...


@dataclass
class Report:
    row: Row
    anomalies: list[Anomaly]
    recoveries: list[Recovery]
    summary: dict[str, Any]
    unfinished: dict[str, str] = field(default_factory=dict)
    hung: list[str] = field(default_factory=list)
    finals: dict[str, FinalState] = field(default_factory=dict)  # what the store held at the end

    def assert_ok(self, *, min_faults: int, recovery_bound: float | None = RECOVERY_BOUND) -> None:
        shown = "\n".join(f"  {a.kind} {a.app}: {a.detail}" for a in self.anomalies[:20])
        assert not self.anomalies, f"{len(self.anomalies)} anomalies:\n{shown}\nsummary: {self.summary}"
        assert not self.unfinished, f"apps not completed: {self.unfinished}"
        assert not self.hung, f"workers ignored SIGTERM for 10 s (stacks in their logs): {self.hung}"
        assert self.row.faults >= min_faults, f"only {self.row.faults} faults injected: proves little"
        assert self.row.steps >= self.row.apps, f"only {self.row.steps} commits recorded"
        if recovery_bound is not None:
            slow = [r for r in self.recoveries if r.seconds is None or r.seconds > recovery_bound]
            assert not slow, f"recovery over {recovery_bound:.1f} s: {slow[:10]}"


class ChaosRun:
    """Apps ``app-<i>`` under partitions ``p<i % 7>``, each ``steps`` ticks then ``finish``;
    ``stagger`` spreads their start (and so their finish) over the run."""

    def __init__(
        self,
        scenario: str,
        server: EmbeddedServer | Endpoint,
        tmp: Path,
        *,
        apps: int,
        steps: int,
        delay: float,
        concurrency: int | None = None,
        max_steps_per_claim: int = 4,
        stagger: float = 0.0,
        worker_url: str | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.scenario = scenario
        self.server = server
        self.tmp = tmp
        self.history_dir = tmp / "history"
        self.recorder = HistoryRecorder(self.history_dir / "harness.jsonl", "harness")
        self.fleet = FleetClient.from_url(server.url)
        self.apps = [(f"p{i % 7}", f"app-{i}") for i in range(apps)]
        self.steps = steps
        self.delay = delay
        self.stagger = stagger  # app i becomes due (i % 8) * stagger seconds after enqueue
        # Spare capacity: two workers can hold every app, so the time an app waits after a fault
        # measures recovery, not queueing behind other apps.
        self.concurrency = concurrency or apps // 2 + 2
        self.max_steps = max_steps_per_claim
        self.worker_url = worker_url or server.url
        self.env = {"CHAOS_CONTROL_URL": server.url, **(env or {})}
        self.workers: list[WorkerProc] = []
        self.hung: list[str] = []  # workers that ignored SIGTERM for 10 s (stacks in their logs)
        self.started = time.monotonic()

    # -- setting up ------------------------------------------------------------------------
    def enqueue(self) -> None:
        state = {"target": self.steps, "delay": self.delay}
        self.fleet.enqueue_many([
            EnqueueRequest("chaos", app_id, partition_key=pk, state={**state, "app": app_key(pk, app_id)},
                           delay=(i % 8) * self.stagger)
            for i, (pk, app_id) in enumerate(self.apps)
        ])  # fmt: skip
        self.started = time.monotonic()

    def start_worker(
        self,
        *,
        url: str | None = None,
        env: dict[str, str] | None = None,
        wait: bool = True,
        poll_interval: float = 0.05,
    ) -> WorkerProc:
        w = start_worker(
            url or self.worker_url, self.tmp, registry_module="tests.chaos.apps", lease_ttl=LEASE_TTL,
            sweep_interval=SWEEP, max_steps_per_claim=self.max_steps, concurrency=self.concurrency,
            events_key=None, history_dir=self.history_dir, env={**self.env, **(env or {})},
            wait_registered=wait, poll_interval=poll_interval,
        )  # fmt: skip
        self.workers.append(w)
        return w

    def launch(self, workers: int = 3) -> None:
        """Start ``workers`` workers (each registered before the next), then enqueue the apps."""
        for _ in range(workers):
            self.start_worker()
        self.enqueue()

    def repeat(self, times: int, every: float, inject: Callable[[], None]) -> int:
        """Call ``inject`` every ``every`` seconds, ``times`` times or until all apps completed."""
        done = 0
        while done < times and not self.done():
            time.sleep(every)
            inject()
            done += 1
        return done

    def live(self) -> list[WorkerProc]:
        return [w for w in self.workers if w.alive()]

    # -- faults ----------------------------------------------------------------------------
    def fault(self, name: str, target: str | None = None) -> None:
        self.recorder.fault(name, target=target)

    def kill(self, w: WorkerProc) -> None:
        self.fault("sigkill", target=w.id)
        w.kill()

    # -- progress --------------------------------------------------------------------------
    def statuses(self) -> list[str]:
        pipe = self.fleet.client.pipeline(transaction=False)
        for pk, app_id in self.apps:
            pipe.hget(self.fleet.keys(pk, app_id).job, "status")
        return [(s or b"missing").decode() for s in pipe.execute()]

    def done(self) -> bool:
        try:
            return all(s == "completed" for s in self.statuses())
        except redis.RedisError:
            return False  # the scenario may be restarting Redis

    def wait(self, timeout: float = TIMEOUT, between: Callable[[], None] | None = None) -> None:
        """Poll until every app completed (or ``timeout``), calling ``between`` each round."""
        give_up = time.monotonic() + timeout
        while not self.done() and time.monotonic() < give_up:
            if between is not None:
                between()
            else:
                time.sleep(0.1)

    # -- the end ---------------------------------------------------------------------------
    def stop_workers(self) -> None:
        for w in self.workers:
            if w.alive():
                os.kill(w.pid, signal.SIGCONT)  # a paused one cannot handle SIGTERM
                w.term()
        for w in self.workers:
            try:
                w.wait(10)
            except Exception:
                os.kill(w.pid, signal.SIGUSR1)  # hung: dump its threads' stacks into its log
                time.sleep(0.5)
                w.kill()
                self.hung.append(w.id)

    def observe(self) -> dict[str, FinalState]:
        """What Redis holds for every app: status, head, digest of every retained snapshot."""
        finals = {}
        for pk, app_id in self.apps:
            k = self.fleet.keys(pk, app_id)
            status, head, leased, snaps = self.fleet._with_retry(
                lambda k=k: self.fleet.client.pipeline(transaction=False)
                .hget(k.job, "status").hget(k.meta, "head").exists(k.lease).hgetall(k.snaps).execute()
            )  # fmt: skip
            status = (status or b"missing").decode()
            if status == "running":
                status = "held" if leased else "runnable"
            digests = {  # keyframes and deltas (applied); below 'oldest' only as chain bases
                seq: state_digest(State.deserialize(doc["state"]).get_all())
                for seq, doc in codec.stored_steps(snaps, key=k.snaps).items()
            }
            finals[app_key(pk, app_id)] = FinalState(status, int(head) if head is not None else None, digests)
        return finals

    def finish(self, note: str = "", *, observe: bool = True) -> Report:
        seconds = time.monotonic() - self.started
        unfinished: dict[str, str] = {}
        if observe:
            for (pk, app_id), s in zip(self.apps, self.statuses(), strict=True):
                if s != "completed":
                    unfinished[app_key(pk, app_id)] = s
        self.stop_workers()
        finals = self.observe() if observe else {}
        self.recorder.close()
        events = load_history(self.history_dir)
        anomalies = check(events, finals or None)
        recs = recoveries(events)
        summ = summary(events, anomalies)
        waits = [r.seconds for r in recs if r.seconds is not None]
        row = Row(
            self.scenario, len(self.apps), summ["ok_commits"], summ["faults"], len(anomalies),
            max(waits) if waits else None, seconds, note,
        )  # fmt: skip
        RESULTS.append(row)
        self.fleet.client.close()
        return Report(row, anomalies, recs, summ, unfinished, self.hung, finals)

    def __enter__(self) -> ChaosRun:
        return self

    def __exit__(self, *exc: object) -> None:
        for w in self.workers:  # on a failure before finish(): leave no process behind
            if w.alive():
                os.kill(w.pid, signal.SIGCONT)
                w.kill()
