"""Snapshot encoding: Burr state to bytes and back, strictly.

Burr's serde silently turns unknown types into ``str(value)``; a worker on another node would then
resume with a different state. We refuse such values before anything is written, naming the field.

Two stored formats (the ``snaps`` hash of an app, one field per sequence id):

- version 1 (burr_dist 0.1 to 0.3): one JSON object, the full state, ``{"w":"<write id>","v":1,...}``.
- version 2: a fixed 74-byte JSON header, then a body.
  ``{"w":"<write id>","b":"<base write id>","k":"<keyframe seq, 20 digits>"}`` + body.
  A *keyframe* (base ``----------------``) holds the full state; a *delta* holds what changed since
  the step whose write id is ``b`` (commit.lua applies it only on top of that head) and ``k`` names
  the keyframe its chain starts from. The body is JSON, or a zstd frame of it when large.
  commit.lua reads the write id at bytes 7..22 in both versions, and the base and keyframe at
  bytes 30..45 and 53..72 of version 2 (see scripts/commit.lua).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from datetime import time as dtime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import orjson
from burr.core import serde
from burr.core.persistence import PersistedStateData
from burr.core.state import FIELD_SERIALIZATION, State

from burr_dist.errors import CorruptSnapshot, SerializationError
from burr_dist.store import serde_types

FORMAT_VERSION = 2  # what this version writes (StoreConfig.snapshot_format can ask for 1)
READABLE_VERSIONS = (1, 2)
DEFAULT_MAX_BYTES = 16 * 1024 * 1024
HEADER_BYTES = 74
NO_BASE = "-" * 16
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"

_LOSSY = serde.serialize.dispatch(object)
_PRIMITIVE = serde.serialize.dispatch(int)
MARKER = serde.KEY  # "__burr_serde__": the key Burr's deserializer dispatches on
_PLAIN = (str, int, bool, type(None))


def new_write_id() -> str:
    return os.urandom(8).hex()


def _refuse(path: str, why: str, kind: type | None = None) -> SerializationError:
    if kind is None:
        return SerializationError(f"state field {path!r} {why}", field=path)
    return SerializationError(f"state field {path!r} {why}", field=path, type_name=kind.__name__)


def check_value(value: Any, path: str, *, serialized: bool = False) -> bool:
    """Refuse what cannot come back unchanged, naming the field path and type. True when
    ``value`` is plain JSON all the way down (exact types): it is stored as it is, with no serde.

    ``serialized``: ``value`` is the output of a serde, which must be plain JSON (its marker key
    is Burr's own). Otherwise containers are walked with their items, the exact types of
    serde_types.py are accepted, and any other type must have a serde of its own."""
    kind = type(value)
    if kind in _PLAIN:
        return True
    if kind is float:
        if not math.isfinite(value):
            raise _refuse(path, f"is {value!r}, which JSON cannot represent")
        return True
    if kind is dict:  # inlined, not a helper call: this loop is the per-step cost of plain state
        plain = True
        for k, v in value.items():
            if type(k) is not str:
                return _check_keyed(value, path, serialized)
            plain = check_value(v, f"{path}.{k}", serialized=serialized) and plain
        if not serialized and MARKER in value:
            raise _refuse(path, f"is a dict with the key {MARKER!r}, which Burr's serde reserves "
                          "for its own records (it could not be loaded back); rename the key")  # fmt: skip
        return plain
    if kind is list:
        plain = True
        for i, v in enumerate(value):
            plain = check_value(v, f"{path}[{i}]", serialized=serialized) and plain
        return plain
    if serialized:
        raise _refuse(path, f"holds a {kind.__name__} in the output of its serde, which must return "
                      "JSON types (str, int, float, bool, None, list, dict with str keys)", kind)  # fmt: skip
    _check_exact(value, kind, path)
    return False


def _check_keyed(value: dict[Any, Any], path: str, serialized: bool) -> bool:
    """A dict with a key that is not a str: stored as its (key, value) pairs (serde_types)."""
    if serialized:
        key = next(k for k in value if type(k) is not str)
        raise _refuse(path, f"has the non-string key {key!r} in the output of its serde; JSON "
                      "object keys are strings", type(key))  # fmt: skip
    for k, v in value.items():
        check_value(k, f"{path}[key {k!r}]")
        check_value(v, f"{path}[{k!r}]")
    return False


def _check_exact(value: Any, kind: type, path: str) -> None:
    """A value that is not plain JSON: one of the exact types, or one with a serde of its own."""
    fn = serde.serialize.dispatch(kind)
    if kind in serde_types.EXACT_TYPES and fn is serde_types.EXACT_TYPES[kind]:
        if kind in (tuple, set, frozenset):
            for i, v in enumerate(value):
                check_value(v, f"{path}[{i}]")
        elif kind is Decimal and not value.is_finite():
            raise _refuse(path, f"is Decimal({str(value)!r}); NaN and infinity are refused", kind)
        elif kind in (datetime, dtime) and not _known_tz(value.tzinfo):
            raise _refuse(path, f"holds a {kind.__name__} whose tzinfo is a {type(value.tzinfo).__name__}; "
                          "only datetime.timezone and zoneinfo.ZoneInfo (with a key) round-trip", kind)  # fmt: skip
        return
    if serde_types.is_pydantic(value):
        # What is stored is pydantic's own dump, which its model_validate reads back (a datetime's
        # tzinfo is pydantic's TzInfo, say): check that, for NaN or what no JSON holds.
        try:
            dumped = serde_types.pydantic_dump(value)
        except Exception as e:  # PydanticSerializationError: a field type it cannot dump as JSON
            raise _refuse(
                path, f"holds a {kind.__name__} that pydantic cannot dump as JSON ({e})", kind
            ) from e
        check_value(dumped, path, serialized=True)
        return
    if fn is _LOSSY:
        raise _refuse(path, f"holds a {kind.__name__}, which Burr's serde would store as str(value) "
                      "and lose; convert it to JSON types or register a burr serde for it "
                      "(burr.core.serde.serialize.register)", kind)  # fmt: skip
    if fn in serde_types.BASE_SERIALIZERS or fn is _PRIMITIVE:
        raise _refuse(path, f"holds a {kind.__name__}, a subclass that would be loaded back as its "
                      "base type; convert it or register a burr serde for it", kind)  # fmt: skip


def _known_tz(tz: Any) -> bool:
    return tz is None or type(tz) is timezone or (isinstance(tz, ZoneInfo) and tz.key is not None)


def encode_fields(values: dict[str, Any]) -> dict[str, bytes]:
    """Each top-level field as the JSON bytes of what Burr's ``State.serialize()`` gives for it,
    checked strictly first. The bytes are what a commit stores and what the next delta is compared
    against: never a reference into objects an action may still edit in place.

    A field with a field serde (``register_field_serde``) is serialized by it, then its output is
    checked; any other field is checked as given, and serialized by Burr only when it holds a type
    with a registered serde (plain JSON needs no copy: Burr's serialize would return an equal one).
    """
    out: dict[str, bytes] = {}
    rest: dict[str, Any] = {}
    for name, value in values.items():
        if name not in FIELD_SERIALIZATION and check_value(value, name):
            out[name] = _dump_field(value, name)
        else:
            rest[name] = value
    if rest:
        try:
            done = State(rest).serialize()
        except (TypeError, ValueError) as e:
            raise SerializationError(f"state cannot be serialized: {e}") from e
        for name, value in done.items():
            check_value(value, name, serialized=True)
            out[name] = _dump_field(value, name)
        out = {name: out[name] for name in values}  # the state's own field order
    return out


def _dump_field(value: Any, name: str) -> bytes:
    try:
        return orjson.dumps(value)
    except (TypeError, orjson.JSONEncodeError) as e:
        raise SerializationError(f"state field {name!r} cannot be encoded as JSON: {e}", field=name) from e


def fields_doc(fields: Mapping[str, bytes]) -> dict[str, orjson.Fragment]:
    """Encoded fields as a JSON object of pre-encoded values (orjson writes them as they are)."""
    return {name: orjson.Fragment(blob) for name, blob in fields.items()}


def snapshot_meta(
    partition_key: str | None, app_id: str, sequence_id: int, position: str, status: str
) -> dict[str, Any]:
    return {
        "v": FORMAT_VERSION,
        "pk": partition_key,
        "app": app_id,
        "seq": sequence_id,
        "pos": position,
        "status": status,
        "at": time.time_ns() // 1_000_000,  # ms; isoformat is paid on load, not per step
    }


def dumps(doc: dict[str, Any], *, app_id: str, sequence_id: int) -> bytes:
    try:
        return orjson.dumps(doc)
    except (TypeError, ValueError, orjson.JSONEncodeError) as e:
        raise SerializationError(
            f"state of app {app_id!r} at sequence {sequence_id} cannot be encoded as JSON: {e}",
            app_id=app_id,
            sequence_id=sequence_id,
        ) from e


def check_size(blob: bytes, *, app_id: str, sequence_id: int, max_bytes: int) -> None:
    if len(blob) > max_bytes:
        raise SerializationError(
            f"state of app {app_id!r} at sequence {sequence_id} is {len(blob)} bytes, "
            f"over the limit of {max_bytes} (max_state_bytes)",
            app_id=app_id,
            sequence_id=sequence_id,
            size=len(blob),
            limit=max_bytes,
        )


def header(write_id: str, base: str, keyframe: int) -> bytes:
    out = f'{{"w":"{write_id}","b":"{base}","k":"{keyframe:020d}"}}'.encode()
    assert len(out) == HEADER_BYTES, out
    return out


_zstd_c: Any = None
_zstd_d: Any = None


def compress(body: bytes) -> bytes:
    global _zstd_c
    if _zstd_c is None:
        import zstandard

        _zstd_c = zstandard.ZstdCompressor(level=3)
    return _zstd_c.compress(body)


def decompress(body: bytes) -> bytes:
    global _zstd_d
    if _zstd_d is None:
        import zstandard

        _zstd_d = zstandard.ZstdDecompressor()
    return _zstd_d.decompress(body)


def frame(body: bytes, *, write_id: str, base: str, keyframe: int, compress_min_bytes: int) -> bytes:
    """A version 2 entry: header + JSON body, the body compressed when at least
    compress_min_bytes long (0: never)."""
    if compress_min_bytes and len(body) >= compress_min_bytes:
        body = compress(body)
    return header(write_id, base, keyframe) + body


def encode_snapshot(
    *,
    write_id: str,
    partition_key: str | None,
    app_id: str,
    sequence_id: int,
    position: str,
    status: str,
    fields: Mapping[str, bytes],
    max_bytes: int,
) -> bytes:
    """A version 1 snapshot (the full state, no header): what ``snapshot_format=1`` writes, for a
    rolling upgrade while workers of the previous version still run. The write id comes first:
    commit.lua reads bytes 7..22 to spot retries."""
    doc = snapshot_meta(partition_key, app_id, sequence_id, position, status)
    doc["v"] = 1
    doc["state"] = fields_doc(fields)
    blob = dumps({"w": write_id, **doc}, app_id=app_id, sequence_id=sequence_id)
    check_size(blob, app_id=app_id, sequence_id=sequence_id, max_bytes=max_bytes)
    return blob


@dataclass(frozen=True)
class Entry:
    """One stored entry, decoded: a keyframe (``base`` None) or a delta."""

    write_id: str
    base: str | None
    keyframe: int | None  # version 2: the chain's keyframe; None for version 1 (a full snapshot)
    doc: dict[str, Any]
    size: int  # stored bytes
    body_size: int  # JSON bytes (uncompressed)

    @property
    def is_keyframe(self) -> bool:
        return self.base is None


def parse_entry(blob: bytes, *, key: str) -> Entry:
    """Decode one stored entry; any defect raises CorruptSnapshot naming ``key``."""
    if isinstance(blob, str):
        blob = blob.encode()
    v2 = blob[:6] == b'{"w":"' and blob[22:29] == b'","b":"' and len(blob) > HEADER_BYTES
    try:
        if v2:
            head = orjson.loads(blob[:HEADER_BYTES])
            body = blob[HEADER_BYTES:]
            if body[:4] == ZSTD_MAGIC:
                body = decompress(body)
            doc = orjson.loads(body)
        else:
            doc = orjson.loads(blob)
            head = None
    except orjson.JSONDecodeError as e:
        raise CorruptSnapshot(f"snapshot in {key!r} is not valid JSON: {e}", key=key) from e
    except Exception as e:  # zstd errors have no common base class worth importing here
        raise CorruptSnapshot(f"snapshot in {key!r} cannot be decompressed: {e}", key=key) from e
    if not isinstance(doc, dict):
        raise CorruptSnapshot(f"snapshot in {key!r} is not a JSON object", key=key)
    version = doc.get("v")
    if version not in READABLE_VERSIONS or (version == 2) != v2:
        raise CorruptSnapshot(
            f"snapshot in {key!r} has format version {version!r}; this burr_dist reads "
            f"versions {READABLE_VERSIONS} (written by an incompatible version?)",
            key=key,
            version=version,
        )
    if head is None:
        return Entry(str(doc.get("w", "")), None, None, doc, len(blob), len(blob))
    base = head["b"]
    return Entry(head["w"], None if base == NO_BASE else base, int(head["k"]), doc, len(blob), len(body))


def apply_delta(state: dict[str, Any], doc: dict[str, Any], *, key: str) -> None:
    """Apply one delta body to a serialized state (JSON level), in place."""
    try:
        for name in doc.get("del", ()):
            state.pop(name, None)
        state.update(doc.get("set", {}))
        for name, tail in doc.get("add", {}).items():
            have = state[name]
            if type(have) is not type(tail) or not isinstance(tail, (list, str)):
                raise TypeError(f"cannot append a {type(tail).__name__} to a {type(have).__name__}")
            state[name] = have + tail
    except (KeyError, TypeError, AttributeError) as e:
        raise CorruptSnapshot(f"delta in {key!r} does not apply to its base: {e!r}", key=key) from e


@dataclass(frozen=True)
class Decoded:
    """A loaded step: what Burr gets, plus what the next commit's delta is computed against."""

    data: PersistedStateData
    write_id: str
    keyframe: int  # sequence id of the chain's keyframe
    keyframe_bytes: int
    chain: int  # deltas after the keyframe
    chain_bytes: int
    state_bytes: int  # keyframe and delta bodies, uncompressed: bounds the state's JSON size
    fields: dict[str, bytes]  # each field's stored JSON (read before Burr's deserializers run)


def decode_chain(blobs: Sequence[bytes], *, key: str, first_seq: int, partition_key: str | None) -> Decoded:
    """Decode a keyframe followed by the deltas up to the wanted step (sequences first_seq...)."""
    if not blobs:
        raise CorruptSnapshot(f"no snapshot in {key!r}", key=key)
    entries = [parse_entry(b, key=f"{key}#{first_seq + i}") for i, b in enumerate(blobs)]
    first = entries[0]
    if not first.is_keyframe:
        raise CorruptSnapshot(
            f"snapshot chain in {key!r} does not start with a keyframe", key=f"{key}#{first_seq}"
        )
    if not isinstance(first.doc.get("state"), dict):
        raise CorruptSnapshot(f"keyframe in {key!r} is malformed: it has no state", key=f"{key}#{first_seq}")
    state = dict(first.doc["state"])
    previous = first
    for i, entry in enumerate(entries[1:], start=1):
        where = f"{key}#{first_seq + i}"
        if entry.is_keyframe or entry.base != previous.write_id or entry.keyframe != first_seq:
            raise CorruptSnapshot(
                f"delta in {where!r} is not based on the entry before it (base {entry.base!r}, "
                f"previous write {previous.write_id!r}; keyframe {entry.keyframe}, chain from {first_seq})",
                key=where,
            )
        apply_delta(state, entry.doc, key=where)
        previous = entry
    last = entries[-1]
    where = f"{key}#{first_seq + len(entries) - 1}"
    doc = last.doc
    # Before deserializing: Burr's deserializers may consume the dicts they are given.
    fields = {name: orjson.dumps(value) for name, value in state.items()}
    try:
        data = PersistedStateData(
            partition_key=partition_key,  # type: ignore[typeddict-item]
            app_id=doc["app"],
            sequence_id=int(doc["seq"]),
            position=doc["pos"],
            state=State.deserialize(state),
            created_at=datetime.fromtimestamp(int(doc["at"]) / 1000, tz=timezone.utc).isoformat(),
            status=doc["status"],
        )
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise CorruptSnapshot(f"snapshot in {where!r} is malformed: {e!r}", key=where) from e
    return Decoded(
        data=data,
        write_id=last.write_id,
        keyframe=first_seq,
        keyframe_bytes=first.size,
        chain=len(entries) - 1,
        chain_bytes=sum(e.size for e in entries[1:]),
        state_bytes=sum(e.body_size for e in entries),
        fields=fields,
    )


def stored_steps(raw: Mapping[Any, Any], *, key: str) -> dict[int, dict[str, Any]]:
    """Every entry of an app's ``snaps`` hash (HGETALL), expanded to a full document: the stored
    fields plus ``state`` (serialized, the deltas applied), ``w`` and ``kind`` (keyframe or
    delta). For ``history`` and for tests that look at what Redis holds."""
    entries = {}
    for field, blob in raw.items():
        name = field.decode() if isinstance(field, bytes) else str(field)
        if name.isdigit():
            entries[int(name)] = blob
    out: dict[int, dict[str, Any]] = {}
    state: dict[str, Any] | None = None
    previous: Entry | None = None
    for seq in sorted(entries):
        where = f"{key}#{seq}"
        entry = parse_entry(entries[seq], key=where)
        if entry.is_keyframe:
            if not isinstance(entry.doc.get("state"), dict):
                raise CorruptSnapshot(f"keyframe in {where!r} is malformed: it has no state", key=where)
            state = dict(entry.doc["state"])
        else:
            if state is None or previous is None or entry.base != previous.write_id:
                raise CorruptSnapshot(f"delta in {where!r} does not follow its base", key=where)
            state = dict(state)
            apply_delta(state, entry.doc, key=where)
        meta = {k: v for k, v in entry.doc.items() if k not in ("state", "set", "add", "del")}
        out[seq] = meta | {"w": entry.write_id, "state": state, "size": entry.size,
                           "kind": "keyframe" if entry.is_keyframe else "delta"}  # fmt: skip
        previous = entry
    return out
