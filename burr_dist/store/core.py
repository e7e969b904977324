"""The sans-IO core of the state store: its configuration, the calls every state operation is
built from (:class:`Call`: script, keys, args) and the pure readers of their replies.
:class:`~burr_dist.store.clients.RedisStore` and :class:`~burr_dist.store.clients.AsyncRedisStore` send them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from burr.core.persistence import PersistedStateData
from burr.core.state import State
from tenacity import (
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_random_exponential,
)

from burr_dist.errors import (
    BaseMoved,
    ConfigurationError,
    CorruptSnapshot,
    LeaseLost,
    SequenceConflict,
    SnapshotNotFound,
)
from burr_dist.keys import DEFAULT_BUCKETS, DEFAULT_QUEUE_SHARDS, AppKeys, KeySchema
from burr_dist.scripts import LuaScript, script
from burr_dist.store import codec, deltas
from burr_dist.transport.connect import RetryPolicy, is_transient
from burr_dist.transport.core import Cmd, Durability, evalsha
from burr_dist.transport.urls import RedisTarget

log = logging.getLogger(__name__)

DEFAULT_KEEP = 100


@dataclass(frozen=True)
class StoreConfig:
    """Settings of a store. ``keep``: snapshots retained per app (the head included).
    ``finished_ttl``: seconds a finished app's keys live after :meth:`RedisStore.expire_app`
    (None keeps them). ``max_state_bytes``: largest snapshot accepted.
    ``wait_replicas``: writes a guarantee rests on are acknowledged only once this many replicas
    confirmed them (WAIT on the same connection) within ``wait_timeout_ms``; 0 confirms nothing;
    ``"all"`` (recommended with replicas): every online replica of the node, at least one, counted
    where the WAIT is sent, so a replica added later is covered too.
    ``buckets`` / ``queue_shards``: part of the key layout (see keys.py); equal fleet-wide.
    ``fair_quantum_ms``: spacing of one partition's pending apps in a queue shard's fair order
    (scripts/_prelude.lua); it orders partitions against each other and never delays a lone one.
    ``snapshot_format``: 2 (default) stores deltas with keyframes (deltas.py); 1 stores a full
    snapshot per step, readable by burr_dist 0.3 workers (for a rolling upgrade).
    ``max_chain``: most deltas after a keyframe (bounds a load). ``compress_min_bytes``: entries
    at least this large are stored zstd-compressed (0: never)."""

    prefix: str = "burr"
    keep: int = DEFAULT_KEEP
    max_state_bytes: int = codec.DEFAULT_MAX_BYTES
    finished_ttl: float | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    wait_replicas: int | Literal["all"] = 0
    wait_timeout_ms: int = 1000
    buckets: int = DEFAULT_BUCKETS
    queue_shards: int = DEFAULT_QUEUE_SHARDS
    fair_quantum_ms: int = 1000
    snapshot_format: int = codec.FORMAT_VERSION
    max_chain: int = deltas.DEFAULT_MAX_CHAIN
    compress_min_bytes: int = 4096

    def __post_init__(self) -> None:
        if self.snapshot_format not in (1, 2):
            raise ConfigurationError(
                f"snapshot_format must be 1 or 2, got {self.snapshot_format!r}",
                snapshot_format=self.snapshot_format,
            )
        if not isinstance(self.max_chain, int) or not 1 <= self.max_chain <= 1000:
            raise ConfigurationError(
                f"max_chain must be an int from 1 to 1000, got {self.max_chain!r}", max_chain=self.max_chain
            )
        if not isinstance(self.compress_min_bytes, int) or self.compress_min_bytes < 0:
            raise ConfigurationError(
                f"compress_min_bytes must be an int >= 0, got {self.compress_min_bytes!r}",
                compress_min_bytes=self.compress_min_bytes,
            )
        if not isinstance(self.keep, int) or self.keep < 1:
            raise ConfigurationError(f"keep must be an int >= 1, got {self.keep!r}", keep=self.keep)
        if self.max_state_bytes < 1:
            raise ConfigurationError("max_state_bytes must be positive", max_state_bytes=self.max_state_bytes)
        if self.finished_ttl is not None and self.finished_ttl <= 0:
            raise ConfigurationError("finished_ttl must be positive or None", finished_ttl=self.finished_ttl)
        if self.wait_replicas != "all" and (
            not isinstance(self.wait_replicas, int)
            or isinstance(self.wait_replicas, bool)
            or self.wait_replicas < 0
        ):
            raise ConfigurationError(
                f"wait_replicas must be an int >= 0 or 'all', got {self.wait_replicas!r}",
                wait_replicas=self.wait_replicas,
            )
        if not isinstance(self.wait_timeout_ms, int) or self.wait_timeout_ms < 1:
            raise ConfigurationError(
                f"wait_timeout_ms must be an int >= 1, got {self.wait_timeout_ms!r}",
                wait_timeout_ms=self.wait_timeout_ms,
            )
        KeySchema(self.prefix, self.buckets, self.queue_shards)  # validates them

    @classmethod
    def for_target(cls, target: RedisTarget, **config: Any) -> StoreConfig:
        """A config whose replication settings default to the URL's query options."""
        for name in ("wait_replicas", "wait_timeout_ms"):
            value = target.options.get(name)
            if value is not None and config.get(name) is None:
                config[name] = value
        return cls(**{k: v for k, v in config.items() if v is not None or k == "finished_ttl"})

    def durability(self) -> Durability:
        return Durability(self.wait_replicas, self.wait_timeout_ms, self.prefix)


