"""Claiming ahead (burr_dist/claiming.py, Slots): while claims are short a worker holds up to
``prefetch`` claims beyond ``concurrency``, leased and waiting for a slot, and still runs at most
``concurrency`` at once; long apps are never claimed ahead; a stop hands the waiting ones back."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from burr.core import ApplicationBuilder, State, action

from burr_dist import FleetClient, Registry
from burr_dist.claiming import PREFETCH_BELOW, PREFETCH_WINDOW, Slots
from burr_dist.connection import connect
from burr_dist.embedded import EmbeddedServer
from burr_dist.errors import ConfigurationError
from burr_dist.queue import EnqueueRequest
from burr_dist.registry import AppContext
from burr_dist.worker import Worker


def test_slots_claim_ahead_only_while_every_recent_claim_was_short() -> None:
    s = Slots(concurrency=4, prefetch=2)
    assert s.room(0) == 4  # nothing ran yet: no claim ahead
    for _ in range(PREFETCH_WINDOW - 1):
        s.ran(0.002)
    assert s.room(0) == 4  # not yet a window's worth of claims
    s.ran(0.002)
    assert s.room(0) == 6 and s.room(6) == 0 and s.room(5) == 1
    s.ran(PREFETCH_BELOW)  # one long claim: none ahead until it leaves the window
    assert s.room(3) == 1 and s.room(4) == 0
    for _ in range(PREFETCH_WINDOW - 1):
        s.ran(0.002)
    assert s.room(0) == 4
    s.ran(0.002)
    assert s.room(0) == 6
    assert Slots(concurrency=4, prefetch=0).room(0) == 4


def test_bad_prefetch_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="prefetch must be >= 0"):
        Worker(Registry(), url="redis://127.0.0.1:1/0", prefetch=-1)
    assert Worker(Registry(), url="redis://127.0.0.1:1/0", concurrency=10).slots.prefetch == 5


def _registry(seconds: float, running: list[int], peak: list[int]) -> Registry:
    reg = Registry()

    @action(reads=[], writes=["done"])
    async def work(state: State) -> State:
        running[0] += 1
        peak[0] = max(peak[0], running[0])
        try:
            await asyncio.sleep(seconds)
        finally:
            running[0] -= 1
        return state.update(done=True)

    @reg.app("work", entrypoint="work")
    def factory(ctx: AppContext) -> ApplicationBuilder:
        return ApplicationBuilder().with_actions(work=work)

    @reg.on("completed")
    def completed(event: Any) -> None:
        peak[1] += 1  # apps completed (the test counts here: a status read would block the loop)

    return reg


async def _watch(
    fleet_server: EmbeddedServer, seconds: float, n: int, stop_after: float | None = None
) -> dict[str, Any]:
    """Run ``n`` apps whose action takes ``seconds`` on a worker (concurrency 2, prefetch 2);
    the most actions running at once and the most claims held, sampled every loop turn."""
    running, peak = [0], [0, 0]
    fleet = FleetClient(connect(fleet_server.url))
    fleet.enqueue_many([EnqueueRequest("work", app_id=f"w{i}") for i in range(n)])
    w = Worker(_registry(seconds, running, peak), url=fleet_server.url, concurrency=2, prefetch=2,
               poll_interval=0.02, lease_ttl=5)  # fmt: skip
    task = asyncio.create_task(w.run())
    held = 0
    started = time.monotonic()
    try:
        while peak[1] < n:
            assert not task.done(), task
            assert time.monotonic() - started < 60, peak
            held = max(held, w.held_apps)
            if stop_after is not None and time.monotonic() - started > stop_after and w.held_apps > 2:
                break
            await asyncio.sleep(0)
    finally:
        w.request_stop()
        await task
    out = {"peak_running": peak[0], "peak_held": held, "counts": fleet.overview()["apps"]}
    fleet.client.close()
    return out


async def test_short_apps_are_claimed_ahead_but_run_two_at_a_time(fleet_server: EmbeddedServer) -> None:
    seen = await _watch(fleet_server, 0.005, 60)
    assert seen["peak_running"] == 2, seen
    assert seen["peak_held"] == 4, seen  # 2 running + 2 leased, waiting for a slot


async def test_long_apps_are_not_claimed_ahead(fleet_server: EmbeddedServer) -> None:
    seen = await _watch(fleet_server, 2 * PREFETCH_BELOW, 8)
    assert seen["peak_running"] == 2 and seen["peak_held"] == 2, seen


async def test_a_stop_hands_back_the_apps_claimed_ahead(fleet_server: EmbeddedServer) -> None:
    seen = await _watch(fleet_server, 0.005, 200, stop_after=0.3)
    counts = seen["counts"]
    assert counts["running"] == 0, counts  # none left leased by the stopped worker
    assert counts["completed"] + counts["queued"] == 200, counts
    assert counts["queued"] > 0, counts
