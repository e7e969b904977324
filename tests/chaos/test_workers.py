"""Faults that hit worker processes: SIGKILL at random moments, SIGSTOP past the lease TTL at each
step boundary, a wall clock that jumps."""

from __future__ import annotations

import random
import signal
import time
from datetime import datetime
from pathlib import Path

import pytest

from burr_dist import FleetClient
from burr_dist.testing.embedded import EmbeddedServer
from burr_dist.testing.history import load_history, operations
from tests.chaos.apps import POINTS
from tests.chaos.harness import LARGE, LEASE_TTL, ChaosRun, Report, size, spread

pytestmark = pytest.mark.chaos


def kill_randomly(run: ChaosRun, rng: random.Random, every: tuple[float, float]) -> None:
    """One round of the SIGKILL loop: wait, kill a random worker, start a replacement and wait for
    it to register. The survivors can hold every app (see ChaosRun), so the wait an app sees
    measures recovery; killing faster than replacements start would measure lost capacity."""
    time.sleep(rng.uniform(*every))
    live = run.live()
    if run.done() or not live:
        return
    run.kill(rng.choice(live))
    run.start_worker(wait=True)


def kill_run(name: str, server: EmbeddedServer, tmp: Path, seed: int, every: tuple[float, float],
             env: dict[str, str] | None = None) -> tuple[ChaosRun, Report]:  # fmt: skip
    """30 (small) or 200 apps on 3 workers, a random one SIGKILLed and replaced every ``every``."""
    apps, steps = size((30, 10))
    rng = random.Random(seed)
    run = ChaosRun(name, server, tmp, apps=apps, steps=steps, delay=spread(0.2, 0.5), stagger=0.5, env=env)
    with run:
        run.launch()
        run.wait(between=lambda: kill_randomly(run, rng, every))
        return run, run.finish()


def test_sigkill_workers(chaos_server: EmbeddedServer, tmp_path: Path) -> None:
    _, report = kill_run("worker SIGKILL", chaos_server, tmp_path, 7, (0.3, 1.0))
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
    with ChaosRun(
        name, chaos_server, tmp_path, apps=apps, steps=steps, delay=0.2, stagger=spread(1.5, 3.5)
    ) as run:
        # The victim polls 5x as often, so it wins most claims and holds apps whenever it is armed.
        victim = run.start_worker(env={"CHAOS_PAUSE_AT": point}, poll_interval=0.01)
        for _ in range(2):
            run.start_worker()
        run.enqueue()
        control = run.fleet.client
        done_pauses = 0
        give_up = time.monotonic() + (300 if LARGE else 90)
        while done_pauses < pauses and time.monotonic() < give_up and not run.done():
            control.set(f"chaos:arm:{victim.id}", "1")
            while process_state(victim.pid) != "T" and time.monotonic() < give_up and not run.done():
                time.sleep(0.01)
            if process_state(victim.pid) != "T":
                break  # the apps finished before the victim reached the point again
            time.sleep(LEASE_TTL * 1.5)  # the fault itself was recorded by the victim
            victim.proc.send_signal(signal.SIGCONT)
            done_pauses += 1
            time.sleep(0.5)
        control.delete(f"chaos:arm:{victim.id}")
        run.wait()
        survived = victim.alive()  # resumed and kept working: a zombie is refused, not crashed
        report = run.finish(note=f"{done_pauses} pauses of {LEASE_TTL * 1.5:.2f}s")
    assert survived, victim.log()[-3000:]
    # On waking it found the leases it held gone (its deadline passed, or Redis refused it).
    assert "lost:" in victim.log(), victim.log()[-3000:]
    report.assert_ok(min_faults=pauses)


def test_wall_clock_jumps(chaos_server: EmbeddedServer, tmp_path: Path) -> None:
    """Every worker's wall clock jumps by up to an hour either way, several times a second, while
    workers are SIGKILLed: leases, deadlines and claim expiry use the monotonic clock and Redis
    TIME, so nothing may change, recovery times included. (The machine's clock cannot be moved:
    Redis shares it; the workers' time.time is shifted in-process, see tests/chaos/apps.py.)"""
    env = {"CHAOS_CLOCK_JUMP": "1"}
    run, report = kill_run("worker wall clock jumps + SIGKILL", chaos_server, tmp_path, 11, (0.3, 1.0), env)
    # The jumps reached the workers' code: snapshot timestamps (time.time_ns) are off by minutes.
    fleet = FleetClient.from_url(chaos_server.url)
    stamps = [
        datetime.fromisoformat(step["created_at"]).timestamp()
        for pk, app_id in run.apps[:5]
        for step in fleet.history(app_id, partition_key=pk)
    ]
    fleet.client.close()
    assert max(abs(t - time.time()) for t in stamps) > 300, "the wall clock never jumped"
    faults = [o.note or "" for o in operations(load_history(tmp_path / "history")) if o.op == "fault"]
    # Kills wait for a replacement worker to register (about a second here), so a small run fits 2-4.
    assert sum(f.startswith("clock_jump") for f in faults) >= 10 and faults.count("sigkill") >= 2, faults
    report.assert_ok(min_faults=3)