# Scripts whose effects a guarantee rests on: confirmed by WAIT when wait_replicas > 0.
DURABLE_SCRIPTS = frozenset(
    {
        "acquire",
        "commit",
        "renew",
        "release",
        "settle",
        "enqueue",
        "control",
        "ack",
        "epoch",
        "ready",
        "unready",
    }
)


@dataclass(frozen=True)
class Call:
    script: LuaScript
    keys: tuple[str, ...]
    args: tuple[str | bytes | int, ...]

    def cmd(self) -> Cmd:
        return evalsha(self.script, self.keys, self.args)

    @property
    def durable(self) -> bool:
        return self.script.name in DURABLE_SCRIPTS


@dataclass(frozen=True)
class Committed:
    sequence_id: int
    replayed: bool  # True when a retry found its own write already committed
    cancel_requested: bool = False
    settled: tuple[str, int, int] | None = None  # (status, run_at_ms, attempts) of a commit that settled


@dataclass(frozen=True)
class Settle:
    """A settle for commit.lua to apply with a claim's last step (settle.lua's arguments)."""

    status: str
    delay_ms: int = 0
    attempts: str = "keep"
    error: str = ""
    waiting_for: str = ""
    consumed: bool = False
    accepts: str = ""  # for waiting: JSON list of the input names a resume may give

    def args(self) -> tuple[str | int, ...]:
        return (self.status, self.delay_ms, self.attempts, self.error[:4000], self.waiting_for,
                "1" if self.consumed else "0")  # fmt: skip


# What a worker reads of an app's fleet record when it acquires the app (acquire.lua returns
# these, in this order): what a build and a settle need, not the whole record.
JOB_FIELDS = (
    "name",
    "attempts",
    "inputs",
    "inputs_at",
    "state",
    "entrypoint",
    "fork_pk",
    "fork_app",
    "fork_seq",
)


@dataclass(frozen=True)
class Acquired:
    token: str
    fence: int
    head: PersistedStateData | None
    job: dict[str, str] = field(default_factory=dict)  # the fleet record, in fleet mode


@dataclass(frozen=True)
class NotRunnable:
    status: str  # "missing", a status that cannot run, or "scheduled" (then run_at is set)
    run_at_ms: int | None = None


