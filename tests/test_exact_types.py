"""Exact types: what an action puts in state is what a resumed app gets back, type and value.

Tuples, sets, frozensets, dicts with keys that are not strings, datetime, date, time, timedelta,
UUID, Decimal and bytes, nested anywhere, through Burr's serde registry (serde_types.py); pydantic
models through Burr's pydantic record; field and type serdes registered by users. NaN, infinity
and types no serde stores are refused with the field path named, before anything is written.
The enqueue-time state goes through the same codec.
"""

from __future__ import annotations

import math
import uuid
from collections import namedtuple
from collections.abc import Iterator
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pydantic
import pytest
import redis
from burr.core import State, serde
from burr.core.state import FIELD_SERIALIZATION, register_field_serde
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from burr_dist import (
    ConfigurationError,
    CorruptSnapshot,
    FleetClient,
    RedisPersister,
    RedisStore,
    SerializationError,
)
from burr_dist.cli import main
from burr_dist.fleet.core import job_state
from burr_dist.keys import KeySchema
from burr_dist.store import codec
from tests.support.targets import Target

PK = "pk"
KEYS = KeySchema()


def exactly(a: Any, b: Any, path: str = "$") -> None:
    """``a`` and ``b`` are equal and of the same type all the way down (dict order included)."""
    assert type(a) is type(b), f"{path}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, dict):
        assert list(a) == list(b), f"{path}: keys {list(a)!r} != {list(b)!r}"
        for k in a:
            exactly(k, next(x for x in b if x == k and type(x) is type(k)), f"{path}[key {k!r}]")
            exactly(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            exactly(x, y, f"{path}[{i}]")
    elif isinstance(a, (set, frozenset)):
        assert len(a) == len(b), path
        for x in a:  # each item has an equal item of its own type (1 == True, so type matters)
            twins = [y for y in b if y == x and type(y) is type(x)]
            assert twins, f"{path}: no {type(x).__name__} {x!r} in {b!r}"
            exactly(x, twins[0], f"{path}{{{x!r}}}")
    elif isinstance(a, (datetime, time)):
        assert (a, a.tzinfo, a.fold) == (b, b.tzinfo, b.fold), path
        assert a.tzname() == b.tzname(), path
    elif isinstance(a, float) and a == 0:
        assert math.copysign(1, a) == math.copysign(1, b), path  # -0.0 stays -0.0
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


@pytest.fixture
def persister(target: Target) -> Iterator[RedisPersister]:
    p = RedisPersister.from_url(target.url)
    yield p
    p.close()


def roundtrip(p: RedisPersister, app_id: str, values: dict[str, Any]) -> dict[str, Any]:
    p.save(PK, app_id, 0, "act", State(values), "completed")
    loaded = RedisPersister(RedisStore.from_url(p.store.target)).load(PK, app_id)  # type: ignore[arg-type]
    assert loaded is not None
    return loaded["state"].get_all()


class Model(pydantic.BaseModel):
    when: datetime
    pair: tuple[int, str]
    ref: uuid.UUID
    amount: Decimal
    tags: set[str]


NamedPair = namedtuple("NamedPair", "a b")


# -- each type, nested ----------------------------------------------------------------------------
EXAMPLES: dict[str, Any] = {
    "collatz": {27: 111, 97: 118, 871: 178},  # Burr's parallel collatz reduces into {int: int}
    "tuple": (1, "a", (2.5, None), [True]),
    "set": {3, 1, "x", (1, 2)},
    "frozenset": frozenset({frozenset({1}), 2}),
    "mixed_keys": {1: "int", "1": "str", (1, 2): "tuple", None: "none", 2.5: "float"},
    "naive": datetime(2024, 2, 29, 23, 59, 59, 999999),
    "utc": datetime(2024, 1, 1, tzinfo=timezone.utc),
    "offset": datetime(2024, 1, 1, 12, tzinfo=timezone(timedelta(hours=-3, minutes=-30))),
    "named_offset": datetime(2024, 1, 1, tzinfo=timezone(timedelta(hours=1), "CET")),
    "zone_fold": datetime(2024, 10, 27, 2, 30, tzinfo=ZoneInfo("Europe/Paris"), fold=1),
    "date": date(1999, 12, 31),
    "time": time(8, 30, 0, 5, tzinfo=timezone(timedelta(hours=5))),
    "timedelta": timedelta(days=-3, seconds=7, microseconds=11),
    "uuid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    "decimal": Decimal("-1.2300E+5"),
    "bytes": b"\x00\xffnot utf-8\x80",
    "deep": [{"k": ({1: (date(2020, 1, 1), {b"x"})},)}],
    "neg_zero": [-0.0, 0.0],
}


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_each_exact_type_round_trips(persister: RedisPersister, name: str) -> None:
    back = roundtrip(persister, f"ex-{name}", {name: EXAMPLES[name]})
    exactly(back[name], EXAMPLES[name])


def test_a_pydantic_model_in_an_untyped_state_round_trips(persister: RedisPersister) -> None:
    m = Model(when=datetime(2024, 5, 1, 9, tzinfo=timezone.utc), pair=(1, "a"), ref=uuid.uuid4(),
              amount=Decimal("10.50"), tags={"x"})  # fmt: skip
    from burr.integrations.serde import pydantic as burr_pydantic

    burr_pydantic.set_allowlist([__name__])
    try:
        back = roundtrip(persister, "model", {"m": m, "models": [m, m]})
    finally:
        burr_pydantic.set_allowlist(None)
    exactly(back["m"].model_dump(), m.model_dump())
    assert type(back["m"]) is Model and back["models"] == [m, m]
    # Loaded, a model's datetimes carry pydantic's own TzInfo: saved again, they must still store
    # (the next step of a typed app commits what the last load gave it).
    burr_pydantic.set_allowlist([__name__])
    try:
        assert type(back["m"].when.tzinfo).__name__ == "TzInfo"
        again = roundtrip(persister, "model-again", {"m": back["m"]})
    finally:
        burr_pydantic.set_allowlist(None)
    assert again["m"] == m


# -- the property ---------------------------------------------------------------------------------
finite = st.floats(allow_nan=False, allow_infinity=False)
i64 = st.integers(-(2**63), 2**63 - 1)
scalars = st.one_of(
    st.none(), st.booleans(), i64, finite, st.text(max_size=8),
    st.datetimes(timezones=st.none() | st.just(timezone.utc) | st.timezones()),
    st.dates(), st.times(timezones=st.none() | st.just(timezone(timedelta(hours=2)))),
    st.timedeltas(), st.uuids(), st.decimals(allow_nan=False, allow_infinity=False), st.binary(max_size=8),
)  # fmt: skip
hashables = st.recursive(
    st.one_of(st.none(), st.booleans(), i64, st.text(max_size=4), st.dates(), st.uuids(), st.binary(max_size=4)),
    lambda inner: st.tuples(inner, inner) | st.frozensets(inner, max_size=3),
    max_leaves=4,
)  # fmt: skip
safe_text = st.text(max_size=6).filter(lambda k: k != codec.MARKER)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=4).map(tuple),
        st.dictionaries(safe_text, inner, max_size=4),
        st.dictionaries(hashables, inner, max_size=4),
        st.sets(hashables, max_size=4),
        st.frozensets(hashables, max_size=4),
    ),
    max_leaves=12,
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=values)
def test_nested_values_come_back_type_exact(persister: RedisPersister, value: Any) -> None:
    back = roundtrip(persister, f"prop-{uuid.uuid4().hex}", {"v": value})
    exactly(back["v"], value)


