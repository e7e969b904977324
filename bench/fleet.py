"""The same work on burr_dist, arq and RQ, on one Redis server and with one clock.

    python bench/fleet.py [--apps N] [--ten-step-apps M] [--concurrency C] [--redis-url URL]
                          [--idle-apps K] [--systems burr_dist,arq,rq] [--peer-python PATH]
                          [--rounds R]

Rows (one worker process per system unless said otherwise; the apps are bench/apps.py's):
- burr_dist: ``Worker(...).run_forever()``, concurrency C, running N one-step and M ten-step apps,
  each with a sync and with an async action; then the sync ones again with as many worker
  processes as the machine has cores (the scaling rows).
- arq + Burr: arq jobs (``max_jobs`` C, ``poll_delay`` --arq-poll-delay) that run the SAME apps with
  Burr's ``AsyncRedisBasePersister`` (``initialize_from`` + ``with_state_persister``, ``abuild``,
  step until done): sync and async actions.
- RQ + Burr: one ``SimpleWorker`` (burst) running the sync-action apps with Burr's sync
  ``RedisBasePersister`` (it cannot build an async app).
- arq and RQ no-op jobs (N each): the queues' own ceilings.
- Start latency on an IDLE fleet: one worker process per system, started and idle, then K one-step
  sync apps enqueued one at a time, --idle-gap seconds apart.

The clock: everything is enqueued and the worker processes started, each waiting on stdin; the
clock starts when they are released and stops when they report the work done on stdout (burr_dist:
a ``completed`` event hook reports the apps done, in batches at most 2 ms late; arq and RQ in burst mode: their loop returned).
The parent sends no command while the clock runs: the server's figures are deltas of INFO taken
just before the release and just after the end (``used_cpu_sys + used_cpu_user``;
``total_commands_processed``, which counts the commands scripts run as well; commandstats). The
worker processes' CPU over the same phase (user + system, from /proc, 10 ms ticks) is ``wrkus/app``.
Round trips: burr_dist's transports count them (the worker prints its count at exit), plus the
BLPOPs on its queue bell (the server's count: they bypass the transports); the peers count
redis-py's ``send_packed_command`` calls (one per command or pipeline).
Latencies, from the job records: enqueue -> first step (burr_dist: the job's ``created_at`` (server
ms) to the ``at`` of the snapshot of sequence 0 (ms); arq/RQ: their enqueue time to the
``created_at`` Burr's persister wrote for sequence 0; no-op jobs: to the job's start) and
enqueue -> completion (burr_dist: the job's ``updated_at``; arq/RQ: finish time). In the
throughput rows every job waits for the release, so an enqueue time counts from the release.

burr_dist children run with the test venv's python (--burr-python, default ``.venv/bin/python``),
the peers with the bench venv's (--peer-python, default ``.venv-bench/bin/python``, made by
``make bench-env``), so each runs on the redis-py its users get. Without --redis-url (or REDIS_URL)
an embedded server is started; on a server given by URL nothing is flushed, only keys containing
this run's tag are deleted afterwards. With --rounds R every row runs R times, interleaved (a burst
of load from elsewhere hits every row alike), and the fastest run of each is reported.

The last line is ``ratio_vs_rq=... ratio_vs_arq=... same_work_one=... same_work_ten=...
server_us_per_app=... start_p50_ms=...``: burr_dist one-step sync apps/s over RQ's and arq's
no-op jobs/s, over arq + Burr's apps/s on the one-step sync app and steps/s on the ten-step sync
app, burr_dist's Redis CPU per one-step sync app, and its idle p50 enqueue -> first step.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from bench.apps import STEPS  # noqa: E402
from bench.fleet_measure import Children, Row, ServerDelta, ServerMeter, report  # noqa: E402
from burr_dist.testing.embedded import EmbeddedServer  # noqa: E402

PEERS = Path(__file__).resolve().with_name("fleet_peers.py")


# -- the burr_dist worker process ----------------------------------------------------------------
REPORT_DELAY = 0.002  # s: completions are reported in batches, at most this late


class Progress:
    """Counts completed apps and prints ``completed <n>`` at most REPORT_DELAY after the first of
    a batch: a line (and a parent wake-up) per app cost the worker and the parent CPU that the
    peers, whose burst-mode loops just return, do not spend. The clock stops up to 2 ms late."""

    def __init__(self) -> None:
        self.count = 0
        self.timer: Any = None

    def hook(self, event: Any) -> None:
        import asyncio

        self.count += 1
        if self.timer is None:
            self.timer = asyncio.get_running_loop().call_later(REPORT_DELAY, self.flush)

    def flush(self) -> None:
        print(f"completed {self.count}", flush=True)
        self.count, self.timer = 0, None


def child_burr(args: argparse.Namespace) -> None:
    import logging

    from bench.apps import registry
    from burr_dist.worker.process import Worker

    logging.basicConfig(level=logging.WARNING)

    progress = Progress()
    registry.on("completed")(progress.hook)

    worker = Worker(registry, url=args.url, prefix=args.prefix, concurrency=args.concurrency,
                    track=not args.no_track)  # fmt: skip
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return
    worker.run_forever()
    trips = worker.fleet.transport.round_trips
    print("json " + json.dumps({"round_trips": trips}), flush=True)


# -- the runs ------------------------------------------------------------------------------------
class Bench:
    def __init__(self, args: argparse.Namespace, url: str) -> None:
        self.args = args
        self.url = url
        self.tag = f"fleetbench-{uuid.uuid4().hex[:8]}"
        self.r = redis.Redis.from_url(url)
        self.meter = ServerMeter(self.r)
        self.logdir = tempfile.mkdtemp(prefix="fleetbench-")
        self.round = 0  # in key names: every round runs on fresh keys

    def timed(self, kids: Children, word: str, count: int) -> tuple[float, float, ServerDelta]:
        """Release ``kids``; (wall-clock release time, seconds until ``count`` ``word`` lines, delta)."""
        kids.wait_for("ready", len(kids.procs))
        self.meter.begin()
        cpu = kids.cpu_seconds()
        released, t0 = time.time(), time.perf_counter()
        kids.go()
        kids.wait_for(word, count)
        elapsed = time.perf_counter() - t0
        delta = self.meter.end()
        delta.workers_cpu_us = (kids.cpu_seconds() - cpu) * 1e6
        return released, elapsed, delta

    # -- burr_dist ---------------------------------------------------------------------------
    def burr_children(self, prefix: str, procs: int) -> Children:
        cmd = [self.args.burr_python, str(Path(__file__).resolve()), "--child", "burr", "--url", self.url,
               "--prefix", prefix, "--concurrency", str(self.args.concurrency),
               *(["--no-track"] if self.args.no_track else [])]  # fmt: skip
        return Children([cmd] * procs, self.logdir, prefix)

    def fleet(self, prefix: str) -> Any:
        from burr_dist.fleet.client import FleetClient
        from burr_dist.store.core import StoreConfig
        from burr_dist.transport.connect import connect

        return FleetClient(connect(self.url), StoreConfig(prefix=prefix))

    def burr_times(self, fleet: Any, ids: list[str], kind: str, since: float = 0.0) -> list[list[float]]:
        """Per app (enqueue, first step, done) from the job records; checks each app completed."""
        from burr_dist.keys import partition_of
        from burr_dist.store import codec
        from burr_dist.transport.core import Cmd

        out = []
        for i in range(0, len(ids), 500):
            cmds = []
            for app_id in ids[i : i + 500]:
                k = fleet.keys(partition_of(None), app_id)
                cmds += [Cmd(k.job, ("HMGET", k.job, "created_at", "updated_at", "status")),
                         Cmd(k.snaps, ("HGET", k.snaps, "0")), Cmd(k.meta, ("HGET", k.meta, "head"))]  # fmt: skip
            replies = fleet.commands(cmds)
            for app_id, j in zip(ids[i : i + 500], range(0, len(replies), 3), strict=True):
                (created, updated, status), snap, head = replies[j : j + 3]
                if status != b"completed" or snap is None or int(head) != STEPS[kind] - 1:
                    raise RuntimeError(f"burr_dist {kind} {app_id}: status {status!r}, head {head!r}")
                at = codec.parse_entry(snap, key=k.snaps).doc["at"]
                out.append([max(int(created) / 1000, since), at / 1000, int(updated) / 1000])
        return out

    def burr(self, kind: str, n: int, procs: int) -> Row:
        from burr_dist.fleet.core import EnqueueRequest

        prefix = f"{self.tag}-r{self.round}-p{procs}-{kind}"
        fleet = self.fleet(prefix)
        ids = [f"a{i}" for i in range(n)]
        for i in range(0, n, 1000):
            fleet.enqueue_many([EnqueueRequest(kind, app_id=a) for a in ids[i : i + 1000]])
        kids = self.burr_children(prefix, procs)
        released, seconds, server = self.timed(kids, "completed", n)
        # The transports count every round trip but the idle wait on the queue bell (a BLPOP on the
        # client itself): the server's count of those is added.
        trips = (
            sum(p["round_trips"] for p in kids.finish(stop=True)) + server.cmdstats.get("blpop", (0, 0))[0]
        )
        times = self.burr_times(fleet, ids, kind, since=released)
        fleet.client.close()
        return Row("burr_dist", procs, kind, n, seconds, server, trips, times)

    def burr_idle(self, n: int) -> Row:
        prefix = f"{self.tag}-idle"
        fleet = self.fleet(prefix)
        kids = self.burr_children(prefix, 1)
        kids.wait_for("ready", 1)
        kids.go()
        fleet.enqueue("one", "warm")
        kids.wait_for("completed", 1)
        time.sleep(0.3)  # back to waiting for work
        ids = [f"i{i}" for i in range(n)]
        for app_id in ids:
            fleet.enqueue("one", app_id)
            time.sleep(self.args.idle_gap)
        kids.wait_for("completed", n)
        kids.finish(stop=True)
        times = self.burr_times(fleet, ids, "one")
        fleet.client.close()
        return Row("burr_dist", 1, "one", n, math.nan, ServerDelta(), None, times)

    # -- peers -------------------------------------------------------------------------------
    def peer_cmd(self, role: str, system: str, name: str, kind: str, n: int, *extra: str) -> list[str]:
        return [self.args.peer_python, str(PEERS), role, "--system", system, "--url", self.url,
                "--queue", name, "--namespace", name, "--kind", kind, "--n", str(n),
                "--concurrency", str(self.args.concurrency),
                "--arq-poll-delay", str(self.args.arq_poll_delay), *extra]  # fmt: skip

    def peer(self, system: str, kind: str, n: int) -> Row:
        name = f"{self.tag}-r{self.round}-{system}-{kind}"
        kids = Children([self.peer_cmd("worker", system, name, kind, n, "--burst")], self.logdir, name)
        released, seconds, server = self.timed(kids, "done", 1)
        (result,) = kids.finish()
        if result["failed"] or len(result["times"]) != n:
            raise RuntimeError(
                f"{system} {kind}: {result['failed']} of {n} jobs failed; logs in {self.logdir}"
            )
        times = [[max(t[0], released), t[1], t[2]] for t in result["times"]]
        label = system if kind == "noop" else f"{system}+burr"
        return Row(label, 1, kind, n, seconds, server, result["round_trips"], times)

    def peer_idle(self, system: str, n: int) -> Row:
        name = f"{self.tag}-{system}-idle"
        worker = Children([self.peer_cmd("worker", system, name, "one", 0)], self.logdir, name)
        try:
            worker.wait_for("ready", 1)
            worker.go()
            gap = ("--gap", str(self.args.idle_gap))
            client = Children(
                [self.peer_cmd("enqueue", system, name, "one", n, *gap)], self.logdir, name + "-c"
            )
            client.wait_for("json", 1)
            (result,) = client.finish()
        finally:
            worker.finish(stop=True, expect_json=False)
        return Row(f"{system}+burr", 1, "one", n, math.nan, ServerDelta(), None, result["times"])

    def cleanup(self) -> None:
        """Only this run's keys (every key name contains the tag); nothing else is touched."""
        keys = list(self.r.scan_iter(match=f"*{self.tag}*", count=1000))
        for i in range(0, len(keys), 1000):
            self.r.unlink(*keys[i : i + 1000])
        for setkey in ("rq:queues", "rq:workers"):
            mine = [m for m in self.r.smembers(setkey) if self.tag.encode() in m]
            if mine:
                self.r.srem(setkey, *mine)


