"""Failover under a running fleet, checked by the history checker.

Sentinel: the master SIGKILLed; a forced ``SENTINEL FAILOVER``; a replica cut off (stopped, its
link closed, so it misses writes) when the master dies, with a second replica that WAIT counts
(it must be the one promoted) or alone with ``wait_replicas=0`` (it is promoted: writes are lost).
Cluster (3 masters, 1 replica each): a master SIGKILLed and its replica promoted; slots migrated a
few keys at a time (ASK and TRYAGAIN live) while the fleet runs.

Where wait_replicas covers the fault, nothing acknowledged may be lost: besides the checker's own
checks, every commit a worker recorded ``ok`` must be in the store at the end with the digest it
wrote, and no worker may die. Where it does not (wait 0 and a lagging replica promoted; a forced
failover with 2 replicas and wait 1, see that test), the loss is real: the scenario counts the
acknowledged commits lost and fails unless each one is flagged, by the checker and by the
workers told ``ok`` stopping with StoreRewound (exit 7); fresh workers then finish the apps.

*recovery* in these rows: the longest time one app went without a commit, across the fault.
"""

from __future__ import annotations

import itertools
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

from burr_dist.cli import EXIT_STORE_REWOUND
from burr_dist.testing.embedded import EmbeddedServer, find_server_binary
from burr_dist.testing.history import Event, FinalState, Op, load_history, operations
from burr_dist.testing.sentinel import EmbeddedSentinel
from burr_dist.testing.topologies import EmbeddedCluster
from burr_dist.transport.core import slot_of
from tests.chaos.harness import LARGE, TIMEOUT, ChaosRun, Report, size, spread
from tests.conftest import KINDS

pytestmark = [pytest.mark.chaos]

WAIT_TIMEOUT_MS = 500


@dataclass(frozen=True)
class Endpoint:
    url: str


def with_wait(url: str, replicas: int | str) -> Endpoint:
    sep = "&" if "?" in url else "?"
    return Endpoint(f"{url}{sep}wait_replicas={replicas}&wait_timeout_ms={WAIT_TIMEOUT_MS}")


# -- what the history says about a Redis fault ---------------------------------------------------
def lost_acked(events: Iterable[Event], finals: dict[str, FinalState]) -> list[Op]:
    """Commits recorded ``ok`` whose snapshot the store does not hold as written at the end.
    (An ok sequence can never be legitimately overwritten: the commit is a CAS on the head.)"""
    lost = []
    for o in operations(events):
        if o.op != "commit" or o.outcome != "ok" or o.new_seq is None:
            continue
        fin = finals.get(o.app)
        stored = fin.snapshots.get(o.new_seq) if fin is not None else None
        if stored is None or (o.digest is not None and stored != o.digest):
            lost.append(o)
    return lost


def stall(events: Iterable[Event], start_ns: int, end_ns: int) -> float:
    """The longest time one app made no progress (an ok commit, or the ok settle that ends a
    claim), over the gaps between two such events that overlap the fault: ``start_ns`` to
    ``end_ns``, from the injection until, e.g., the new master is announced (some faults hurt
    later, such as a new master without a replica). An app that never progressed again is left
    to the report's unfinished apps."""
    done: dict[str, list[int]] = {}
    for o in operations(events):
        if o.op in ("commit", "release") and o.outcome == "ok" and o.complete_ns is not None:
            done.setdefault(o.app, []).append(o.complete_ns)
    longest = 0.0
    for times in done.values():
        times.sort()
        for prev, nxt in itertools.pairwise(times):
            if prev < end_ns and nxt > start_ns:
                longest = max(longest, (nxt - prev) / 1e9)
    return longest


def cut_off(master: EmbeddedServer, replica: EmbeddedServer) -> None:
    """SIGSTOP ``replica`` and close its link on the master's side: from now on it misses every
    write. (Stopped but still linked, it would read what the kernel buffered for it once resumed,
    even from a master killed in between, and miss nothing.)"""
    with replica.client() as c:
        (link,) = [x["laddr"] for x in c.client_list() if "M" in x["flags"]]
    replica.signal(signal.SIGSTOP)
    with master.client() as c:
        c.execute_command("CLIENT", "KILL", "ADDR", link)


@dataclass
class Outcome:
    report: Report
    lost: list[Op]  # acknowledged commits the store lost
    exits: dict[str, int | None]  # workers that exited before the end: id -> exit code
    faults: int


