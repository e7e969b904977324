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
* an action that never ran fast in the pool never runs on the loop (an LLM call, a sleep).

``budget=0`` turns it off: every sync action runs in the pool.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)

DEMOTE_FACTOR = 10  # a run on the loop this many budgets long sends the action back to the pool


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

    def inline(self, app: str, action: str) -> bool:
        """Whether the next run of ``action`` (of app ``app``) goes on the event loop."""
        seen = self._seen.get((app, action))
        if seen is None:
            return False
        return seen.runs >= self.warmup * DEMOTE_FACTOR**seen.demotions and seen.fastest < self.budget

    def observe(self, app: str, action: str, seconds: float, *, inline: bool) -> None:
        """A run of ``action`` took ``seconds`` (on the loop when ``inline``)."""
        if self.budget <= 0:
            return
        seen = self._seen.setdefault((app, action), _Seen())
        if not inline:
            seen.runs += 1
            seen.fastest = min(seen.fastest, seconds)
        elif seconds > DEMOTE_FACTOR * self.budget:
            seen.demotions += 1
            seen.runs, seen.fastest = 0, float("inf")
            log.warning(
                "sync action %r of app %r took %.1f ms on the event loop; it runs in the thread pool "
                "until %d runs there show it fast again", action, app, seconds * 1000,
                self.warmup * DEMOTE_FACTOR**seen.demotions, extra={"event": "inline_demoted"},
            )  # fmt: skip