def test_exact_types_survive_deltas_and_both_formats(target: Target) -> None:
    """The delta encoder compares each field's encoded bytes: growing a list of exact values
    past the keyframe threshold stores deltas; format 1 entries load the same."""
    for fmt in (2, 1):
        p = RedisPersister.from_url(target.url, snapshot_format=fmt)
        rows: list[Any] = []
        for seq in range(12):
            rows.append((seq, uuid.UUID(int=seq), {seq: date(2020, 1, 1 + seq)}, "x" * 200))
            p.save(PK, f"grow-{fmt}", seq, "act", State({"rows": list(rows), "n": seq}), "completed")
        fresh = RedisPersister.from_url(target.url)
        for seq in (5, 11):
            got = fresh.load(PK, f"grow-{fmt}", seq)
            assert got is not None
            exactly(got["state"]["rows"], rows[: seq + 1])
        p.close()
        fresh.close()
    stored = codec.stored_steps(
        redis.Redis.from_url(target.url).hgetall(KEYS.app(PK, "grow-2").snaps), key="k"
    )
    assert "delta" in {doc["kind"] for doc in stored.values()}


# -- serdes registered by users -------------------------------------------------------------------
class Opaque:
    def __init__(self, token: str) -> None:
        self.token = token


class Money:
    def __init__(self, cents: int, currency: str) -> None:
        self.cents, self.currency = cents, currency

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Money) and (self.cents, self.currency) == (other.cents, other.currency)


