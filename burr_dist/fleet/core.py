"""The sans-IO core of the fleet client: the calls that enqueue and operate on apps, and the
readers of their replies (no I/O; FleetClient and AsyncFleetClient in queue.py send them).

How the cross-slot steps of those operations recover from a crash between them: queue.py.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import KW_ONLY, dataclass
from typing import Any

import orjson
from burr.core.state import State

from burr_dist.errors import (
    AppNotFound,
    AppNotRunnable,
    ConfigurationError,
    InputsRefused,
    SerializationError,
)
from burr_dist.keys import KeySchema, check_id, partition_of
from burr_dist.scripts import script
from burr_dist.store import codec
from burr_dist.store.core import Call, StoreCore, _s, scored
from burr_dist.transport.core import Cmd

STATUSES = ("queued", "running", "waiting", "completed", "failed", "cancelled")
DEFAULT_QUEUE = "default"


def json_object(value: Any, what: str) -> bytes:
    """Encode a dict as JSON, or raise a ConfigurationError naming ``what``."""
    if value is None:
        return b""
    if isinstance(value, (str, bytes)):
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError as e:
            raise ConfigurationError(f"{what} is not valid JSON: {e}", field=what) from e
    if not isinstance(value, dict):
        raise ConfigurationError(f"{what} must be a JSON object, got {type(value).__name__}", field=what)
    try:
        return orjson.dumps(value)
    except TypeError as e:
        raise ConfigurationError(f"{what} cannot be encoded as JSON: {e}", field=what) from e


def state_values(serialized: Any, what: str) -> dict[str, Any]:
    """A state as Burr serializes it (a JSON object, or its text), deserialized the way Burr
    loads one (``State.deserialize``: field serde, type serde, our exact types)."""
    if isinstance(serialized, (str, bytes)):
        try:
            serialized = orjson.loads(serialized)  # refuses NaN and Infinity literals
        except orjson.JSONDecodeError as e:
            raise ConfigurationError(f"{what} is not valid JSON: {e}", field=what) from e
    if not isinstance(serialized, dict):
        raise ConfigurationError(f"{what} must be a JSON object, got {type(serialized).__name__}", field=what)
    try:
        return State.deserialize(serialized).get_all()
    except ValueError as e:  # Burr names the field: "Failed to deserialize state field 'x': ..."
        raise ConfigurationError(
            f"{what}: {e} (import the module that registers its serde, e.g. with --module)", field=what
        ) from e


def encode_state(values: Any, what: str, *, max_bytes: int) -> bytes:
    """An enqueue's initial state, checked and encoded by the snapshot codec (what a commit of
    it would store: exact types, NaN refused, a field serde applied), within ``max_bytes``.
    ``values``: the state's values (a dict or a State), or its serialized JSON text."""
    if values is None:
        return b""
    if isinstance(values, (str, bytes)):
        values = state_values(values, what)
    elif isinstance(values, State):
        values = values.get_all()
    if not isinstance(values, dict):
        raise ConfigurationError(f"{what} must be a dict of fields, got {type(values).__name__}", field=what)
    bad = [k for k in values if not isinstance(k, str)]
    if bad:
        raise ConfigurationError(f"{what}: field names are strings, got {bad[0]!r}", field=what)
    try:
        blob = orjson.dumps(codec.fields_doc(codec.encode_fields(values)))
    except SerializationError as e:
        raise SerializationError(f"{what}: {e}", **e.context) from e
    if len(blob) > max_bytes:
        raise SerializationError(
            f"{what} is {len(blob)} bytes, over the limit of {max_bytes} (max_state_bytes)",
            size=len(blob), limit=max_bytes,
        )  # fmt: skip
    return blob


def job_state(raw: str | bytes | None) -> dict[str, Any]:
    """An enqueued state as the values the app starts with (``State.deserialize`` of what
    ``encode_state`` stored): what a worker merges over the registered default state."""
    return state_values(raw, "the enqueued state") if raw else {}


