"""Exact types for state values, registered with Burr's own serde registry (``burr.core.serde``).

Burr stores a value it has no serializer for as ``str(value)``, turns tuples into lists and
leaves dict keys for ``json.dumps`` to stringify: a state loaded back is not the state saved.
Importing this module (the codec does) registers, under Burr's marker key ``__burr_serde__``:

====================  ======================================================================
type                  stored as
====================  ======================================================================
tuple                 ``{"__burr_serde__": "burr_dist.tuple", "items": [...]}``
set, frozenset        ``"burr_dist.set"`` / ``"burr_dist.frozenset"``, items sorted by their JSON
dict, non-str keys    ``"burr_dist.dict"``, ``"items": [[key, value], ...]`` in the dict's order
datetime, time        ``"v"``: isoformat; ``"zone"``: a ZoneInfo key; ``"tzname"``: a named
                      fixed offset; ``"fold"``: 1 when set
date                  ``"v"``: isoformat
timedelta             ``"d"``, ``"s"``, ``"us"``: days, seconds, microseconds
UUID, Decimal         ``"v"``: str(value)
bytes                 ``"v"``: base64
pydantic models       Burr's own ``"pydantic"`` record; dumped in JSON mode when the plain dump
                      holds values JSON cannot carry (the model's annotations restore them)
====================  ======================================================================

A dict with string keys keeps Burr's own serializer (its output is unchanged). Users register
their own types the same way: ``serde.serialize.register(MyType)`` returning a dict with
``serde.KEY``, and ``serde.deserializer.register(key)``; the codec (codec.py) decides what is
refused before any of these run.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable, Iterable
from datetime import date, datetime, time, timedelta, timezone, tzinfo
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import orjson
from burr.core import serde

KEY = serde.KEY
_BURR_DICT = serde.serialize.dispatch(dict)  # Burr's own: kept for string keys


def _tag(name: str, **fields: Any) -> dict[str, Any]:
    return {KEY: f"burr_dist.{name}", **fields}


def _items(values: Iterable[Any], kwargs: dict[str, Any]) -> list[Any]:
    return [serde.serialize(v, **kwargs) for v in values]


def _sorted_items(values: Iterable[Any], kwargs: dict[str, Any]) -> list[Any]:
    """Set items in a stable order (by their JSON), so equal sets encode to equal bytes: the
    delta encoder and the repeat-save check compare bytes."""
    items = _items(values, kwargs)
    try:
        return sorted(items, key=orjson.dumps)
    except (TypeError, orjson.JSONEncodeError):
        return items  # the codec refuses the value with its path; no order needed


def _deserialized(values: Iterable[Any], kwargs: dict[str, Any]) -> list[Any]:
    return [serde.deserialize(v, **kwargs) for v in values]


@serde.serialize.register(tuple)
def _serialize_tuple(value: tuple[Any, ...], **kwargs: Any) -> dict[str, Any]:
    return _tag("tuple", items=_items(value, kwargs))


@serde.serialize.register(set)
def _serialize_set(value: set[Any], **kwargs: Any) -> dict[str, Any]:
    return _tag("set", items=_sorted_items(value, kwargs))


@serde.serialize.register(frozenset)
def _serialize_frozenset(value: frozenset[Any], **kwargs: Any) -> dict[str, Any]:
    return _tag("frozenset", items=_sorted_items(value, kwargs))


@serde.serialize.register(dict)
def _serialize_dict(value: dict[Any, Any], **kwargs: Any) -> Any:
    for k in value:
        if type(k) is not str:
            pairs = [[serde.serialize(k, **kwargs), serde.serialize(v, **kwargs)] for k, v in value.items()]
            return _tag("dict", items=pairs)
    return _BURR_DICT(value, **kwargs)


def _tz_fields(tz: tzinfo | None) -> dict[str, Any]:
    """What isoformat's offset does not say: the zone of a ZoneInfo, the name of a named offset."""
    if tz is None:
        return {}
    if isinstance(tz, ZoneInfo):
        return {"zone": tz.key}
    offset = tz.utcoffset(None)
    name = tz.tzname(None)
    return {} if offset is None or name == timezone(offset).tzname(None) else {"tzname": name}


def _fold(value: datetime | time) -> dict[str, Any]:
    return {"fold": 1} if value.fold else {}


def _with_tz(value: Any, record: dict[str, Any]) -> Any:
    if "zone" in record:
        value = value.replace(tzinfo=ZoneInfo(record["zone"]))  # the wall time is kept
    elif "tzname" in record:
        value = value.replace(tzinfo=timezone(value.utcoffset(), record["tzname"]))
    return value.replace(fold=record.get("fold", 0))


@serde.serialize.register(datetime)
def _serialize_datetime(value: datetime, **kwargs: Any) -> dict[str, Any]:
    return _tag("datetime", v=value.isoformat(), **_tz_fields(value.tzinfo), **_fold(value))


