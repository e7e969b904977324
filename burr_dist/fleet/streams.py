"""What streaming actions' items look like in Redis, and how a reader follows them (sans-IO).

A worker (burr_dist/worker/streaming.py) appends one stream entry per record to the app's
``stream`` key (keys.py), capped with ``XADD MAXLEN ~``. Fields, all short on purpose (they are
paid per item):

* ``k`` kind: ``start`` (a streamed step began), ``item``, ``end`` (the action returned or raised);
* ``r`` run: random per streamed step *attempt*, so a reader can drop the items of a worker that
  lost its lease while another re-runs the same step, and the duplicates of a retried write;
* ``s`` sequence id of the step, ``a`` action name, ``i`` item number (from 1; on ``end`` the
  number of items);
* ``d`` JSON: the item (through the strict codec), the step's result on ``end``, ``{"worker": id}``
  on ``start``; or ``e``: why an item could not be stored, or the action's error on ``end``.

:class:`Follower` turns XREAD replies into :class:`StreamEvent` and decides when a reader is done;
both clients (``FleetClient.stream``, ``AsyncFleetClient.stream``) only move bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from burr.core.state import State

from burr_dist.errors import SerializationError
from burr_dist.store import codec
from burr_dist.transport.core import Cmd

MAXLEN = 10_000  # records kept per app (approximately: MAXLEN ~ trims whole stream nodes)
DEFAULT_TTL_S = 7 * 24 * 3600  # stream TTL when the store has no finished_ttl (refreshed per write)
DONE = frozenset({"waiting", "completed", "failed", "cancelled"})  # a reader stops here
BLOCK_MS = 1000  # longest XREAD BLOCK: the reader checks the app's status between reads
GRACE_S = 2.0  # how long a reader waits for a started step's end once the app settled
COUNT = 500  # entries per XREAD
_FIELD = "__stream_item"  # the codec encodes by field name; nobody registers a serde for this one


@dataclass(frozen=True)
class StreamEvent:
    """One record of an app's stream, as a reader sees it."""

    kind: str  # "start" | "item" | "end"
    sequence_id: int
    action: str
    index: int = 0  # item number from 1; on "end": how many items the step streamed
    value: Any = None  # the item ("item"), the step's result ("end"), {"worker": id} ("start")
    error: str | None = None  # an item the codec refused, or the action's error ("end")
    entry_id: str = ""

    def to_json(self) -> dict[str, Any]:
        out = {"kind": self.kind, "sequence_id": self.sequence_id, "action": self.action,
               "index": self.index, "value": self.value, "id": self.entry_id}  # fmt: skip
        if self.error is not None:
            out["error"] = self.error
        return out


def encode_value(value: Any) -> tuple[bytes | None, str | None]:
    """JSON bytes through the strict codec, or (None, why) for a value it refuses."""
    try:
        return codec.encode_fields({_FIELD: value})[_FIELD], None
    except SerializationError as e:
        return None, str(e).replace(f"state field {_FIELD!r}", f"a {type(value).__name__}")
    except Exception as e:  # a serde of the user's raised: still an item, never the step's failure
        return None, f"a {type(value).__name__} could not be encoded: {e!r}"


def record(kind: str, run: str, seq: int, action: str, index: int,
           data: bytes | None = None, error: str | None = None) -> tuple[Any, ...]:  # fmt: skip
    fields: tuple[Any, ...] = ("k", kind, "r", run, "s", seq, "a", action, "i", index)
    if error is not None:
        return (*fields, "e", error)
    return (*fields, "d", data if data is not None else b"null")


def append_cmds(key: str, records: Sequence[tuple[Any, ...]], ttl_ms: int, maxlen: int = MAXLEN) -> list[Cmd]:
    """XADD each record (one round trip for all: same key, same node), then refresh the TTL."""
    cmds = [Cmd(key, ("XADD", key, "MAXLEN", "~", maxlen, "*", *r)) for r in records]
    return [*cmds, Cmd(key, ("PEXPIRE", key, ttl_ms))]


