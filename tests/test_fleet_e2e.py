"""End-to-end tests of the worker fleet: real Redis (every topology, on the first server kind),
real worker processes (SIGKILL = crash, SIGTERM = graceful stop), apps from examples.apps and
tests.support.fleet."""

from __future__ import annotations

import math
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from burr_dist import EnqueueRequest, FleetClient
from burr_dist.errors import AppNotRunnable
from burr_dist.keys import KeySchema
from tests.support.fleet import EVENTS_KEY, WorkerProc, events, start_worker, wait_until
from tests.support.targets import Target

pytestmark = pytest.mark.topologies(kinds=1)

SUPPORT = "tests.support.fleet"
TTL = 1.5
SWEEP = 0.3


class Fleet:
    """One test's Redis plus the worker processes it started (all SIGKILLed at teardown).
    ``client`` is an admin client of any topology (keys are inspected through KeySchema)."""

    def __init__(self, target: Target, log_dir: Path) -> None:
        self.url = target.url
        self.log_dir = log_dir
        self.client = target.client()
        self.fc = FleetClient.from_url(self.url)
        self.workers: list[WorkerProc] = []

    def spawn(self, **kw: Any) -> WorkerProc:
        kw.setdefault("lease_ttl", TTL)
        kw.setdefault("sweep_interval", SWEEP)
        w = start_worker(self.url, self.log_dir, **kw)
        self.workers.append(w)
        return w

    def events(self, app_id: str | None = None, kind: str | None = None) -> list[dict[str, Any]]:
        return [
            e for e in events(self.client, EVENTS_KEY)
            if (app_id is None or e["app_id"] == app_id) and (kind is None or e["kind"] == kind)
        ]  # fmt: skip

    def wait_events(self, app_ids: list[str], kind: str, timeout: float = 10) -> list[dict[str, Any]]:
        """Every recorded event, once each app of ``app_ids`` has a ``kind`` event. A hook runs
        after the write it reports: a status read can see that write before the worker had its
        reply, let alone recorded the event. A claim's hooks run in order, so its events before
        ``kind`` are recorded by then."""

        def recorded() -> list[dict[str, Any]] | None:
            evs = self.events()
            have = {e["app_id"] for e in evs if e["kind"] == kind}
            return evs if have >= set(app_ids) else None

        result: list[dict[str, Any]] = wait_until(
            recorded, timeout, f"{kind} events of {app_ids}", interval=0.05
        )
        return result

    def status(self, app_id: str) -> str:
        return self.fc.job(app_id)["status"]

    def wait_status(self, app_ids: list[str], status: str, timeout: float) -> None:
        def done() -> bool:
            for w in self.workers:
                if w.proc.returncode not in (None, 0, -9):
                    raise AssertionError(f"worker {w.id} died ({w.proc.returncode}):\n{w.log()[-3000:]}")
            return all(self.status(a) == status for a in app_ids)

        try:
            wait_until(done, timeout, f"{len(app_ids)} apps {status}", interval=0.05)
        except AssertionError:
            late = {a: self.status(a) for a in app_ids if self.status(a) != status}
            raise AssertionError(f"not {status} after {timeout}s: {late}") from None

    def ready(self) -> list[str]:
        """Every shard's ready entries (in shard order)."""
        shards = self.fc.schema.queue_shards_of("default")
        return [m.decode() for q in shards for m in self.client.zrange(q.ready, 0, -1)]

    def active(self) -> list[str]:
        shards = self.fc.schema.queue_shards_of("default")
        return [m.decode() for q in shards for m in self.client.zrange(q.active, 0, -1)]

    def close(self) -> None:
        for w in self.workers:
            w.kill()
        for w in self.workers:  # shown by pytest only when the test failed
            print(f"----- worker {w.id} (pid {w.pid}, rc {w.proc.returncode}) -----\n{w.log()[-6000:]}")
        self.fc.client.close()
        self.client.close()


@pytest.fixture
def fleet(target: Target, tmp_path: Path) -> Iterator[Fleet]:
    f = Fleet(target, tmp_path)
    yield f
    f.close()


def member(app_id: str) -> str:
    """The queue member of an app of the default partition."""
    return KeySchema().member(None, app_id)


