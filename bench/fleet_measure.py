"""Measuring tools of bench/fleet.py: INFO deltas of the server, child processes released
together and reporting on stdout, the rows and the report."""

from __future__ import annotations

import argparse
import json
import math
import os
import queue
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from bench.apps import STEPS

ROOT = Path(__file__).resolve().parents[1]
PHASE_TIMEOUT = 300.0
WORK = {"one": "1-step sync", "ten": "10-step sync", "one_async": "1-step async",
        "ten_async": "10-step async", "noop": "no-op job"}  # fmt: skip


# -- measuring -----------------------------------------------------------------------------------
def percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    xs = sorted(values)
    return xs[min(len(xs) - 1, max(0, math.ceil(q * len(xs)) - 1))]


@dataclass
class ServerDelta:
    """What the server did between two INFO snapshots (minus the first INFO itself)."""

    cpu_us: float = 0.0
    commands: int = 0
    cmdstats: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (calls, usec)
    workers_cpu_us: float = math.nan  # the system's worker processes over the same phase (/proc)


class ServerMeter:
    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.start: dict[str, Any] = {}

    def _info(self) -> dict[str, Any]:
        return dict(self.client.execute_command("INFO", "cpu", "stats", "commandstats"))

    def begin(self) -> None:
        self.start = self._info()

    def end(self) -> ServerDelta:
        a, b = self.start, self._info()

        def cpu(i: dict[str, Any]) -> float:
            return float(i["used_cpu_sys"]) + float(i["used_cpu_user"])

        stats = {}
        for key, v in b.items():
            if key.startswith("cmdstat_") and key != "cmdstat_info":
                was = a.get(key, {"calls": 0, "usec": 0})
                if v["calls"] > was["calls"]:
                    stats[key[8:]] = (v["calls"] - was["calls"], v["usec"] - was["usec"])
        commands = int(b["total_commands_processed"]) - int(a["total_commands_processed"]) - 1
        return ServerDelta((cpu(b) - cpu(a)) * 1e6, commands, stats)


@dataclass
class Row:
    system: str
    procs: int
    kind: str
    apps: int
    seconds: float
    server: ServerDelta
    round_trips: int | None
    times: list[list[float]]  # per app: enqueue, first step, done (Unix seconds)

    @property
    def steps(self) -> int:
        return self.apps * STEPS.get(self.kind, 1)

    def rate(self, what: str) -> float:
        n = self.apps if what == "apps" else self.steps
        return n / self.seconds if self.seconds > 0 else math.nan

    def latency_ms(self, col: int, q: float) -> float:
        return percentile([(t[col] - t[0]) * 1000 for t in self.times], q)

    def line(self) -> str:
        per = {"us_app": self.server.cpu_us / self.apps, "us_step": self.server.cpu_us / self.steps,
               "wrk_app": self.server.workers_cpu_us / self.apps}  # fmt: skip
        rt = f"{self.round_trips / self.apps:7.1f}" if self.round_trips is not None else f"{'-':>7s}"
        lat = " ".join(f"{self.latency_ms(c, q):8.1f}" for c in (1, 2) for q in (0.5, 0.99))
        return (f"{self.system:9s} {self.procs:5d} {WORK[self.kind]:13s} {self.apps:6d} {self.steps:6d} "
                f"{self.seconds:7.2f} {self.rate('apps'):7.0f} {self.rate('steps'):7.0f} "
                f"{per['us_app']:9.1f} {per['us_step']:9.1f} {per['wrk_app']:9.1f} "
                f"{self.server.commands / self.apps:8.1f} "
                f"{rt} {lat}")  # fmt: skip


HEADER = (f"{'system':9s} {'procs':>5s} {'work':13s} {'apps':>6s} {'steps':>6s} {'seconds':>7s} "
          f"{'apps/s':>7s} {'steps/s':>7s} {'srvus/app':>9s} {'srvus/stp':>9s} {'wrkus/app':>9s} {'cmds/app':>8s} "
          f"{'rt/app':>7s} {'1st_p50':>8s} {'1st_p99':>8s} {'done_p50':>8s} {'done_p99':>8s}")  # fmt: skip


