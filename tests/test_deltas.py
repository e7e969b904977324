"""Delta snapshots (format 2): a growing state is stored as keyframes plus deltas, every retained
step still loads in one round trip to exactly the state Burr had, on a single server and Cluster,
sync and async. Also: the refused-delta path, format 1 data continued by format 2, in-place growth,
the size limit and compression."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import redis
from burr.core import ApplicationBuilder, State, action

from burr_dist import SerializationError, SnapshotNotFound
from burr_dist.keys import KeySchema
from burr_dist.store import codec, deltas
from burr_dist.store.deltas import DEFAULT_MAX_CHAIN
from tests.support.apps import Driver
from tests.support.targets import Target

pytestmark = pytest.mark.topologies(default=("cluster",))
PK = "tenant-1"
KEYS = KeySchema("burr")


def text(turn: int) -> str:
    # Varied text, like a conversation: compressible, not trivially so.
    words = ["alpha", "route", "kettle", "ninety", "orbit", "quartz", "lemon", "vivid", "yonder"]
    return " ".join(words[(turn * 7 + i * i) % len(words)] + str(i % (turn + 3)) for i in range(300))


def expected(turn: int) -> dict[str, Any]:
    """The state after ``turn`` steps, computed without Burr."""
    return {
        "turn": turn,
        "messages": [{"role": "user", "turn": t, "text": text(t)} for t in range(1, turn + 1)],
        "log": "".join(f"[{t}]" for t in range(1, turn + 1)),
        "mood": ["calm", "busy", "tired"][turn % 3],
        "scratch": turn if turn % 4 else None,
    }


def chat_app(persister: Any, app_id: str, is_async: bool) -> ApplicationBuilder:
    def step(state: State) -> State:
        turn = state["turn"] + 1
        msg = {"role": "user", "turn": turn, "text": text(turn)}
        new = state.update(
            turn=turn, log=state["log"] + f"[{turn}]", mood=["calm", "busy", "tired"][turn % 3]
        )
        # Burr's append deep-copies the list it reads; the update keeps the old items: both paths.
        new = new.append(messages=msg) if turn % 2 else new.update(messages=[*state["messages"], msg])
        return new.update(scratch=turn if turn % 4 else None)

    if is_async:

        @action(reads=["turn", "messages", "log"], writes=["turn", "messages", "log", "mood", "scratch"])
        async def say(state: State) -> State:
            return step(state)
    else:

        @action(reads=["turn", "messages", "log"], writes=["turn", "messages", "log", "mood", "scratch"])
        def say(state: State) -> State:  # type: ignore[misc]
            return step(state)

    return (
        ApplicationBuilder()
        .with_actions(say=say)
        .with_transitions(("say", "say"))
        .initialize_from(
            persister,
            resume_at_next_action=True,
            default_state={"turn": 0, "messages": [], "log": "", "mood": "calm", "scratch": None},
            default_entrypoint="say",
        )
        .with_state_persister(persister)
        .with_identifiers(app_id=app_id, partition_key=PK)
    )


@pytest.fixture(params=["sync", "async"])
def d(request: pytest.FixtureRequest, target: Target) -> Iterator[Driver]:
    drv = Driver(target.url, request.param == "async")
    yield drv
    drv.close()


@pytest.fixture
def client(target: Target) -> Iterator[redis.Redis]:
    c = target.client()
    yield c
    c.close()


def run(d: Driver, persister: Any, app_id: str, steps: int) -> None:
    app = d.build(chat_app(persister, app_id, d.is_async))
    d.steps(app, steps)


def user_fields(state: State) -> dict[str, Any]:
    return {k: v for k, v in state.get_all().items() if not k.startswith("__")}


def test_every_retained_step_loads_exactly(d: Driver, client: redis.Redis) -> None:
    p = d.persister(keep=20, max_chain=8)
    run(d, p, "chat", 30)
    for seq in range(10, 30):  # sequence s holds the state after turn s + 1
        loaded = d.call(p.load, PK, "chat", seq)
        assert loaded["sequence_id"] == seq
        assert user_fields(loaded["state"]) == expected(seq + 1), seq
    assert d.call(p.load, PK, "chat", 9) is None  # below the retention window, even if kept as a chain base
    with pytest.raises(SnapshotNotFound):
        d.call(p.load_or_raise, PK, "chat", 9)
    k = KEYS.app(PK, "chat")
    stored = codec.stored_steps(client.hgetall(k.snaps), key=k.snaps)
    kinds = [stored[s]["kind"] for s in sorted(stored)]
    assert "delta" in kinds and "keyframe" in kinds
    # No chain is longer than max_chain, and the lowest stored entry is a keyframe.
    assert kinds[0] == "keyframe"
    run_length = max(len(r) for r in "".join("d" if x == "delta" else " " for x in kinds).split(" "))
    assert run_length < 8
    meta = {a.decode(): b.decode() for a, b in client.hgetall(k.meta).items()}
    assert int(meta["oldest"]) == 10 and int(meta["base"]) == min(stored) <= 10
    # Each delta field is named k<seq> and only deltas have one.
    k_fields = {int(f.decode()[1:]) for f in client.hkeys(k.snaps) if f.startswith(b"k")}
    assert k_fields == {s for s in stored if stored[s]["kind"] == "delta"}


def test_a_fresh_process_continues_from_a_delta_head(d: Driver) -> None:
    run(d, d.persister(), "chat", 12)
    p2 = d.persister()  # another worker: loads the keyframe + deltas, then commits deltas on them
    run(d, p2, "chat", 5)
    head = d.call(d.persister().load, PK, "chat")
    assert head["sequence_id"] == 16
    assert user_fields(head["state"]) == expected(17)


def test_a_delta_on_a_head_it_was_not_computed_from_is_refused_then_sent_whole(
    d: Driver, client: redis.Redis
) -> None:
    a = d.persister()
    app_a = d.build(chat_app(a, "chat", d.is_async))
    d.steps(app_a, 3)
    while deltas.wants_keyframe(a.store.bases.get(PK, "chat"), DEFAULT_MAX_CHAIN):
        d.step(app_a)  # until a's next commit is a delta by policy: its base is a's own last step
    seq = a.store.bases.get(PK, "chat").seq + 1
    k = KEYS.app(PK, "chat")
    client.delete(k.meta, k.snaps, k.index)  # the app is deleted and written again by b
    run(d, d.persister(), "chat", seq)
    b_head = client.hget(k.meta, "wid")
    d.step(app_a)  # a commits `seq` on top of b's `seq - 1` (unfenced CAS on the sequence)
    stored = codec.stored_steps(client.hgetall(k.snaps), key=k.snaps)
    assert stored[seq]["kind"] == "keyframe", "a delta computed on a's own step must not apply to b's"
    assert stored[seq - 1]["w"] == b_head.decode()
    assert user_fields(d.call(a.load, PK, "chat")["state"]) == expected(seq + 1)


def test_format_1_data_is_continued_by_format_2_and_read_back_by_format_1(
    d: Driver, client: redis.Redis
) -> None:
    run(d, d.persister(snapshot_format=1), "chat", 6)
    k = KEYS.app(PK, "chat")
    assert all(b.startswith(b'{"w":"') and b'"v":1' in b[:40] for b in client.hvals(k.snaps))
    run(d, d.persister(), "chat", 6)  # format 2 on top of a format 1 head
    stored = codec.stored_steps(client.hgetall(k.snaps), key=k.snaps)
    assert [stored[s]["v"] for s in range(12)] == [1] * 6 + [2] * 6
    assert "delta" in {stored[s]["kind"] for s in range(6, 12)}
    old = d.persister(snapshot_format=1)  # a store still writing format 1 reads format 2
    for seq in range(12):
        assert user_fields(d.call(old.load, PK, "chat", seq)["state"]) == expected(seq + 1)
    run(d, old, "chat", 1)
    assert user_fields(d.call(d.persister().load, PK, "chat")["state"]) == expected(13)


def kind_of(client: redis.Redis, app_id: str, seq: int) -> str:
    k = KEYS.app(PK, app_id)
    return str(codec.stored_steps(client.hgetall(k.snaps), key=k.snaps)[seq]["kind"])


def test_a_field_that_disappears_is_deleted(d: Driver, client: redis.Redis) -> None:
    p = d.persister()
    items = [{"text": text(i)} for i in range(3)]
    d.call(p.save_and_settle, PK, "del", 0, "a", State({"items": items, "tmp": 1}), "completed")
    d.call(p.save_and_settle, PK, "del", 1, "a", State({"items": items}), "completed")
    loaded = d.call(d.persister().load, PK, "del")
    assert loaded["state"].get_all() == {"items": items}
    assert kind_of(client, "del", 1) == "delta"


def test_in_place_growth_of_a_list_is_stored(d: Driver, client: redis.Redis) -> None:
    p = d.persister()
    store = p.store

    big = [{"text": text(i)} for i in range(3)]
    put = d.call(p.save_and_settle, PK, "inplace", 0, "a", State({"items": big, "n": 0}), "completed")
    assert put is not None
    big.append({"text": "appended in place"})  # the same list object, longer
    d.call(p.save_and_settle, PK, "inplace", 1, "a", State({"items": big, "n": 1}), "completed")
    assert store.bases.get(PK, "inplace") is not None
    loaded = d.call(d.persister().load, PK, "inplace")
    assert (
        loaded["state"]["items"][-1] == {"text": "appended in place"} and len(loaded["state"]["items"]) == 4
    )


def test_size_limit_holds_for_a_state_grown_by_deltas(d: Driver) -> None:
    p = d.persister(max_state_bytes=40_000)
    app = d.build(chat_app(p, "big", d.is_async))
    with pytest.raises(SerializationError, match="max_state_bytes"):
        d.steps(app, 40)
    head = d.call(d.persister().load, PK, "big")
    full = len(orjson.dumps(codec.fields_doc(codec.encode_fields(head["state"].get_all()))))
    assert head["sequence_id"] < 39 and 30_000 < full <= 40_000  # refused at the limit, not after


def test_large_entries_are_compressed(d: Driver, client: redis.Redis) -> None:
    run(d, d.persister(compress_min_bytes=2048), "chat", 8)
    k = KEYS.app(PK, "chat")
    raw = {f: b for f, b in client.hgetall(k.snaps).items() if f.isdigit()}
    compressed = [b for b in raw.values() if b[codec.HEADER_BYTES :][:4] == codec.ZSTD_MAGIC]
    assert compressed, "no entry was compressed"
    assert user_fields(d.call(d.persister().load, PK, "chat")["state"]) == expected(8)
    run(d, d.persister(compress_min_bytes=0), "chat2", 8)
    k2 = KEYS.app(PK, "chat2")
    assert not any(b[codec.HEADER_BYTES :][:4] == codec.ZSTD_MAGIC for b in client.hvals(k2.snaps))


def test_one_async_persister_serving_concurrent_apps_keeps_each_apps_delta_base(
    target: Target, client: redis.Redis
) -> None:
    """Burr apps sharing one AsyncRedisPersister step concurrently: each commit's new base is
    recorded for its own app, so no delta is refused and sent again as a keyframe."""
    d = Driver(target.url, is_async=True)
    try:
        p = d.persister()
        solo = d.build(chat_app(p, "solo", True))
        d.steps(solo, 16)
        a, b = (d.build(chat_app(p, name, True)) for name in ("a", "b"))

        async def both() -> None:
            for _ in range(16):
                await asyncio.gather(a.astep(), b.astep())

        d.run(both())
        kinds = {}
        for app_id in ("solo", "a", "b"):
            k = KEYS.app(PK, app_id)
            stored = codec.stored_steps(client.hgetall(k.snaps), key=k.snaps)
            kinds[app_id] = [stored[s]["kind"] for s in sorted(stored)]
            assert user_fields(d.call(p.load, PK, app_id)["state"]) == expected(16)
        assert kinds["a"] == kinds["b"] == kinds["solo"], kinds
    finally:
        d.close()


def test_the_base_cache_is_bounded_by_count_and_bytes() -> None:
    def base(size: int) -> deltas.Base:
        return deltas.Base(0, "w" * 16, 0, size, 0, 0, {}, size)

    cache = deltas.Bases(limit=3, max_bytes=1000)
    for i in range(5):
        cache.put(None, f"a{i}", base(10))
    assert len(cache) == 3 and cache.get(None, "a0") is None and cache.get(None, "a4") is not None
    cache.put(None, "big", base(900))  # over the byte budget: the least recently used go first
    assert cache.bytes <= 1000 and cache.get(None, "big") is not None
    cache.put(None, "big", base(100))  # replacing an app's base does not count it twice
    assert cache.bytes == sum(b.state_bytes for b in cache._items.values())
    cache.put(None, "huge", base(5000))  # a single state over the budget is still kept alone
    assert len(cache) == 1 and cache.bytes == 5000
