"""Steps per second of a trivial Burr app, in one process against one server:
(a) no persister, (b) Burr's own RedisBasePersister, (c) burr_dist RedisPersister,
(d) RedisPersister under a lease (every commit fenced), (g) (d) with the worker's tracking (the
StepTracker hook, its records committed by commit.lua: what ``burr-dist ui`` shows), and, on the
embedded server (which then gets a replica), (e) and (f): (c) and (d) with ``wait_replicas=1``
(every commit confirmed by WAIT on the same connection). (a2) is (a) with the tracker hook alone,
(c2) is (c) with it.

The last line ends with the physical limit measured in the same run: Burr's own step (a) plus
one PING round trip (p50), as steps/s (``limit_steps_per_s``), and each burr_dist variant's
fraction of it (``limit_fraction_*``: unleased, leased, each with and without tracking).

    python bench/steps.py [--steps N] [--redis-url URL]

Without --redis-url (or REDIS_URL) it starts an embedded server and a replica of it. The last line
is the ratios.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from typing import Any

from burr.core import ApplicationBuilder, State, action
from burr.core.persistence import BaseStatePersister
from burr.integrations.persisters.b_redis import RedisBasePersister

from burr_dist import Lease, RedisPersister, RedisStore, StoreConfig
from burr_dist.keys import KeySchema
from burr_dist.observability.tracking import StepTracker
from burr_dist.testing.embedded import EmbeddedServer, wait_for
from burr_dist.transport.connect import connect


@action(reads=["n"], writes=["n"])
def ping(state: State) -> State:
    return state.update(n=state["n"] + 1)


@action(reads=["n"], writes=["n", "last"])
def pong(state: State) -> State:
    return state.update(last=state["n"])


def make_app(
    persister: Any | None, app_id: str, partition_key: str, tracker: StepTracker | None = None
) -> Any:
    b = (
        ApplicationBuilder()
        .with_actions(ping=ping, pong=pong)
        .with_transitions(("ping", "pong"), ("pong", "ping"))
        .with_identifiers(app_id=app_id, partition_key=partition_key)
    )
    if tracker is not None:  # as the worker adds it (worker/claim_runner.py)
        b = b.with_hooks(tracker)
        if persister is not None:
            persister.core.tracker = tracker
    if persister is None:
        b = b.with_state(n=0, last=0).with_entrypoint("ping")
    else:
        b = b.initialize_from(
            persister,
            resume_at_next_action=True,
            default_state={"n": 0, "last": 0},
            default_entrypoint="ping",
        ).with_state_persister(persister)
    return b.build()


def timed(persister: BaseStatePersister | None, steps: int, tracker: StepTracker | None = None) -> float:
    app = make_app(persister, f"bench-{uuid.uuid4().hex[:8]}", "bench", tracker)
    t0 = time.perf_counter()
    for _ in range(steps):
        app.step()
    return steps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=3, help="best of N rounds per variant")
    ap.add_argument("--redis-url", default=os.environ.get("REDIS_URL"))
    args = ap.parse_args()
    server = replica = None
    url = args.redis_url
    if not url:
        server = EmbeddedServer().start()
        replica = EmbeddedServer(extra=["--replicaof", "127.0.0.1", str(server.port)]).start()
        wait_for(lambda: replica.info("replication").get("master_link_status") == "up",
                 10, "the replica in sync")  # fmt: skip
        url = server.url
    try:
        client = connect(url)
        store = RedisStore(client)
        store_w1 = RedisStore(connect(url), StoreConfig(wait_replicas=1))
        burr_redis = RedisBasePersister(connect(url), namespace=f"bench{uuid.uuid4().hex[:6]}")
        # Raw round trip for scale: PING p50.
        lat = []
        for _ in range(2000):
            t0 = time.perf_counter()
            client.ping()
            lat.append(time.perf_counter() - t0)
        lat.sort()
        ping_p50 = lat[len(lat) // 2]
        print(f"server={url} raw_ping_p50_us={ping_p50 * 1e6:.1f}")

        tracked_apps: list[str] = []

        def leased(on: RedisStore = store, track: bool = False) -> float:
            app_id = f"bench-{uuid.uuid4().hex[:8]}"
            tracker = StepTracker(worker="bench-worker-1", project="bench") if track else None
            if track:
                tracked_apps.append(app_id)
            with Lease(on, "bench", app_id, ttl=30).acquire() as lease:
                app = make_app(lease.persister, app_id, "bench", tracker)
                t0 = time.perf_counter()
                for _ in range(args.steps):
                    app.step()
                return args.steps / (time.perf_counter() - t0)

        variants = {
            "a_no_persister": lambda: timed(None, args.steps),
            "a2_tracker_hook_only": lambda: timed(None, args.steps, StepTracker(worker="w", project="bench")),
            "b_burr_redis": lambda: timed(burr_redis, args.steps),
            "c_burr_dist": lambda: timed(RedisPersister(store), args.steps),
            "c2_burr_dist_tracked": lambda: timed(
                RedisPersister(store), args.steps, StepTracker(worker="w", project="bench")
            ),
            "d_burr_dist_leased": leased,
            "g_leased_tracked": lambda: leased(track=True),
        }
        if replica is not None:
            variants["e_burr_dist_wait1"] = lambda: timed(RedisPersister(store_w1), args.steps)
            variants["f_leased_wait1"] = lambda: leased(store_w1)
        best: dict[str, float] = {}
        for _ in range(args.rounds):  # interleave rounds so drift hits every variant alike
            for name, fn in variants.items():
                best[name] = max(best.get(name, 0.0), fn())
        for name, rate in best.items():
            print(f"{name:22s} {rate:10.0f} steps/s")
        a, b, c, d = (
            best[k] for k in ("a_no_persister", "b_burr_redis", "c_burr_dist", "d_burr_dist_leased")
        )
        g, a2 = best["g_leased_tracked"], best["a2_tracker_hook_only"]
        track = KeySchema().app("bench", tracked_apps[-1]).track
        fields = [f for f in client.hkeys(track) if f.isdigit()]
        per_step = sum(client.hstrlen(track, f) for f in fields) / len(fields)
        print(
            f"tracking: ratio_tracked_vs_leased={g / d:.3f} cost_per_step_us={(1 / g - 1 / d) * 1e6:.1f} "
            f"hook_cpu_per_step_us={(1 / a2 - 1 / a) * 1e6:.1f} record_bytes_per_step={per_step:.0f} "
            f"redis_memory_per_step_bytes={client.memory_usage(track) / len(fields):.0f}"
        )
        wait_cost = f" wait1_vs_no_wait={best['e_burr_dist_wait1'] / c:.2f}" if replica is not None else ""
        # The physical limit of a persisted step here: Burr's own step plus one round trip (a
        # commit is one EVALSHA), both measured in this run; each variant's fraction of it.
        limit = 1 / (1 / a + ping_p50)
        fractions = " ".join(
            f"limit_fraction_{k}={best[v] / limit:.2f}"
            for k, v in (("unleased", "c_burr_dist"), ("leased", "d_burr_dist_leased"),
                         ("unleased_tracked", "c2_burr_dist_tracked"), ("leased_tracked", "g_leased_tracked"))
        )  # fmt: skip
        print(
            f"ratio_vs_burr_redis={c / b:.2f} ratio_leased_vs_burr_redis={d / b:.2f} "
            f"ratio_vs_no_persister={c / a:.3f}{wait_cost} limit_steps_per_s={limit:.0f} {fractions}"
        )
    finally:
        for srv in (replica, server):
            if srv is not None:
                srv.stop()


if __name__ == "__main__":
    sys.exit(main())