@serde.serialize.register(time)
def _serialize_time(value: time, **kwargs: Any) -> dict[str, Any]:
    return _tag("time", v=value.isoformat(), **_tz_fields(value.tzinfo), **_fold(value))


@serde.serialize.register(date)
def _serialize_date(value: date, **kwargs: Any) -> dict[str, Any]:
    return _tag("date", v=value.isoformat())


@serde.serialize.register(timedelta)
def _serialize_timedelta(value: timedelta, **kwargs: Any) -> dict[str, Any]:
    return _tag("timedelta", d=value.days, s=value.seconds, us=value.microseconds)


@serde.serialize.register(uuid.UUID)
def _serialize_uuid(value: uuid.UUID, **kwargs: Any) -> dict[str, Any]:
    return _tag("uuid", v=str(value))


@serde.serialize.register(Decimal)
def _serialize_decimal(value: Decimal, **kwargs: Any) -> dict[str, Any]:
    return _tag("decimal", v=str(value))


@serde.serialize.register(bytes)
def _serialize_bytes(value: bytes, **kwargs: Any) -> dict[str, Any]:
    return _tag("bytes", v=base64.b64encode(value).decode("ascii"))


_DESERIALIZERS: dict[str, Callable[[dict[str, Any], dict[str, Any]], Any]] = {
    "tuple": lambda r, kw: tuple(_deserialized(r["items"], kw)),
    "set": lambda r, kw: set(_deserialized(r["items"], kw)),
    "frozenset": lambda r, kw: frozenset(_deserialized(r["items"], kw)),
    "dict": lambda r, kw: {serde.deserialize(k, **kw): serde.deserialize(v, **kw) for k, v in r["items"]},
    "datetime": lambda r, kw: _with_tz(datetime.fromisoformat(r["v"]), r),
    "time": lambda r, kw: _with_tz(time.fromisoformat(r["v"]), r),
    "date": lambda r, kw: date.fromisoformat(r["v"]),
    "timedelta": lambda r, kw: timedelta(days=r["d"], seconds=r["s"], microseconds=r["us"]),
    "uuid": lambda r, kw: uuid.UUID(r["v"]),
    "decimal": lambda r, kw: Decimal(r["v"]),
    "bytes": lambda r, kw: base64.b64decode(r["v"], validate=True),
}


def _register_deserializer(name: str, fn: Callable[[dict[str, Any], dict[str, Any]], Any]) -> None:
    def deserialize(value: dict[str, Any], **kwargs: Any) -> Any:
        return fn(value, kwargs)

    serde.deserializer.register(f"burr_dist.{name}")(deserialize)  # type: ignore[no-untyped-call]


for _name, _fn in _DESERIALIZERS.items():
    _register_deserializer(_name, _fn)

# The serializers above: a subclass reaching one of them (a namedtuple, an IntEnum, an
# OrderedDict, a datetime subclass) would be loaded back as the base type.
EXACT_TYPES: dict[type, Callable[..., Any]] = {
    t: serde.serialize.dispatch(t)
    for t in (tuple, set, frozenset, dict, datetime, time, date, timedelta, uuid.UUID, Decimal, bytes)
}
BASE_SERIALIZERS = frozenset(
    [*EXACT_TYPES.values(), serde.serialize.dispatch(list), serde.serialize.dispatch(str)]
)


try:  # pydantic is optional for Burr; its serde plugin registers BaseModel when it is installed
    import pydantic
except ImportError:  # pragma: no cover - pydantic ships with burr[tracking]
    pydantic = None  # type: ignore[assignment]


def is_pydantic(value: Any) -> bool:
    return pydantic is not None and isinstance(value, pydantic.BaseModel)


if pydantic is not None and serde.serialize.dispatch(pydantic.BaseModel) is not serde.serialize.dispatch(
    object
):

    @serde.serialize.register(pydantic.BaseModel)
    def _serialize_pydantic(value: Any, **kwargs: Any) -> dict[str, Any]:
        """Burr's pydantic record (its deserializer reads it back with ``model_validate``). A
        python-mode dump holding datetimes, UUIDs... is not JSON: dump in JSON mode instead."""
        cls = type(value)
        return {
            **pydantic_dump(value),
            KEY: "pydantic",
            "__pydantic_class": f"{cls.__module__}.{cls.__name__}",
        }


def pydantic_dump(value: Any) -> dict[str, Any]:
    """What a model is stored as: its python-mode dump when that is JSON, else its JSON-mode dump
    (datetimes, UUIDs... as pydantic writes them: its model_validate reads them back exactly)."""
    dumped: dict[str, Any] = value.model_dump()
    return dumped if _is_json(dumped) else value.model_dump(mode="json")


_JSON_SCALARS = (str, int, float, bool, type(None))


def _is_json(value: Any) -> bool:
    kind = type(value)
    if kind in _JSON_SCALARS:
        return True
    if kind is list:
        return all(_is_json(v) for v in value)
    if kind is dict:
        return all(type(k) is str and _is_json(v) for k, v in value.items())
    return False