@dataclass(frozen=True)
class Held:
    holder: str
    pttl_ms: int


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def scored(reply: Any) -> list[tuple[Any, float]]:
    """A WITHSCORES reply as (member, score) pairs: RESP2 sends a flat list, RESP3 pairs."""
    if not reply:
        return []
    if isinstance(reply[0], (list, tuple)):
        return [(m, float(sc)) for m, sc in reply]
    return [(reply[i], float(reply[i + 1])) for i in range(0, len(reply), 2)]


class StoreCore:
    """Pure logic shared by the sync and async stores: builds calls, reads replies."""

    def __init__(self, config: StoreConfig) -> None:
        self.config = config
        self.schema = KeySchema(config.prefix, config.buckets, config.queue_shards)
        self._keys: dict[tuple[str | None, str], AppKeys] = {}
        # The last step of each app this process loaded or committed: the next commit's delta base.
        self.bases = deltas.Bases()

    def keys(self, partition_key: str | None, app_id: str) -> AppKeys:
        # Cached: encoding ids is a measurable part of the per-step cost. Bounded by clearing.
        found = self._keys.get((partition_key, app_id))
        if found is None:
            if len(self._keys) > 4096:
                self._keys.clear()
            found = self._keys[(partition_key, app_id)] = self.schema.app(partition_key, app_id)
        return found

    def retrying_kwargs(self) -> dict[str, Any]:
        p = self.config.retry
        return {
            "stop": stop_after_attempt(p.attempts) | stop_after_delay(p.deadline),
            "wait": wait_random_exponential(multiplier=p.initial, max=p.maximum),  # full jitter
            "retry": retry_if_exception(is_transient),
            "reraise": True,
        }

    # -- commit --------------------------------------------------------------------------
    def encode(
        self,
        partition_key: str | None,
        app_id: str,
        sequence_id: int,
        position: str,
        status: str,
        state: State,
        write_id: str,
        *,
        keyframe: bool = False,
    ) -> tuple[bytes, deltas.Base | None, dict[str, bytes]]:
        """The entry to commit, the delta base it makes once Redis accepts it (a delta on the
        last step this process saw of the app when possible: snapshot_format 2) and the
        state's encoded fields (what a repeat of this save must equal)."""
        c = self.config
        if c.snapshot_format == 1:
            fields = codec.encode_fields(state.get_all())
            blob = codec.encode_snapshot(
                write_id=write_id, partition_key=partition_key, app_id=app_id, sequence_id=sequence_id,
                position=position, status=status, fields=fields, max_bytes=c.max_state_bytes,
            )  # fmt: skip
            return blob, None, fields
        encoded = deltas.encode_commit(
            self.bases.get(partition_key, app_id),
            write_id=write_id, partition_key=partition_key, app_id=app_id, sequence_id=sequence_id,
            position=position, status=status, state=state, max_bytes=c.max_state_bytes,
            max_chain=c.max_chain, compress_min_bytes=c.compress_min_bytes, keyframe=keyframe,
        )  # fmt: skip
        return encoded.blob, encoded.base, encoded.fields

    def commit_call(
        self,
        partition_key: str | None,
        app_id: str,
        sequence_id: int,
        position: str,
        status: str,
        blob: bytes,
        write_id: str,
        token: str = "",
        settle: Settle | None = None,
        track: tuple[bytes, bytes] | None = None,
    ) -> Call:
        """``track``: the step's tracking records and the app's graph (or b"") from
        :meth:`burr_dist.observability.tracking.StepTracker.take`, stored by the same script."""
        k = self.keys(partition_key, app_id)
        call = Call(
            script("commit"),
            # counts only with a settle: during a slot migration a script that declares a key
            # that does not exist is refused (TRYAGAIN) until the migration ends.
            (k.meta, k.snaps, k.lease, k.index, k.job, *((k.counts,) if settle is not None else ())),
            (sequence_id, blob, position, status, write_id, self.config.keep, token, app_id,
             *(settle.args() if settle is not None else ("",))),
        )  # fmt: skip
        if track is not None:
            call = self._with_track(call, k, settle, track)
        if settle is not None and settle.accepts:  # ARGV[17], after the (maybe empty) track
            call = Call(
                call.script, call.keys, (*call.args, *(("", "") if track is None else ()), settle.accepts)
            )
        return call

    @staticmethod
    def _with_track(call: Call, k: AppKeys, settle: Settle | None, track: tuple[bytes, bytes]) -> Call:
        """Tracking: the track key last in KEYS, the records at ARGV[15..16]."""
        pad = () if settle is not None else ("",) * 5  # ARGV[10..14]: no settle
        return Call(call.script, (*call.keys, k.track), (*call.args, *pad, *track))

    @staticmethod
    def read_commit(
        reply: Sequence[Any], partition_key: str | None, app_id: str, sequence_id: int
    ) -> Committed:
        code = int(reply[0])
        if code in (1, 2):
            settled = (_s(reply[3]), int(reply[4]), int(reply[5] or 0)) if len(reply) > 3 else None
            return Committed(
                sequence_id, replayed=code == 2, cancel_requested=bool(reply[2]), settled=settled
            )
        if code == -3:
            raise BaseMoved(app_id=app_id, partition_key=partition_key, sequence_id=sequence_id)
        if code == -1:
            head = int(reply[1])
            raise SequenceConflict(
                f"commit of app {app_id!r} (partition {partition_key!r}) at sequence {sequence_id} "
                f"refused: stored head is {head}, expected {sequence_id - 1}",
                app_id=app_id,
                partition_key=partition_key,
                expected=sequence_id - 1,
                actual=head,
            )
        holder = _s(reply[1])
        raise LeaseLost(
            f"commit of app {app_id!r} (partition {partition_key!r}) at sequence {sequence_id} "
            f"refused by Redis: this worker's lease is no longer current "
            f"({'held by ' + holder if holder else 'expired'})",
            app_id=app_id,
            partition_key=partition_key,
            sequence_id=sequence_id,
            holder=holder or None,
        )

    # -- load ----------------------------------------------------------------------------
    def load_call(self, partition_key: str | None, app_id: str, sequence_id: int | None) -> Call:
        k = self.keys(partition_key, app_id)
        return Call(script("load"), (k.meta, k.snaps), ("" if sequence_id is None else sequence_id,))

    def read_chain(
        self, chain: Sequence[Any], partition_key: str | None, app_id: str, head: Any
    ) -> PersistedStateData:
        """Decode a chain read by load.lua or acquire.lua; remembers the head as the delta base."""
        k = self.keys(partition_key, app_id)
        first = int(chain[0])
        blobs = list(chain[1:])
        if any(b is None for b in blobs):
            missing = first + blobs.index(None)
            raise CorruptSnapshot(
                f"snapshot chain of app {app_id!r} (partition {partition_key!r}) misses entry "
                f"{missing} in {k.snaps!r}",
                key=f"{k.snaps}#{missing}",
            )
        decoded = codec.decode_chain(blobs, key=k.snaps, first_seq=first, partition_key=partition_key)
        if head and decoded.data["sequence_id"] == int(head):
            self.bases.put(partition_key, app_id, deltas.Base.of(decoded))
        return decoded.data

    def read_load(
        self,
        reply: Sequence[Any],
        partition_key: str | None,
        app_id: str,
        sequence_id: int | None,
        *,
        strict: bool = False,
    ) -> PersistedStateData | None:
        """The loaded step, or None when it is not stored: an unknown app, a sequence never
        saved or trimmed by ``keep`` (Burr's ``BaseStateLoader.load`` contract, which
        ``initialize_from(fork_from_sequence_id=...)`` relies on). ``strict``: SnapshotNotFound
        instead of None, saying what is retained."""
        head, oldest, chain = reply
        if chain:
            return self.read_chain(chain, partition_key, app_id, head)
        if not strict:
            return None
        if not head:
            raise SnapshotNotFound(
                f"app {app_id!r} (partition {partition_key!r}) has no committed step",
                app_id=app_id, partition_key=partition_key, sequence_id=sequence_id, oldest=None, head=None,
            )  # fmt: skip
        raise SnapshotNotFound(
            f"app {app_id!r} (partition {partition_key!r}) has no snapshot {sequence_id}: "
            f"retained sequences are {_s(oldest)}..{_s(head)}",
            app_id=app_id,
            partition_key=partition_key,
            sequence_id=sequence_id,
            oldest=int(oldest) if oldest else None,
            head=int(head),
        )

    # -- leases --------------------------------------------------------------------------
    def acquire_call(
        self, partition_key: str | None, app_id: str, nonce: str, ttl_ms: int, worker: str = ""
    ) -> Call:
        k = self.keys(partition_key, app_id)
        fields = JOB_FIELDS if worker else ()
        return Call(
            script("acquire"), (k.meta, k.snaps, k.lease, k.job, k.counts), (nonce, ttl_ms, worker, *fields)
        )

    def read_acquire(
        self, reply: Sequence[Any], partition_key: str | None, app_id: str
    ) -> Acquired | Held | NotRunnable:
        code = int(reply[0])
        if code == 0:
            return Held(holder=_s(reply[1]), pttl_ms=int(reply[2]))
        if code == -1:
            return NotRunnable(status=_s(reply[1]))
        if code == -2:
            return NotRunnable(status="scheduled", run_at_ms=int(reply[1]))
        _, token, fence, head, chain, values = reply
        state = self.read_chain(chain, partition_key, app_id, head) if chain else None
        if state is None:
            self.bases.drop(partition_key, app_id)
        # Absent fields are nil (RESP2) or false (RESP3 maps a script's false to a boolean); a
        # plain lease (not fleet mode) asked for none.
        pairs = zip(JOB_FIELDS, values, strict=True) if values else ()
        job = {f: _s(v) for f, v in pairs if v is not None and v is not False}
        return Acquired(token=_s(token), fence=int(fence), head=state, job=job)

    def renew_call(self, partition_key: str | None, app_id: str, token: str, ttl_ms: int) -> Call:
        return Call(script("renew"), (self.keys(partition_key, app_id).lease,), (token, ttl_ms))

    def release_call(self, partition_key: str | None, app_id: str, token: str) -> Call:
        return Call(script("release"), (self.keys(partition_key, app_id).lease,), (token,))

    # -- plain commands ------------------------------------------------------------------
    def list_cmds(self, partition_key: str | None) -> list[Cmd]:
        """The partition's index in every bucket (an app's index entry lives in its bucket)."""
        return [
            Cmd(k, ("ZRANGE", k, 0, -1, "WITHSCORES")) for k in self.schema.partition_indexes(partition_key)
        ]

    @staticmethod
    def read_app_ids(replies: Sequence[Any]) -> list[str]:
        """Newest first, like Burr's own persisters."""
        flat = [(score, _s(member)) for reply in replies for member, score in scored(reply)]
        return [app for _, app in sorted(flat, reverse=True)]

    def head_cmd(self, partition_key: str | None, app_id: str) -> Cmd:
        k = self.keys(partition_key, app_id)
        return Cmd(k.meta, ("HGET", k.meta, "head"))

    @staticmethod
    def read_head(reply: Any) -> int | None:
        return None if reply is None else int(reply)

    def expire_cmds(self, partition_key: str | None, app_id: str, ttl: float | None) -> list[Cmd]:
        seconds = ttl if ttl is not None else self.config.finished_ttl
        if seconds is None:
            return []
        k = self.keys(partition_key, app_id)
        ms = int(seconds * 1000)
        return [Cmd(k.meta, ("PEXPIRE", k.meta, ms)), Cmd(k.snaps, ("PEXPIRE", k.snaps, ms)),
                Cmd(k.track, ("PEXPIRE", k.track, ms)), Cmd(k.stream, ("PEXPIRE", k.stream, ms))]  # fmt: skip