@dataclass(frozen=True)
class Enqueued:
    app_id: str
    partition_key: str
    created: bool  # False: the app already existed; nothing new was queued
    status: str
    run_at_ms: int | None
    queue: str = "default"


@dataclass(frozen=True)
class EnqueueRequest:
    """One app to enqueue: ``EnqueueRequest(name, app_id, partition_key=..., state=...)``.

    Everything after ``app_id`` is keyword-only, so an app id and a partition key cannot be swapped.
    """

    name: str
    app_id: str | None = None
    _: KW_ONLY
    partition_key: str | None = None
    # The initial state's values (Burr serde, field serde and exact types apply, as at a commit),
    # or its serialized JSON text (deserialized with State.deserialize first).
    state: dict[str, Any] | str | bytes | None = None
    inputs: dict[str, Any] | None = None
    entrypoint: str | None = None
    delay: float = 0.0
    queue: str = DEFAULT_QUEUE
    fork_from: tuple[str, str, int] | None = None  # (partition key, app id, sequence id)


class FleetCore(StoreCore):
    """Pure call builders and reply readers for fleet operations."""

    schema: KeySchema

    def enqueue_call(self, req: EnqueueRequest) -> tuple[Call, str, str]:
        check_id("name", req.name)
        app_id = req.app_id if req.app_id is not None else uuid.uuid4().hex
        pk = partition_of(req.partition_key)
        if not 0 <= req.delay < math.inf:  # nan fails both comparisons
            raise ConfigurationError(
                f"delay must be a finite number of seconds >= 0, got {req.delay}", delay=req.delay
            )
        self.schema.queue_shard(req.queue, 0)  # validates the name
        fields: list[str | bytes] = [
            "name", req.name, "queue", req.queue, "app_id", app_id, "partition_key", pk,
            "state", encode_state(req.state, f"the state of {req.name!r} app {app_id!r}",
                                  max_bytes=self.config.max_state_bytes),
            "inputs", json_object(req.inputs, "inputs"),
            "entrypoint", req.entrypoint or "",
        ]  # fmt: skip
        if req.inputs is not None:
            fields += ["inputs_at", ""]
        if req.fork_from is not None:
            fpk, fapp, fseq = req.fork_from
            fields += ["fork_pk", partition_of(fpk), "fork_app", fapp, "fork_seq", str(fseq)]
        k = self.keys(pk, app_id)
        return Call(script("enqueue"), (k.job, k.counts), (int(req.delay * 1000), *fields)), app_id, pk

    @staticmethod
    def read_enqueue(reply: Sequence[Any], app_id: str, pk: str, queue: str) -> Enqueued:
        if int(reply[0]) == 1:
            return Enqueued(app_id, pk, True, "queued", int(reply[1]), queue)
        run_at = _s(reply[2])
        found = _s(reply[3]) if len(reply) > 3 and reply[3] else queue
        return Enqueued(app_id, pk, False, _s(reply[1]), int(run_at) if run_at else None, found)

    def ready_call(self, queue: str, partition_key: str | None, app_id: str, run_at_ms: int) -> Call:
        """Make an app runnable in its shard of ``queue`` (fairly; never moves an entry there)."""
        member = self.schema.member(partition_key, app_id)
        q = self.schema.queue_for(queue, member)
        return Call(
            script("ready"), (q.ready, q.scheduled, q.vt), (member, run_at_ms, self.config.fair_quantum_ms)
        )

    def unready_call(self, queue: str, partition_key: str | None, app_id: str) -> Call:
        member = self.schema.member(partition_key, app_id)
        q = self.schema.queue_for(queue, member)
        return Call(script("unready"), (q.ready, q.scheduled, q.vt), (member,))

    def bell_cmds(self, queues: Iterable[str], tokens: int) -> list[Cmd]:
        """Wake up to ``tokens`` idle workers per queue (best effort: polling is the fallback)."""
        out = []
        for name in sorted(set(queues)):
            bell = self.schema.bell(name)
            out += [
                Cmd(bell, ("LPUSH", bell, *["1"] * max(1, min(tokens, 64)))),
                Cmd(bell, ("LTRIM", bell, 0, 63)),
            ]
        return out

    def queue_name_cmd(self, names: Iterable[str]) -> Cmd:
        key = self.schema.queues()
        return Cmd(key, ("SADD", key, *sorted(set(names))))

    def enqueue_plan(
        self, requests: Sequence[EnqueueRequest]
    ) -> tuple[list[Call], list[tuple[str, str, str]]]:
        calls, ids = [], []
        for req in requests:
            call, app, pk = self.enqueue_call(req)
            calls.append(call)
            ids.append((app, pk, req.queue))
        return calls, ids

    def requeue_calls(self, results: Sequence[Enqueued]) -> list[Call]:
        return [
            self.ready_call(r.queue, r.partition_key, r.app_id, r.run_at_ms)
            for r in results
            if r.status == "queued" and r.run_at_ms is not None
        ]

    def control_call(self, op: str, partition_key: str | None, app_id: str, inputs: bytes = b"") -> Call:
        k = self.keys(partition_of(partition_key), app_id)
        return Call(script("control"), (k.job, k.meta, k.counts), (op, inputs, uuid.uuid4().hex))

    def control_followup(
        self, status: str, run_at: int | None, queue: str, partition_key: str | None, app_id: str
    ) -> list[Call]:
        if status == "queued" and run_at is not None:
            return [self.ready_call(queue, partition_key, app_id, run_at)]
        if status == "cancelled":
            return [self.unready_call(queue, partition_key, app_id)]
        return []

    @staticmethod
    def read_control(
        reply: Sequence[Any], op: str, partition_key: str | None, app_id: str
    ) -> tuple[int, str, int | None, str]:
        code = int(reply[0])
        if code == -1:
            raise AppNotFound(
                f"no app {app_id!r} in partition {partition_of(partition_key)!r}", app_id=app_id
            )
        if code == -3:
            unknown, accepted = orjson.loads(reply[1]), orjson.loads(reply[2])
            raise InputsRefused(
                f"cannot resume app {app_id!r}: inputs {unknown} are declared by no action of the app "
                f"(it takes {accepted}); nothing was stored",
                app_id=app_id, unknown=unknown, accepted=accepted,
            )  # fmt: skip
        status = _s(reply[1])
        if code == 0:
            raise AppNotRunnable(
                f"cannot {op} app {app_id!r}: it is {status}", app_id=app_id, status=status, op=op
            )
        run_at = _s(reply[2]) if len(reply) > 2 else ""
        queue = _s(reply[3]) if len(reply) > 3 else DEFAULT_QUEUE
        return code, status, int(run_at) if run_at else None, queue

    def settle_call(
        self, partition_key: str | None, app_id: str, token: str, status: str, *, delay: float = 0.0,
        attempts: str = "keep", error: str = "", waiting_for: str = "", consumed: bool = False,
        accepts: str = "",
    ) -> Call:  # fmt: skip
        k = self.keys(partition_key, app_id)
        args: tuple[str | int, ...] = (
            token,
            status,
            int(delay * 1000),
            attempts,
            error[:4000],
            waiting_for,
            "1" if consumed else "0",
            *((accepts,) if accepts else ()),
        )
        return Call(script("settle"), (k.lease, k.job, k.counts), args)

    def claim_call(self, queue: str, shard: int, n: int, claim_ms: int) -> Call:
        q = self.schema.queue_shard(queue, shard)
        return Call(
            script("claim"),
            (q.ready, q.scheduled, q.active, q.vt),
            (n, claim_ms, self.config.fair_quantum_ms),
        )

    @staticmethod
    def read_claim(reply: Sequence[Any]) -> tuple[int, float | None, list[str]]:
        """(claim deadline in server ms, fair time of the shard's next head or None, members)."""
        head = _s(reply[1]) if reply[1] not in (None, b"", "") else ""
        return int(reply[0]), float(head) if head else None, [_s(m) for m in reply[2:]]

    def sweep_call(self, queue: str, shard: int, most: int = 1000) -> Call:
        q = self.schema.queue_shard(queue, shard)
        return Call(script("sweep"), (q.ready, q.active, q.vt), (most, self.config.fair_quantum_ms))

    def touch_call(self, queue: str, shard: int, claim_ms: int, claims: Iterable[tuple[str, int]]) -> Call:
        """Extend the claims ``(member, deadline this worker last saw set)`` it still holds."""
        args = [x for member, deadline in claims for x in (member, deadline)]
        return Call(script("touch"), (self.schema.queue_shard(queue, shard).active,), (claim_ms, *args))

    def ack_call(
        self,
        queue: str,
        member: str,
        deadline: int,
        run_at_ms: int | None,
        *,
        delay_ms: int | None = None,
        claim_ms: int,
    ) -> Call:
        """Drop this worker's active entry (``deadline``: the last one it saw set, ``claim_ms``:
        its claim time); run again at ``run_at_ms`` or after ``delay_ms``."""  # fmt: skip
        q = self.schema.queue_for(queue, member)
        return Call(
            script("ack"),
            (q.active, q.ready, q.scheduled, q.vt),
            (member, deadline, "" if run_at_ms is None else run_at_ms, self.config.fair_quantum_ms,
             "" if delay_ms is None else delay_ms, claim_ms),
        )  # fmt: skip

    def peek_cmds(self, queue: str) -> list[Cmd]:
        """Every shard's head (lowest fair time) and earliest scheduled entry, then the server
        time: which shards to claim from, fairest first."""
        out = []
        for q in self.schema.queue_shards_of(queue):
            out += [Cmd(q.ready, ("ZRANGE", q.ready, 0, 0, "WITHSCORES")),
                    Cmd(q.scheduled, ("ZRANGE", q.scheduled, 0, 0, "WITHSCORES"))]  # fmt: skip
        return [*out, Cmd(self.schema.workers(), ("TIME",))]

    @staticmethod
    def read_peek(replies: Sequence[Any]) -> dict[int, float]:
        """Shards that have something to claim now -> the fair time of their head."""
        sec, usec = replies[-1]
        now = int(sec) * 1000 + int(usec) // 1000
        order: dict[int, float] = {}
        for shard in range(len(replies) // 2):
            ready, sched = scored(replies[2 * shard]), scored(replies[2 * shard + 1])
            heads = [s for _, s in ready] + [s for _, s in sched if s <= now]
            if heads:
                order[shard] = min(heads)
        return order

    def heartbeat_call(self, worker_id: str, ttl_ms: int, fields: dict[str, str]) -> Call:
        flat = [x for kv in fields.items() for x in kv]
        return Call(
            script("heartbeat"),
            (self.schema.workers(), self.schema.worker(worker_id)),
            (worker_id, ttl_ms, *flat),
        )

    def epoch_call(self, bucket: int, new_id: str) -> Call:
        return Call(script("epoch"), (self.schema.epoch(bucket),), (new_id,))

    # -- operator reads ------------------------------------------------------------------
    def show_cmds(self, partition_key: str | None, app_id: str) -> list[Cmd]:
        k = self.keys(partition_of(partition_key), app_id)
        return [
            Cmd(k.job, ("HGETALL", k.job)), Cmd(k.meta, ("HGETALL", k.meta)),
            Cmd(k.lease, ("GET", k.lease)), Cmd(k.lease, ("PTTL", k.lease)),
        ]  # fmt: skip

    # -- streams of streaming actions (record format and reader: fleet/streams.py) ---------
    def stream_key(self, partition_key: str | None, app_id: str) -> str:
        return self.keys(partition_of(partition_key), app_id).stream

    def stream_status_cmd(self, partition_key: str | None, app_id: str) -> Cmd:
        k = self.keys(partition_of(partition_key), app_id)
        return Cmd(k.job, ("HGET", k.job, "status"))

    @staticmethod
    def read_stream_status(reply: Any, app_id: str, partition_key: str | None) -> str:
        if reply is None:
            raise AppNotFound(
                f"no app {app_id!r} in partition {partition_of(partition_key)!r}", app_id=app_id
            )
        return _s(reply)

    @staticmethod
    def stream_newest_cmd(key: str) -> Cmd:
        """Where a reader that skips the retained records starts (streams.start_id reads it)."""
        return Cmd(key, ("XREVRANGE", key, "+", "-", "COUNT", 1))

    def counts_cmds(self) -> list[Cmd]:
        return [Cmd(k, ("HGETALL", k)) for k in (self.schema.counts(b) for b in range(self.schema.buckets))]

    @staticmethod
    def read_counts(replies: Sequence[Any]) -> dict[str, int]:
        """Counts by status from the buckets' counters: a field ``<status>`` adds to its status,
        a transition field ``<from>><to>`` (what the scripts increment, move_status in
        scripts/_prelude.lua) moves its count from one status to the other."""
        counts = dict.fromkeys(STATUSES, 0)
        for reply in replies:
            for name, value in _pairs(reply).items():
                src, _, dst = name.rpartition(">")
                if src:
                    counts[src] = counts.get(src, 0) - int(value)
                counts[dst] = counts.get(dst, 0) + int(value)
        return counts

    def queue_stat_cmds(self, queue: str) -> list[Cmd]:
        out = []
        for q in self.schema.queue_shards_of(queue):
            out += [Cmd(q.ready, ("ZCARD", q.ready)), Cmd(q.active, ("ZCARD", q.active)),
                    Cmd(q.scheduled, ("ZCARD", q.scheduled)),
                    Cmd(q.ready, ("ZRANGE", q.ready, 0, 0, "WITHSCORES"))]  # fmt: skip
        return out

    @staticmethod
    def read_queue_stats(replies: Sequence[Any], now_ms: int) -> dict[str, Any]:
        """Counts, and the age of the fairest ready entry by its fair time (exact for a partition
        without a backlog; a backlogged partition's entries carry later fair times)."""
        ready = active = scheduled = 0
        oldest: float | None = None
        for i in range(0, len(replies), 4):
            ready += int(replies[i])
            active += int(replies[i + 1])
            scheduled += int(replies[i + 2])
            if replies[i + 3]:
                score = scored(replies[i + 3])[0][1]
                oldest = score if oldest is None else min(oldest, score)
        age = round(max(now_ms - oldest, 0) / 1000, 1) if oldest is not None else None
        return {"ready": ready, "scheduled": scheduled, "active": active, "oldest_ready_age_s": age}


def _pairs(reply: Any) -> dict[str, str]:
    """A HGETALL reply (a flat list from raw connections, a dict from client methods) as str dict."""
    if isinstance(reply, dict):
        return {_s(a): _s(b) for a, b in reply.items()}
    return {_s(reply[i]): _s(reply[i + 1]) for i in range(0, len(reply or []), 2)}


def _raw_pairs(reply: Any) -> dict[Any, Any]:
    if isinstance(reply, dict):
        return reply
    return {reply[i]: reply[i + 1] for i in range(0, len(reply or []), 2)}


def parse_job(raw: dict[Any, Any]) -> dict[str, Any]:
    """A job hash as a dict of str, with JSON fields decoded and numbers as ints."""
    job: dict[str, Any] = {_s(k): _s(v) for k, v in raw.items()}
    for name in ("state", "inputs"):
        job[name] = orjson.loads(job[name]) if job.get(name) else None
    for name in ("attempts", "claims", "created_at", "updated_at", "run_at"):
        if job.get(name):
            job[name] = int(job[name])
    return job
