"""Queue shards on a real server: claim deadlines (touch extends live claims only, sweep returns
expired ones), ack drops only the claim its worker holds, and partitions are served fairly."""

from __future__ import annotations

import time

import redis

from burr_dist import FleetClient

Q = "default"


def claim(fleet: FleetClient, shard: int, n: int, claim_ms: int = 200) -> tuple[int, list[str]]:
    deadline, _, members = fleet.read_claim(fleet.run(fleet.claim_call(Q, shard, n, claim_ms)))
    return deadline, members


def test_touch_extends_a_live_claim_but_never_revives_an_expired_one(client: redis.Redis) -> None:
    fleet = FleetClient(client)
    shard = 0
    q = fleet.schema.queue_shard(Q, shard)
    client.zadd(q.ready, {"p:live": 0, "p:late": 0})
    deadline, got = claim(fleet, shard, 10)
    assert sorted(got) == ["p:late", "p:live"]
    time.sleep(0.1)
    reply = fleet.run(fleet.touch_call(Q, shard, 200, [("p:live", deadline)]))
    assert reply[1:] == [1]  # still live: extended
    assert client.zscore(q.active, "p:live") == int(reply[0])  # the deadline the worker remembers
    time.sleep(0.15)  # p:late's deadline passed; the worker's touch for it was slow to arrive
    assert fleet.run(fleet.touch_call(Q, shard, 200, [("p:late", deadline), ("p:gone", deadline)]))[1:] == [
        0,
        0,
    ]
    assert fleet.run(fleet.sweep_call(Q, shard)) == [b"p:late"]  # recovered on time, not 200 ms later
    assert client.zrange(q.active, 0, -1) == [b"p:live"]
    assert client.zrange(q.ready, 0, -1) == [b"p:late"]


def test_ack_drops_only_the_claim_its_worker_holds(client: redis.Redis) -> None:
    """A worker whose lease expired must not drop the active entry of the worker that took over."""
    fleet = FleetClient(client)
    member = "p:a"
    shard = fleet.schema.shard_of(member)
    q = fleet.schema.queue_shard(Q, shard)
    fleet.run(fleet.ready_call(Q, "p", "a", 0))
    first, _ = claim(fleet, shard, 1, claim_ms=50)
    time.sleep(0.08)
    assert fleet.run(fleet.sweep_call(Q, shard)) == [member.encode()]  # the first worker stalled
    second, got = claim(fleet, shard, 1, claim_ms=50)
    assert got == [member] and second > first + 50
    assert fleet.run(fleet.ack_call(Q, member, first, None, claim_ms=50)) == 0  # stale worker: left alone
    assert client.zscore(q.active, member) == second
    # The owner's ack works even when a touch it has not heard back from moved the deadline on.
    time.sleep(0.003)  # the touch's deadline lands in a later ms than the claim's
    touched = fleet.run(fleet.touch_call(Q, shard, 50, [(member, second)]))[0]
    assert touched > second
    assert fleet.run(fleet.ack_call(Q, member, second, None, delay_ms=60_000, claim_ms=50)) == 1
    assert client.zscore(q.active, member) is None
    assert client.zscore(q.scheduled, member) is not None  # runs again in a minute, not now


def test_a_quiet_partition_is_not_starved_by_a_flood(client: redis.Redis) -> None:
    """1,000 apps of one partition queued first; an app of another partition queued after them is
    among the first two claimed (fair order across partitions), and the flood keeps its order."""
    fleet = FleetClient(client)
    shard = fleet.schema.shard_of("quiet:q1")
    flood = []
    i = 0
    while len(flood) < 1000:
        if fleet.schema.shard_of(f"noisy:n{i}") == shard:
            flood.append(f"n{i}")
        i += 1
    fleet.run_many([fleet.ready_call(Q, "noisy", a, 0) for a in flood])
    fleet.run(fleet.ready_call(Q, "quiet", "q1", 0))
    _, got = claim(fleet, shard, 2, claim_ms=5000)
    assert "quiet:q1" in got
    _, rest = claim(fleet, shard, 1000, claim_ms=5000)
    assert [m.split(":")[1] for m in [g for g in got if g.startswith("noisy")] + rest] == flood
    assert client.hlen(fleet.schema.queue_shard(Q, shard).vt) == 0  # nothing pending: state cleaned up


def test_delayed_apps_wait_in_scheduled_until_due(client: redis.Redis) -> None:
    fleet = FleetClient(client)
    member = "p:later"
    shard = fleet.schema.shard_of(member)
    now = fleet.server_time_ms()
    fleet.run(fleet.ready_call(Q, "p", "later", now + 150))
    assert claim(fleet, shard, 5)[1] == []
    time.sleep(0.2)
    assert claim(fleet, shard, 5)[1] == [member]


def test_status_counters_count_each_change_once_and_add_up_with_plain_fields(client: redis.Redis) -> None:
    """A status change is one HINCRBY of its transition field; `status` adds transitions to the
    plain per-status fields (what enqueue writes, and all that earlier versions kept)."""
    from burr_dist.fleet.core import EnqueueRequest
    from burr_dist.keys import partition_of

    fleet = FleetClient(client)
    fleet.enqueue_many([EnqueueRequest("x", app_id=a) for a in ("c1", "c2", "c3")])
    assert fleet.cancel("c2") == "cancelled"
    bucket = fleet.keys(partition_of(None), "c2").counts
    assert client.hgetall(bucket).get(b"queued>cancelled") == b"1"
    assert {k: v for k, v in fleet.overview()["apps"].items() if v} == {"queued": 2, "cancelled": 1}
    # A bucket as an older worker left it (plain counts), then changed by this version.
    mixed = {b"queued": b"4", b"completed": b"7", b"queued>running": b"3", b"running>completed": b"2"}
    counts = FleetClient.read_counts([mixed])
    assert (counts["queued"], counts["running"], counts["completed"]) == (1, 1, 9)


def test_a_stale_worker_touch_leaves_the_new_owner_claim_alone(client: redis.Redis) -> None:
    """A worker that stalled past its claim (swept, claimed again by another worker) and wakes up
    must not extend the new owner's deadline: if that owner dies, the sweep must not wait on a
    worker that no longer runs the app."""
    fleet = FleetClient(client)
    member = "p:t"
    shard = fleet.schema.shard_of(member)
    q = fleet.schema.queue_shard(Q, shard)
    fleet.run(fleet.ready_call(Q, "p", "t", 0))
    first, _ = claim(fleet, shard, 1, claim_ms=50)
    time.sleep(0.08)
    assert fleet.run(fleet.sweep_call(Q, shard)) == [member.encode()]
    second, _ = claim(fleet, shard, 1, claim_ms=50)
    time.sleep(0.005)
    assert fleet.run(fleet.touch_call(Q, shard, 50, [(member, first)]))[1:] == [0]  # the stale worker
    assert client.zscore(q.active, member) == second
    assert fleet.run(fleet.touch_call(Q, shard, 50, [(member, second)]))[1:] == [1]  # the owner
