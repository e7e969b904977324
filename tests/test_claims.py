"""Claim deadlines on a real server: touch extends live claims only, sweep returns expired ones."""

from __future__ import annotations

import time

import redis

from burr_dist import FleetClient

Q = "default"


def test_touch_extends_a_live_claim_but_never_revives_an_expired_one(client: redis.Redis) -> None:
    fleet = FleetClient(client)
    shard = 0
    ready, active = fleet.schema.queue_shard(Q, shard).ready, fleet.schema.queue_shard(Q, shard).active
    client.zadd(ready, {"p:live": 0, "p:late": 0})
    assert sorted(fleet.run(fleet.claim_call(Q, shard, 10, 200))) == [b"p:late", b"p:live"]
    time.sleep(0.1)
    assert fleet.run(fleet.touch_call(Q, shard, 200, ["p:live"])) == 1  # still live: extended
    time.sleep(0.15)  # p:late's deadline passed; the worker's touch for it was slow to arrive
    assert fleet.run(fleet.touch_call(Q, shard, 200, ["p:late", "p:gone"])) == 0
    assert fleet.run(fleet.sweep_call(Q, shard)) == [b"p:late"]  # recovered on time, not 200 ms later
    assert client.zrange(active, 0, -1) == [b"p:live"]
    assert client.zrange(ready, 0, -1) == [b"p:late"]