def stream_ttl_ms(finished_ttl: float | None) -> int:
    """The stream lives as a finished app's keys do (finished_ttl), else DEFAULT_TTL_S after its
    last write: it is live output, not state (the committed result is in the snapshots)."""
    return int((finished_ttl if finished_ttl is not None else DEFAULT_TTL_S) * 1000)


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def entries(reply: Any) -> list[tuple[str, dict[str, Any]]]:
    """(entry id, fields) of an XREAD reply of one stream, as redis-py parses it: a RESP2
    ``[[key, entries]]`` or a RESP3 ``{key: [entries]}``."""
    if not reply:
        return []
    if isinstance(reply, dict):
        found = next(iter(reply.values()))
        if found and isinstance(found[0], list) and found[0] and isinstance(found[0][0], (list, tuple)):
            found = found[0]  # some redis-py versions nest RESP3 entries once more
    else:
        found = reply[0][1]
    return range_entries(found)


def range_entries(reply: Any) -> list[tuple[str, dict[str, Any]]]:
    """(entry id, fields) of an XRANGE / XREVRANGE reply (fields as a dict or a flat list)."""
    out = []
    for entry_id, fields in reply or ():
        if isinstance(fields, (list, tuple)):
            fields = dict(zip(fields[::2], fields[1::2], strict=True))
        out.append((_text(entry_id), {_text(k): v for k, v in fields.items()}))
    return out


def start_id(reply: Any) -> str:
    """Where a reader that skips the retained records starts: the id of the newest one (an
    XREVRANGE + - COUNT 1 reply), ``0-0`` for an empty stream."""
    found = range_entries(reply)
    return found[0][0] if found else "0-0"


def decode_value(raw: Any) -> Any:
    value = orjson.loads(raw)
    if isinstance(value, (dict, list)):  # typed values carry Burr's serde markers
        return State.deserialize({_FIELD: value})[_FIELD]
    return value


class Follower:
    """A reader's position in one app's stream and what it has yielded (no I/O).

    Items of a run other than the step's latest start are dropped (a worker that lost its lease
    and still streams); so is a record seen twice (a write retried after a lost reply)."""

    def __init__(self, last_id: str = "0-0", timeout: float | None = None, now: float = 0.0) -> None:
        self.last_id = last_id
        self.deadline = None if timeout is None else now + timeout
        self._grace: float | None = None
        self._runs: dict[int, str] = {}  # sequence id -> its latest run
        self._seen: dict[str, int] = {}  # run -> highest item index yielded
        self.open: int | None = None  # a step whose start was seen and its end not yet

    def feed(self, reply: Any) -> list[StreamEvent]:
        out = []
        for entry_id, f in entries(reply):
            self.last_id = entry_id
            event = self._event(entry_id, f)
            if event is not None:
                out.append(event)
        return out

    def _event(self, entry_id: str, f: dict[str, Any]) -> StreamEvent | None:
        kind, run, seq = _text(f["k"]), _text(f["r"]), int(f["s"])
        index = int(f["i"])
        if kind == "start":
            if self._runs.get(seq) == run:
                return None  # a duplicate
            self._runs[seq], self._seen[run], self.open = run, 0, seq
        elif self._runs.setdefault(seq, run) != run:
            return None  # items of an abandoned attempt of this step
        elif kind == "item":
            if index <= self._seen.get(run, 0):
                return None
            self._seen[run] = index
        elif kind == "end":
            if self._seen.get(run) == -1:
                return None
            self._seen[run] = -1
            if self.open == seq:
                self.open = None
        error = _text(f["e"]) if "e" in f else None
        value = decode_value(f["d"]) if "d" in f else None
        return StreamEvent(kind, seq, _text(f["a"]), index, value, error, entry_id)

    def after(self, status: str | None, reply: Any, now: float) -> tuple[list[StreamEvent], bool]:
        """The events of one read and whether the reader stops: the app parked or finished
        (``status``, read *before* the read) and the read found nothing more, with no step half
        read (a step's end is written before its commit; a sync action run on the worker's loop
        writes after it, so such a step gets :data:`GRACE_S`), or the reader's timeout passed."""
        events = self.feed(reply)
        if self.deadline is not None and now >= self.deadline:
            return events, True
        if events or status not in DONE:
            self._grace = None
            return events, False
        if self.open is None:
            return events, True
        self._grace = self._grace if self._grace is not None else now + GRACE_S
        return events, now >= self._grace

    def block_ms(self, now: float) -> int:
        """How long the next XREAD may block: never past the deadline, never 0 (for ever)."""
        left = BLOCK_MS if self.deadline is None else int((self.deadline - now) * 1000)
        return max(1, min(BLOCK_MS, left))
