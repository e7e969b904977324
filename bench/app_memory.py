"""Redis memory per finished app, by key, with Burr UI tracking on (the worker's default).

    python bench/app_memory.py [--kind agent|one|ten] [--apps N]

A worker (in this process) runs N apps of ``--kind`` to completion on an embedded server; then
``MEMORY USAGE`` of every key under the run's prefix, summed by key kind (the last segment of the
key name: job, meta, snaps, track, graph...) and divided by N. ``one`` and ``ten`` are
bench/apps.py's one-action apps; ``agent`` is a graph of eight actions with the docstrings and
bodies of a small agent (what Burr's UI shows as the graph: every action's source).

The graph is stored once per distinct graph (``burr:{fleet}:graph:<digest>``), not in each app's
track hash: the last line says how many graph keys there are and what one copy per app would
have cost. Last line: ``bytes_per_app=... track_bytes_per_app=... graph_keys=...
graph_bytes=... inline_graph_bytes_per_app=...``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from burr.core import ApplicationBuilder, State, action  # noqa: E402

from bench.apps import registry  # noqa: E402
from burr_dist.fleet.registry import AppContext  # noqa: E402

AGENT_STEPS = ("plan", "search", "read", "extract", "draft", "critique", "revise", "publish")


def _agent_action(name: str, nxt: str) -> Any:
    @action(reads=["notes", "turn"], writes=["notes", "turn"])
    def step(state: State) -> State:
        """One stage of a research agent: look at the notes so far, decide what this stage adds,
        and record it with the turn it was made in. A real agent calls a model or a tool here;
        the bench keeps the body so that the graph carries source text of a realistic size.
        """
        notes = list(state["notes"])
        turn = state["turn"] + 1
        summary = {"stage": name, "turn": turn, "seen": len(notes), "next": nxt}
        if notes and notes[-1].get("stage") == name:
            summary["repeat"] = True
        notes.append(summary)
        return state.update(notes=notes[-5:], turn=turn)

    return step


@registry.app("agent", entrypoint=AGENT_STEPS[0], default_state={"notes": [], "turn": 0})
def agent(ctx: AppContext) -> ApplicationBuilder:
    nexts = (*AGENT_STEPS[1:], "")
    actions = {n: _agent_action(n, x) for n, x in zip(AGENT_STEPS, nexts, strict=True)}
    edges = list(itertools.pairwise(AGENT_STEPS))
    return ApplicationBuilder().with_actions(**actions).with_transitions(*edges)


async def run(url: str, prefix: str, kind: str, n: int) -> None:
    from burr_dist.fleet.client import FleetClient
    from burr_dist.fleet.core import EnqueueRequest
    from burr_dist.store.core import StoreConfig
    from burr_dist.transport.connect import connect
    from burr_dist.worker.process import Worker

    fleet = FleetClient(connect(url), StoreConfig(prefix=prefix))
    fleet.enqueue_many([EnqueueRequest(kind, app_id=f"a{i}") for i in range(n)])
    worker = Worker(registry, url=url, prefix=prefix, concurrency=10, poll_interval=0.02)
    task = asyncio.create_task(worker.run())
    try:
        deadline = time.monotonic() + 600
        while fleet.overview()["apps"]["completed"] < n:
            if task.done() or time.monotonic() > deadline:
                raise RuntimeError(f"apps did not complete: {fleet.overview()}")
            await asyncio.sleep(0.1)
    finally:
        worker.request_stop()
        await task
        fleet.client.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kind", default="agent", choices=("agent", "one", "ten"))
    ap.add_argument("--apps", type=int, default=500)
    args = ap.parse_args()
    from burr_dist.testing.embedded import EmbeddedServer

    prefix = "appmem"
    with EmbeddedServer() as server:
        asyncio.run(run(server.url, prefix, args.kind, args.apps))
        client = server.client()
        by_kind: dict[str, int] = defaultdict(int)
        graphs: list[int] = []
        for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            size = int(client.memory_usage(key, samples=0) or 0)
            parts = key.decode().split(":")
            if len(parts) >= 3 and parts[-2] == "graph":
                graphs.append(len(client.get(key) or b""))
                by_kind["graph"] += size
            else:
                by_kind[parts[-1]] += size
        client.close()
    n = args.apps
    print(f"kind={args.kind} apps={n} (MEMORY USAGE, bytes per app, by key kind)")
    for kind, size in sorted(by_kind.items(), key=lambda kv: -kv[1]):
        print(f"  {kind:10s} {size / n:9.1f}")
    total = sum(by_kind.values())
    inline = sum(graphs) / len(graphs) if graphs else 0.0
    print(
        f"bytes_per_app={total / n:.0f} track_bytes_per_app={by_kind.get('track', 0) / n:.0f} "
        f"graph_keys={len(graphs)} graph_bytes={sum(graphs)} inline_graph_bytes_per_app={inline:.0f}"
    )


if __name__ == "__main__":
    main()
