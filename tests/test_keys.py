"""Properties of the key schema: reversible, injective encoding; one Redis Cluster slot per
partition; no raw glob characters, braces or spaces outside the hash tag."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.crc import key_slot

from burr_dist import ConfigurationError
from burr_dist.keys import DEFAULT_PARTITION, KeySchema, decode_id, encode_id, partition_of

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
    return list(dataclasses.astuple(schema.app(pk, app_id)))


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
    assert schema.app(pk, app_id).index == schema.partition_index(pk)
    slots = {key_slot(k.encode()) for k in keys}
    assert len(slots) == 1
    assert slots == {key_slot(f"{{{encode_id(partition_of(pk))}}}".encode())}
    for k in keys:
        assert k.startswith(prefix + ":")
        rest = k[len(prefix) + 1 :]
        # Exactly one brace pair, right after the prefix: the hash tag is unambiguous.
        assert rest.startswith("{")
        assert rest.count("{") == 1
        assert rest.count("}") == 1
        assert decode_id(tag_of(k)) == partition_of(pk)
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
    app_keys_1 = set(dataclasses.astuple(k1)) - {k1.index}  # meta, snaps, lease (and any later kind)
    app_keys_2 = set(dataclasses.astuple(k2)) - {k2.index}
    if same_app:
        assert app_keys_1 == app_keys_2
    else:
        assert not (app_keys_1 & app_keys_2)
    # An app key is never a partition index, of its own partition or any other.
    assert k1.index not in app_keys_2
    assert k2.index not in app_keys_1
    assert (k1.index == k2.index) == (partition_of(pk1) == partition_of(pk2))


def test_none_partition_is_the_default_partition() -> None:
    schema = KeySchema()
    assert schema.app(None, "a") == schema.app(DEFAULT_PARTITION, "a")
    assert schema.app(None, "a").meta == "burr:{default}:a:meta"
    assert schema.app("", "a").meta == "burr:{%}:a:meta"  # empty partition: still a non-empty tag


def test_readable_ids_stay_readable() -> None:
    k = KeySchema("acme:prod").app("user-42", "chat_7")
    assert k.meta == "acme:prod:{user-42}:chat_7:meta"
    assert KeySchema().app("a:b", "x{y}*").meta == "burr:{a%3Ab}:x%7By%7D%2A:meta"


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
    from burr_dist.store import StoreCore

    with pytest.raises(ConfigurationError):
        StoreCore(StoreConfig(prefix="bad prefix"))


@pytest.mark.parametrize("where", ["app_id", "partition_key"])
def test_a_lone_surrogate_is_a_configuration_error(where: str) -> None:
    bad = "chat-\ud800"  # e.g. from a JSON payload with a broken escape: no UTF-8 form exists
    pk, app_id = (bad, "a") if where == "partition_key" else ("p", bad)
    with pytest.raises(ConfigurationError, match="lone surrogate"):
        KeySchema().app(pk, app_id)