@serde.serialize.register(Money)
def _money_out(value: Money, **kwargs: Any) -> dict[str, Any]:
    return {serde.KEY: "test.money", "cents": value.cents, "currency": value.currency}


serde.deserializer.register("test.money")(lambda value, **kw: Money(value["cents"], value["currency"]))


def test_a_field_serde_runs_before_the_strictness_check(persister: RedisPersister) -> None:
    field = f"handle_{uuid.uuid4().hex[:6]}"
    register_field_serde(
        field, lambda value, **kw: {"token": value.token}, lambda value, **kw: Opaque(value["token"])
    )
    try:
        back = roundtrip(persister, "field-serde", {field: Opaque("t-1"), "n": 1})
        assert isinstance(back[field], Opaque) and back[field].token == "t-1"
    finally:
        FIELD_SERIALIZATION.pop(field, None)
    with pytest.raises(SerializationError, match=rf"'{field}' holds a Opaque"):
        codec.encode_fields({field: Opaque("t-2")})  # without the field serde: refused


def test_a_type_serde_keeps_working_nested(persister: RedisPersister) -> None:
    back = roundtrip(persister, "type-serde", {"prices": (Money(5, "EUR"), {1: Money(7, "USD")})})
    assert back["prices"] == (Money(5, "EUR"), {1: Money(7, "USD")})


# -- refused, naming the path and the type; nothing written -------------------------------------
@pytest.mark.parametrize(
    ("value", "path", "what"),
    [
        pytest.param([1, {"y": (math.nan,)}], "x[1].y[0]", "nan", id="nan-in-tuple"),
        pytest.param({1: math.inf}, "x[1]", "inf", id="inf-value-of-int-key"),
        pytest.param({2: {frozenset({-math.inf})}}, "x[2][0][0]", "-inf", id="inf-in-frozenset"),
        pytest.param((1, object()), "x[1]", "holds a object", id="object-in-tuple"),
        pytest.param({"k": Opaque("o")}, "x.k", "holds a Opaque", id="opaque"),
        pytest.param(NamedPair(1, 2), "x", "holds a NamedPair, a subclass", id="namedtuple"),
        pytest.param(Decimal("NaN"), "x", "Decimal('NaN')", id="decimal-nan"),
        pytest.param({"__burr_serde__": "x"}, "x", "__burr_serde__", id="marker-key"),
    ],
)
def test_unstorable_values_are_refused_naming_the_field(
    persister: RedisPersister, client: Any, value: Any, path: str, what: str
) -> None:
    with pytest.raises(SerializationError) as ei:
        persister.save(PK, "bad", 0, "act", State({"x": value}), "completed")
    assert f"'{path}'" in str(ei.value) and what in str(ei.value), str(ei.value)
    assert ei.value.field == path
    assert list(client.scan_iter(match="*")) == []


