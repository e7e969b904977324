"""Real worker processes for the fleet end-to-end tests, and the test-only apps they run.

A worker process is started with ``python -m tests.support.fleet '<json config>'`` (cwd: the
repository root). It runs ``Worker(registry, ...).run_forever()`` on the registry of the module
named in the config (``examples.apps`` or this module), and, when ``events_key`` is set, pushes
every fleet event (claimed, step_committed, completed, ...) as a JSON line onto that Redis list so
tests can see which worker did what.

Test apps registered here (``tests.support.fleet``):

* ``slow``: ``tick`` sleeps ``delay`` seconds (default 0.3) then adds one to ``n``, until
  ``n == target``; then ``finish``. Every tick snapshot has ``n == sequence_id + 1``.
* ``gated``: ``call_gated`` raises unless the Redis key named by state ``gate`` holds ``open``
  (Redis URL from the env ``BURR_DIST_TEST_URL``); RetryPolicy(max_attempts=3, initial_delay=0.2).
"""

from __future__ import annotations

import faulthandler
import json
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from burr.core import ApplicationBuilder, State, action, expr

from burr_dist import FleetClient, Registry, RetryPolicy
from burr_dist.cli import EXIT_STORE_REWOUND
from burr_dist.errors import StoreRewound
from burr_dist.fleet.registry import AppContext, FleetEvent
from burr_dist.transport.connect import connect

ROOT = Path(__file__).resolve().parents[2]
EVENTS_KEY = "test:events"
GATED_POLICY = RetryPolicy(max_attempts=3, initial_delay=0.2, max_delay=1.0)

registry = Registry()


# -- test apps -----------------------------------------------------------------------------------
@action(reads=["n", "delay"], writes=["n"])
def tick(state: State) -> State:
    time.sleep(state["delay"])
    return state.update(n=state["n"] + 1)


@action(reads=["n"], writes=["done"])
def finish(state: State) -> State:
    return state.update(done=True)


@registry.app("slow", entrypoint="tick", default_state={"n": 0, "target": 10, "delay": 0.3})
def slow(ctx: AppContext) -> ApplicationBuilder:
    return (
        ApplicationBuilder()
        .with_actions(tick=tick, finish=finish)
        .with_transitions(("tick", "tick", expr("n < target")), ("tick", "finish"))
    )


_gate_client: Any = None  # a client of any topology (burr_dist.transport.connect.connect)


@action(reads=["gate", "calls"], writes=["calls", "result"])
def call_gated(state: State) -> State:
    global _gate_client
    if _gate_client is None:
        _gate_client = connect(os.environ["BURR_DIST_TEST_URL"])
    if _gate_client.get(state["gate"]) != b"open":
        raise RuntimeError(f"gate {state['gate']} is closed")
    return state.update(calls=state["calls"] + 1, result="through")


@action(reads=["result"], writes=["done"])
def gated_done(state: State) -> State:
    return state.update(done=True)


@registry.app(
    "gated", entrypoint="call_gated", default_state={"gate": "test:gate", "calls": 0}, retry=GATED_POLICY
)
def gated(ctx: AppContext) -> ApplicationBuilder:
    return (
        ApplicationBuilder()
        .with_actions(call_gated=call_gated, done=gated_done)
        .with_transitions(("call_gated", "done"))
    )


def _first_run_fails(key: str) -> None:
    global _gate_client
    if _gate_client is None:
        _gate_client = connect(os.environ["BURR_DIST_TEST_URL"])
    if _gate_client.incr(key) == 1:
        raise RuntimeError(f"first run of {key} fails")


@action(reads=["tag"], writes=["a"])
def step_a(state: State) -> State:
    _first_run_fails(f"test:runs:{state['tag']}:a")
    return state.update(a=True)


@action(reads=["tag"], writes=["b"])
def step_b(state: State) -> State:
    _first_run_fails(f"test:runs:{state['tag']}:b")
    return state.update(b=True)


@registry.app(
    "two_flaky_steps", entrypoint="step_a", default_state={"tag": "t"},
    retry=RetryPolicy(max_attempts=2, initial_delay=0.05, max_delay=0.1),
)  # fmt: skip
def two_flaky_steps(ctx: AppContext) -> ApplicationBuilder:
    """Each action fails on its first run only: within a 2-attempt budget per action."""
    return (
        ApplicationBuilder().with_actions(step_a=step_a, step_b=step_b).with_transitions(("step_a", "step_b"))
    )


