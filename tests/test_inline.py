"""Where sync actions run (burr_dist/worker/inline.py): fast ones on the event loop once the pool showed
them fast, blocking ones always in the pool (the loop stays responsive), a fast one that blocks
once on the loop back to the pool for good; and the queue acks riding on the claim round trips."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import threading
import time
from typing import Any

import pytest
from burr.core import ApplicationBuilder, State, action

from burr_dist import FleetClient, Registry
from burr_dist.errors import ConfigurationError
from burr_dist.fleet.core import EnqueueRequest
from burr_dist.fleet.registry import AppContext
from burr_dist.testing.embedded import EmbeddedServer
from burr_dist.transport.connect import connect
from burr_dist.worker.inline import InlinePolicy, thread_usage
from burr_dist.worker.process import Worker

POOL = "burr-dist-step"


# -- the policy alone ----------------------------------------------------------------------------
def test_an_action_runs_inline_once_the_pool_showed_it_fast() -> None:
    p = InlinePolicy(budget=0.002, warmup=3)
    assert not p.inline("app", "a")
    for _ in range(2):
        p.observe("app", "a", 0.0001, inline=False)
        assert not p.inline("app", "a")
    p.observe("app", "a", 0.0001, inline=False)
    assert p.inline("app", "a")
    assert not p.inline("other", "a")  # per app and action


def test_an_action_never_fast_in_the_pool_never_runs_inline() -> None:
    p = InlinePolicy(budget=0.002, warmup=3)
    for _ in range(50):
        p.observe("app", "llm", 0.2, inline=False)
    assert not p.inline("app", "llm")


def test_a_long_run_on_the_loop_sends_the_action_back_to_the_pool_ten_times_longer(caplog: Any) -> None:
    p = InlinePolicy(budget=0.002, warmup=1)
    p.observe("app", "a", 0.0001, inline=False)
    p.observe("app", "a", 0.015, inline=True)  # over budget, under 10 budgets: stays
    assert p.inline("app", "a")
    with caplog.at_level(logging.WARNING, logger="burr_dist.worker.inline"):
        p.observe("app", "a", 0.05, inline=True)
        assert not p.inline("app", "a")
        for needed in (10, 100):  # each demotion needs 10x the pool runs of the last
            for _ in range(needed - 1):
                p.observe("app", "a", 0.0001, inline=False)
                assert not p.inline("app", "a")
            p.observe("app", "a", 0.0001, inline=False)
            assert p.inline("app", "a")
            p.observe("app", "a", 0.05, inline=True)
    assert [r.event for r in caplog.records] == ["inline_demoted"] * 3  # type: ignore[attr-defined]


def test_budget_zero_keeps_every_sync_action_in_the_pool() -> None:
    p = InlinePolicy(budget=0.0)
    for _ in range(10):
        p.observe("app", "a", 0.0, inline=False)
    assert not p.inline("app", "a")


@pytest.mark.parametrize("budget", [-1.0, float("nan")])
def test_bad_budgets_are_refused(budget: float) -> None:
    with pytest.raises(ValueError, match="inline budget"):
        InlinePolicy(budget=budget)
    with pytest.raises(ConfigurationError, match="inline_ms"):
        Worker(Registry(), url="redis://127.0.0.1:1/0", inline_ms=budget * 1000)


def test_a_long_run_that_neither_slept_nor_used_the_cpu_keeps_the_action_on_the_loop() -> None:
    p = InlinePolicy(budget=0.002, warmup=1)
    p.observe("app", "a", 0.0001, inline=False)
    p.observe("app", "a", 0.05, inline=True, slept=0, cpu=0.001)  # preempted: the host was busy
    assert p.inline("app", "a")
    p.observe("app", "a", 0.05, inline=True, slept=0, cpu=0.03)  # busy on the CPU itself
    assert not p.inline("app", "a")
    p.observe("app", "b", 0.0001, inline=False)
    p.observe("app", "b", 0.05, inline=True, slept=1, cpu=0.001)  # slept: I/O, a lock, a sleep
    assert not p.inline("app", "b")
    p.observe("app", "c", 0.0001, inline=False)
    p.observe("app", "c", 0.05, inline=True)  # no counts from the OS: every long run counts
    assert not p.inline("app", "c")


def _spin(seconds: float) -> None:
    """Busy on the CPU for ``seconds`` of this thread's CPU time."""
    start = time.thread_time()
    while time.thread_time() - start < seconds:
        pass


@pytest.mark.skipif(thread_usage() is None, reason="no per-thread context switch counts on this OS")
def test_real_runs_that_sleep_or_burn_the_cpu_on_the_loop_are_demoted() -> None:
    for name, step in (("sleeps", lambda: time.sleep(0.03)), ("burns", lambda: _spin(0.03))):
        p = InlinePolicy(budget=0.002, warmup=1)
        p.observe("app", name, 0.0001, inline=False)
        p.run("app", name, step)
        assert not p.inline("app", name), name


