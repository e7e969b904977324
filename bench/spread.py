"""How evenly one partition's apps, and one queue's entries, spread over the masters of a Cluster.

    python bench/spread.py [--apps N] [--masters M] [--redis-url redis+cluster://...]

Without --redis-url it starts an embedded 3-master Cluster. It enqueues N apps (default 10,000) of
the default partition into the default queue, then counts per master: keys (DBSIZE), job records
and ready queue entries. The last line gives the largest deviation from an even split.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from burr_dist import EnqueueRequest, FleetClient
from burr_dist.testing.embedded import find_server_binary
from burr_dist.testing.topologies import EmbeddedCluster


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--apps", type=int, default=10_000)
    ap.add_argument("--masters", type=int, default=3)
    ap.add_argument("--redis-url", default=os.environ.get("REDIS_URL"))
    args = ap.parse_args()
    cluster = None
    url = args.redis_url
    if not url:
        cluster = EmbeddedCluster(find_server_binary(), masters=args.masters).start()
        url = cluster.url
    try:
        fc = FleetClient.from_url(url)
        t0 = time.perf_counter()
        for start in range(0, args.apps, 1000):
            fc.enqueue_many(
                [EnqueueRequest("counter", f"app-{i}") for i in range(start, min(start + 1000, args.apps))]
            )
        took = time.perf_counter() - t0
        rows: list[dict[str, Any]] = []
        for node in fc.transport.primaries():
            kw = node.connection_pool.connection_kwargs
            jobs = sum(1 for _ in node.scan_iter(match=fc.schema.job_pattern(), count=1000))
            ready = sum(
                node.zcard(q.ready) for q in fc.schema.queue_shards_of("default") if _owns(node, q.ready)
            )
            rows.append(
                {"master": f"{kw['host']}:{kw['port']}", "keys": node.dbsize(), "jobs": jobs, "ready": ready}
            )
        even = args.apps / len(rows)
        for r in rows:
            print(f"{r['master']:22s} keys={r['keys']:7d} jobs={r['jobs']:7d} ready={r['ready']:7d}")
        job_dev = max(abs(r["jobs"] - even) / even for r in rows)
        ready_dev = max(abs(r["ready"] - even) / even for r in rows)
        print(f"enqueue_apps_per_s={args.apps / took:.0f}")
        print(
            f"masters={len(rows)} apps={args.apps} max_job_deviation={job_dev:.3f} max_ready_deviation={ready_dev:.3f}"
        )
    finally:
        if cluster is not None:
            cluster.stop()


def _owns(node: Any, key: str) -> bool:
    """True when ``node`` serves ``key``'s slot (a read there does not answer MOVED)."""
    try:
        node.exists(key)
        return True
    except Exception:
        return False


if __name__ == "__main__":
    sys.exit(main())
