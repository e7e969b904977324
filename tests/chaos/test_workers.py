"""Faults that hit worker processes: SIGKILL at random moments, SIGSTOP past the lease TTL at each
step boundary, a wall clock that jumps."""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

import pytest

from burr_dist.embedded import EmbeddedServer
from tests.chaos.apps import POINTS
from tests.chaos.harness import LARGE, LEASE_TTL, ChaosRun, size

pytestmark = pytest.mark.chaos


def kill_randomly(run: ChaosRun, rng: random.Random, every: tuple[float, float]) -> None:
    """One round of the SIGKILL loop: wait, kill a random worker, start a replacement."""
    time.sleep(rng.uniform(*every))
    live = run.live()
    if run.done() or not live:
        return
    run.kill(rng.choice(live))
    run.start_worker(wait=False)


def test_sigkill_workers(chaos_server: EmbeddedServer, tmp_path: Path) -> None:
    apps, steps = size((30, 10))
    rng = random.Random(7)
    run = ChaosRun("worker SIGKILL", chaos_server, tmp_path, apps=apps, steps=steps, delay=0.2, stagger=0.5)
    with run:
        for _ in range(3):
            run.start_worker()
        run.enqueue()
        run.wait(240 if LARGE else 90, lambda: kill_randomly(run, rng, (0.3, 1.0)))
        report = run.finish()
    report.assert_ok(min_faults=3)


def process_state(pid: int) -> str:
    """The one-letter state from /proc (T: stopped)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2]


@pytest.mark.parametrize("point", POINTS)
def test_sigstop_past_ttl_at_each_boundary(chaos_server: EmbeddedServer, tmp_path: Path, point: str) -> None:
    """The victim stops itself at ``point`` (after lease, after load, before commit, before
    release) when armed; it stays stopped for longer than its lease TTL, then resumes as a zombie
    whose every write must be refused while the apps it held go on elsewhere."""
    apps, steps = size((24, 8))
    pauses = 6 if LARGE else 2
    name = f"worker SIGSTOP {point.replace('_', ' ')}"
    with ChaosRun(name, chaos_server, tmp_path, apps=apps, steps=steps, delay=0.2, stagger=1.5) as run:
        victim = run.start_worker(env={"CHAOS_PAUSE_AT": point})
        for _ in range(2):
            run.start_worker()
        run.enqueue()
        control = run.fleet.client
        done_pauses = 0
        give_up = time.monotonic() + (300 if LARGE else 90)
        while done_pauses < pauses and time.monotonic() < give_up and not run.done():
            control.set(f"chaos:arm:{victim.id}", "1")
            armed_at = time.monotonic()
            while process_state(victim.pid) != "T" and time.monotonic() - armed_at < 10 and not run.done():
                time.sleep(0.01)
            if process_state(victim.pid) != "T":
                break  # the apps finished before the victim reached the point again
            time.sleep(LEASE_TTL * 1.5)  # the fault itself was recorded by the victim
            victim.proc.send_signal(signal.SIGCONT)
            done_pauses += 1
            time.sleep(0.5)
        control.delete(f"chaos:arm:{victim.id}")
        run.wait(240 if LARGE else 90)
        report = run.finish(note=f"{done_pauses} pauses of {LEASE_TTL * 1.5:.2f}s")
    assert victim.alive() is False  # stopped by finish(), not crashed: check its log for errors
    assert "Traceback" not in victim.log() or "LeaseLost" in victim.log(), victim.log()[-3000:]
    report.assert_ok(min_faults=pauses)