def seqs(history: list[dict[str, Any]]) -> list[int]:
    return [h["sequence_id"] for h in history]


def assert_contiguous(history: list[dict[str, Any]], start: int = 0) -> None:
    s = seqs(history)
    assert s, "empty history"
    assert s == list(range(start, start + len(s))), f"history not contiguous from {start}: {s}"


def assert_counter_history(history: list[dict[str, Any]], target: int, start: int = 0) -> None:
    """tick at sequence s leaves n == s + 1 (a step applied twice would break it); then finish."""
    assert_contiguous(history, start)
    ticks, last = history[:-1], history[-1]
    for h in ticks:
        assert h["action"] == "tick" and h["status"] == "completed", h
        assert h["state"]["n"] == h["sequence_id"] + 1, (h["sequence_id"], h["state"]["n"])
    assert last["action"] == "finish" and last["sequence_id"] == target
    assert last["state"]["n"] == target and last["state"]["done"] is True


def assert_no_step_committed_twice(evs: list[dict[str, Any]]) -> None:
    committed = Counter((e["app_id"], e["seq"]) for e in evs if e["kind"] == "step_committed")
    twice = {k: v for k, v in committed.items() if v > 1}
    detail = [e for e in evs if e["kind"] == "step_committed" and (e["app_id"], e["seq"]) in twice]
    assert not twice, f"steps committed more than once: {twice}: {detail}"


# 1 ---------------------------------------------------------------------------------------------
@pytest.mark.topologies(kinds=1, default=("cluster",))
def test_many_apps_over_three_workers_complete_with_contiguous_histories(fleet: Fleet) -> None:
    workers = [fleet.spawn(max_steps_per_claim=5, concurrency=8) for _ in range(3)]
    rng = random.Random(1234)
    targets = {f"c-{i:02d}": rng.randint(10, 20) for i in range(60)}
    requests = [EnqueueRequest("counter", app_id=a, state={"target": t}) for a, t in targets.items()]
    research = [f"r-{i}" for i in range(8)]
    requests += [EnqueueRequest("async_research", app_id=a, state={"question": a}) for a in research]
    results = fleet.fc.enqueue_many(requests)
    assert all(r.created and r.status == "queued" for r in results)

    fleet.wait_status(list(targets) + research, "completed", timeout=60)

    for app_id, target in targets.items():
        history = fleet.fc.history(app_id)
        assert_counter_history(history, target)
        job = fleet.fc.show(app_id)
        assert job["sequence_id"] == target and job["lease_holder"] is None
        # target + 1 steps, at most 5 per claim: the app was claimed (and handed back) repeatedly.
        assert job["claims"] >= math.ceil((target + 1) / 5), (app_id, job["claims"])
    for app_id in research:
        history = fleet.fc.history(app_id)
        assert_contiguous(history)
        assert [h["action"] for h in history] == ["search", "read_sources", "answer"]
        assert history[-1]["state"]["answer"] == "3 notes"
        assert history[-1]["state"]["notes"] == [f"{app_id.upper()} SOURCE {i}" for i in range(3)]

    evs = fleet.wait_events([*targets, *research], "completed")
    assert_no_step_committed_twice(evs)
    by_app: dict[str, set[str]] = {}
    for e in evs:
        if e["kind"] == "step_committed":
            by_app.setdefault(e["app_id"], set()).add(e["worker"])
    assert {w for ws in by_app.values() for w in ws} == {w.id for w in workers}, "some worker ran nothing"
    moved = [a for a in targets if len(by_app[a]) > 1]
    assert len(moved) >= 10, f"only {len(moved)} apps moved between workers"
    assert sorted(e["app_id"] for e in evs if e["kind"] == "completed") == sorted([*targets, *research])
    assert fleet.ready() == [] and fleet.active() == []
    assert all(w.alive() for w in workers)


