"""Enqueue apps and operate on them: the client side of the fleet (sync and async).

Cross-slot steps (the job record lives in the app's slot, the queue in its own) and how a crash
between them recovers:

* enqueue: (1) create the job record (enqueue.lua), (2) ZADD NX the app to ``ready``. A crash
  after (1) leaves a queued record that no queue lists; enqueueing the same app again is
  idempotent and performs (2) for any record still queued, and ``reconcile`` re-adds every queued
  record missing from its queue.
* resume / retry: (1) control.lua makes the record queued, (2) ZADD NX to ``ready``; same repair.
* cancel of a queued app: (1) record cancelled, (2) ZREM from ``ready``. A crash after (1) leaves
  a ready entry; the worker that claims it finds the record cancelled and drops it.
Worker-side steps are described in burr_dist/worker.py.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import KW_ONLY, dataclass
from typing import Any

import orjson
import redis
import redis.asyncio as aioredis

from burr_dist.errors import AppNotFound, AppNotRunnable, ConfigurationError, SnapshotNotFound
from burr_dist.keys import KeySchema, check_id, partition_of
from burr_dist.scripts import script
from burr_dist.store import AsyncRedisStore, Call, RedisStore, StoreConfig, StoreCore, _s

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


@dataclass(frozen=True)
class Enqueued:
    app_id: str
    partition_key: str
    created: bool  # False: the app already existed; nothing new was queued
    status: str
    run_at_ms: int | None


@dataclass(frozen=True)
class EnqueueRequest:
    """One app to enqueue: ``EnqueueRequest(name, app_id, partition_key=..., state=...)``.

    Everything after ``app_id`` is keyword-only, so an app id and a partition key cannot be swapped.
    """

    name: str
    app_id: str | None = None
    _: KW_ONLY
    partition_key: str | None = None
    state: dict[str, Any] | None = None
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
        if req.delay < 0:
            raise ConfigurationError(f"delay must be >= 0, got {req.delay}", delay=req.delay)
        self.schema.queue(req.queue)  # validates the name
        fields: list[str | bytes] = [
            "name", req.name, "queue", req.queue, "app_id", app_id, "partition_key", pk,
            "state", json_object(req.state, "state"), "inputs", json_object(req.inputs, "inputs"),
            "entrypoint", req.entrypoint or "",
        ]  # fmt: skip
        if req.inputs is not None:
            fields += ["inputs_at", ""]
        if req.fork_from is not None:
            fpk, fapp, fseq = req.fork_from
            fields += ["fork_pk", partition_of(fpk), "fork_app", fapp, "fork_seq", str(fseq)]
        k = self.keys(pk, app_id)
        return Call(script("enqueue"), (k.job,), (int(req.delay * 1000), *fields)), app_id, pk

    @staticmethod
    def read_enqueue(reply: Sequence[Any], app_id: str, pk: str) -> Enqueued:
        if int(reply[0]) == 1:
            return Enqueued(app_id, pk, True, "queued", int(reply[1]))
        run_at = _s(reply[2])
        return Enqueued(app_id, pk, False, _s(reply[1]), int(run_at) if run_at else None)

    def control_call(self, op: str, partition_key: str | None, app_id: str, inputs: bytes = b"") -> Call:
        k = self.keys(partition_of(partition_key), app_id)
        return Call(script("control"), (k.job, k.meta), (op, inputs))

    @staticmethod
    def read_control(
        reply: Sequence[Any], op: str, partition_key: str | None, app_id: str
    ) -> tuple[int, str, int | None, str]:
        code = int(reply[0])
        if code == -1:
            raise AppNotFound(
                f"no app {app_id!r} in partition {partition_of(partition_key)!r}", app_id=app_id
            )
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
    ) -> Call:  # fmt: skip
        k = self.keys(partition_key, app_id)
        args = (
            token,
            status,
            int(delay * 1000),
            attempts,
            error[:4000],
            waiting_for,
            "1" if consumed else "0",
        )
        return Call(script("settle"), (k.lease, k.job), args)

    def claim_call(self, queue: str, n: int, claim_ms: int) -> Call:
        q = self.schema.queue(queue)
        return Call(script("claim"), (q.ready, q.active), (n, claim_ms))

    def sweep_call(self, queue: str, most: int = 1000) -> Call:
        q = self.schema.queue(queue)
        return Call(script("sweep"), (q.ready, q.active), (most,))

    def touch_call(self, queue: str, claim_ms: int, members: Iterable[str]) -> Call:
        return Call(script("touch"), (self.schema.queue(queue).active,), (claim_ms, *members))

    def heartbeat_call(self, worker_id: str, ttl_ms: int, fields: dict[str, str]) -> Call:
        flat = [x for kv in fields.items() for x in kv]
        return Call(
            script("heartbeat"),
            (self.schema.workers(), self.schema.worker(worker_id), self.schema.epoch()),
            (worker_id, ttl_ms, os.urandom(8).hex(), *flat),
        )


def parse_job(raw: dict[Any, Any]) -> dict[str, Any]:
    """A job hash as a dict of str, with JSON fields decoded and numbers as ints."""
    job: dict[str, Any] = {_s(k): _s(v) for k, v in raw.items()}
    for name in ("state", "inputs"):
        job[name] = orjson.loads(job[name]) if job.get(name) else None
    for name in ("attempts", "claims", "created_at", "updated_at", "run_at"):
        if job.get(name):
            job[name] = int(job[name])
    return job


class FleetClient(FleetCore, RedisStore):
    """Enqueue and operate on apps (sync). ``FleetClient.from_url(url, prefix=...)``.

    Argument order: every method that names an app takes the app id first and the partition key
    only by keyword (``show(app_id, partition_key="team-a")``), so the two strings cannot be
    swapped silently. Only the methods of Burr's persister contract inherited from the store
    (``load(partition_key, app_id, sequence_id)``, ``list_app_ids(partition_key)``) keep Burr's
    positional order.
    """

    def __init__(self, client: redis.Redis, config: StoreConfig | None = None) -> None:
        RedisStore.__init__(self, client, config)

    @classmethod
    def from_url(cls, url: str | None = None, **config: Any) -> FleetClient:
        from burr_dist.connection import connect

        return cls(connect(url), StoreConfig(**config))

    def enqueue(
        self, name: str, app_id: str | None = None, *, partition_key: str | None = None, **kw: Any
    ) -> Enqueued:
        return self.enqueue_many([EnqueueRequest(name, app_id, partition_key=partition_key, **kw)])[0]

    def enqueue_many(self, requests: Sequence[EnqueueRequest]) -> list[Enqueued]:
        """Two round trips for any number of apps: the records, then the queue entries."""
        calls = [(self.enqueue_call(r), r) for r in requests]
        pipe: Any = self.client.pipeline(transaction=False)
        for (call, _, _), _ in calls:
            pipe.evalsha(call.script.sha, len(call.keys), *call.keys, *call.args)
        replies = self._pipeline_with_scripts(pipe, {c.script for (c, _, _), _ in calls})
        results = [self.read_enqueue(r, app, pk) for r, ((_, app, pk), _) in zip(replies, calls, strict=True)]
        pipe = self.client.pipeline(transaction=False)
        for res, (_, req) in zip(results, calls, strict=True):
            if res.status == "queued" and res.run_at_ms is not None:
                pipe.zadd(
                    self.schema.queue(req.queue).ready,
                    {self.schema.member(res.partition_key, res.app_id): res.run_at_ms},
                    nx=True,
                )
        self._with_retry(pipe.execute)
        return results

    def _pipeline_with_scripts(self, pipe: Any, scripts: set[Any]) -> list[Any]:
        for s in scripts:
            self._with_retry(self.client.script_load, s.source)
        return self._with_retry(pipe.execute)

    def _control(self, op: str, app_id: str, partition_key: str | None, inputs: bytes = b"") -> str:
        reply = self.run(self.control_call(op, partition_key, app_id, inputs))
        code, status, run_at, queue = self.read_control(reply, op, partition_key, app_id)
        member = self.schema.member(partition_key, app_id)
        if status == "queued" and run_at is not None:
            self._with_retry(
                lambda: self.client.zadd(self.schema.queue(queue).ready, {member: run_at}, nx=True)
            )
        elif status == "cancelled":
            self._with_retry(self.client.zrem, self.schema.queue(queue).ready, member)
        return "cancel_requested" if code == 2 else status

    def resume(
        self, app_id: str, inputs: dict[str, Any] | None = None, *, partition_key: str | None = None
    ) -> str:
        """Make a waiting app runnable with ``inputs`` for the action it waits for."""
        return self._control("resume", app_id, partition_key, json_object(inputs or {}, "inputs"))

    def cancel(self, app_id: str, *, partition_key: str | None = None) -> str:
        """Cancel now (queued, waiting, failed) or before its next step (running)."""
        return self._control("cancel", app_id, partition_key)

    def retry(self, app_id: str, *, partition_key: str | None = None) -> str:
        """Run a failed (or cancelled) app again from its last committed step."""
        return self._control("retry", app_id, partition_key)

    def fork(
        self,
        app_id: str,
        at: int | None,
        new_app_id: str | None = None,
        *,
        partition_key: str | None = None,
    ) -> Enqueued:
        """Queue a new app that continues from ``app_id``'s snapshot ``at`` (head when None).
        The new app lives in the same partition."""
        job = self.job(app_id, partition_key=partition_key)
        found = self.load(partition_of(partition_key), app_id, at)
        if found is None:
            raise SnapshotNotFound(
                f"app {app_id!r} has no committed step to fork from", app_id=app_id, sequence_id=at
            )
        return self.enqueue(
            job["name"], new_app_id, partition_key=partition_key, queue=job.get("queue") or DEFAULT_QUEUE,
            fork_from=(partition_of(partition_key), app_id, found["sequence_id"]),
        )  # fmt: skip

    def job(self, app_id: str, *, partition_key: str | None = None) -> dict[str, Any]:
        """The job record: AppNotFound when ``app_id`` is not in the partition."""
        raw = self._with_retry(self.client.hgetall, self.keys(partition_of(partition_key), app_id).job)
        if not raw:
            raise AppNotFound(
                f"no app {app_id!r} in partition {partition_of(partition_key)!r}", app_id=app_id
            )
        return parse_job(raw)

    def show(self, app_id: str, *, partition_key: str | None = None) -> dict[str, Any]:
        """The job record plus the stored head and the lease holder."""
        job = self.job(app_id, partition_key=partition_key)
        k = self.keys(partition_of(partition_key), app_id)
        pipe: Any = self.client.pipeline(transaction=False)
        pipe.hgetall(k.meta).get(k.lease).pttl(k.lease)
        meta, holder, pttl = self._with_retry(pipe.execute)
        meta = {_s(a): _s(b) for a, b in meta.items()}
        job.update(
            sequence_id=int(meta["head"]) if "head" in meta else None,
            position=meta.get("pos"),
            step_status=meta.get("status"),
            lease_holder=_s(holder) if holder else None,
            lease_ttl_ms=int(pttl) if holder else None,
        )
        return job

    def history(self, app_id: str, *, partition_key: str | None = None) -> list[dict[str, Any]]:
        """Every retained step, oldest first: sequence, action, status, time, state."""
        from burr_dist import codec

        k = self.keys(partition_of(partition_key), app_id)
        raw = self._with_retry(self.client.hgetall, k.snaps)
        if not raw:
            self.job(app_id, partition_key=partition_key)  # AppNotFound when the app is unknown
        out = []
        for seq, blob in sorted(raw.items(), key=lambda kv: int(kv[0])):
            snap = codec.decode_snapshot(blob, key=f"{k.snaps}#{_s(seq)}", partition_key=partition_key)
            out.append({"sequence_id": snap["sequence_id"], "action": snap["position"], "status": snap["status"],
                        "created_at": snap["created_at"], "state": snap["state"].get_all()})  # fmt: skip
        return out

    def scan_jobs(self, *, partition_key: str | None = None) -> list[dict[str, Any]]:
        """Every job record (SCAN under our prefix only), optionally of one partition."""
        from burr_dist.keys import encode_id

        pattern = (
            self.schema.job_pattern()
            if partition_key is None
            else f"{self.config.prefix}:{{{encode_id(partition_key)}}}:*:job"
        )
        keys = list(self._with_retry(lambda: list(self.client.scan_iter(match=pattern, count=1000))))
        pipe: Any = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(key)
        return [parse_job(raw) for raw in self._with_retry(pipe.execute) if raw]

    def ls(self, *, partition_key: str | None = None, status: str | None = None) -> list[dict[str, Any]]:
        """Job records, oldest first, of one partition and/or one status (both keyword-only)."""
        if status is not None and status not in STATUSES:
            raise ConfigurationError(f"unknown status {status!r}; one of {STATUSES}", status=status)
        jobs = [
            j
            for j in self.scan_jobs(partition_key=partition_key)
            if status is None or j.get("status") == status
        ]
        return sorted(jobs, key=lambda j: j.get("created_at", 0))

    def workers(self) -> list[dict[str, Any]]:
        ids = self._with_retry(self.client.zrange, self.schema.workers(), 0, -1)
        pipe: Any = self.client.pipeline(transaction=False)
        for wid in ids:
            pipe.hgetall(self.schema.worker(_s(wid)))
        return [
            {_s(a): _s(b) for a, b in raw.items()} | {"id": _s(w)}
            for w, raw in zip(ids, self._with_retry(pipe.execute), strict=True)
            if raw
        ]

    def queues(self) -> list[str]:
        from burr_dist.keys import decode_id

        found = self._with_retry(
            lambda: list(self.client.scan_iter(match=f"{self.config.prefix}:q{{*}}:*", count=1000))
        )
        names = {decode_id(_s(k)[len(self.config.prefix) + 3 :].split("}")[0]) for k in found}
        return sorted(names | {DEFAULT_QUEUE})

    def overview(self) -> dict[str, Any]:
        """Counts by status, queue depth, oldest queued age, live workers."""
        counts = dict.fromkeys(STATUSES, 0)
        for job in self.scan_jobs():
            counts[job.get("status", "queued")] = counts.get(job.get("status", "queued"), 0) + 1
        now_ms = int(self._with_retry(self.client.time)[0]) * 1000
        queues = {}
        for name in self.queues():
            q = self.schema.queue(name)
            pipe: Any = self.client.pipeline(transaction=False)
            pipe.zcard(q.ready).zcard(q.active).zrange(q.ready, 0, 0, withscores=True)
            ready, active, oldest = self._with_retry(pipe.execute)
            queues[name] = {"ready": ready, "active": active,
                            "oldest_ready_age_s": round(max(now_ms - oldest[0][1], 0) / 1000, 1) if oldest else None}  # fmt: skip
        return {"apps": counts, "queues": queues, "workers": len(self.workers())}

    def reconcile(self) -> int:
        """Re-add queued records that no queue lists (a client crashed mid-enqueue). Returns count."""
        fixed = 0
        for job in self.scan_jobs():
            if job.get("status") != "queued":
                continue
            q = self.schema.queue(job.get("queue") or DEFAULT_QUEUE)
            member = self.schema.member(job["partition_key"], job["app_id"])
            pipe: Any = self.client.pipeline(transaction=False)
            pipe.zscore(q.ready, member).zscore(q.active, member)
            ready, active = self._with_retry(pipe.execute)
            if ready is None and active is None:
                self._with_retry(self.client.zadd, q.ready, {member: job.get("run_at", 0)}, True)  # nx
                fixed += 1
        return fixed


class AsyncFleetClient(FleetCore, AsyncRedisStore):
    """Async enqueue, resume, cancel and retry; same calls (and argument order) as FleetClient."""

    def __init__(self, client: aioredis.Redis, config: StoreConfig | None = None) -> None:
        AsyncRedisStore.__init__(self, client, config)

    async def enqueue(
        self, name: str, app_id: str | None = None, *, partition_key: str | None = None, **kw: Any
    ) -> Enqueued:
        req = EnqueueRequest(name, app_id, partition_key=partition_key, **kw)
        call, app, pk = self.enqueue_call(req)
        res = self.read_enqueue(await self.run(call), app, pk)
        if res.status == "queued" and res.run_at_ms is not None:
            member, run_at = self.schema.member(pk, app), res.run_at_ms
            await self._with_retry(
                lambda: self.client.zadd(self.schema.queue(req.queue).ready, {member: run_at}, nx=True)
            )
        return res

    async def _control(self, op: str, app_id: str, partition_key: str | None, inputs: bytes = b"") -> str:
        reply = await self.run(self.control_call(op, partition_key, app_id, inputs))
        code, status, run_at, queue = self.read_control(reply, op, partition_key, app_id)
        member = self.schema.member(partition_key, app_id)
        if status == "queued" and run_at is not None:
            await self._with_retry(
                lambda: self.client.zadd(self.schema.queue(queue).ready, {member: run_at}, nx=True)
            )
        elif status == "cancelled":
            await self._with_retry(self.client.zrem, self.schema.queue(queue).ready, member)
        return "cancel_requested" if code == 2 else status

    async def resume(
        self, app_id: str, inputs: dict[str, Any] | None = None, *, partition_key: str | None = None
    ) -> str:
        return await self._control("resume", app_id, partition_key, json_object(inputs or {}, "inputs"))

    async def cancel(self, app_id: str, *, partition_key: str | None = None) -> str:
        return await self._control("cancel", app_id, partition_key)

    async def retry(self, app_id: str, *, partition_key: str | None = None) -> str:
        return await self._control("retry", app_id, partition_key)
