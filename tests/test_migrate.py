"""Data written by 0.1 (one hash tag per partition) keeps working after `burr-dist migrate-keys`."""

from __future__ import annotations

import subprocess
import sys

import orjson
import pytest
import redis

from burr_dist import FleetClient, RedisStore
from burr_dist.fleet.migrate import migrate_v1_layout
from burr_dist.keys import encode_id
from burr_dist.store.codec import encode_fields, encode_snapshot, new_write_id
from burr_dist.testing.embedded import EmbeddedServer
from tests.support.fleet import ROOT
from tests.support.targets import ACL


def write_v1_app(client: redis.Redis, pk: str, app_id: str, status: str, queue: str | None) -> None:
    """The keys 0.1 wrote for an app with two committed steps (names from 0.1's keys.py)."""
    base = f"burr:{{{encode_id(pk)}}}:{encode_id(app_id)}"
    for seq in (0, 1):
        blob = encode_snapshot(write_id=new_write_id(), partition_key=pk, app_id=app_id, sequence_id=seq,
                               position="inc", status="completed", fields=encode_fields({"n": seq + 1}),
                               max_bytes=1 << 20)  # fmt: skip
        client.hset(f"{base}:snaps", str(seq), blob)
    client.hset(
        f"{base}:meta", mapping={"head": 1, "pos": "inc", "status": "completed", "oldest": 0, "fence": 3}
    )
    client.hset(f"{base}:job", mapping={"name": "counter", "queue": queue or "default", "app_id": app_id,
                                        "partition_key": pk, "status": status, "attempts": 0, "claims": 1,
                                        "created_at": 1, "updated_at": 1, "run_at": 5,
                                        "state": orjson.dumps({"target": 5}), "inputs": ""})  # fmt: skip
    client.zadd(f"burr:{{{encode_id(pk)}}}:apps", {app_id: 1000})
    if queue is not None:
        client.zadd(f"burr:q{{{encode_id(queue)}}}:ready", {f"{encode_id(pk)}:{encode_id(app_id)}": 5})


@pytest.mark.skipif(
    ACL, reason="migrate-keys is an admin operation: RENAME and MULTI/EXEC are not in ACL_RULES"
)
def test_v1_data_moves_to_the_bucketed_layout_and_keeps_working(fleet_server: EmbeddedServer) -> None:
    client = redis.Redis(port=fleet_server.port)
    write_v1_app(client, "user 1", "chat:1", "queued", "default")
    write_v1_app(client, "default", "done-1", "completed", None)
    client.hset("burr:w{fleet}:epoch", mapping={"id": "x", "n": 7})
    fc = FleetClient.from_url(fleet_server.url)

    dry = migrate_v1_layout(fc.client, fc.schema, dry_run=True)
    assert (dry.apps, dry.queue_entries) == (2, 0) and client.exists("burr:w{fleet}:epoch")
    out = subprocess.run(
        [sys.executable, "-m", "burr_dist.cli", "--redis-url", fleet_server.url, "--json", "migrate-keys"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert orjson.loads(out.stdout) == {"apps": 2, "queue_entries": 1, "dry_run": False}

    store = RedisStore.from_url(fleet_server.url)
    head = store.load("user 1", "chat:1")
    assert head is not None and head["sequence_id"] == 1 and head["state"]["n"] == 2
    assert store.load("user 1", "chat:1", 0)["state"]["n"] == 1  # type: ignore[index]
    assert store.list_app_ids("user 1") == ["chat:1"]
    assert fc.show("chat:1", partition_key="user 1")["status"] == "queued"
    assert fc.overview()["apps"]["queued"] == 1 and fc.overview()["apps"]["completed"] == 1
    assert fc.overview()["queues"]["default"]["ready"] == 1
    # Nothing of 0.1 is left, and a second run finds nothing to do.
    left = {k.decode() for k in client.scan_iter(match="burr:*")}
    assert not any(k.startswith(("burr:q{", "burr:w{")) for k in left), left
    assert not {k for k in left if k.count(":") == 3 and k.split(":")[-1] in ("meta", "snaps", "job")}
    assert migrate_v1_layout(fc.client, fc.schema).apps == 0