def failover_run(
    run: ChaosRun,
    inject: Callable[[ChaosRun], None],
    *,
    faults: int,
    first: float,
    every: float,
    note: str,
    after_rewind: int = 0,
) -> Outcome:
    """Launch 3 workers, call ``inject`` ``faults`` times (the first ``first`` seconds after the
    apps were enqueued, then every ``every`` seconds, while apps remain), wait for every app,
    then fill the row's *lost* and *recovery* columns. When every worker stopped on a rewound
    store (exit 7), ``after_rewind`` fresh workers (which know nothing of the old store) are
    started to finish the apps on what is left, as an operator would."""
    with run:
        run.launch()
        done = 0
        next_at = time.monotonic() + first
        spans: list[tuple[int, int]] = []
        while done < faults and not run.done():
            time.sleep(max(0.0, next_at - time.monotonic()))
            if run.done():
                break
            began = time.monotonic_ns()
            inject(run)
            spans.append((began, time.monotonic_ns()))
            done += 1
            next_at = time.monotonic() + every
        give_up = time.monotonic() + TIMEOUT
        restarted = False
        while not run.done() and time.monotonic() < give_up:
            if not run.live():
                if restarted or not after_rewind:
                    break
                restarted = True
                run.fault("workers restarted after they stopped on a rewound store")
                for _ in range(after_rewind):
                    run.start_worker()
            time.sleep(0.1)
        exits = {w.id: w.proc.returncode for w in run.workers if not w.alive()}
        rewound = sum(code == EXIT_STORE_REWOUND for code in exits.values())
        if rewound:
            note += f"; {rewound} workers stopped (StoreRewound)"
        report = run.finish(note=note.format(faults=done))
    events = load_history(run.history_dir)
    lost = lost_acked(events, report.finals)
    report.row.lost = len(lost)
    report.row.recovery_max = max((stall(events, began, ended) for began, ended in spans), default=None)
    return Outcome(report, lost, exits, done)


def assert_nothing_lost(out: Outcome, min_faults: int = 1) -> None:
    shown = [f"{o.app} seq {o.new_seq} ({o.worker})" for o in out.lost[:10]]
    assert not out.lost, f"{len(out.lost)} acknowledged commits lost: {shown}; exits {out.exits}"
    assert not out.exits, f"workers exited: {out.exits}"
    out.report.assert_ok(min_faults=min_faults, recovery_bound=None)


FLAGS = frozenset({"rollback", "duplicate_commit", "digest_mismatch", "gap", "lost_app"})


def assert_loss_flagged(out: Outcome) -> None:
    """Acknowledged commits were lost (else the scenario proved nothing), and none went unnoticed:
    the checker flags every app that lost one, and every worker that was told ``ok`` for a lost
    commit stopped with StoreRewound (exit 7) instead of carrying on."""
    assert out.lost, "no acknowledged commit was lost: the fault did not make replication lag"
    flagged = {a.app for a in out.report.anomalies if a.kind in FLAGS}
    unflagged = sorted({o.app for o in out.lost} - flagged)
    assert not unflagged, f"lost acknowledged commits the checker did not flag, apps: {unflagged}"
    told = {o.worker for o in out.lost}
    carried_on = sorted(w for w in told if out.exits.get(w) != EXIT_STORE_REWOUND)
    assert not carried_on, f"workers acked a lost commit and did not stop on it: {carried_on}; {out.exits}"
    assert not out.report.unfinished, f"apps not completed after the restart: {out.report.unfinished}"


def new_run(name: str, endpoint: Endpoint, tmp: Path, steps: int = 15) -> ChaosRun:
    """20 apps (200 large) of ``steps`` ticks (25 large), a tick every 0.1 s, arrivals spread over
    5 s (21 s large): the faults land mid-run (the second forced failover comes 17 s in; the
    workers, faster now, finished 14 s of arrivals before it)."""
    apps, steps = size((20, steps))
    return ChaosRun(name, endpoint, tmp, apps=apps, steps=steps, delay=0.1, stagger=spread(0.7, 3.0))


# -- Sentinel ------------------------------------------------------------------------------------
def sentinel_servers(replicas: int) -> EmbeddedSentinel:
    return EmbeddedSentinel(find_server_binary(KINDS[0]), replicas=replicas)