# 2 ---------------------------------------------------------------------------------------------
def test_sigkilled_worker_apps_are_taken_over_within_lease_ttl(fleet: Fleet) -> None:
    target = 20  # 6 s of steps: worker B (a new process) starts well before they end, even under load
    apps = [f"slow-{i}" for i in range(4)]
    a = fleet.spawn(registry_module=SUPPORT, concurrency=4)
    fleet.fc.enqueue_many(
        [EnqueueRequest("slow", app_id=x, state={"target": target, "delay": 0.3}) for x in apps]
    )

    def all_running_on_a() -> bool:
        jobs = [fleet.fc.show(x) for x in apps]
        return all(
            j["status"] == "running" and j["worker"] == a.id and (j["sequence_id"] or 0) >= 1 for j in jobs
        )

    wait_until(all_running_on_a, 15, "4 slow apps running on worker A", alive=a)
    b = fleet.spawn(registry_module=SUPPORT, concurrency=4)
    assert all(fleet.fc.show(x)["worker"] == a.id for x in apps)  # B found nothing to claim

    heads_at_kill = {x: fleet.fc.show(x)["sequence_id"] for x in apps}
    a.kill()
    killed_at = time.monotonic()
    assert a.proc.returncode == -9
    back: dict[str, float] = {}

    def all_back() -> bool:
        for x in apps:
            if x in back:
                continue
            j = fleet.fc.show(x)
            if (j["status"] == "running" and j["worker"] == b.id and j["lease_holder"]) or j[
                "status"
            ] == "completed":
                back[x] = time.monotonic() - killed_at
        return len(back) == len(apps)

    wait_until(all_back, 15, "apps of the killed worker running again", interval=0.02, alive=b)
    bound = TTL + SWEEP + 1.0
    assert max(back.values()) <= bound, f"takeover took {back} (bound {bound} s)"

    fleet.wait_status(apps, "completed", timeout=20)
    evs = fleet.wait_events(apps, "completed")
    assert_no_step_committed_twice(evs)
    for x in apps:
        assert_counter_history(fleet.fc.history(x), target)
        job = fleet.fc.show(x)
        assert job["claims"] == 2, job  # A once, B once: no spurious re-claims
        after = [
            e
            for e in evs
            if e["app_id"] == x and e["kind"] == "step_committed" and e["seq"] > heads_at_kill[x] + 1
        ]
        assert after and all(e["worker"] == b.id for e in after)
        assert any(e["worker"] == a.id for e in evs if e["app_id"] == x and e["kind"] == "step_committed")
    assert fleet.ready() == [] and fleet.active() == []


# 3 ---------------------------------------------------------------------------------------------
def test_sigterm_hands_apps_back_and_exits_zero(fleet: Fleet) -> None:
    target = 20
    apps = [f"long-{i}" for i in range(3)]
    a = fleet.spawn(registry_module=SUPPORT, concurrency=4)
    fleet.fc.enqueue_many(
        [EnqueueRequest("slow", app_id=x, state={"target": target, "delay": 0.2}) for x in apps]
    )
    wait_until(
        lambda: all(fleet.fc.show(x)["status"] == "running" and (fleet.fc.show(x)["sequence_id"] or 0) >= 1 for x in apps),
        15, "long apps running", alive=a,
    )  # fmt: skip

    a.term()
    t0 = time.monotonic()
    rc = a.wait(timeout=5)
    took = time.monotonic() - t0
    assert rc == 0, a.log()[-3000:]
    assert took < 3.0, f"graceful stop took {took:.1f} s"

    for x in apps:
        job = fleet.fc.show(x)
        assert job["status"] == "queued", job
        assert job["lease_holder"] is None and job["worker"] == ""
        assert job["sequence_id"] < target
    assert sorted(fleet.ready()) == sorted(member(x) for x in apps)
    assert fleet.active() == []
    handed = fleet.events(kind="handed_back")  # a's claims (and so their hooks) ended before it exited
    assert sorted(e["app_id"] for e in handed) == sorted(apps) and all(e["worker"] == a.id for e in handed)
    assert a.id not in [w["id"] for w in fleet.fc.workers()]  # deregistered on the way out
    heads = {x: fleet.fc.show(x)["sequence_id"] for x in apps}

    b = fleet.spawn(registry_module=SUPPORT, concurrency=4)
    fleet.wait_status(apps, "completed", timeout=20)
    evs = fleet.wait_events(apps, "completed")
    assert_no_step_committed_twice(evs)
    for x in apps:
        assert_counter_history(fleet.fc.history(x), target)
        after = [e for e in evs if e["app_id"] == x and e["kind"] == "step_committed" and e["seq"] > heads[x]]
        assert after and all(e["worker"] == b.id for e in after)