@pytest.mark.skipif(thread_usage() is None, reason="no per-thread context switch counts on this OS")
def test_a_run_the_os_preempted_stays_on_the_loop(caplog: Any) -> None:
    """A process of higher priority on this thread's CPU takes it for 50 ms at a time: a 1 ms
    action then takes far longer than 10 budgets without sleeping. It is not demoted."""
    cpu = min(os.sched_getaffinity(0))
    hog_code = (
        "import os, sys, time\n"
        f"os.sched_setaffinity(0, {{{cpu}}})\n"
        "os.nice(-19)\n"
        "print('ok', flush=True)\n"
        "while True:\n"
        "    t = time.perf_counter()\n"
        "    while time.perf_counter() - t < 0.05: pass\n"
        "    time.sleep(0.002)\n"
    )  # fmt: skip
    hog = subprocess.Popen(
        [sys.executable, "-c", hog_code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    affinity = os.sched_getaffinity(0)
    try:
        if hog.stdout is None or hog.stdout.readline().strip() != "ok":
            pytest.skip(
                f"cannot run a higher-priority process here: {hog.stderr.read() if hog.stderr else ''}"
            )
        os.sched_setaffinity(0, {cpu})  # this thread only
        p = InlinePolicy(budget=0.002, warmup=1)
        p.observe("app", "a", 0.0001, inline=False)
        longest = 0.0
        with caplog.at_level(logging.DEBUG, logger="burr_dist.worker.inline"):
            for _ in range(500):
                started = time.perf_counter()
                p.run("app", "a", lambda: _spin(0.001))
                longest = max(longest, time.perf_counter() - started)
                if longest > 0.025:
                    break
        assert longest > 0.025, f"never preempted for long (longest run {longest * 1000:.1f} ms)"
        assert p.inline("app", "a")
        assert "inline_preempted" in [getattr(r, "event", None) for r in caplog.records]
        assert "inline_demoted" not in [getattr(r, "event", None) for r in caplog.records]
    finally:
        os.sched_setaffinity(0, affinity)
        hog.kill()
        hog.wait()


# -- under the worker ----------------------------------------------------------------------------
def _registry(runs: dict[str, list[str]], slow_after: dict[str, int]) -> Registry:
    """Apps ``fast`` and ``slow`` (one step each); each run records the thread it ran on.
    ``fast`` sleeps 60 ms on its run number ``slow_after["fast"]`` (1-based), if given."""
    reg = Registry()

    def make(name: str, sleep: float) -> Any:
        @action(reads=[], writes=["done"])
        def act(state: State) -> State:
            runs[name].append(threading.current_thread().name)
            if sleep or len(runs[name]) == slow_after.get(name):
                time.sleep(sleep or 0.06)
            return state.update(done=True)

        @reg.app(name, entrypoint="act")
        def factory(ctx: AppContext) -> ApplicationBuilder:
            return ApplicationBuilder().with_actions(act=act)

        return factory

    make("fast", 0.0)
    make("slow", 0.05)
    return reg


async def _run_until(w: Worker, done: Any, timeout: float = 30.0) -> None:
    task = asyncio.create_task(w.run())
    try:
        deadline = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < deadline, "the apps did not finish"
            assert not task.done(), task
            await asyncio.sleep(0.01)
    finally:
        w.request_stop()
        await task


async def test_blocking_actions_stay_in_the_pool_and_the_loop_keeps_ticking(
    fleet_server: EmbeddedServer,
) -> None:
    runs: dict[str, list[str]] = {"fast": [], "slow": []}
    fleet = FleetClient(connect(fleet_server.url))
    fleet.enqueue_many([*(EnqueueRequest("slow", app_id=f"s{i}") for i in range(8)),
                        *(EnqueueRequest("fast", app_id=f"f{i}") for i in range(30))])  # fmt: skip
    w = Worker(_registry(runs, {}), url=fleet_server.url, concurrency=4, poll_interval=0.02)
    gaps: list[float] = []

    async def ticker() -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    tick = asyncio.create_task(ticker())
    try:
        await _run_until(w, lambda: len(runs["fast"]) == 30 and len(runs["slow"]) == 8)
    finally:
        tick.cancel()
    fleet.client.close()
    assert all(t.startswith(POOL) for t in runs["slow"]), runs["slow"]
    assert all(t.startswith(POOL) for t in runs["fast"][:3]), runs["fast"]
    on_loop = [t for t in runs["fast"] if t == threading.current_thread().name]
    assert len(on_loop) >= 20, runs["fast"]
    # Eight 50 ms sleeps ran in the pool meanwhile: none of them held the loop.
    assert max(gaps) < 0.045, sorted(gaps)[-5:]


async def test_a_fast_action_that_blocks_on_the_loop_goes_back_to_the_pool(
    fleet_server: EmbeddedServer, caplog: Any
) -> None:
    runs: dict[str, list[str]] = {"fast": [], "slow": []}
    fleet = FleetClient(connect(fleet_server.url))
    fleet.enqueue_many([EnqueueRequest("fast", app_id=f"f{i}") for i in range(10)])
    w = Worker(_registry(runs, {"fast": 6}), url=fleet_server.url, concurrency=1, poll_interval=0.02)
    with caplog.at_level(logging.WARNING, logger="burr_dist.worker.inline"):
        await _run_until(w, lambda: len(runs["fast"]) == 10)
    fleet.client.close()
    me = threading.current_thread().name
    where = ["loop" if t == me else "pool" for t in runs["fast"]]
    assert where == ["pool"] * 3 + ["loop"] * 3 + ["pool"] * 4, runs["fast"]
    assert [r.event for r in caplog.records if r.name == "burr_dist.worker.inline"] == ["inline_demoted"]  # type: ignore[attr-defined]


async def test_an_action_marked_blocking_always_runs_in_the_pool(fleet_server: EmbeddedServer) -> None:
    """``blocking=`` names sync actions that may block: fast or not, they never run on the loop.
    A name that is not an action of the graph fails the app's build, and the error names it."""
    reg = Registry()
    where: list[str] = []

    @action(reads=[], writes=["done"])
    def act(state: State) -> State:
        where.append(threading.current_thread().name)
        return state.update(done=True)

    @reg.app("marked", entrypoint="act", blocking=["act"])
    def marked(ctx: AppContext) -> ApplicationBuilder:
        return ApplicationBuilder().with_actions(act=act)

    @reg.app("typo", entrypoint="act", blocking=["acts"])
    def typo(ctx: AppContext) -> ApplicationBuilder:
        return ApplicationBuilder().with_actions(act=act)

    with pytest.raises(ConfigurationError, match="list of action names"):
        reg.app("bad", entrypoint="act", blocking="act")
    fleet = FleetClient(connect(fleet_server.url))
    fleet.enqueue_many([EnqueueRequest("marked", app_id=f"m{i}") for i in range(10)])
    fleet.enqueue("typo", "t0")
    w = Worker(reg, url=fleet_server.url, concurrency=1, poll_interval=0.02)
    await _run_until(w, lambda: len(where) == 10 and fleet.show("t0")["status"] == "failed")
    error = fleet.show("t0").get("last_error", "")
    fleet.client.close()
    assert all(t.startswith(POOL) for t in where), where  # fast every time: inline after 3 otherwise
    assert "blocking= names ['acts'], not actions of its graph (['act'])" in error, error


async def test_inline_ms_zero_runs_every_sync_action_in_the_pool(fleet_server: EmbeddedServer) -> None:
    runs: dict[str, list[str]] = {"fast": [], "slow": []}
    fleet = FleetClient(connect(fleet_server.url))
    fleet.enqueue_many([EnqueueRequest("fast", app_id=f"f{i}") for i in range(8)])
    w = Worker(_registry(runs, {}), url=fleet_server.url, concurrency=1, poll_interval=0.02, inline_ms=0)
    await _run_until(w, lambda: len(runs["fast"]) == 8)
    fleet.client.close()
    assert all(t.startswith(POOL) for t in runs["fast"]), runs["fast"]


async def test_queue_acks_ride_on_the_claim_round_trips(fleet_server: EmbeddedServer) -> None:
    """A settled claim's ack goes out with the next claim (one round trip less per app), and a
    stopping worker sends what is left: no active entry remains."""
    runs: dict[str, list[str]] = {"fast": [], "slow": []}
    fleet = FleetClient(connect(fleet_server.url))
    n = 200
    fleet.enqueue_many([EnqueueRequest("fast", app_id=f"f{i}") for i in range(n)])
    # One app at a time: no concurrent caller to share a pipeline with, so the count shows
    # what the outbox saves and nothing else.
    w = Worker(_registry(runs, {}), url=fleet_server.url, concurrency=1, poll_interval=0.02)
    await _run_until(w, lambda: len(runs["fast"]) == n)
    overview = fleet.overview()
    fleet.client.close()
    assert overview["queues"]["default"]["active"] == 0, overview
    assert overview["apps"].get("completed") == n, overview
    # claim (carrying the last app's ack), acquire, commit+settle; an ack of its own would be a
    # fourth. Idle waits (BLPOP) are not counted by the transport.
    per_app = w.fleet.transport.round_trips / n
    assert per_app < 3.5, per_app