@pytest.mark.ha
@pytest.mark.ha_long
def test_sentinel_master_sigkill(tmp_path: Path) -> None:
    """The master SIGKILLed mid-run; a replica is promoted, the other follows it, the old master
    comes back as a replica. redis-py's Sentinel client must find the new master."""
    kills = 3 if LARGE else 1
    with sentinel_servers(replicas=2) as s:

        def kill(run: ChaosRun) -> None:
            run.fault("sentinel master sigkill")
            old = s.kill_master()
            s.wait_new_master(old, timeout=30)
            s.restart(old)  # as a replica of the new master, in sync

        run = new_run("sentinel master SIGKILL, wait 1", with_wait(s.url, 1), tmp_path)
        out = failover_run(run, kill, faults=kills, first=2.0, every=4.0, note="{faults} kills, 2 replicas")
    assert_nothing_lost(out, kills)


@pytest.mark.ha
@pytest.mark.ha_long
@pytest.mark.parametrize(
    ("replicas", "wait"),
    [(1, 1), (2, 2), (2, 1), (2, "all")],
    ids=["1 replica, wait 1", "2 replicas, wait 2", "2 replicas, wait 1", "2 replicas, wait all"],
)
def test_sentinel_forced_failover(tmp_path: Path, replicas: int, wait: int | str) -> None:
    """``SENTINEL FAILOVER`` mid-run. The old master lives on and keeps its clients (redis-py's
    Sentinel client only looks again when it reconnects) until the sentinels demote it, about 10 s
    later. Between the promotion and the moment the sentinels point the other replicas at the new
    master, those replicas still follow the old one, so a WAIT that counts fewer than all replicas
    confirms writes that the failover then discards: with 2 replicas and wait 1 acknowledged
    commits are lost (the suite must flag each one); with wait counting every replica (a count
    equal to theirs, or "all": every replica online where the WAIT is sent), none."""
    below = wait != "all" and int(wait) < replicas
    times = 2 if LARGE else 1
    with sentinel_servers(replicas) as s:

        def failover(run: ChaosRun) -> None:
            run.fault("sentinel failover")
            old = s.force_failover()
            s.wait_new_master(old, timeout=30)

        run = new_run(f"sentinel failover, {replicas} repl., wait {wait}", with_wait(s.url, wait), tmp_path)
        out = failover_run(
            run, failover, faults=times, first=2.0, every=15.0, note="{faults} x SENTINEL FAILOVER",
            after_rewind=3 if below else 0,
        )  # fmt: skip
    if below:
        assert_loss_flagged(out)
    else:
        assert_nothing_lost(out, times)


def test_sentinel_lagging_replica_not_promoted(tmp_path: Path) -> None:
    """Two replicas, one cut off (stopped, its link closed: it misses writes; WAIT 1 counts the
    other); the master dies while it is stopped, and it resumes before the sentinels elect: they
    must promote the replica that has every acknowledged write, and the lagging one catches up."""
    with sentinel_servers(replicas=2) as s:

        def lag_then_kill(run: ChaosRun) -> None:
            master = s.master()
            lagging = next(r for r in s.data_servers if r is not master and r.alive)
            run.fault("replica sigstop, its link cut")
            cut_off(master, lagging)
            time.sleep(1.5)
            run.fault("master sigkill while a replica is stopped")
            master.kill()
            time.sleep(0.3)
            lagging.signal(signal.SIGCONT)  # back before the sentinels agree the master is down
            new = s.wait_new_master(master, timeout=30)
            assert new is not lagging, "the sentinels promoted the replica that missed writes"
            s.restart(master)

        run = new_run("sentinel lagging replica, wait 1", with_wait(s.url, 1), tmp_path)
        out = failover_run(
            run,
            lag_then_kill,
            faults=2 if LARGE else 1,
            first=1.5,
            every=4.0,
            note="{faults} x 1 of 2 replicas cut off 1.5s, master killed",
        )
    assert_nothing_lost(out)


