"""Where a sync Burr action runs: on the worker's event loop, or in its thread pool.

A hop to the pool and back costs two thread switches and a fight for the GIL with the loop, which
is more than a fast action itself (a one-step app spent more time in the hop than in Burr). An
action that blocks on I/O must not run on the loop: every other app of the worker, and the
renewal of their leases, would wait for it. So the worker learns it per action (app name and
action name; sans-IO here, the runner measures):

* an action runs in the pool until it has run there ``warmup`` times; if its fastest run took
  less than ``budget`` seconds, it runs on the loop from then on;
* an action that takes longer than ``10 * budget`` on the loop goes back to the pool (a warning
  names it) and starts over, needing 10 times as many pool runs as the last time (3, 30, 300...)
  before it runs on the loop again: an action that blocks now and then stalls the loop a few
  times in a worker's life, while one that was only slowed once (a pool thread holding the GIL,
  a GC pause) gets back to the loop;
* an action that never ran fast in the pool never runs on the loop (an LLM call, a sleep);
* a long run on the loop in which the thread neither slept nor used that much CPU was not the
  action's doing: the OS ran something else (a busy host, a VM's stolen time). Where the OS counts
  a thread's context switches (Linux ``RUSAGE_THREAD``) such a run is not held against the action;
  without those counts every long run is.

``budget=0`` turns it off: every sync action runs in the pool.

A sync action of an app built with ``abuild()`` (one with an async action) always runs on the
loop: Burr's ``astep`` runs it there and refuses ``step()``. :meth:`InlinePolicy.on_loop` only
warns, once per action, when such a run is long enough to have held up the other apps.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

log = logging.getLogger(__name__)

DEMOTE_FACTOR = 10  # a run on the loop this many budgets long sends the action back to the pool
try:
    import resource

    _THREAD: int | None = getattr(resource, "RUSAGE_THREAD", None)  # Linux only
except ImportError:  # not on this OS
    _THREAD = None
T = TypeVar("T")


def thread_usage() -> tuple[int, float] | None:
    """The calling thread's voluntary context switches (it slept: I/O, a lock, a sleep) and its CPU
    seconds, or None where the OS does not count them per thread."""
    if _THREAD is None:
        return None
    ru = resource.getrusage(_THREAD)
    return ru.ru_nvcsw, ru.ru_utime + ru.ru_stime


@dataclass
class _Seen:
    runs: int = 0  # runs in the pool since the last demotion
    fastest: float = float("inf")  # seconds, of those runs
    demotions: int = 0


class InlinePolicy:
    def __init__(self, budget: float = 0.002, warmup: int = 3) -> None:
        if not budget >= 0:  # also refuses NaN
            raise ValueError(f"inline budget must be >= 0 s, got {budget!r}")
        if warmup < 1:
            raise ValueError(f"inline warmup must be >= 1 run, got {warmup!r}")
        self.budget = budget
        self.warmup = warmup
        self._seen: dict[tuple[str, str], _Seen] = {}
        self._warned: set[tuple[str, str]] = set()  # sync actions of async apps, slow on the loop

    def inline(self, app: str, action: str) -> bool:
        """Whether the next run of ``action`` (of app ``app``) goes on the event loop."""
        seen = self._seen.get((app, action))
        if seen is None:
            return False
        return seen.runs >= self.warmup * DEMOTE_FACTOR**seen.demotions and seen.fastest < self.budget

    def run(self, app: str, action: str, step: Callable[[], T]) -> T:
        """``step()`` on the calling thread (the loop's), observed as an inline run."""
        before = thread_usage()  # 0.5 us: read before every run, after it only when it was long
        started = time.perf_counter()
        try:
            return step()
        finally:
            seconds = time.perf_counter() - started
            slept = cpu = None
            if before is not None and seconds > DEMOTE_FACTOR * self.budget:
                after = thread_usage()
                assert after is not None
                slept, cpu = after[0] - before[0], after[1] - before[1]
            self.observe(app, action, seconds, inline=True, slept=slept, cpu=cpu)

    def on_loop(self, app: str, action: str, seconds: float) -> None:
        """A sync action of an async app ran on the loop (there is nowhere else: Burr's astep)."""
        if seconds <= DEMOTE_FACTOR * self.budget or (app, action) in self._warned or self.budget <= 0:
            return
        self._warned.add((app, action))
        log.warning(
            "sync action %r of async app %r took %.1f ms on the event loop (Burr's astep runs the sync "
            "actions of an async app there); other apps of this worker waited: make it async (e.g. "
            "await asyncio.to_thread(...))", action, app, seconds * 1000, extra={"event": "inline_forced"},
        )  # fmt: skip

    def observe(
        self, app: str, action: str, seconds: float, *, inline: bool,
        slept: int | None = None, cpu: float | None = None,
    ) -> None:  # fmt: skip
        """A run of ``action`` took ``seconds`` (on the loop when ``inline``). ``slept`` and ``cpu``
        (inline runs, where known): the thread's voluntary context switches and CPU seconds in it."""
        if self.budget <= 0:
            return
        seen = self._seen.setdefault((app, action), _Seen())
        limit = DEMOTE_FACTOR * self.budget
        if not inline:
            seen.runs += 1
            seen.fastest = min(seen.fastest, seconds)
        elif seconds > limit and slept == 0 and cpu is not None and cpu <= limit:
            # Never slept, never busy that long: it waited for a CPU, not for I/O.
            log.debug("sync action %r of app %r took %.1f ms on the event loop, %.1f ms of it on a CPU "
                      "and without sleeping: the host was busy; it stays on the loop", action, app,
                      seconds * 1000, cpu * 1000, extra={"event": "inline_preempted"})  # fmt: skip
        elif seconds > limit:
            seen.demotions += 1
            seen.runs, seen.fastest = 0, float("inf")
            log.warning(
                "sync action %r of app %r took %.1f ms on the event loop; it runs in the thread pool "
                "until %d runs there show it fast again", action, app, seconds * 1000,
                self.warmup * DEMOTE_FACTOR**seen.demotions, extra={"event": "inline_demoted"},
            )  # fmt: skip
