"""Delta snapshots: a commit stores what changed since the step it follows, not the whole state.

Pure logic (no I/O). The store keeps one :class:`Base` per app it last loaded or committed: the
JSON bytes each top-level field was stored as. The next commit encodes every field the way Burr's
``State.serialize()`` does and compares bytes, field by field:

- a field whose bytes are unchanged is not sent;
- a list or string whose old encoding is a prefix of the new one (up to the closing bracket or
  quote) sends only its tail, itself already encoded;
- anything else is sent whole (``set``), and a field that disappeared is listed in ``del``.

Comparing encodings, not objects, is what makes an action that edits state in place (Burr's own
streaming example rewrites ``chat_history[-1]``) store exactly what it left in memory: the base is
never a reference into objects user code can still mutate, and ``-1.0`` differs from ``-1``.

A full *keyframe* is written instead when there is no base, when the chain since the last keyframe
reaches ``max_chain`` deltas, or when the deltas since it would outweigh the keyframe itself
(``KEYFRAME_RATIO``): loading any step reads at most one keyframe plus deltas no larger than it,
in one round trip, and Redis holds at most about twice the state for an append-only app.
commit.lua applies a delta only on top of the head whose write id it names.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from burr.core.state import State

from burr_dist.store import codec

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
    fields: dict[str, bytes]  # each field's JSON as stored (immutable bytes, not live objects)
    state_bytes: int  # an upper bound of the state's JSON size (keyframe + delta bodies)

    @classmethod
    def of(cls, decoded: codec.Decoded) -> Base:
        return cls(
            seq=decoded.data["sequence_id"],
            write_id=decoded.write_id,
            keyframe=decoded.keyframe,
            keyframe_bytes=decoded.keyframe_bytes,
            chain=decoded.chain,
            chain_bytes=decoded.chain_bytes,
            fields=decoded.fields,
            state_bytes=decoded.state_bytes,
        )


@dataclass(frozen=True)
class Change:
    set: dict[str, bytes]  # encoded values to send whole
    add: dict[str, bytes]  # encoded tails (a list or a string) to append
    drop: list[str]


def diff(base: Base, fields: dict[str, bytes]) -> Change:
    changed: dict[str, bytes] = {}
    add: dict[str, bytes] = {}
    for name, new in fields.items():
        old = base.fields.get(name)
        if old == new:
            continue
        tail = None if old is None else tail_of(old, new)
        if tail is None:
            changed[name] = new
        else:
            add[name] = tail
    drop = [name for name in base.fields if name not in fields]
    return Change(set=changed, add=add, drop=drop)


def tail_of(old: bytes, new: bytes) -> bytes | None:
    """The encoded tail to append to ``old`` to get ``new`` (both one JSON list, or both one JSON
    string, as orjson writes them), or None. A JSON value is read left to right without looking
    ahead, so when ``new`` repeats ``old`` up to its closing bracket and then goes on after a
    comma, its first items are exactly ``old``'s; a string likewise, up to the closing quote."""
    opener = old[:1]
    if opener != new[:1] or len(new) <= len(old):
        return None
    n = len(old) - 1
    if opener == b"[":
        if old == b"[]":
            return new
        if new[n] == 0x2C and new.startswith(old[:n]):  # ","
            return b"[" + new[n + 1 :]
    elif opener == b'"' and new.startswith(old[:n]):
        return b'"' + new[n:]
    return None


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
    fields: dict[str, bytes]  # the state as encoded: immutable bytes, never a live object


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
    """The entry to commit for ``state`` at ``sequence_id``: a delta on ``base`` when that is
    the step before and the policy allows, else a keyframe."""
    fields = codec.encode_fields(state.get_all())
    doc = codec.snapshot_meta(partition_key, app_id, sequence_id, position, status)
    usable = base if base is not None and base.seq == sequence_id - 1 and not keyframe else None
    if usable is not None and not wants_keyframe(usable, max_chain):
        change = diff(usable, fields)
        doc["set"] = codec.fields_doc(change.set)
        if change.add:
            doc["add"] = codec.fields_doc(change.add)
        if change.drop:
            doc["del"] = change.drop
        body = codec.dumps(doc, app_id=app_id, sequence_id=sequence_id)
        # A delta only while the state's size bound stays under the limit; past it, the keyframe
        # below checks the real size (and refuses a state over max_state_bytes).
        if usable.state_bytes + len(body) <= max_bytes:
            blob = codec.frame(body, write_id=write_id, base=usable.write_id, keyframe=usable.keyframe,
                               compress_min_bytes=compress_min_bytes)  # fmt: skip
            after = Base(sequence_id, write_id, usable.keyframe, usable.keyframe_bytes, usable.chain + 1,
                         usable.chain_bytes + len(blob), fields, usable.state_bytes + len(body))  # fmt: skip
            return Encoded(blob, after, fields)
        doc = codec.snapshot_meta(partition_key, app_id, sequence_id, position, status)
    doc["state"] = codec.fields_doc(fields)
    body = codec.dumps(doc, app_id=app_id, sequence_id=sequence_id)
    codec.check_size(body, app_id=app_id, sequence_id=sequence_id, max_bytes=max_bytes)
    blob = codec.frame(
        body,
        write_id=write_id,
        base=codec.NO_BASE,
        keyframe=sequence_id,
        compress_min_bytes=compress_min_bytes,
    )
    after = Base(sequence_id, write_id, sequence_id, len(blob), 0, 0, fields, len(body))
    return Encoded(blob, after, fields)


class Bases:
    """The last known step of each app this process touched, least recently used dropped first:
    at most ``limit`` apps and about ``max_bytes`` of encoded state."""

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
