"""A factory that uses Burr's own ``.with_tracker("local")`` under the worker, resumed on "another
machine" (another tracker directory, without the app's graph.json): Burr 0.43 passes
``ParentPointer(app_id=None)`` after any load and LocalTrackingClient would then fail the build
with a pydantic ValidationError; the worker passes no parent pointer for a resume instead."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from burr.core import ApplicationBuilder, State, action

from burr_dist import FleetClient, Registry
from burr_dist.fleet.registry import AppContext
from burr_dist.testing.embedded import EmbeddedServer
from burr_dist.transport.connect import connect
from burr_dist.worker.process import Worker

registry = Registry()
MACHINE: dict[str, str] = {}  # the tracker's storage_dir: which "machine" builds the app


@action(reads=["topic"], writes=["draft"])
def draft(state: State) -> State:
    return state.update(draft=f"about {state['topic']}")


@action(reads=["draft"], writes=["approved"])
def review(state: State, approved: bool) -> State:
    return state.update(approved=approved)


@registry.app("tracked", entrypoint="draft", default_state={"topic": "q3"}, halt_before=["review"])
def tracked(ctx: AppContext) -> ApplicationBuilder:
    return (
        ApplicationBuilder()
        .with_actions(draft=draft, review=review)
        .with_transitions(("draft", "review"))
        .with_tracker("local", project="fleet", params={"storage_dir": MACHINE["dir"]})
    )


async def run_until(fleet: FleetClient, url: str, app_id: str, status: str) -> None:
    worker = Worker(registry, url=url, lease_ttl=2, sweep_interval=0.2, poll_interval=0.05)
    task = asyncio.create_task(worker.run())
    try:
        for _ in range(300):
            if fleet.show(app_id)["status"] == status:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(fleet.show(app_id))
    finally:
        worker.request_stop()
        await task


def read_log(root: Path, app_id: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (root / "fleet" / app_id / "log.jsonl").read_text().splitlines()]


async def test_local_tracker_works_when_the_app_resumes_on_another_machine(
    fleet_server: EmbeddedServer, tmp_path: Path
) -> None:
    fleet = FleetClient(connect(fleet_server.url))
    a, b = tmp_path / "machine-a", tmp_path / "machine-b"
    MACHINE["dir"] = str(a)
    fleet.enqueue("tracked", "memo")
    await run_until(fleet, fleet_server.url, "memo", "waiting")
    MACHINE["dir"] = str(b)  # resumed where the app's directory does not exist
    fleet.resume("memo", {"approved": True})
    await run_until(fleet, fleet_server.url, "memo", "completed")
    job = fleet.show("memo")
    assert job["status"] == "completed" and not job.get("last_error"), job
    assert fleet.history("memo")[-1]["state"]["approved"] is True
    fleet.client.close()
    # Each machine tracked the steps it ran; B's metadata has no parent (a resume is not a fork).
    steps = {
        root.name: [r["action"] for r in read_log(root, "memo") if r["type"] == "end_entry"]
        for root in (a, b)
    }
    assert steps == {"machine-a": ["draft"], "machine-b": ["review"]}
    meta = json.loads((b / "fleet" / "memo" / "metadata.json").read_text())
    assert meta["parent_pointer"] is None and meta["partition_key"] in (None, "default")
