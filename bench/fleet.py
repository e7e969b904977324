"""Fleet throughput: burr_dist worker processes against RQ and arq, on one Redis server.

    python bench/fleet.py [--apps N] [--ten-step-apps M] [--concurrency C] [--redis-url URL]

burr_dist runs N single-step apps and M ten-step apps (bench/apps.py) with 1, then 2 worker
processes (``Worker(...).run_forever()``, concurrency C). RQ (one ``SimpleWorker``, burst) and arq
(one worker, burst, ``max_jobs`` = C, ``poll_delay`` 0.01 s: with arq's default 0.5 s it idles
between batches of 100) each run N no-op jobs. Every system gets the same clock:

    all jobs are enqueued and the worker processes started and idle, waiting on stdin; the clock
    starts when they are released and stops when the parent sees the queue drained (a cheap
    ZCARD poll every --poll seconds). Enqueue and process start-up are not timed.

Each system uses its own key prefix / queue names (a random tag), so they do not interfere.
Without --redis-url (or REDIS_URL) an embedded server is started; on a server given by URL
nothing is flushed: only keys containing this run's tag are deleted afterwards (RQ's shared
``rq:clean_groups`` lock is left to expire on its own).
The last line is ``ratio_vs_rq=... ratio_vs_arq=...`` (burr_dist single-step apps/s with one
worker process over RQ's and arq's jobs/s).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from bench.apps import STEPS, anoop, noop  # noqa: E402
from burr_dist.embedded import EmbeddedServer  # noqa: E402

PHASE_TIMEOUT = 300.0


# -- child processes ----------------------------------------------------------------------------
def _ready_then_wait() -> None:
    """Tell the parent we are set up, then block until it says go."""
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        sys.exit(0)


def child_burr(args: argparse.Namespace) -> None:
    import logging

    from bench.apps import registry
    from burr_dist.worker import Worker

    logging.basicConfig(level=logging.WARNING)
    worker = Worker(registry, url=args.url, prefix=args.prefix, concurrency=args.concurrency)
    _ready_then_wait()
    worker.run_forever()


def child_rq(args: argparse.Namespace) -> None:
    from rq import Queue, SimpleWorker

    conn = redis.Redis.from_url(args.url)
    worker = SimpleWorker(
        [Queue(args.queue, connection=conn)], connection=conn, name=f"{args.queue}-{os.getpid()}"
    )
    _ready_then_wait()
    worker.work(burst=True, logging_level="WARNING")


def child_arq(args: argparse.Namespace) -> None:
    from arq import Worker, create_pool
    from arq.connections import RedisSettings

    async def main() -> None:
        pool = await create_pool(RedisSettings.from_dsn(args.url))
        worker = Worker(
            functions=[anoop], redis_pool=pool, queue_name=args.queue, burst=True, max_jobs=args.concurrency,
            poll_delay=args.arq_poll_delay, handle_signals=False,
        )  # fmt: skip
        _ready_then_wait()  # blocking read: nothing else runs on this loop yet
        await worker.async_run()
        await worker.close()

    asyncio.run(main())


# -- parent -------------------------------------------------------------------------------------
@dataclass
class Result:
    system: str
    procs: int
    kind: str
    apps: int
    steps: int
    seconds: float

    @property
    def apps_s(self) -> float:
        return self.apps / self.seconds if self.seconds > 0 else 0.0

    @property
    def steps_s(self) -> float:
        return self.steps / self.seconds if self.seconds > 0 else 0.0


class Bench:
    def __init__(self, args: argparse.Namespace, url: str) -> None:
        self.args = args
        self.url = url
        self.tag = f"fleetbench-{uuid.uuid4().hex[:8]}"
        self.r = redis.Redis.from_url(url)
        self.logdir = tempfile.mkdtemp(prefix="fleetbench-")

    def spawn(self, n: int, role: str, *extra: str) -> list[subprocess.Popen[str]]:
        procs = []
        for i in range(n):
            cmd = [sys.executable, str(Path(__file__).resolve()), "--child", role, "--url", self.url, *extra]
            with open(os.path.join(self.logdir, f"{role}-{extra[1]}-{i}.log"), "w") as err:
                procs.append(subprocess.Popen(
                    cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True,
                    env={**os.environ, "PYTHONPATH": str(ROOT)},
                ))  # fmt: skip
        for p in procs:
            assert p.stdout is not None
            if p.stdout.readline().strip() != "ready":
                self.kill(procs)
                raise RuntimeError(f"{role} worker did not start; see logs in {self.logdir}")
        return procs

    @staticmethod
    def kill(procs: list[subprocess.Popen[str]]) -> None:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()

    def timed(self, procs: list[subprocess.Popen[str]], drained: Callable[[], bool], own_exit: bool) -> float:
        """Release the workers; seconds until ``drained()``. Stops the workers afterwards."""
        t0 = time.perf_counter()
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        give_up = t0 + PHASE_TIMEOUT
        try:
            while not drained():
                if time.perf_counter() > give_up or (own_exit and all(p.poll() is not None for p in procs)):
                    if drained():
                        break
                    raise RuntimeError(
                        f"not drained after {time.perf_counter() - t0:.1f}s; logs in {self.logdir}"
                    )
                if not own_exit and any(p.poll() is not None for p in procs):
                    raise RuntimeError(f"a worker exited early; logs in {self.logdir}")
                time.sleep(self.args.poll)
            elapsed = time.perf_counter() - t0
        except BaseException:
            self.kill(procs)
            raise
        for p in procs:
            if not own_exit and p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        return elapsed

    # -- systems ----------------------------------------------------------------------------
    def burr(self, kind: str, n: int, procs: int) -> Result:
        from burr_dist.connection import connect
        from burr_dist.queue import DEFAULT_QUEUE, EnqueueRequest, FleetClient
        from burr_dist.store import StoreConfig

        prefix = f"{self.tag}-w{procs}-{kind}"
        fleet = FleetClient(connect(self.url), StoreConfig(prefix=prefix))
        reqs = [EnqueueRequest(kind, app_id=f"a{i}") for i in range(n)]
        for i in range(0, n, 1000):
            fleet.enqueue_many(reqs[i : i + 1000])
        stats = fleet.queue_stat_cmds(DEFAULT_QUEUE)

        def drained() -> bool:
            q = fleet.read_queue_stats(fleet.commands(stats), 0)
            return q["ready"] + q["scheduled"] + q["active"] == 0

        workers = self.spawn(procs, "burr", "--prefix", prefix, "--concurrency", str(self.args.concurrency))
        seconds = self.timed(workers, drained, own_exit=False)
        counts = fleet.overview()["apps"]
        heads = {fleet.head_sequence(f"a{i}") for i in (0, n - 1)}
        fleet.client.close()
        if counts["completed"] != n or heads != {STEPS[kind] - 1}:
            raise RuntimeError(f"burr_dist {kind} x{n}: statuses {counts}, head sequences {heads}")
        return Result("burr_dist", procs, f"{STEPS[kind]}-step", n, n * STEPS[kind], seconds)

    def rq(self, n: int) -> Result:
        from rq import Queue

        queue = Queue(f"{self.tag}-rq", connection=self.r)
        jobs = [Queue.prepare_data(noop, job_id=f"{self.tag}-rq-{i}") for i in range(n)]
        for i in range(0, n, 1000):
            queue.enqueue_many(jobs[i : i + 1000])
        done_keys = (queue.finished_job_registry.key, queue.failed_job_registry.key)

        def drained() -> bool:
            pipe = self.r.pipeline(transaction=False)
            done, failed = pipe.zcard(done_keys[0]).zcard(done_keys[1]).execute()
            return done + failed >= n

        seconds = self.timed(self.spawn(1, "rq", "--queue", queue.name), drained, own_exit=True)
        failed = self.r.zcard(done_keys[1])
        if failed:
            raise RuntimeError(f"rq: {failed} jobs failed; logs in {self.logdir}")
        return Result("rq", 1, "no-op job", n, n, seconds)

    def arq(self, n: int) -> Result:
        from arq import create_pool
        from arq.connections import RedisSettings

        name = f"{self.tag}-arq"

        async def enqueue() -> None:
            pool = await create_pool(RedisSettings.from_dsn(self.url))
            for i in range(0, n, 500):
                await asyncio.gather(*(pool.enqueue_job("anoop", _job_id=f"{name}-{j}", _queue_name=name)
                                       for j in range(i, min(i + 500, n))))  # fmt: skip
            await pool.aclose()

        asyncio.run(enqueue())
        extra = ("--queue", name, "--concurrency", str(self.args.concurrency),
                 "--arq-poll-delay", str(self.args.arq_poll_delay))  # fmt: skip
        seconds = self.timed(self.spawn(1, "arq", *extra), lambda: self.r.zcard(name) == 0, own_exit=True)
        return Result("arq", 1, "no-op job", n, n, seconds)

    def cleanup(self) -> None:
        """Only this run's keys (every key name contains the tag); nothing else is touched."""
        keys = list(self.r.scan_iter(match=f"*{self.tag}*", count=1000))
        for i in range(0, len(keys), 1000):
            self.r.unlink(*keys[i : i + 1000])
        for setkey in ("rq:queues", "rq:workers"):
            mine = [m for m in self.r.smembers(setkey) if self.tag.encode() in m]
            if mine:
                self.r.srem(setkey, *mine)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--apps", type=int, default=2000, help="single-step apps, and RQ/arq no-op jobs")
    ap.add_argument("--ten-step-apps", type=int, default=500)
    ap.add_argument("--concurrency", type=int, default=16, help="burr_dist concurrency; arq max_jobs")
    ap.add_argument("--arq-poll-delay", type=float, default=0.01, help="arq's own default is 0.5 s")
    ap.add_argument("--poll", type=float, default=0.01, help="seconds between drain checks")
    ap.add_argument("--redis-url", default=os.environ.get("REDIS_URL"))
    # child mode (internal)
    ap.add_argument("--child", choices=("burr", "rq", "arq"), help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    ap.add_argument("--prefix", help=argparse.SUPPRESS)
    ap.add_argument("--queue", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        {"burr": child_burr, "rq": child_rq, "arq": child_arq}[args.child](args)
        return

    server = None
    url = args.redis_url
    if not url:
        server = EmbeddedServer().start()
        url = server.url
    bench = Bench(args, url)
    results: list[Result] = []
    try:
        print(f"server={url} ({'embedded ' + server.kind if server else 'external'}) cpus={os.cpu_count()} "
              f"concurrency={args.concurrency} arq_poll_delay={args.arq_poll_delay}s")  # fmt: skip
        print("timing: enqueue everything, start workers idle, then release -> parent sees the queue drained "
              f"(poll {args.poll * 1000:.0f} ms); enqueue and process start-up excluded")  # fmt: skip
        for procs in (1, 2):
            if args.apps:
                results.append(bench.burr("one", args.apps, procs))
            if args.ten_step_apps:
                results.append(bench.burr("ten", args.ten_step_apps, procs))
        if args.apps:
            results.append(bench.rq(args.apps))
            results.append(bench.arq(args.apps))
        shutil.rmtree(bench.logdir, ignore_errors=True)  # kept (and named in the error) on failure
    finally:
        if server is None:
            bench.cleanup()
        bench.r.close()
        if server is not None:
            server.stop()

    print(f"{'system':10s} {'procs':>5s} {'kind':>10s} {'apps':>6s} {'steps':>6s} {'seconds':>8s} "
          f"{'apps/s':>8s} {'steps/s':>8s}")  # fmt: skip
    for r in results:
        print(f"{r.system:10s} {r.procs:5d} {r.kind:>10s} {r.apps:6d} {r.steps:6d} {r.seconds:8.2f} "
              f"{r.apps_s:8.0f} {r.steps_s:8.0f}")  # fmt: skip

    def rate(system: str, procs: int = 1, kind: str | None = None) -> float:
        return next((r.apps_s for r in results if r.system == system and r.procs == procs
                     and (kind is None or r.kind == kind)), 0.0)  # fmt: skip

    burr1 = rate("burr_dist", 1, "1-step")
    rq_s, arq_s = rate("rq"), rate("arq")
    print(f"ratio_vs_rq={burr1 / rq_s if rq_s else float('nan'):.3f} "
          f"ratio_vs_arq={burr1 / arq_s if arq_s else float('nan'):.3f}")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