class Children:
    """Child processes released together; their stdout lines arrive on one queue."""

    def __init__(self, cmds: list[list[str]], logdir: str, name: str) -> None:
        self.logdir = logdir
        self.lines: queue.Queue[tuple[int, str | None]] = queue.Queue()
        self.payloads: list[dict[str, Any]] = []
        self.procs: list[subprocess.Popen[str]] = []
        self.eof = 0
        for i, cmd in enumerate(cmds):
            with open(os.path.join(logdir, f"{name}-{i}.log"), "w") as err:
                p = subprocess.Popen(
                    cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True,
                    env={**os.environ, "PYTHONPATH": str(ROOT)},
                )  # fmt: skip
            self.procs.append(p)
            threading.Thread(target=self._read, args=(i, p), daemon=True).start()

    def _read(self, i: int, p: subprocess.Popen[str]) -> None:
        assert p.stdout is not None
        for line in p.stdout:
            self.lines.put((i, line.strip()))
        self.lines.put((i, None))

    def wait_for(self, word: str, count: int, timeout: float = PHASE_TIMEOUT) -> None:
        """Until lines starting with ``word`` counted ``count`` (over all children): a line
        ``<word> <n>`` counts n, a bare ``<word>`` one."""
        give_up = time.monotonic() + timeout
        seen = 0
        while seen < count:
            try:
                _, line = self.lines.get(timeout=max(0.0, give_up - time.monotonic()))
            except queue.Empty:
                self.kill()
                raise RuntimeError(
                    f"waited {timeout:.0f}s for {count} {word!r}; logs in {self.logdir}"
                ) from None
            if line is None:
                self.eof += 1
                if self.eof == len(self.procs):
                    raise RuntimeError(f"children exited before {count} {word!r}; logs in {self.logdir}")
                continue
            if line.startswith("json "):
                self.payloads.append(json.loads(line[5:]))
            parts = line.split(" ")
            if parts[0] == word:  # "<word>" or "<word> <count>"
                seen += int(parts[1]) if len(parts) == 2 and parts[1].isdigit() else 1

    def cpu_seconds(self) -> float:
        """User + system CPU of the children so far (Linux /proc, in clock ticks: 10 ms), or NaN."""
        total = 0.0
        try:
            for p in self.procs:
                with open(f"/proc/{p.pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
        except (OSError, IndexError, ValueError):
            return math.nan
        return total / os.sysconf("SC_CLK_TCK")

    def go(self) -> None:
        for p in self.procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()

    def finish(self, stop: bool = False, expect_json: bool = True) -> list[dict[str, Any]]:
        """SIGTERM them if ``stop``, wait for the exits, return their ``json`` lines."""
        if stop:
            for p in self.procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
        while self.eof < len(self.procs):
            try:
                _, line = self.lines.get(timeout=60)
            except queue.Empty:
                break
            if line is None:
                self.eof += 1
            elif line.startswith("json "):
                self.payloads.append(json.loads(line[5:]))
        self.kill()
        if expect_json and len(self.payloads) < len(self.procs):
            raise RuntimeError(f"a child printed no result; logs in {self.logdir}")
        return self.payloads

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait()


def report(rows: list[Row], idle: list[Row], args: argparse.Namespace) -> None:
    print(HEADER)
    for row in rows:
        print(row.line())
    print("server time by command (commandstats; a script's time includes the commands it runs), per app:")
    for row in rows:
        top = sorted(row.server.cmdstats.items(), key=lambda kv: -kv[1][1])[:5]
        cells = ", ".join(
            f"{name} {calls / row.apps:.1f}x {usec / row.apps:.0f}us" for name, (calls, usec) in top
        )
        print(
            f"  {row.system:9s} {row.procs:2d} {WORK[row.kind]:13s} cpu {row.server.cpu_us / row.apps:5.0f}us: {cells}"
        )
    if idle:
        print(f"idle fleet: {args.idle_apps} one-step sync apps enqueued one at a time, {args.idle_gap * 1000:.0f} ms "
              "apart, to one idle worker process per system (ms):")  # fmt: skip
        print(f"{'system':9s} {'1st_p50':>8s} {'1st_p99':>8s} {'done_p50':>8s} {'done_p99':>8s}")
        for row in idle:
            print(
                f"{row.system:9s} "
                + " ".join(f"{row.latency_ms(c, q):8.1f}" for c in (1, 2) for q in (0.5, 0.99))
            )

    print(f"load average at the end: {'/'.join(f'{x:.2f}' for x in os.getloadavg())} (cpus={os.cpu_count()})")

    def find(system: str, kind: str, procs: int = 1) -> Row | None:
        return next((r for r in rows if (r.system, r.kind, r.procs) == (system, kind, procs)), None)

    def ratio(a: Row | None, b: Row | None, what: str = "apps") -> float:
        return a.rate(what) / b.rate(what) if a and b else math.nan

    one = find("burr_dist", "one")
    burr_idle = next((r for r in idle if r.system == "burr_dist"), None)
    print(f"ratio_vs_rq={ratio(one, find('rq', 'noop')):.3f} ratio_vs_arq={ratio(one, find('arq', 'noop')):.3f} "
          f"same_work_one={ratio(one, find('arq+burr', 'one')):.3f} "
          f"same_work_ten={ratio(find('burr_dist', 'ten'), find('arq+burr', 'ten'), 'steps'):.3f} "
          f"server_us_per_app={one.server.cpu_us / one.apps if one else math.nan:.1f} "
          f"start_p50_ms={burr_idle.latency_ms(1, 0.5) if burr_idle else math.nan:.1f}")  # fmt: skip
