"""Properties of the key schema: reversible, injective encoding; every key of an app (and its
bucket's counters and partition index) in one Redis Cluster slot; buckets and queue shards spread
evenly over the slot space; no raw glob characters, braces or spaces outside the hash tag."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.crc import key_slot

from burr_dist import ConfigurationError
from burr_dist.keys import DEFAULT_PARTITION, KeySchema, decode_id, encode_id, partition_of, spread_tags

NASTY = list(":{}*?[]\\ %\t\n\r\"'^!-_.@")
ids = st.text(
    alphabet=st.one_of(st.sampled_from(NASTY), st.characters(codec="utf-8"), st.sampled_from(list("aé日🙂"))),
    max_size=1000,
)
app_ids = ids.filter(bool)
partitions = st.one_of(st.none(), ids)
prefixes = st.from_regex(r"\A[A-Za-z0-9_.\-]{1,8}(:[A-Za-z0-9_.\-]{1,8}){0,2}\Z")
FORBIDDEN_RAW = set("*?[]\\ :{}\t\n\r%") - {"%"}

KEYS_SETTINGS = settings(deadline=None, max_examples=150)


def all_keys(schema: KeySchema, pk: str | None, app_id: str) -> list[str]:
    return [v for v in dataclasses.astuple(schema.app(pk, app_id)) if isinstance(v, str)]


def tag_of(key: str) -> str:
    return key[key.index("{") + 1 : key.index("}")]


@KEYS_SETTINGS
@given(ids)
def test_encode_decode_round_trip(value: str) -> None:
    encoded = encode_id(value)
    assert decode_id(encoded) == value
    assert encoded  # never empty: an empty hash tag would hash the whole key
    assert not (set(encoded) & FORBIDDEN_RAW)
    assert encoded.isascii()


@KEYS_SETTINGS
@given(ids, ids)
def test_encoding_is_injective(a: str, b: str) -> None:
    if a != b:
        assert encode_id(a) != encode_id(b)


@KEYS_SETTINGS
@given(prefixes, partitions, app_ids)
def test_keys_of_an_app_share_one_slot_and_are_clean(prefix: str, pk: str | None, app_id: str) -> None:
    schema = KeySchema(prefix)
    keys = all_keys(schema, pk, app_id)
    assert len(set(keys)) == len(keys)
    k = schema.app(pk, app_id)
    assert k.index == schema.partition_index(pk, k.bucket)
    assert k.index in schema.partition_indexes(pk)
    slots = {key_slot(key.encode()) for key in keys}
    assert len(slots) == 1
    member = schema.member(pk, app_id)
    assert slots == {key_slot(schema.epoch(k.bucket).encode())}
    assert schema.shard_of(member) in range(schema.queue_shards)
    for k in keys:
        assert k.startswith(prefix + ":")
        rest = k[len(prefix) + 1 :]
        # Exactly one brace pair, right after the prefix: the hash tag is unambiguous.
        assert rest.startswith("{")
        assert rest.count("{") == 1
        assert rest.count("}") == 1
        assert tag_of(k) == spread_tags(schema.buckets)[schema.bucket_of(pk, app_id)]
        outside = rest.replace("{", "").replace("}", "")
        assert not (set(outside) & (FORBIDDEN_RAW - {":"}))
        assert k.isascii()


@KEYS_SETTINGS
@given(partitions, app_ids, partitions, app_ids)
def test_distinct_apps_never_share_a_key(pk1: str | None, a1: str, pk2: str | None, a2: str) -> None:
    schema = KeySchema("burr")
    same_app = (partition_of(pk1), a1) == (partition_of(pk2), a2)
    k1 = schema.app(pk1, a1)
    k2 = schema.app(pk2, a2)
    app_keys_1 = {k1.meta, k1.snaps, k1.lease, k1.job}
    app_keys_2 = {k2.meta, k2.snaps, k2.lease, k2.job}
    if same_app:
        assert app_keys_1 == app_keys_2
    else:
        assert not (app_keys_1 & app_keys_2)
    # An app key is never a partition index, of its own partition or any other.
    assert k1.index not in app_keys_2
    assert k2.index not in app_keys_1
    assert (k1.index == k2.index) == (partition_of(pk1) == partition_of(pk2) and k1.bucket == k2.bucket)
    # Nor the bucket's shared keys.
    assert not ({k1.counts, schema.epoch(k1.bucket)} & (app_keys_1 | app_keys_2))


def test_none_partition_is_the_default_partition() -> None:
    schema = KeySchema()
    assert schema.app(None, "a") == schema.app(DEFAULT_PARTITION, "a")
    assert schema.app(None, "a").meta.endswith("}:default:a:meta")
    assert schema.app("", "a").meta.endswith("}:%:a:meta")  # empty partition: a non-empty segment


def test_readable_ids_stay_readable() -> None:
    k = KeySchema("acme:prod").app("user-42", "chat_7")
    assert k.meta == f"acme:prod:{{{spread_tags(256)[k.bucket]}}}:user-42:chat_7:meta"
    assert KeySchema().app("a:b", "x{y}*").meta.endswith("}:a%3Ab:x%7By%7D%2A:meta")


def test_the_layout_is_pinned() -> None:
    """Key names are data: a change here strands every app stored under the old names."""
    k = KeySchema().app("default", "app1")
    assert k.meta == "burr:{221.321}:default:app1:meta"
    assert KeySchema().queue_for("default", "default:app1").ready == "burr:{q21.22}:q:default:ready"
    assert spread_tags(256)[:3] == ("0.178", "1.341", "2.235")


@pytest.mark.parametrize(("count", "lead"), [(256, ""), (24, "q"), (3, ""), (1, "")])
def test_spread_tags_cover_the_slot_space_evenly(count: int, lead: str) -> None:
    tags = spread_tags(count, lead)
    assert len(set(tags)) == count
    for i, tag in enumerate(tags):
        assert i * 16384 // count <= key_slot(tag.encode()) < (i + 1) * 16384 // count


def test_apps_of_one_partition_spread_over_three_masters_within_a_few_percent() -> None:
    """The default 3-master split of redis-cli --cluster create: 0-5460, 5461-10922, 10923-16383."""
    schema = KeySchema()
    per_master = [0, 0, 0]
    for i in range(10_000):
        slot = key_slot(schema.app(None, f"app-{i}").meta.encode())
        per_master[0 if slot <= 5460 else 1 if slot <= 10922 else 2] += 1
    assert all(abs(n - 10_000 / 3) / (10_000 / 3) < 0.05 for n in per_master), per_master


@pytest.mark.parametrize(
    "prefix",
    [
        "",
        " ",
        "a b",
        "a{b}",
        "{a}",
        "a*",
        "a?",
        "a[1]",
        "a:",
        ":a",
        "a::b",
        "burr\n",
        "bürr",
        "a\\b",
        None,
        5,
    ],
)
def test_invalid_prefix_raises(prefix: object) -> None:
    with pytest.raises(ConfigurationError) as ei:
        KeySchema(prefix)  # type: ignore[arg-type]
    assert ei.value.prefix == prefix


@pytest.mark.parametrize("app_id", ["", None, 7])
def test_invalid_app_id_raises(app_id: object) -> None:
    with pytest.raises(ConfigurationError) as ei:
        KeySchema().app("p", app_id)  # type: ignore[arg-type]
    assert ei.value.app_id == app_id


def test_store_config_rejects_a_bad_prefix() -> None:
    from burr_dist import StoreConfig
    from burr_dist.store.core import StoreCore

    with pytest.raises(ConfigurationError):
        StoreCore(StoreConfig(prefix="bad prefix"))


@pytest.mark.parametrize("where", ["app_id", "partition_key"])
def test_a_lone_surrogate_is_a_configuration_error(where: str) -> None:
    bad = "chat-\ud800"  # e.g. from a JSON payload with a broken escape: no UTF-8 form exists
    pk, app_id = (bad, "a") if where == "partition_key" else ("p", bad)
    with pytest.raises(ConfigurationError, match="lone surrogate"):
        KeySchema().app(pk, app_id)
