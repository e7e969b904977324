"""The peers of bench/fleet.py: arq and RQ worker and enqueuer processes, run by the parent with
the bench venv's python (``.venv-bench``: arq pins redis-py < 6, so the peers get the redis-py
their users get, not the test venv's).

    python bench/fleet_peers.py worker  --system arq|rq --url URL --queue Q --kind KIND --n N ...
    python bench/fleet_peers.py enqueue --system arq|rq --url URL --queue Q --kind KIND --n N --gap S

``worker``: enqueues N jobs (untimed), prints ``ready``, waits for ``go`` on stdin, runs one worker
process (arq: ``max_jobs`` = --concurrency; RQ: one ``SimpleWorker``, one job at a time). With
--burst it prints ``done`` when the worker has drained the queue and exited its loop, then one
line ``json {...}``: the worker's round trips (calls to redis-py's ``send_packed_command``: one
per command or pipeline) and per job the times of enqueue, first step (the ``created_at`` Burr's
persister wrote for sequence 0; a no-op job's start) and completion, from the job records.
Without --burst it runs until SIGTERM (the idle start-latency measurement).

``enqueue``: the idle measurement's client: one warm-up job, then N jobs one at a time, --gap
seconds apart; waits until they are done and prints the same ``json {...}`` line.

KIND is an app of bench/apps.py (``one``, ``ten``, ``one_async``, ``ten_async``) or ``noop``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.apps import PEER_PARTITION, anoop, arq_burr, noop, rq_burr  # noqa: E402

ROUND_TRIPS = [0]


def count_round_trips() -> None:
    """Count the commands and pipelines redis-py sends (sync and asyncio connections)."""
    import redis.asyncio.connection as aconn
    import redis.connection as sconn

    sync_send = sconn.AbstractConnection.send_packed_command
    async_send = aconn.AbstractConnection.send_packed_command

    def send(self: Any, *a: Any, **kw: Any) -> Any:
        ROUND_TRIPS[0] += 1
        return sync_send(self, *a, **kw)

    async def asend(self: Any, *a: Any, **kw: Any) -> Any:
        ROUND_TRIPS[0] += 1
        return await async_send(self, *a, **kw)

    sconn.AbstractConnection.send_packed_command = send  # type: ignore[method-assign]
    aconn.AbstractConnection.send_packed_command = asend  # type: ignore[method-assign]


def say(line: str) -> None:
    print(line, flush=True)


def ready_then_wait() -> None:
    say("ready")
    if sys.stdin.readline().strip() != "go":
        sys.exit(0)


def seconds(value: Any) -> float | None:
    """A job record's time (datetime, naive meaning UTC, or ISO string) as a Unix timestamp."""
    if value is None:
        return None
    if isinstance(value, (bytes, str)):
        value = datetime.fromisoformat(value.decode() if isinstance(value, bytes) else value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return float(value.timestamp())


def job_ids(args: argparse.Namespace) -> list[str]:
    return [f"{args.queue}-{i}" for i in range(args.n)]


def first_step_keys(args: argparse.Namespace, ids: list[str]) -> list[str]:
    """Burr's persister hash of sequence 0: ``{namespace}:{partition}:{app_id}:0``."""
    return [f"{args.namespace}:{PEER_PARTITION}:{i}:0" for i in ids]


# -- arq ------------------------------------------------------------------------------------------
async def arq_enqueue(pool: Any, args: argparse.Namespace, ids: list[str]) -> None:
    for i in range(0, len(ids), 500):
        await asyncio.gather(*(arq_enqueue_one(pool, args, j) for j in ids[i : i + 500]))


async def arq_enqueue_one(pool: Any, args: argparse.Namespace, job_id: str) -> Any:
    if args.kind == "noop":
        return await pool.enqueue_job("anoop", _job_id=job_id, _queue_name=args.queue)
    return await pool.enqueue_job(
        "arq_burr", args.kind, job_id, args.namespace, _job_id=job_id, _queue_name=args.queue
    )


async def arq_times(pool: Any, args: argparse.Namespace, ids: list[str]) -> dict[str, Any]:
    from arq.jobs import Job

    results = []
    for i in range(0, len(ids), 500):
        results += await asyncio.gather(
            *(Job(j, redis=pool, _queue_name=args.queue).result_info() for j in ids[i : i + 500])
        )
    firsts: list[Any] = [None] * len(ids)
    if args.kind != "noop":
        pipe = pool.pipeline(transaction=False)
        for key in first_step_keys(args, ids):
            pipe.hget(key, "created_at")
        firsts = await pipe.execute()
    times, failed = [], 0
    for r, first in zip(results, firsts, strict=True):
        if r is None or not r.success:
            failed += 1
            continue
        start = seconds(first) if args.kind != "noop" else seconds(r.start_time)
        times.append([seconds(r.enqueue_time), start, seconds(r.finish_time)])
    return {"times": times, "failed": failed}


def arq_worker(args: argparse.Namespace) -> None:
    import redis.asyncio
    from arq import Worker, create_pool
    from arq.connections import RedisSettings

    async def main() -> None:
        pool = await create_pool(RedisSettings.from_dsn(args.url))
        ids = job_ids(args)
        await arq_enqueue(pool, args, ids)
        burr_redis = redis.asyncio.Redis.from_url(args.url)
        worker = Worker(
            functions=[arq_burr, anoop], redis_pool=pool, queue_name=args.queue, burst=args.burst,
            max_jobs=args.concurrency, poll_delay=args.arq_poll_delay, handle_signals=False,
            ctx={"burr_redis": burr_redis},
        )  # fmt: skip
        ready_then_wait()  # a blocking read: nothing else runs on this loop yet
        ROUND_TRIPS[0] = 0
        await worker.async_run()
        say("done")
        trips = ROUND_TRIPS[0]
        out = await arq_times(pool, args, ids)
        say("json " + json.dumps({"round_trips": trips, **out}))
        await worker.close()
        await burr_redis.aclose()

    asyncio.run(main())


def arq_idle_client(args: argparse.Namespace) -> None:
    from arq import create_pool
    from arq.connections import RedisSettings

    async def main() -> None:
        pool = await create_pool(RedisSettings.from_dsn(args.url))
        warm = await arq_enqueue_one(pool, args, f"{args.queue}-warm")
        await warm.result(timeout=60, poll_delay=0.01)
        ids = job_ids(args)
        for job_id in ids:
            await arq_enqueue_one(pool, args, job_id)
            await asyncio.sleep(args.gap)
        await wait_done(lambda: pool.exists(*(f"arq:result:{j}" for j in ids)), len(ids))
        say("json " + json.dumps(await arq_times(pool, args, ids)))
        await pool.aclose()

    asyncio.run(main())


async def wait_done(count: Any, n: int, timeout: float = 120.0) -> None:
    give_up = time.monotonic() + timeout
    while await count() < n:
        if time.monotonic() > give_up:
            raise TimeoutError(f"jobs not done after {timeout}s")
        await asyncio.sleep(0.01)


# -- RQ -------------------------------------------------------------------------------------------
def rq_enqueue_data(args: argparse.Namespace, job_id: str) -> Any:
    from rq import Queue

    if args.kind == "noop":
        return Queue.prepare_data(noop, job_id=job_id)
    return Queue.prepare_data(rq_burr, args=(args.kind, job_id, args.namespace, args.url), job_id=job_id)


def rq_times(conn: Any, args: argparse.Namespace, ids: list[str]) -> dict[str, Any]:
    from rq.job import Job, JobStatus

    jobs = Job.fetch_many(ids, connection=conn)
    firsts: list[Any] = [None] * len(ids)
    if args.kind != "noop":
        pipe = conn.pipeline(transaction=False)
        for key in first_step_keys(args, ids):
            pipe.hget(key, "created_at")
        firsts = pipe.execute()
    times, failed = [], 0
    for job, first in zip(jobs, firsts, strict=True):
        if job is None or job.get_status(refresh=False) != JobStatus.FINISHED:
            failed += 1
            continue
        start = seconds(first) if args.kind != "noop" else seconds(job.started_at)
        times.append([seconds(job.enqueued_at), start, seconds(job.ended_at)])
    return {"times": times, "failed": failed}


def rq_worker(args: argparse.Namespace) -> None:
    import redis
    from rq import Queue, SimpleWorker

    conn = redis.Redis.from_url(args.url)
    queue = Queue(args.queue, connection=conn)
    ids = job_ids(args)
    for i in range(0, len(ids), 1000):
        queue.enqueue_many([rq_enqueue_data(args, j) for j in ids[i : i + 1000]])
    worker = SimpleWorker([queue], connection=conn, name=f"{args.queue}-worker")
    ready_then_wait()
    ROUND_TRIPS[0] = 0
    worker.work(burst=args.burst, logging_level="WARNING")
    say("done")
    trips = ROUND_TRIPS[0]
    say("json " + json.dumps({"round_trips": trips, **rq_times(conn, args, ids)}))


def rq_idle_client(args: argparse.Namespace) -> None:
    import redis
    from rq import Queue
    from rq.job import JobStatus

    conn = redis.Redis.from_url(args.url)
    queue = Queue(args.queue, connection=conn)
    warm = queue.enqueue_many([rq_enqueue_data(args, f"{args.queue}-warm")])[0]
    give_up = time.monotonic() + 60
    while warm.get_status() != JobStatus.FINISHED:
        if time.monotonic() > give_up:
            raise TimeoutError("the RQ warm-up job did not finish")
        time.sleep(0.01)
    ids = job_ids(args)
    for job_id in ids:
        queue.enqueue_many([rq_enqueue_data(args, job_id)])
        time.sleep(args.gap)

    async def finished() -> int:
        return int(queue.finished_job_registry.count + queue.failed_job_registry.count) - 1  # the warm-up

    asyncio.run(wait_done(finished, len(ids)))
    say("json " + json.dumps(rq_times(conn, args, ids)))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("role", choices=("worker", "enqueue"))
    ap.add_argument("--system", choices=("arq", "rq"), required=True)
    ap.add_argument("--url", required=True)
    ap.add_argument("--queue", required=True, help="queue name; job ids and Burr app ids start with it")
    ap.add_argument("--kind", required=True, help="an app of bench/apps.py, or noop")
    ap.add_argument("--n", type=int, default=0, help="jobs to enqueue")
    ap.add_argument("--namespace", default="", help="key namespace of Burr's persister")
    ap.add_argument("--concurrency", type=int, default=10, help="arq max_jobs")
    ap.add_argument("--arq-poll-delay", type=float, default=0.01)
    ap.add_argument("--burst", action="store_true", help="exit when the queue is drained")
    ap.add_argument("--gap", type=float, default=0.02, help="enqueue: seconds between jobs")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    count_round_trips()
    roles = {
        ("worker", "arq"): arq_worker, ("worker", "rq"): rq_worker,
        ("enqueue", "arq"): arq_idle_client, ("enqueue", "rq"): rq_idle_client,
    }  # fmt: skip
    roles[args.role, args.system](args)


if __name__ == "__main__":
    main()
