"""The app the chaos scenarios run, and the faults a worker process injects into itself.

``chaos``: ``tick`` adds one to ``n`` and draws a fresh nonce ``r`` until ``n == target``, then
``finish``. The nonce makes two executions of one step write different states, so a stored state
that is not the one its recorded writer wrote shows up as a digest mismatch.

Faults a worker can only inject into itself, at a precise point (env of the worker process):

* ``CHAOS_PAUSE_AT=after_lease|after_load|before_commit|before_release``: when the harness arms
  this worker (Redis key ``chaos:arm:<worker id>`` on ``CHAOS_CONTROL_URL``), the next time it
  reaches that point it records the fault in its history and stops itself with SIGSTOP; the
  harness sends SIGCONT after the lease TTL has passed.
* ``CHAOS_CLOCK_JUMP=1``: the process's wall clock (``time.time``, ``time.time_ns``) jumps by up
  to an hour, forwards and backwards, every 0.3 s (see :func:`start_clock_jumps`).
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time

import redis
from burr.core import ApplicationBuilder, State, action, expr

from burr_dist import Registry
from burr_dist.fleet.registry import AppContext, FleetEvent
from burr_dist.testing.history import HistoryRecorder, app_key

POINTS = ("after_lease", "after_load", "before_commit", "before_release")

registry = Registry()
RECORDER: HistoryRecorder | None = None  # set by the worker process (tests/support/fleet.py)
WORKER_ID = ""
_control: redis.Redis | None = None


def maybe_pause(point: str, app: str) -> None:
    """SIGSTOP this process at ``point`` if the harness armed it."""
    global _control
    if os.environ.get("CHAOS_PAUSE_AT") != point:
        return
    if _control is None:
        _control = redis.Redis.from_url(os.environ["CHAOS_CONTROL_URL"])
    if _control.getdel(f"chaos:arm:{WORKER_ID}") is None:
        return
    if RECORDER is not None:
        RECORDER.fault(f"sigstop:{point}", app, target=WORKER_ID)
    os.kill(os.getpid(), signal.SIGSTOP)  # the harness sends SIGCONT


@action(reads=["n", "delay"], writes=["n", "r"])
def tick(state: State) -> State:
    if state["delay"]:
        time.sleep(state["delay"])
    new = state.update(n=state["n"] + 1, r=os.urandom(4).hex())
    maybe_pause("before_commit", state["app"])
    return new


@action(reads=["n"], writes=["done"])
def finish(state: State) -> State:
    return state.update(done=True)


@registry.app("chaos", entrypoint="tick", default_state={"n": 0, "target": 10, "delay": 0.0, "app": ""})
def chaos(ctx: AppContext) -> ApplicationBuilder:
    maybe_pause("after_lease", app_key(ctx.partition_key, ctx.app_id))
    return (
        ApplicationBuilder()
        .with_actions(tick=tick, finish=finish)
        .with_transitions(("tick", "tick", expr("n < target")), ("tick", "finish"))
    )


@registry.on("claimed", "step_committed")
def _pause_points(event: FleetEvent) -> None:
    app = app_key(event.partition_key, event.app_id)
    if event.kind == "claimed":
        maybe_pause("after_load", app)
    elif event.position == "finish":
        maybe_pause("before_release", app)  # the next thing this worker does is settle


def start_clock_jumps(seed: int | None = None) -> None:
    """Make this process's wall clock jump (it cannot touch the machine's clock: Redis shares it).
    Leases, deadlines and claim expiry must not notice: they use time.monotonic and Redis TIME."""
    rng = random.Random(seed)
    real_time, real_time_ns = time.time, time.time_ns
    offset = [0.0]

    def jump() -> None:
        while True:
            time.sleep(0.3)
            offset[0] = rng.uniform(-3600, 3600)
            if RECORDER is not None:
                RECORDER.fault(f"clock_jump:{offset[0]:+.0f}s")

    time.time = lambda: real_time() + offset[0]  # type: ignore[assignment]
    time.time_ns = lambda: real_time_ns() + int(offset[0] * 1e9)  # type: ignore[assignment]
    threading.Thread(target=jump, name="chaos-clock", daemon=True).start()
