"""Fleet hooks (``Registry.on``) on a real worker: a claim's hooks are called one at a time, in the
order of what they report (``claimed``, each ``step_committed``, then how the claim ended), for
sync apps as for async ones, and a worker that stops has finished every hook call of its claims."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from burr.core import ApplicationBuilder, State, action, expr

from burr_dist import FleetClient, Registry
from burr_dist.fleet.registry import FleetEvent
from burr_dist.testing.embedded import EmbeddedServer
from burr_dist.transport.connect import connect
from burr_dist.worker.process import Worker

STEPS = 4
SLOW_HOOK = 0.1  # seconds a claimed / step_committed hook takes: far longer than a step


@action(reads=["n"], writes=["n"])
def tick(state: State) -> State:
    return state.update(n=state["n"] + 1)


@action(reads=["n"], writes=["n"])
async def atick(state: State) -> State:
    return state.update(n=state["n"] + 1)


def ticks(act: Any) -> ApplicationBuilder:
    return (
        ApplicationBuilder().with_actions(tick=act).with_transitions(("tick", "tick", expr(f"n < {STEPS}")))
    )


def registry_with(log: list[tuple[str, str, int | None]]) -> Registry:
    reg = Registry()
    reg.app("sync_ticks", entrypoint="tick", default_state={"n": 0})(lambda ctx: ticks(tick))
    reg.app("async_ticks", entrypoint="tick", default_state={"n": 0})(lambda ctx: ticks(atick))

    @reg.on()
    async def record(event: FleetEvent) -> None:
        log.append(("start", event.kind, event.sequence_id))
        if event.kind in ("claimed", "step_committed"):
            await asyncio.sleep(SLOW_HOOK)
        log.append(("end", event.kind, event.sequence_id))

    return reg


@pytest.mark.parametrize("app", ["sync_ticks", "async_ticks"])
async def test_a_claims_hooks_run_in_order_and_are_done_when_the_worker_stops(
    fleet_server: EmbeddedServer, app: str
) -> None:
    log: list[tuple[str, str, int | None]] = []
    fleet = FleetClient(connect(fleet_server.url))
    fleet.enqueue(app, "h1")
    worker = Worker(registry_with(log), url=fleet_server.url, poll_interval=0.02, lease_ttl=5.0)
    task = asyncio.create_task(worker.run())
    try:
        give_up = time.monotonic() + 15
        while fleet.job("h1")["status"] != "completed":
            assert time.monotonic() < give_up, fleet.job("h1")
            assert not task.done(), task
            await asyncio.sleep(0.01)
    finally:
        worker.request_stop()  # at once: hooks of the claim may still be running
        await task
        fleet.client.close()
    # In the order of what they report (the claim, each step, the end), each call returned before
    # the next began, and all of them before the worker's run() returned.
    reported = [
        ("claimed", None),
        *(("step_committed", seq) for seq in range(STEPS)),
        ("completed", STEPS - 1),
    ]
    assert log == [(phase, kind, seq) for kind, seq in reported for phase in ("start", "end")], log


async def test_a_claim_ending_after_the_next_claim_of_its_app_began_leaves_that_claim_tracked(
    fleet_server: EmbeddedServer,
) -> None:
    """Handed back after each step, the app is due again at once; the handed_back hook is slow, so
    the worker claims the app again while the claim before is still in that hook. That claim is
    the app's next run, not a stale duplicate entry (it was left in active, run by no one, until
    the sweep: one claim in this test). And the claim that ends must not take the newer claim's
    place in the worker's books: that one would run beyond the concurrency, unwatched (no
    deadline touches), and on after the worker stopped."""
    live: list[int] = []  # claims between their claimed hook and the end of their last hook
    most = 0
    reg = Registry()
    reg.app("ticks", entrypoint="tick", default_state={"n": 0})(lambda ctx: ticks(tick))

    @reg.on("claimed")
    def began(event: FleetEvent) -> None:
        nonlocal most
        live.append(1)
        most = max(most, len(live))

    @reg.on("handed_back", "completed")
    async def ended(event: FleetEvent) -> None:
        await asyncio.sleep(0.2)
        live.pop()

    fleet = FleetClient(connect(fleet_server.url))
    fleet.enqueue("ticks", "h2", state={"n": -100})  # more steps than the test lets it run
    worker = Worker(reg, url=fleet_server.url, poll_interval=0.02, lease_ttl=5.0, max_steps_per_claim=1,
                    concurrency=2)  # fmt: skip
    task = asyncio.create_task(worker.run())
    try:
        await asyncio.sleep(1.5)
    finally:
        worker.request_stop()
        await task
    job = fleet.show("h2")
    fleet.client.close()
    assert job["claims"] >= 3 and job["sequence_id"] < 99, job
    assert most <= 2, f"{most} claims at once with concurrency 2"
    assert live == [], f"{len(live)} claims still running after the worker stopped"
    assert job["lease_holder"] is None and job["status"] == "queued", job