# 4 ---------------------------------------------------------------------------------------------
def test_concurrent_duplicate_enqueues_create_one_app_that_runs_once(fleet: Fleet) -> None:
    threads = 8
    barrier = threading.Barrier(threads)
    results: list[Any] = [None] * threads
    clients = [FleetClient.from_url(fleet.url) for _ in range(threads)]
    for c in clients:
        c.client.ping()  # connected before the race

    def enqueue(i: int) -> None:
        barrier.wait()
        results[i] = clients[i].enqueue("counter", app_id="dup", state={"target": 8})

    ts = [threading.Thread(target=enqueue, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(10)
    for c in clients:
        c.client.close()
    assert all(r is not None for r in results)
    assert sum(r.created for r in results) == 1, results
    assert {(r.app_id, r.status) for r in results} == {("dup", "queued")}
    assert len({r.run_at_ms for r in results}) == 1  # everyone saw the one record
    assert [j["app_id"] for j in fleet.fc.ls()] == ["dup"]
    assert len(list(fleet.client.scan_iter(match=fleet.fc.schema.job_pattern()))) == 1
    assert fleet.ready() == [member("dup")]

    fleet.spawn(concurrency=4)
    fleet.wait_status(["dup"], "completed", timeout=15)
    fleet.wait_events(["dup"], "completed")
    time.sleep(0.5)  # a duplicate queue entry would be claimed (and show up) by now
    assert_counter_history(fleet.fc.history("dup"), 8)
    assert fleet.fc.show("dup")["claims"] == 1
    assert len(fleet.events("dup", "claimed")) == 1
    assert len(fleet.events("dup", "completed")) == 1
    assert fleet.ready() == [] and fleet.active() == []


# 5 ---------------------------------------------------------------------------------------------
def test_human_in_the_loop_resumed_on_another_worker(fleet: Fleet) -> None:
    a = fleet.spawn()
    fleet.fc.enqueue("approval", app_id="doc", state={"topic": "fleets"})
    fleet.wait_status(["doc"], "waiting", timeout=15)
    job = fleet.fc.show("doc")
    assert job["waiting_for"] == "human_review"
    assert job["lease_holder"] is None and job["worker"] == ""
    assert [h["action"] for h in fleet.fc.history("doc")] == ["outline", "write_draft"]
    assert fleet.ready() == [] and fleet.active() == []
    with pytest.raises(AppNotRunnable):
        fleet.fc.retry("doc")  # only failed/cancelled apps can be retried

    a.term()
    assert a.wait(timeout=5) == 0
    time.sleep(0.3)
    assert fleet.status("doc") == "waiting"  # parking is durable: no worker needed

    b = fleet.spawn()
    assert fleet.fc.resume("doc", {"approved": True, "reviewer": "ann"}) == "queued"
    fleet.wait_status(["doc"], "completed", timeout=15)
    history = fleet.fc.history("doc")
    assert_contiguous(history)
    assert [h["action"] for h in history] == ["outline", "write_draft", "human_review", "publish"]
    final = history[-1]["state"]
    assert final["approved"] is True and final["published"] is True and final["reviewer"] == "ann"
    assert final["draft"] == "fleets: part 1 / fleets: part 2 / fleets: part 3"
    evs = fleet.wait_events(["doc"], "completed")
    steps = {
        e["position"]: e["worker"] for e in evs if e["app_id"] == "doc" and e["kind"] == "step_committed"
    }
    assert steps == {"outline": a.id, "write_draft": a.id, "human_review": b.id, "publish": b.id}
    job = fleet.fc.show("doc")
    assert job["inputs"] is None and job["lease_holder"] is None
    with pytest.raises(AppNotRunnable):
        fleet.fc.resume("doc", {"approved": False})


# 6 ---------------------------------------------------------------------------------------------
def test_cancel_running_app_stops_before_next_step_and_queued_app_never_runs(fleet: Fleet) -> None:
    w = fleet.spawn(registry_module=SUPPORT, concurrency=1)
    fleet.fc.enqueue("slow", app_id="busy", state={"target": 40, "delay": 0.3})
    wait_until(lambda: (fleet.fc.show("busy")["sequence_id"] or 0) >= 1, 10, "busy app stepping", alive=w)

    # The worker is full (concurrency 1): "idle" stays queued until cancelled.
    fleet.fc.enqueue("slow", app_id="idle", state={"target": 2, "delay": 0.0})
    assert fleet.status("idle") == "queued" and member("idle") in fleet.ready()
    assert fleet.fc.cancel("idle") == "cancelled"
    assert fleet.status("idle") == "cancelled"
    assert member("idle") not in fleet.ready()

    assert fleet.fc.cancel("busy") == "cancel_requested"
    cancelled_at = time.monotonic()
    head_at_cancel = fleet.fc.show("busy")["sequence_id"]
    fleet.wait_status(["busy"], "cancelled", timeout=5)
    assert time.monotonic() - cancelled_at < 0.3 + 1.0  # the step in flight, then stop
    job = fleet.fc.show("busy")
    assert job["lease_holder"] is None
    assert head_at_cancel <= job["sequence_id"] <= head_at_cancel + 1
    time.sleep(1.0)  # the worker is free now: nothing may run either app
    job = fleet.fc.show("busy")
    assert job["status"] == "cancelled" and job["sequence_id"] <= head_at_cancel + 1
    assert job["sequence_id"] < 40 and not job.get("cancel")  # the request was consumed
    idle = fleet.fc.show("idle")
    assert idle["status"] == "cancelled" and idle["claims"] == 0 and idle["sequence_id"] is None
    assert fleet.fc.history("idle") == []
    assert fleet.events("idle") == []
    fleet.wait_events(["busy"], "cancelled")
    assert len(fleet.events("busy", "cancelled")) == 1
    assert fleet.ready() == [] and fleet.active() == []
    with pytest.raises(AppNotRunnable):
        fleet.fc.cancel("busy")
    assert w.alive()


# 7 ---------------------------------------------------------------------------------------------
def test_retries_with_backoff_then_dead_letter_then_manual_retry(fleet: Fleet) -> None:
    gate = "test:gate:g1"
    fleet.spawn(registry_module=SUPPORT, concurrency=2)
    t0 = time.monotonic()
    fleet.fc.enqueue("gated", app_id="g1", state={"gate": gate})
    seen: list[dict[str, Any]] = []

    def failed() -> bool:
        job = fleet.fc.job("g1")
        seen.append(job)
        return job["status"] == "failed"

    wait_until(failed, 15, "gated app dead-lettered", interval=0.005)
    elapsed = time.monotonic() - t0
    job = fleet.fc.show("g1")
    assert job["attempts"] == 3
    assert "RuntimeError" in job["last_error"] and f"gate {gate} is closed" in job["last_error"]
    assert job["lease_holder"] is None
    # Backoff lives in Redis: a queued retry is due delay(attempt) after the failure settled it.
    waits = {
        j["attempts"]: j["run_at"] - j["updated_at"]
        for j in seen
        if j["status"] == "queued" and j["attempts"] > 0
    }
    assert set(waits) == {1, 2}, waits
    assert 100 <= waits[1] <= 200, waits  # initial_delay 0.2 * jitter [0.5, 1]
    assert 200 <= waits[2] <= 400, waits  # doubled
    assert elapsed >= 0.1 + 0.2

    history = fleet.fc.history("g1")
    assert_contiguous(history)
    assert [(h["action"], h["status"]) for h in history] == [("call_gated", "failed")] * 3
    at = [datetime.fromisoformat(h["created_at"]).timestamp() for h in history]
    assert at[1] - at[0] >= 0.1 - 0.01 and at[2] - at[1] >= 0.2 - 0.01, at
    fleet.wait_events(["g1"], "failed")
    assert [e["kind"] for e in fleet.events("g1") if e["kind"] in ("retry_scheduled", "failed")] == [
        "retry_scheduled", "retry_scheduled", "failed",
    ]  # fmt: skip
    time.sleep(0.5)
    assert fleet.status("g1") == "failed" and fleet.ready() == [] and fleet.active() == []

    fleet.client.set(gate, "open")
    assert fleet.fc.retry("g1") == "queued"
    fleet.wait_status(["g1"], "completed", timeout=10)
    job = fleet.fc.show("g1")
    assert job["attempts"] == 0
    history = fleet.fc.history("g1")
    assert_contiguous(history)
    assert [(h["action"], h["status"]) for h in history] == [("call_gated", "failed")] * 3 + [
        ("call_gated", "completed"), ("done", "completed"),
    ]  # fmt: skip
    assert history[-1]["state"]["calls"] == 1 and history[-1]["state"]["done"] is True


# 8 ---------------------------------------------------------------------------------------------
def test_fork_of_completed_app_runs_from_the_snapshot(fleet: Fleet) -> None:
    fleet.spawn(concurrency=4)
    fleet.fc.enqueue("counter", app_id="orig", state={"target": 10})
    fleet.wait_status(["orig"], "completed", timeout=15)
    original = fleet.fc.history("orig")
    assert_counter_history(original, 10)

    forked = fleet.fc.fork("orig", at=4, new_app_id="forked")
    assert forked.created and forked.app_id == "forked"
    fleet.wait_status(["forked"], "completed", timeout=15)
    history = fleet.fc.history("forked")
    assert history[0]["sequence_id"] == 5, seqs(history)
    assert history[0]["state"]["n"] == original[4]["state"]["n"] + 1 == 6
    assert_counter_history(history, 10, start=5)
    assert fleet.fc.history("orig") == original  # the source app is untouched
    fork_job = fleet.fc.show("forked")
    assert fork_job["fork_app"] == "orig" and fork_job["fork_seq"] == "4"


# Regressions of bugs found while writing these tests -------------------------------------------
def test_stale_duplicate_ready_entry_of_a_running_app_spawns_no_second_task(fleet: Fleet) -> None:
    """A late ZADD NX (duplicate enqueue racing the claim, a reconcile, a sweep after a stall) can
    put an app this worker runs back in ready. Claiming it again used to start a second task that
    replaced the first in the worker's table: the first was then neither counted, touched, nor
    awaited on SIGTERM (the worker exited with the app still running and leased)."""
    w = fleet.spawn(registry_module=SUPPORT, concurrency=2)
    fleet.fc.enqueue("slow", app_id="m", state={"target": 40, "delay": 0.2})
    wait_until(lambda: fleet.status("m") == "running", 10, "m running", alive=w)
    fleet.client.zadd(fleet.fc.schema.queue_for("default", member("m")).ready, {member("m"): 0})
    time.sleep(0.6)  # several claim polls and touches
    assert fleet.ready() == [] and fleet.active() == [member("m")]
    info = next(x for x in fleet.fc.workers() if x["id"] == w.id)
    assert info["running"] == "1", info
    w.term()
    assert w.wait(timeout=5) == 0
    job = fleet.fc.show("m")
    assert job["status"] == "queued" and job["lease_holder"] is None, job
    assert fleet.ready() == [member("m")] and fleet.active() == []


def test_attempts_count_consecutive_failures_not_failures_over_the_whole_run(fleet: Fleet) -> None:
    """Each of two actions fails once (max_attempts=2: one retry per failure run). A committed step
    ends a run of failures; the count used to survive it, so the second action's first failure
    dead-lettered the app."""
    fleet.spawn(registry_module=SUPPORT)
    fleet.fc.enqueue("two_flaky_steps", app_id="tf", state={"tag": "tf"})
    wait_until(lambda: fleet.status("tf") in ("completed", "failed"), 10, "tf settled")
    job = fleet.fc.show("tf")
    assert job["status"] == "completed" and job["attempts"] == 0, job
    history = fleet.fc.history("tf")
    assert_contiguous(history)
    assert [(h["action"], h["status"]) for h in history] == [
        ("step_a", "failed"), ("step_a", "completed"), ("step_b", "failed"), ("step_b", "completed"),
    ]  # fmt: skip
    fleet.wait_events(["tf"], "completed")
    assert len(fleet.events("tf", "retry_scheduled")) == 2


def test_a_quiet_partition_starts_while_a_noisy_one_floods_the_queue(fleet: Fleet) -> None:
    """3,000 apps of one tenant are queued first; an app of another tenant queued after them
    finishes while most of the flood still waits (first-in-first-out would run it last). The
    bound the README states: a quiet partition's app waits behind at most one app of each other
    partition per queue shard, plus the claims already in flight."""
    flood = [EnqueueRequest("counter", app_id=f"n{i}", partition_key="noisy", state={"target": 1})
             for i in range(3000)]  # fmt: skip
    for i in range(0, len(flood), 1000):
        fleet.fc.enqueue_many(flood[i : i + 1000])
    fleet.spawn(concurrency=4, events_key=None)
    wait_until(lambda: fleet.fc.overview()["apps"]["completed"] >= 20, 20, "the flood running")
    queued_at = time.monotonic()
    fleet.fc.enqueue("counter", "quiet-1", partition_key="quiet", state={"target": 1})
    wait_until(lambda: fleet.fc.job("quiet-1", partition_key="quiet")["status"] == "completed", 10,
               "the quiet app completed", interval=0.01)  # fmt: skip
    waited = time.monotonic() - queued_at
    left = fleet.fc.overview()["apps"]["queued"]
    print(f"quiet app: completed {waited:.3f} s after its enqueue, {left} flood apps still queued")
    assert left > 1500, f"the flood was nearly done ({left} queued): the test proves nothing"
    assert waited < 2.0, waited


def test_an_idle_worker_starts_a_new_app_without_waiting_for_a_poll(fleet: Fleet) -> None:
    """The worker polls only every 5 s here; enqueue rings the queue's bell, so apps start at once."""
    fleet.spawn(poll_interval=5.0, events_key=None)
    time.sleep(0.5)  # idle: blocked on the bell
    waits = []
    for i in range(5):
        t0 = time.monotonic()
        fleet.fc.enqueue("counter", f"b{i}", state={"target": 1})
        wait_until(lambda i=i: fleet.fc.job(f"b{i}")["status"] == "completed", 10, "started", interval=0.005)
        waits.append(time.monotonic() - t0)
        time.sleep(0.2)
    assert max(waits) < 1.0, waits  # polling alone would take up to 5 s


def test_an_unreadable_snapshot_holds_back_only_its_own_app(fleet: Fleet) -> None:
    """A hand-edited (or foreign-format) snapshot: the other apps claimed in the same batch run
    at once (their leases are not orphaned); its own app is a poison pill: the error,
    with the key, is recorded on it, retried under its RetryPolicy, then it fails; each try
    releases its lease at once."""
    fleet.fc.enqueue_many(
        [EnqueueRequest("counter", app_id=a, state={"target": 3}) for a in ("bad", "g1", "g2", "g3")]
    )
    k = fleet.fc.keys(None, "bad")
    fleet.client.hset(k.meta, mapping={"head": 0, "oldest": 0, "wid": "0" * 16})
    fleet.client.hset(k.snaps, "0", b"\x00not a snapshot{")
    started = time.monotonic()
    w = fleet.spawn(lease_ttl=30.0)  # an orphaned lease would hold the apps for 30 s
    fleet.wait_status(["g1", "g2", "g3"], "completed", timeout=10)
    assert time.monotonic() - started < 10
    wait_until(lambda: "unreadable snapshot" in w.log(), 5, "the corrupt snapshot logged")
    assert k.snaps in w.log() and "claimed apps failed" not in w.log()
    fleet.wait_status(["bad"], "failed", timeout=15)  # counter: 3 attempts, 1 s backoff doubling
    assert time.monotonic() - started < 20
    job = fleet.fc.show("bad")
    assert job["attempts"] == job["claims"] == 3 and job["lease_holder"] is None, job
    assert "CorruptSnapshot" in job["last_error"] and k.snaps in job["last_error"], job
    shard = fleet.fc.schema.queue_for("default", member("bad"))
    for key in (shard.ready, shard.scheduled, shard.active):
        assert fleet.client.zscore(key, member("bad")) is None