# -- worker processes ----------------------------------------------------------------------------
@dataclass
class WorkerProc:
    """A worker subprocess. ``id`` is its worker id (as in job records and events)."""

    id: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: a crash."""
        if self.alive():
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def term(self) -> None:
        """SIGTERM: graceful stop (hand apps back at the next step boundary)."""
        if self.alive():
            os.kill(self.proc.pid, signal.SIGTERM)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


def start_worker(
    url: str,
    log_dir: Path,
    *,
    registry_module: str = "examples.apps",
    worker_id: str | None = None,
    lease_ttl: float = 1.5,
    sweep_interval: float = 0.3,
    max_steps_per_claim: int = 100,
    concurrency: int = 8,
    poll_interval: float = 0.05,
    events_key: str | None = EVENTS_KEY,
    history_dir: Path | None = None,
    env: dict[str, str] | None = None,
    wait_registered: bool = True,
    timeout: float = 20.0,
) -> WorkerProc:
    """Start a real worker process; by default return once it has heartbeated into Redis."""
    wid = worker_id or f"w-{uuid.uuid4().hex[:8]}"
    config = {
        "registry": registry_module, "url": url, "worker_id": wid, "lease_ttl": lease_ttl,
        "sweep_interval": sweep_interval, "max_steps_per_claim": max_steps_per_claim,
        "concurrency": concurrency, "poll_interval": poll_interval, "events_key": events_key,
        "history_dir": str(history_dir) if history_dir else None,
    }  # fmt: skip
    log_path = Path(log_dir) / f"worker-{wid}.log"
    child_env = {**os.environ, "BURR_DIST_TEST_URL": url, "PYTHONUNBUFFERED": "1", **(env or {})}
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.fleet", json.dumps(config)],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=child_env,
        )  # fmt: skip
    worker = WorkerProc(wid, proc, log_path, config)
    if wait_registered:
        fleet = FleetClient.from_url(url)
        try:
            wait_until(
                lambda: any(w["id"] == wid for w in fleet.workers()),
                timeout,
                f"worker {wid} never registered",
                alive=worker,
            )
        except BaseException:
            worker.kill()  # the caller never gets it to stop: no process left behind
            raise
        finally:
            fleet.client.close()
    return worker


def wait_until(
    predicate: Callable[[], Any],
    timeout: float,
    message: str = "condition",
    interval: float = 0.02,
    alive: WorkerProc | None = None,
) -> Any:
    """Poll ``predicate`` until truthy (returned); AssertionError after ``timeout`` seconds."""
    give_up = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if alive is not None and not alive.alive():
            raise AssertionError(
                f"{message}: worker {alive.id} exited ({alive.proc.returncode}):\n{alive.log()[-3000:]}"
            )
        if time.monotonic() > give_up:
            raise AssertionError(f"timed out after {timeout}s waiting for: {message}")
        time.sleep(interval)


def events(client: Any, key: str = EVENTS_KEY) -> list[dict[str, Any]]:
    """The recorded events in order, each once: an RPUSH sent again after a lost reply (a retry)
    is recognised by the event's id, so a duplicate here means the worker emitted it twice."""
    seen: set[str] = set()
    out = []
    for raw in client.lrange(key, 0, -1):
        doc = json.loads(raw)
        if doc["id"] not in seen:
            seen.add(doc["id"])
            out.append(doc)
    return out


# -- the worker process's entry point ------------------------------------------------------------
def _install_event_hook(reg: Registry, url: str, key: str) -> None:
    """Push every fleet event onto ``key`` through burr_dist's own transport (any topology; redis-py's
    asyncio Cluster client, used concurrently by many tasks, loses and repeats commands)."""
    from burr_dist import AsyncRedisStore
    from burr_dist.transport.core import Cmd

    stores: dict[int, AsyncRedisStore] = {}

    async def record(event: FleetEvent) -> None:
        import asyncio

        loop_id = id(asyncio.get_running_loop())
        if loop_id not in stores:
            stores[loop_id] = AsyncRedisStore.from_url(url)
        doc = {
            "id": uuid.uuid4().hex, "kind": event.kind, "app_id": event.app_id, "seq": event.sequence_id,
            "position": event.position, "worker": event.worker, "error": event.error, "t": time.time(),
        }  # fmt: skip
        await stores[loop_id].commands([Cmd(key, ("RPUSH", key, json.dumps(doc)))])

    reg.on()(record)


def main(argv: list[str]) -> int:
    import importlib

    from burr_dist.worker.process import Worker

    config = json.loads(argv[0])
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # a hung worker shows where, in its log
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s",
    )
    module = importlib.import_module(config["registry"])
    reg = next(v for v in vars(module).values() if isinstance(v, Registry))
    if config.get("events_key"):
        _install_event_hook(reg, config["url"], config["events_key"])
    history = None
    if config.get("history_dir"):
        from burr_dist.testing.history import HistoryRecorder

        history = HistoryRecorder(
            Path(config["history_dir"]) / f"{config['worker_id']}.jsonl", config["worker_id"]
        )
        # Modules that inject faults from inside the worker (tests/chaos/apps.py) record them too.
        if hasattr(module, "RECORDER"):
            module.RECORDER, module.WORKER_ID = history, config["worker_id"]
    if os.environ.get("CHAOS_CLOCK_JUMP") and hasattr(module, "start_clock_jumps"):
        module.start_clock_jumps()
    worker = Worker(
        reg,
        url=config["url"],
        worker_id=config["worker_id"],
        lease_ttl=config["lease_ttl"],
        sweep_interval=config["sweep_interval"],
        max_steps_per_claim=config["max_steps_per_claim"],
        concurrency=config["concurrency"],
        poll_interval=config["poll_interval"],
        history=history,
    )
    try:
        worker.run_forever()
    except StoreRewound as e:
        logging.critical("worker exits: %s", e)
        return EXIT_STORE_REWOUND
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