def test_sentinel_lagging_replica_promoted_wait_0(tmp_path: Path) -> None:
    """wait_replicas=0, the replica cut off (stopped, link closed) while the fleet commits, the master
    SIGKILLed, the replica resumed and promoted with the writes it missed: acknowledged commits
    are lost. The workers must stop on it (StoreRewound: the store epoch went back) and the checker
    must flag every app that lost a commit; fresh workers then finish the apps from what is left."""
    with sentinel_servers(replicas=1) as s:

        def lag_then_kill(run: ChaosRun) -> None:
            master = s.master()
            (lagging,) = (r for r in s.data_servers if r is not master)
            run.fault("replica sigstop, its link cut")
            cut_off(master, lagging)
            time.sleep(1.5)
            run.fault("master sigkill while its replica is stopped")
            master.kill()
            time.sleep(0.3)
            lagging.signal(signal.SIGCONT)
            assert s.wait_new_master(master, timeout=30) is lagging

        run = new_run("sentinel lagging replica, wait 0", Endpoint(s.url), tmp_path)
        out = failover_run(
            run, lag_then_kill, faults=1, first=1.5, every=0, note="replica cut off 1.5s, master killed",
            after_rewind=3,
        )  # fmt: skip
    assert_loss_flagged(out)


# -- Cluster -------------------------------------------------------------------------------------
def cluster_servers() -> EmbeddedCluster:
    return EmbeddedCluster(find_server_binary(KINDS[0]), masters=3, replicas_per_master=1)


def test_cluster_master_sigkill(tmp_path: Path) -> None:
    """A master SIGKILLed under load; its replica is promoted (its slots are unavailable until
    then, and WAIT 1 cannot succeed on them until the old master rejoins as a replica)."""
    kills = 3 if LARGE else 1
    with cluster_servers() as c:

        def kill(run: ChaosRun) -> None:
            victim = c.primaries()[done[0] % 3]
            done[0] += 1
            run.fault("cluster master sigkill")
            c.kill(victim)
            c.wait_failover(victim, timeout=30)
            c.restart(victim)  # back as the replica of the promoted one

        done = [0]
        run = new_run("cluster master SIGKILL, wait 1", with_wait(c.url, 1), tmp_path)
        out = failover_run(
            run, kill, faults=kills, first=2.0, every=4.0, note="{faults} kills, 1 replica each"
        )
    assert_nothing_lost(out, kills)


def errorstats(c: EmbeddedCluster, kinds: Iterable[str]) -> dict[str, int]:
    """Error replies of each kind the cluster's nodes sent (INFO errorstats), summed."""
    out = dict.fromkeys(kinds, 0)
    for node in c.reachable():
        with node.client() as client:
            stats = client.info("errorstats")
        for kind in out:
            out[kind] += int(stats.get(f"errorstat_{kind}", {}).get("count", 0))
    return out


def busiest_slots(run: ChaosRun, count: int) -> list[int]:
    """The hash slots holding the most of the run's apps (each app lives in one bucket's slot)."""
    per_slot: dict[int, int] = {}
    for pk, app_id in run.apps:
        slot = slot_of(run.fleet.keys(pk, app_id).meta)
        per_slot[slot] = per_slot.get(slot, 0) + 1
    return sorted(per_slot, key=lambda sl: -per_slot[sl])[:count]


def test_cluster_slot_migration(tmp_path: Path) -> None:
    """Slots holding apps (and one shard of the queue) migrated to another master, a few keys per
    MIGRATE with pauses in between, so commands meet ASK and TRYAGAIN for a while, as the fleet
    runs."""
    moves = 6 if LARGE else 3
    with cluster_servers() as c:
        moved: list[int] = []

        def migrate(run: ChaosRun) -> None:
            queue_slot = slot_of(run.fleet.schema.queue_shard("default", 0).ready)
            slots = [*busiest_slots(run, moves - 1), queue_slot]
            slot = slots[len(moved)]
            src = c.owner(slot)
            dst = next(n for n in c.primaries() if n is not src)
            run.fault(f"migrate slot {slot}")
            moved.append(c.migrate_slot(slot, src, dst, batch=2, between_batches=lambda _n: time.sleep(0.5)))

        run = new_run("cluster slot migration, wait 1", with_wait(c.url, 1), tmp_path, steps=20)
        out = failover_run(
            run, migrate, faults=moves, first=1.0, every=0.5, note="{faults} slots moved, 2 keys a batch"
        )
        redirects = errorstats(c, ("ASK", "TRYAGAIN", "MOVED"))
    out.report.row.note += ", " + ", ".join(f"{n} {k}" for k, n in redirects.items())
    assert_nothing_lost(out, moves)
    assert sum(moved) > 0
    assert redirects["ASK"] > 0, f"no command met a migration in progress: {redirects}"