def shown(path: str) -> str:
    """A path relative to the repository when it is inside it."""
    return os.path.relpath(path, ROOT) if Path(os.path.abspath(path)).is_relative_to(ROOT) else path


def run(bench: Bench, args: argparse.Namespace, peers: list[str]) -> tuple[list[Row], list[Row]]:
    kinds = [k for k, n in (("one", args.apps), ("ten", args.ten_step_apps)) if n]
    sizes = {"one": args.apps, "ten": args.ten_step_apps, "one_async": args.apps,
             "ten_async": args.ten_step_apps, "noop": args.apps}  # fmt: skip
    every = kinds + [f"{k}_async" for k in kinds]
    plan: list[Callable[[], Row]] = []
    if "burr_dist" in args.systems:
        plan += [partial(bench.burr, k, sizes[k], 1) for k in every]
    for system in peers:
        plan += [partial(bench.peer, system, k, sizes[k]) for k in (every if system == "arq" else kinds)]
    if args.apps:
        plan += [partial(bench.peer, system, "noop", args.apps) for system in peers]
    if "burr_dist" in args.systems and args.scale_procs > 1:
        plan += [partial(bench.burr, k, sizes[k], args.scale_procs) for k in kinds]
    best: list[Row] = []
    for n in range(args.rounds):  # interleaved, so a burst of load elsewhere hits every row alike
        bench.round = n
        rows = [thunk() for thunk in plan]
        best = [r if not best or r.seconds < best[i].seconds else best[i] for i, r in enumerate(rows)]
    idle: list[Row] = []
    if args.idle_apps:
        if "burr_dist" in args.systems:
            idle.append(bench.burr_idle(args.idle_apps))
        idle += [bench.peer_idle(system, args.idle_apps) for system in peers]
    return best, idle


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--apps", type=int, default=2000, help="one-step apps per row, and no-op jobs")
    ap.add_argument("--ten-step-apps", type=int, default=500)
    ap.add_argument("--concurrency", type=int, default=10, help="burr_dist concurrency; arq max_jobs")
    ap.add_argument("--idle-apps", type=int, default=100, help="apps of the idle start-latency measurement")
    ap.add_argument(
        "--idle-gap", type=float, default=0.02, help="seconds between the idle measurement's apps"
    )
    ap.add_argument(
        "--scale-procs", type=int, default=os.cpu_count() or 1, help="burr_dist processes, scaling rows"
    )
    ap.add_argument(
        "--rounds", type=int, default=3, help="runs of every row, interleaved; the fastest is kept"
    )
    ap.add_argument("--systems", default="burr_dist,arq,rq", help="comma-separated: burr_dist, arq, rq")
    ap.add_argument("--no-track", action="store_true",
                    help="burr_dist workers without Burr UI tracking records (on by default)")  # fmt: skip
    ap.add_argument("--arq-poll-delay", type=float, default=0.01, help="arq's own default is 0.5 s")
    ap.add_argument("--burr-python", default=str(ROOT / ".venv" / "bin" / "python"))
    ap.add_argument("--peer-python", default=str(ROOT / ".venv-bench" / "bin" / "python"))
    ap.add_argument("--redis-url", default=os.environ.get("REDIS_URL"))
    # child mode (internal)
    ap.add_argument("--child", choices=("burr",), help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    ap.add_argument("--prefix", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child_burr(args)
        return
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    if not os.path.exists(args.burr_python):
        print(
            f"burr_dist workers: {args.burr_python} missing, using {sys.executable} (make .venv/.installed)"
        )
        args.burr_python = sys.executable
    peers = [s for s in ("arq", "rq") if s in args.systems]
    if peers and not os.path.exists(args.peer_python):
        print(f"peers skipped ({', '.join(peers)}): no {args.peer_python}; create it with `make bench-env`")
        peers = []

    server = None
    url = args.redis_url
    if not url:
        server = EmbeddedServer().start()
        url = server.url
    bench = Bench(args, url)
    try:
        version = bench.r.info("server")["redis_version"]
        print(f"server={url} ({'embedded ' + server.kind if server else 'external'} {version}) "
              f"cpus={os.cpu_count()} load={'/'.join(f'{x:.2f}' for x in os.getloadavg())} "
              f"concurrency={args.concurrency} rounds={args.rounds} tracking={'off' if args.no_track else 'on'} "
              f"arq_poll_delay={args.arq_poll_delay}s "
              f"burr_python={shown(args.burr_python)} peer_python={shown(args.peer_python) if peers else '-'}")  # fmt: skip
        print("timing: enqueue, start the workers idle, release -> the workers report the work done; latencies "
              "in ms from max(enqueue, release); server figures are INFO deltas over the timed phase, wrkus/app the "
              "worker processes' CPU over it (/proc)")  # fmt: skip
        rows, idle = run(bench, args, peers)
        import shutil

        shutil.rmtree(bench.logdir, ignore_errors=True)  # kept (and named in the error) on failure
    finally:
        if server is None:
            bench.cleanup()
        bench.r.close()
        if server is not None:
            server.stop()
    report(rows, idle, args)


if __name__ == "__main__":
    sys.exit(main())