# -- enqueue-time state ---------------------------------------------------------------------------
def test_enqueue_state_uses_the_strict_codec_and_burrs_deserialize(target: Target, client: Any) -> None:
    fc = FleetClient.from_url(target.url)
    typed = {"when": datetime(2024, 1, 1, tzinfo=timezone.utc), "pair": (1, 2), "money": Money(3, "EUR")}
    fc.enqueue("app", "typed", state=typed)
    raw = client.hget(fc.keys("default", "typed").job, "state")
    got = job_state(raw)
    assert got == typed and type(got["pair"]) is tuple and type(got["when"]) is datetime
    # The serialized text (what --state takes) is read with State.deserialize first.
    fc.enqueue("app", "as-text", state=orjson.dumps(orjson.loads(raw)))
    assert job_state(client.hget(fc.keys("default", "as-text").job, "state")) == typed

    before = sorted(client.scan_iter(match="*"))
    with pytest.raises(SerializationError, match=r"'score'.*nan") as ei:
        fc.enqueue("app", "nan", state={"ok": 1, "score": math.nan})
    assert ei.value.field == "score"
    with pytest.raises(SerializationError, match=r"'h.k' holds a Opaque"):
        fc.enqueue_many([fc_req("fine"), fc_req("bad", state={"h": {"k": Opaque("x")}})])
    small = FleetClient.from_url(target.url, max_state_bytes=100)
    with pytest.raises(SerializationError, match="over the limit of 100"):
        small.enqueue("app", "big", state={"s": "x" * 200})
    assert sorted(client.scan_iter(match="*")) == before  # nothing of the refused ones stored
    for c in (fc, small):
        c.close()


def fc_req(app_id: str, **kw: Any) -> Any:
    from burr_dist.fleet.core import EnqueueRequest

    return EnqueueRequest("app", app_id, **kw)


def test_cli_enqueue_state_reads_burr_records_and_refuses_nan(target: Target, client: Any) -> None:
    when = orjson.dumps(serde.serialize(datetime(2024, 3, 1, tzinfo=timezone.utc))).decode()
    ok = CliRunner().invoke(main, ["--redis-url", target.url, "enqueue", "app", "--app-id", "c1",
                                   "--state", f'{{"when": {when}, "n": 1}}'])  # fmt: skip
    assert ok.exit_code == 0, ok.output
    got = job_state(client.hget(KeySchema().app("default", "c1").job, "state"))
    assert got == {"when": datetime(2024, 3, 1, tzinfo=timezone.utc), "n": 1}

    before = sorted(client.scan_iter(match="*"))
    for state, fragment in (
        ('{"x": NaN}', "--state is not valid JSON"),
        ('{"x": {"__burr_serde__": "nobody.knows"}}', "Failed to deserialize state field 'x'"),
    ):
        bad = CliRunner().invoke(main, ["--redis-url", target.url, "enqueue", "app", "--state", state])
        assert bad.exit_code == 6, bad.output
        assert fragment in bad.stderr, bad.stderr
    assert sorted(client.scan_iter(match="*")) == before


def test_a_registry_declares_the_pydantic_modules_its_workers_load(persister: RedisPersister) -> None:
    """Registry(pydantic_modules=...) is Burr's allowlist, applied by the worker process-wide: a
    model from a module on it loads; one from elsewhere is refused by Burr, naming its class."""
    from burr.integrations.serde import pydantic as burr_pydantic

    from burr_dist import Registry, Worker

    m = Model(when=datetime(2024, 5, 1, 9, tzinfo=timezone.utc), pair=(1, "a"), ref=uuid.uuid4(),
              amount=Decimal("1"), tags=set())  # fmt: skip
    url = persister.store.target
    try:
        Worker(Registry(pydantic_modules=[__name__]), url=url)
        assert roundtrip(persister, "allowed", {"m": m})["m"] == m
        Worker(Registry(pydantic_modules=["somewhere_else"]), url=url)
        with pytest.raises(
            CorruptSnapshot, match=r"class 'tests\.test_exact_types\.Model'\) is not in the allowlist"
        ):
            roundtrip(persister, "refused", {"m": m})
    finally:
        burr_pydantic.set_allowlist(None)
    with pytest.raises(ConfigurationError, match="pydantic_modules must be module names"):
        Registry(pydantic_modules=[""])
