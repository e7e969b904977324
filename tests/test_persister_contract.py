"""Burr's persister contract, for RedisPersister (build/step) and AsyncRedisPersister
(abuild/astep), on every topology (single server, Cluster, Sentinel, TLS; Redis and Valkey)."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from datetime import datetime

import orjson
import pytest
import redis
from burr.core import State

from burr_dist import CorruptSnapshot, SequenceConflict, SerializationError, SnapshotNotFound
from burr_dist.keys import KeySchema
from burr_dist.store import codec
from tests.support.apps import Driver, Flaky
from tests.support.targets import Target

pytestmark = pytest.mark.topologies(default=("cluster", "sentinel"))
PK = "user-1"
KEYS = KeySchema("burr")


@pytest.fixture(params=["sync", "async"])
def d(request: pytest.FixtureRequest, target: Target) -> Iterator[Driver]:
    drv = Driver(target.url, request.param == "async")
    yield drv
    drv.close()


def snaps_of(client: redis.Redis, pk: str | None, app_id: str) -> dict[int, dict]:
    raw = client.hgetall(KEYS.app(pk, app_id).snaps)
    return codec.stored_steps(raw, key="snaps")


def dump_keys(client: redis.Redis) -> dict[bytes, object]:
    """Every key with its full content (on every primary), to prove that nothing was written."""
    out: dict[bytes, object] = {}
    for key in client.scan_iter(match="*"):
        kind = client.type(key)
        if kind == b"hash":
            out[key] = client.hgetall(key)
        elif kind == b"zset":
            out[key] = client.zrange(key, 0, -1, withscores=True)
        else:
            out[key] = client.get(key)
    return out


# -- save / load -----------------------------------------------------------------------------


def test_save_then_load_latest_and_by_sequence(d: Driver, client: redis.Redis) -> None:
    p = d.persister()
    app = d.app(p, "a1", PK)
    d.steps(app, 3)

    latest = d.call(p.load, PK, "a1")
    assert latest is not None
    assert latest["sequence_id"] == 2
    assert latest["state"]["n"] == 3
    assert latest["position"] == "inc"
    assert latest["status"] == "completed"
    assert latest["app_id"] == "a1"
    assert latest["partition_key"] == PK
    assert isinstance(latest["state"], State)
    datetime.fromisoformat(latest["created_at"])  # an ISO timestamp, as Burr expects

    for seq in range(3):
        snap = d.call(p.load, PK, "a1", seq)
        assert snap["sequence_id"] == seq
        assert snap["state"]["n"] == seq + 1
        assert snap["state"]["__SEQUENCE_ID"] == seq
    assert int(client.hget(KEYS.app(PK, "a1").meta, "head")) == 2


def test_load_unknown_app_returns_none(d: Driver) -> None:
    p = d.persister()
    assert d.call(p.load, PK, "nope") is None
    assert d.call(p.load, PK, "nope", 3) is None
    assert d.call(p.load, PK, None) is None


def test_load_of_a_sequence_not_retained_returns_none(d: Driver) -> None:
    """Burr's loader contract: a sequence never saved, or trimmed by keep, loads as None (so
    initialize_from(fork_from_sequence_id=...) falls back to the defaults); load_or_raise names
    the retained range instead."""
    p = d.persister(keep=3)
    app = d.app(p, "a1", PK, limit=10)
    d.steps(app, 6)  # sequences 0..5; 3..5 retained
    for missing in (0, 2, 6, 99):
        assert d.call(p.load, PK, "a1", missing) is None
        with pytest.raises(
            SnapshotNotFound, match=rf"no snapshot {missing}: retained sequences are 3\.\.5"
        ) as ei:
            d.call(p.load_or_raise, PK, "a1", missing)
        assert ei.value.sequence_id == missing
        assert ei.value.oldest == 3
        assert ei.value.head == 5
    assert d.call(p.load, PK, "a1", 3)["state"]["n"] == 4
    assert d.call(p.load_or_raise, PK, "a1", 3)["state"]["n"] == 4
    with pytest.raises(SnapshotNotFound, match="has no committed step") as ei:
        d.call(p.load_or_raise, PK, "ghost")
    assert ei.value.head is None


def test_list_app_ids_newest_first_by_first_commit(d: Driver) -> None:
    p = d.persister()
    apps = {}
    for name in ("first", "second", "third"):
        apps[name] = d.app(p, name, PK, limit=10)
        d.step(apps[name])
        time.sleep(0.01)  # distinct server milliseconds
    # Later commits to the oldest app do not make it "newer": the order is by creation.
    d.steps(apps["first"], 3)
    other = d.app(p, "elsewhere", "user-2")
    d.step(other)

    assert d.call(p.list_app_ids, PK) == ["third", "second", "first"]
    assert d.call(p.list_app_ids, "user-2") == ["elsewhere"]
    assert d.call(p.list_app_ids, "empty") == []


# -- resume ----------------------------------------------------------------------------------


def test_resume_after_completed_step(d: Driver, client: redis.Redis) -> None:
    p = d.persister()
    app = d.app(p, "a1", PK)
    d.steps(app, 2)  # seq 0, 1; n = 2
    del app

    p2 = d.persister()  # a fresh process' view
    resumed = d.app(p2, "a1", PK)
    assert resumed.sequence_id == 1
    assert resumed.state["n"] == 2
    assert resumed.get_next_action().name == "inc"
    d.step(resumed)
    head = d.call(p2.load, PK, "a1")
    assert head["sequence_id"] == 2
    assert head["state"]["n"] == 3
    assert sorted(snaps_of(client, PK, "a1")) == [0, 1, 2]


def test_resume_runs_to_completion_and_stops(d: Driver) -> None:
    p = d.persister()
    app = d.app(p, "a1", PK, limit=3)
    d.steps(app, 2)
    resumed = d.app(d.persister(), "a1", PK, limit=3)
    while resumed.get_next_action() is not None:
        d.step(resumed)
    head = d.call(p.load, PK, "a1")
    assert head["sequence_id"] == 3  # inc x3 (0..2), done (3)
    assert head["position"] == "done"
    assert head["state"]["finished"] is True
    again = d.app(d.persister(), "a1", PK, limit=3)
    assert again.get_next_action() is None


def test_resume_after_failed_step(d: Driver, client: redis.Redis) -> None:
    flaky = Flaky(at=2)
    p = d.persister()
    app = d.app(p, "a1", PK, flaky=flaky)
    d.steps(app, 2)  # seq 0, 1; n = 2
    with pytest.raises(RuntimeError, match="flaky"):
        d.step(app)  # seq 2 fails
    assert flaky.raised == 1

    failed = d.call(p.load, PK, "a1")
    assert failed["sequence_id"] == 2
    assert failed["status"] == "failed"
    assert failed["position"] == "inc"
    assert failed["state"]["n"] == 2  # the state from before the action
    assert client.hget(KEYS.app(PK, "a1").meta, "status") == b"failed"

    resumed = d.app(d.persister(), "a1", PK, flaky=flaky)
    assert resumed.sequence_id == 2
    assert resumed.get_next_action().name == "inc"  # the failed action runs again
    d.step(resumed)
    head = d.call(p.load, PK, "a1")
    assert head["sequence_id"] == 3
    assert head["status"] == "completed"
    assert head["state"]["n"] == 3
    stored = snaps_of(client, PK, "a1")
    assert [stored[s]["status"] for s in range(4)] == ["completed", "completed", "failed", "completed"]


# -- fork ------------------------------------------------------------------------------------


def test_fork_continues_under_a_new_app_id(d: Driver, client: redis.Redis) -> None:
    p = d.persister()
    app = d.app(p, "parent", PK, limit=10)
    d.steps(app, 4)  # seq 0..3, n = 4

    fork = d.app(
        d.persister(),
        "child",
        PK,
        limit=10,
        fork_from_app_id="parent",
        fork_from_sequence_id=1,
        fork_from_partition_key=PK,
    )
    assert fork.state["n"] == 2
    assert fork.sequence_id == 1
    d.step(fork)

    child = d.call(p.load, PK, "child")
    assert child["sequence_id"] == 2
    assert child["state"]["n"] == 3
    assert child["app_id"] == "child"
    assert sorted(snaps_of(client, PK, "child")) == [2]
    # The parent is untouched.
    parent = d.call(p.load, PK, "parent")
    assert parent["sequence_id"] == 3
    assert parent["state"]["n"] == 4
    assert d.call(p.list_app_ids, PK) == ["child", "parent"]


# -- partition_key=None ----------------------------------------------------------------------


def test_partition_key_none_is_the_default_partition(d: Driver, client: redis.Redis) -> None:
    p = d.persister()
    app = d.app(p, "a1", None)
    d.steps(app, 2)

    keys = KEYS.app(None, "a1")
    assert keys.meta == KEYS.app("default", "a1").meta and keys.meta.endswith("}:default:a1:meta")
    assert client.hlen(keys.snaps) == 2
    assert client.zrange(keys.index, 0, -1) == [b"a1"] and keys.index.endswith("}:default:apps")
    head = d.call(p.load, None, "a1")
    assert head["sequence_id"] == 1
    assert head["partition_key"] is None
    assert d.call(p.load, "default", "a1")["sequence_id"] == 1
    assert d.call(p.list_app_ids, None) == ["a1"]

    resumed = d.app(d.persister(), "a1", None)
    assert resumed.sequence_id == 1
    d.step(resumed)
    assert d.call(p.load, None, "a1")["sequence_id"] == 2


# -- retention -------------------------------------------------------------------------------


@pytest.mark.parametrize("keep", [1, 4])
def test_retention_keeps_last_n(d: Driver, client: redis.Redis, keep: int) -> None:
    p = d.persister(keep=keep)
    app = d.app(p, "a1", PK, limit=20)
    d.steps(app, 9)  # seq 0..8
    keys = KEYS.app(PK, "a1")
    assert client.hlen(keys.snaps) == keep
    assert sorted(snaps_of(client, PK, "a1")) == list(range(9 - keep, 9))
    assert int(client.hget(keys.meta, "oldest")) == 9 - keep
    assert d.call(p.load, PK, "a1")["state"]["n"] == 9


# -- serialization ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param({"o": object()}, id="object"),
        pytest.param({"t": (1, object())}, id="object-in-tuple"),
        pytest.param({"x": math.nan}, id="nan"),
        pytest.param({"deep": {"list": [1, {"s": {3, math.inf}}]}}, id="nested-inf-in-set"),
        pytest.param({"big": "x" * 5000}, id="too-large"),
    ],
)
def test_unserializable_state_raises_before_any_write(d: Driver, client: redis.Redis, bad: dict) -> None:
    p = d.persister(max_state_bytes=4096)
    app = d.app(p, "a1", PK)
    d.step(app)  # seq 0 stored
    before = dump_keys(client)

    with pytest.raises(SerializationError):
        d.call(p.save, PK, "a1", 1, "inc", State({"n": 1, **bad}), "completed")
    with pytest.raises(SerializationError):
        d.call(p.save, PK, "new-app", 0, "inc", State(bad), "completed")

    assert dump_keys(client) == before
    assert d.call(p.load, PK, "a1")["sequence_id"] == 0
    # The persister still works afterwards, at the sequence it refused.
    d.call(p.save, PK, "a1", 1, "inc", State({"n": 2}), "completed")
    assert d.call(p.load, PK, "a1")["state"]["n"] == 2


# -- corruption ------------------------------------------------------------------------------


def test_garbage_snapshot_raises_corrupt_snapshot(d: Driver, client: redis.Redis) -> None:
    p = d.persister()
    d.steps(d.app(p, "a1", PK), 2)
    keys = KEYS.app(PK, "a1")
    client.hset(keys.snaps, "1", b"\x00not json{")
    with pytest.raises(CorruptSnapshot) as ei:
        d.call(p.load, PK, "a1")
    assert keys.snaps in str(ei.value)
    assert ei.value.key.startswith(keys.snaps)
    assert d.call(p.load, PK, "a1", 0)["state"]["n"] == 1  # other snapshots still load

    client.hset(keys.snaps, "0", b"[1, 2]")
    with pytest.raises(CorruptSnapshot, match="not a JSON object"):
        d.call(p.load, PK, "a1", 0)


def test_wrong_format_version_raises_corrupt_snapshot(d: Driver, client: redis.Redis) -> None:
    p = d.persister()
    d.steps(d.app(p, "a1", PK), 1)
    keys = KEYS.app(PK, "a1")
    blob = client.hget(keys.snaps, "0")
    header, doc = blob[: codec.HEADER_BYTES], orjson.loads(blob[codec.HEADER_BYTES :])
    doc["v"] = 99
    client.hset(keys.snaps, "0", header + orjson.dumps(doc))
    with pytest.raises(CorruptSnapshot) as ei:
        d.call(p.load, PK, "a1", 0)
    assert ei.value.version == 99
    assert keys.snaps in ei.value.key

    del doc["state"]
    doc["v"] = 2
    client.hset(keys.snaps, "0", header + orjson.dumps(doc))
    with pytest.raises(CorruptSnapshot, match="malformed"):
        d.call(p.load, PK, "a1")
    doc["v"] = 1  # a format 1 snapshot (no header) without its state
    client.hset(keys.snaps, "0", orjson.dumps({"w": "0" * 16, **doc}))
    with pytest.raises(CorruptSnapshot, match="malformed"):
        d.call(p.load, PK, "a1")


# -- conflicts -------------------------------------------------------------------------------


def test_sequence_conflict_carries_context(d: Driver) -> None:
    a, b = d.persister(), d.persister()
    d.call(a.save, PK, "a1", 0, "inc", State({"n": 1}), "completed")
    d.call(a.save, PK, "a1", 1, "inc", State({"n": 2}), "completed")

    with pytest.raises(SequenceConflict) as ei:
        d.call(b.save, PK, "a1", 1, "inc", State({"n": 99}), "completed")  # replayed step
    assert (ei.value.app_id, ei.value.partition_key) == ("a1", PK)
    assert (ei.value.expected, ei.value.actual) == (0, 1)

    with pytest.raises(SequenceConflict) as ei:
        d.call(b.save, PK, "a1", 7, "inc", State({"n": 99}), "completed")  # a gap
    assert (ei.value.expected, ei.value.actual) == (6, 1)

    head = d.call(a.load, PK, "a1")
    assert head["sequence_id"] == 1
    assert head["state"]["n"] == 2


def test_two_builds_of_one_app_conflict_instead_of_forking_history(d: Driver) -> None:
    p1, p2 = d.persister(), d.persister()
    app1 = d.app(p1, "a1", PK, limit=10)
    d.step(app1)
    app2 = d.app(p2, "a1", PK, limit=10)  # resumes at seq 0 too
    d.step(app1)  # seq 1 committed by the first
    with pytest.raises(SequenceConflict):
        d.step(app2)  # its seq 1 is refused
    assert d.call(p1.load, PK, "a1")["sequence_id"] == 1


# -- hook duplication ------------------------------------------------------------------------


def test_persister_registered_twice_saves_each_step_once(d: Driver, client: redis.Redis) -> None:
    p = d.persister()
    commits: list[int] = []
    real_commit_call = p.store.commit_call

    def counting_commit_call(*args, **kwargs):  # type: ignore[no-untyped-def]
        commits.append(args[2])
        return real_commit_call(*args, **kwargs)

    p.store.commit_call = counting_commit_call  # type: ignore[method-assign]
    # As persister, and again as hooks: Burr calls save() twice per step.
    app = d.app(p, "a1", PK, limit=10, hooks=(p, d.hook_for(p)))
    d.steps(app, 5)

    assert commits == [0, 1, 2, 3, 4]
    stored = snaps_of(client, PK, "a1")
    assert sorted(stored) == [0, 1, 2, 3, 4]
    assert [stored[s]["state"]["n"] for s in range(5)] == [1, 2, 3, 4, 5]
    assert d.call(p.load, PK, "a1")["sequence_id"] == 4


# -- expiry ----------------------------------------------------------------------------------


def test_expire_app_sets_ttl_on_meta_and_snaps(d: Driver, client: redis.Redis) -> None:
    p = d.persister(finished_ttl=60)
    d.steps(d.app(p, "a1", PK), 2)
    d.steps(d.app(p, "a2", PK), 1)
    keys = KEYS.app(PK, "a1")
    assert client.pttl(keys.meta) == -1

    d.call(p.store.expire_app, "a1", partition_key=PK)
    for key in (keys.meta, keys.snaps):
        assert 55_000 < client.pttl(key) <= 60_000
    other = KEYS.app(PK, "a2")
    assert client.pttl(other.meta) == -1  # only that app
    assert client.pttl(other.snaps) == -1

    d.call(p.store.expire_app, "a2", partition_key=PK, ttl=0.3)  # an explicit ttl wins
    time.sleep(0.5)
    assert client.exists(other.meta, other.snaps) == 0
    assert d.call(p.load, PK, "a2") is None


def test_expire_app_without_ttl_is_a_no_op(d: Driver, client: redis.Redis) -> None:
    p = d.persister()
    d.steps(d.app(p, "a1", PK), 1)
    d.call(p.store.expire_app, "a1", partition_key=PK)
    keys = KEYS.app(PK, "a1")
    assert client.pttl(keys.meta) == -1
    assert client.pttl(keys.snaps) == -1
