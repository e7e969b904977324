"""Snapshot encoding: Burr state to JSON bytes and back, strictly.

Burr's serde silently turns unknown types into ``str(value)``; a worker on another node would then
resume with a different state. We refuse such values before anything is written, naming the field.
"""

from __future__ import annotations

import math
import os
import time
from datetime import datetime, timezone
from typing import Any

import orjson
from burr.core import serde
from burr.core.persistence import PersistedStateData
from burr.core.state import State

from burr_dist.errors import CorruptSnapshot, SerializationError

FORMAT_VERSION = 1
DEFAULT_MAX_BYTES = 16 * 1024 * 1024

_LOSSY = serde.serialize.dispatch(object)
_PLAIN = (str, int, bool, type(None))


def new_write_id() -> str:
    return os.urandom(8).hex()


def _check(value: Any, path: str) -> None:
    kind = type(value)
    if kind in _PLAIN:
        return
    if kind is float:
        if not math.isfinite(value):
            raise SerializationError(
                f"state field {path!r} is {value!r}, which JSON cannot represent", field=path
            )
        return
    if kind is dict:
        for k, v in value.items():
            if not isinstance(k, str):
                raise SerializationError(
                    f"state field {path!r} has a non-string key {k!r}; JSON object keys are strings",
                    field=path,
                )
            _check(v, f"{path}.{k}")
        return
    if kind is list:
        for i, v in enumerate(value):
            _check(v, f"{path}[{i}]")
        return
    if serde.serialize.dispatch(kind) is _LOSSY:
        raise SerializationError(
            f"state field {path!r} holds a {kind.__name__}, which Burr's serde would store as "
            f"str(value) and lose; convert it to JSON types or register a burr serde for it",
            field=path,
            type_name=kind.__name__,
        )


def encode_snapshot(
    *,
    write_id: str,
    partition_key: str | None,
    app_id: str,
    sequence_id: int,
    position: str,
    status: str,
    state: State,
    max_bytes: int,
) -> bytes:
    """Encode a snapshot. The write id comes first: commit.lua reads bytes 7..22 to spot retries."""
    values = state.get_all()
    for field, value in values.items():
        _check(value, field)
    try:
        serialized = state.serialize()
        blob = orjson.dumps(
            {
                "w": write_id,
                "v": FORMAT_VERSION,
                "pk": partition_key,
                "app": app_id,
                "seq": sequence_id,
                "pos": position,
                "status": status,
                "at": time.time_ns() // 1_000_000,  # ms; isoformat is paid on load, not per step
                "state": serialized,
            }
        )
    except (TypeError, ValueError, orjson.JSONEncodeError) as e:
        raise SerializationError(
            f"state of app {app_id!r} at sequence {sequence_id} cannot be encoded as JSON: {e}",
            app_id=app_id,
            sequence_id=sequence_id,
        ) from e
    if len(blob) > max_bytes:
        raise SerializationError(
            f"state of app {app_id!r} at sequence {sequence_id} is {len(blob)} bytes, "
            f"over the limit of {max_bytes} (max_state_bytes)",
            app_id=app_id,
            sequence_id=sequence_id,
            size=len(blob),
            limit=max_bytes,
        )
    return blob


def decode_snapshot(blob: bytes, *, key: str, partition_key: str | None) -> PersistedStateData:
    """Decode a snapshot read from ``key``; any defect raises CorruptSnapshot naming the key."""
    try:
        doc = orjson.loads(blob)
    except orjson.JSONDecodeError as e:
        raise CorruptSnapshot(f"snapshot in {key!r} is not valid JSON: {e}", key=key) from e
    if not isinstance(doc, dict):
        raise CorruptSnapshot(f"snapshot in {key!r} is not a JSON object", key=key)
    version = doc.get("v")
    if version != FORMAT_VERSION:
        raise CorruptSnapshot(
            f"snapshot in {key!r} has format version {version!r}; this burr_dist reads "
            f"version {FORMAT_VERSION} (written by an incompatible version?)",
            key=key,
            version=version,
        )
    try:
        state: State = State.deserialize(doc["state"])
        return PersistedStateData(
            partition_key=partition_key,  # type: ignore[typeddict-item]
            app_id=doc["app"],
            sequence_id=int(doc["seq"]),
            position=doc["pos"],
            state=state,
            created_at=datetime.fromtimestamp(int(doc["at"]) / 1000, tz=timezone.utc).isoformat(),
            status=doc["status"],
        )
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise CorruptSnapshot(f"snapshot in {key!r} is malformed: {e!r}", key=key) from e
