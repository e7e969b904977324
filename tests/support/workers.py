"""Entry points for the real processes that the concurrency and zombie tests start.

Run as ``python -m tests.support.workers <command> ...`` from the repository root. Each prints one
JSON line on stdout with what it did; exit codes are documented per command.
"""

from __future__ import annotations

import json
import os
import sys
import time

from burr.core import State

from burr_dist import Lease, LeaseLost, RedisPersister, RedisStore, SequenceConflict, StoreConfig
from burr_dist.transport.connect import connect

EXIT_LEASE_LOST = 3
EXIT_CONFLICT = 4
EXIT_OTHER = 5


def wait_for(path: str, timeout: float = 30.0) -> None:
    give_up = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > give_up:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.005)


def touch(path: str) -> None:
    with open(path, "w"):
        pass


def race(url: str, pk: str, app_id: str, target: int, go: str, ready: str) -> int:
    """Unleased racer: load head, save head+1 with n+1, retry on conflict, until head >= target."""
    store = RedisStore(connect(url), StoreConfig(keep=10_000))
    persister = RedisPersister(store)
    touch(ready)
    wait_for(go)
    committed: list[int] = []
    conflicts = 0
    while True:
        head = persister.load(pk, app_id)
        seq = 0 if head is None else head["sequence_id"] + 1
        n = 0 if head is None else head["state"]["n"]
        if seq > target:
            break
        try:
            persister.save(pk, app_id, seq, "inc", State({"n": n + 1, "pid": os.getpid()}), "completed")
        except SequenceConflict:
            conflicts += 1
            continue
        committed.append(seq)
        # A step takes time in a real app. Without a pause, on a loaded 2-core machine the first
        # racer to wake could commit all the steps before the others saw the start signal.
        time.sleep(0.002)
    print(json.dumps({"pid": os.getpid(), "committed": committed, "conflicts": conflicts}), flush=True)
    return 0


def zombie(url: str, pk: str, app_id: str, ttl: float, barrier_dir: str, mode: str) -> int:
    """Lease holder that commits seq 0, signals ``ready``, waits for ``go``, then commits seq 1.

    mode "plain": the lease object judges for itself after waking up.
    mode "stale": after waking, the process forces its local view to "still valid" (as if it
    had been paused between its local check and the send), so only Redis can refuse it."""
    store = RedisStore(connect(url), StoreConfig(keep=100))
    lease = Lease(store, pk, app_id, ttl=ttl).acquire(auto_renew=True)
    persister = lease.persister
    persister.save(pk, app_id, 0, "inc", State({"n": 1, "by": "zombie"}), "completed")
    touch(os.path.join(barrier_dir, "ready"))
    wait_for(os.path.join(barrier_dir, "go"))
    if mode == "stale":
        lease._stop.set()
        if lease._thread is not None:
            lease._thread.join()
        lease.lost_reason = None
        lease.deadline = time.monotonic() + 100
    try:
        persister.save(pk, app_id, 1, "inc", State({"n": 2, "by": "zombie"}), "completed")
    except LeaseLost as e:
        print(json.dumps({"result": "lease_lost", "message": str(e)}), flush=True)
        return EXIT_LEASE_LOST
    except SequenceConflict as e:
        print(json.dumps({"result": "conflict", "message": str(e)}), flush=True)
        return EXIT_CONFLICT
    except Exception as e:
        print(json.dumps({"result": "error", "message": repr(e)}), flush=True)
        return EXIT_OTHER
    print(json.dumps({"result": "committed"}), flush=True)
    return 0


def main(argv: list[str]) -> int:
    command, *args = argv
    if command == "race":
        url, pk, app_id, target, go, ready = args
        return race(url, pk, app_id, int(target), go, ready)
    if command == "zombie":
        url, pk, app_id, ttl, barrier_dir, mode = args
        return zombie(url, pk, app_id, float(ttl), barrier_dir, mode)
    raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
