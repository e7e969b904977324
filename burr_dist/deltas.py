"""Delta snapshots: a commit stores what changed since the step it follows, not the whole state.

Pure logic (no I/O). The store keeps one :class:`Base` per app it last loaded or committed; the
next commit of that app is diffed against it, top-level field by field:

- a field holding the very same object as at the base (and, for a sized value, the same length) is
  unchanged and not sent; Burr's state operations make new objects for what they change;
- a list (exact ``list``) or ``str`` whose old value is a prefix of the new one sends only its tail;
- anything else is sent whole (``set``), and a field that disappeared is listed in ``del``.

A full *keyframe* is written instead when there is no base, when the chain since the last keyframe
reaches ``max_chain`` deltas, or when the deltas since it would outweigh the keyframe itself
(``KEYFRAME_RATIO``): loading any step reads at most one keyframe plus deltas no larger than it,
in one round trip, and Redis holds at most about twice the state for an append-only app.
commit.lua applies a delta only on top of the head whose write id it names.

Limit (documented in the README): an action that mutates a state value *in place* and keeps its
length (``state["d"]["x"] = 1`` on the dict it was given) is not seen as a change; Burr's own
contract is that state is immutable, and ``snapshot_format=1`` stores full snapshots.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from burr.core.state import FIELD_SERIALIZATION, State

from burr_dist import codec

KEYFRAME_RATIO = 1.0  # deltas since a keyframe may total this much of its size
SMALL_STATE_BYTES = 1024  # below this a keyframe costs about as much as a delta: always full
DEFAULT_MAX_CHAIN = 200


@dataclass
class Base:
    """What the last committed (or loaded) step of an app looked like to this process."""

    seq: int
    write_id: str
    keyframe: int
    keyframe_bytes: int
    chain: int
    chain_bytes: int
    values: dict[str, Any]  # the state's values (references, never copied)
    sizes: dict[str, int]  # len() of sized values at that step: in-place growth is a change
    state_bytes: int  # an upper bound of the state's JSON size (keyframe + delta bodies)

    @classmethod
    def of(cls, decoded: codec.Decoded) -> Base:
        values = decoded.data["state"].get_all()
        return cls(
            seq=decoded.data["sequence_id"],
            write_id=decoded.write_id,
            keyframe=decoded.keyframe,
            keyframe_bytes=decoded.keyframe_bytes,
            chain=decoded.chain,
            chain_bytes=decoded.chain_bytes,
            values=values,
            sizes=_sizes(values),
            state_bytes=decoded.state_bytes,
        )


def _sizes(values: dict[str, Any]) -> dict[str, int]:
    return {k: len(v) for k, v in values.items() if isinstance(v, (list, dict, str))}


@dataclass(frozen=True)
class Change:
    set: dict[str, Any]  # python values to send whole
    add: dict[str, Any]  # python tails (list or str) to append
    drop: list[str]


def diff(base: Base, values: dict[str, Any]) -> Change:
    changed: dict[str, Any] = {}
    add: dict[str, Any] = {}
    for name, new in values.items():
        if name not in base.values:
            changed[name] = new
            continue
        old = base.values[name]
        if new is old and (name not in base.sizes or len(new) == base.sizes[name]):
            continue
        kind = type(new)
        if new is not old and kind is type(old) and name not in FIELD_SERIALIZATION:
            if kind is list:
                n = len(old)
                if len(new) >= n and _same_prefix(new, old):
                    if len(new) > n:
                        add[name] = new[n:]
                    continue
            elif kind is str:
                if new.startswith(old):
                    if len(new) > len(old):
                        add[name] = new[len(old) :]
                    continue
            elif kind in (int, float, bool, type(None)) and new == old:
                continue
        changed[name] = new
    drop = [name for name in base.values if name not in values]
    return Change(set=changed, add=add, drop=drop)


def _same_prefix(new: list[Any], old: list[Any]) -> bool:
    # Identity first (Burr's update keeps the old items); equality when Burr deep-copied them.
    return all(a is b or (type(a) is type(b) and a == b) for a, b in zip(new, old, strict=False))


def wants_keyframe(base: Base | None, max_chain: int) -> bool:
    return (
        base is None
        or base.state_bytes < SMALL_STATE_BYTES
        or base.chain + 1 >= max_chain
        or base.chain_bytes >= KEYFRAME_RATIO * base.keyframe_bytes
    )


@dataclass(frozen=True)
class Encoded:
    blob: bytes
    base: Base  # what this commit becomes once Redis accepts it


def encode_commit(
    base: Base | None,
    *,
    write_id: str,
    partition_key: str | None,
    app_id: str,
    sequence_id: int,
    position: str,
    status: str,
    state: State,
    max_bytes: int,
    max_chain: int,
    compress_min_bytes: int,
    keyframe: bool = False,
) -> Encoded:
    """The entry to commit for ``values`` at ``sequence_id``: a delta on ``base`` when that is
    the step before and the policy allows, else a keyframe."""
    values = state.get_all()
    doc = codec.snapshot_meta(partition_key, app_id, sequence_id, position, status)
    usable = base if base is not None and base.seq == sequence_id - 1 and not keyframe else None
    if usable is not None and not wants_keyframe(usable, max_chain):
        change = diff(usable, values)
        doc["set"] = codec.serialize_fields(change.set)
        if change.add:
            doc["add"] = codec.serialize_fields(change.add)
        if change.drop:
            doc["del"] = change.drop
        body = codec.dumps(doc, app_id=app_id, sequence_id=sequence_id)
        # A delta only while the state's size bound stays under the limit; past it, the keyframe
        # below checks the real size (and refuses a state over max_state_bytes).
        if usable.state_bytes + len(body) <= max_bytes:
            blob = codec.frame(body, write_id=write_id, base=usable.write_id, keyframe=usable.keyframe,
                               compress_min_bytes=compress_min_bytes)  # fmt: skip
            after = Base(sequence_id, write_id, usable.keyframe, usable.keyframe_bytes, usable.chain + 1,
                         usable.chain_bytes + len(blob), values, _sizes(values),
                         usable.state_bytes + len(body))  # fmt: skip
            return Encoded(blob, after)
        doc = codec.snapshot_meta(partition_key, app_id, sequence_id, position, status)
    doc["state"] = codec.serialize_fields(values, state)
    body = codec.dumps(doc, app_id=app_id, sequence_id=sequence_id)
    codec.check_size(body, app_id=app_id, sequence_id=sequence_id, max_bytes=max_bytes)
    blob = codec.frame(
        body,
        write_id=write_id,
        base=codec.NO_BASE,
        keyframe=sequence_id,
        compress_min_bytes=compress_min_bytes,
    )
    # A small state's next commit is a keyframe too (wants_keyframe): no sizes needed for it.
    sizes = _sizes(values) if len(body) >= SMALL_STATE_BYTES else {}
    after = Base(sequence_id, write_id, sequence_id, len(blob), 0, 0, values, sizes, len(body))
    return Encoded(blob, after)


class Bases:
    """The last known step of each app this process touched, least recently used dropped first:
    at most ``limit`` apps and about ``max_bytes`` of state (the states are referenced, not
    copied, but a base can keep a finished app's state alive)."""

    def __init__(self, limit: int = 1024, max_bytes: int = 256 * 1024 * 1024) -> None:
        self.limit = limit
        self.max_bytes = max_bytes
        self.bytes = 0
        self._items: OrderedDict[tuple[str | None, str], Base] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, partition_key: str | None, app_id: str) -> Base | None:
        found = self._items.get((partition_key, app_id))
        if found is not None:
            self._items.move_to_end((partition_key, app_id))
        return found

    def put(self, partition_key: str | None, app_id: str, base: Base) -> None:
        self.drop(partition_key, app_id)
        self._items[(partition_key, app_id)] = base
        self.bytes += base.state_bytes
        while len(self._items) > self.limit or (self.bytes > self.max_bytes and len(self._items) > 1):
            _, gone = self._items.popitem(last=False)
            self.bytes -= gone.state_bytes

    def drop(self, partition_key: str | None, app_id: str) -> None:
        gone = self._items.pop((partition_key, app_id), None)
        if gone is not None:
            self.bytes -= gone.state_bytes
