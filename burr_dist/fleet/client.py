"""Enqueue apps and operate on them: the client side of the fleet (sync and async).

An app's records (job, counters, partition index) live in its bucket's slot; its queue entry in
a queue shard's slot (keys.py). Cross-slot steps, and how a crash between them recovers:

* enqueue: (1) SADD the queue name to the fleet's queue set, (2) create the job record
  (enqueue.lua, which also counts it), (3) ZADD NX the app to its queue shard's ``ready``. A crash
  after (2) leaves a queued record that no queue lists: enqueueing the same app again performs
  (3) for a record still queued (idempotent), and ``reconcile`` re-adds every queued record
  missing from its queue. A crash after (1) only leaves a queue name with nothing in it.
* resume / retry: (1) control.lua makes the record queued, (2) ZADD NX to ``ready``; same repair.
  A retried control request (lost reply) is recognised by its request id and not applied twice.
* cancel of a queued app: (1) record cancelled, (2) ZREM from ``ready``. A crash after (1) leaves
  a ready entry; the worker that claims it finds the record cancelled and drops it.
Worker-side steps are described in burr_dist/worker/process.py. With ``wait_replicas`` > 0 every step
above is confirmed by WAIT on the node it wrote to before the call returns.
"""

from __future__ import annotations

import functools
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from burr_dist.errors import AppNotFound, ConfigurationError, SnapshotNotFound
from burr_dist.fleet.core import (
    DEFAULT_QUEUE,
    STATUSES,
    Enqueued,
    EnqueueRequest,
    FleetCore,
    _pairs,
    _raw_pairs,
    json_object,
    parse_job,
)
from burr_dist.fleet.streams import COUNT, Follower, StreamEvent, start_id
from burr_dist.keys import partition_of
from burr_dist.store.clients import AsyncRedisStore, RedisStore
from burr_dist.store.core import StoreConfig, _s
from burr_dist.transport.core import Cmd

__all__ = [
    "DEFAULT_QUEUE",
    "STATUSES",
    "AsyncFleetClient",
    "EnqueueRequest",
    "Enqueued",
    "FleetClient",
    "FleetCore",
    "json_object",
    "parse_job",
]


class FleetClient(FleetCore, RedisStore):
    """Enqueue and operate on apps (sync). ``FleetClient.from_url(url, prefix=...)``.

    Argument order: every method that names an app takes the app id first and the partition key
    only by keyword (``show(app_id, partition_key="team-a")``), so the two strings cannot be
    swapped silently. Only the methods of Burr's persister contract inherited from the store
    (``load(partition_key, app_id, sequence_id)``, ``list_app_ids(partition_key)``) keep Burr's
    positional order.
    """

    def __init__(self, client: Any, config: StoreConfig | None = None) -> None:
        RedisStore.__init__(self, client, config)

    def enqueue(
        self, name: str, app_id: str | None = None, *, partition_key: str | None = None, **kw: Any
    ) -> Enqueued:
        return self.enqueue_many([EnqueueRequest(name, app_id, partition_key=partition_key, **kw)])[0]

    def enqueue_many(self, requests: Sequence[EnqueueRequest]) -> list[Enqueued]:
        """Two round trips per node for any number of apps: the records, then the queue entries."""
        calls, ids = self.enqueue_plan(requests)
        if not calls:
            return []
        replies = self.commands(
            [self.queue_name_cmd(q for _, _, q in ids), *(c.cmd() for c in calls)], durable=True
        )[1:]
        results = [self.read_enqueue(r, *i) for r, i in zip(replies, ids, strict=True)]
        followup = self.requeue_calls(results)
        if followup:
            cmds = [c.cmd() for c in followup] + self.bell_cmds((r.queue for r in results), len(followup))
            self.commands(cmds, durable=True)
        return results

    def _control(self, op: str, app_id: str, partition_key: str | None, inputs: bytes = b"") -> str:
        reply = self.run(self.control_call(op, partition_key, app_id, inputs))
        code, status, run_at, queue = self.read_control(reply, op, partition_key, app_id)
        followup = self.control_followup(status, run_at, queue, partition_key, app_id)
        if followup:
            self.commands([c.cmd() for c in followup] + self.bell_cmds([queue], 1), durable=True)
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
        try:
            found = self.load_or_raise(partition_of(partition_key), app_id, at)
        except SnapshotNotFound as e:
            if e.context.get("head") is not None:
                raise  # names the retained range
            raise SnapshotNotFound(
                f"app {app_id!r} has no committed step to fork from", app_id=app_id, sequence_id=at
            ) from None
        return self.enqueue(
            job["name"], new_app_id, partition_key=partition_key, queue=job.get("queue") or DEFAULT_QUEUE,
            fork_from=(partition_of(partition_key), app_id, found["sequence_id"]),
        )  # fmt: skip

    def stream(
        self, app_id: str, *, partition_key: str | None = None, from_start: bool = True,
        timeout: float | None = None,
    ) -> Iterator[StreamEvent]:  # fmt: skip
        """The records of ``app_id``'s streaming actions as they are written: each streamed
        step's ``start``, its ``item``s, its ``end`` (with the step's result). Retained records
        first (unless ``from_start=False``), then live ones; ends once the app parks or
        finishes (or after ``timeout`` seconds). One key: XREAD BLOCK on the node that owns it,
        with the app's status read between reads (record format: fleet/streams.py)."""
        key = self.stream_key(partition_key, app_id)
        status = self.stream_status_cmd(partition_key, app_id)
        first = "0-0" if from_start else start_id(self.commands([self.stream_newest_cmd(key)])[0])
        follower = Follower(first, timeout, time.monotonic())
        while True:
            now = self.read_stream_status(self.commands([status])[0], app_id, partition_key)
            read = functools.partial(
                self.client.xread, {key: follower.last_id}, COUNT, follower.block_ms(time.monotonic())
            )
            events, stop = follower.after(now, self._with_retry(read), time.monotonic())
            yield from events
            if stop:
                return

    def job(self, app_id: str, *, partition_key: str | None = None) -> dict[str, Any]:
        """The job record: AppNotFound when ``app_id`` is not in the partition."""
        k = self.keys(partition_of(partition_key), app_id)
        return self._job(self.commands([Cmd(k.job, ("HGETALL", k.job))])[0], app_id, partition_key)

    @staticmethod
    def _job(raw: Any, app_id: str, partition_key: str | None) -> dict[str, Any]:
        if not raw:
            raise AppNotFound(
                f"no app {app_id!r} in partition {partition_of(partition_key)!r}", app_id=app_id
            )
        return parse_job(_pairs(raw))

    def show(self, app_id: str, *, partition_key: str | None = None) -> dict[str, Any]:
        """The job record plus the stored head and the lease holder."""
        raw, meta, holder, pttl = self.commands(self.show_cmds(partition_key, app_id))
        return _show(self._job(raw, app_id, partition_key), meta, holder, pttl)

    def history(self, app_id: str, *, partition_key: str | None = None) -> list[dict[str, Any]]:
        """Every retained step, oldest first: sequence, action, status, time, state."""
        k = self.keys(partition_of(partition_key), app_id)
        snaps, oldest = self.commands(
            [Cmd(k.snaps, ("HGETALL", k.snaps)), Cmd(k.meta, ("HGET", k.meta, "oldest"))]
        )
        raw = _raw_pairs(snaps)  # bytes: compressed entries are not text
        if not raw:
            self.job(app_id, partition_key=partition_key)  # AppNotFound when the app is unknown
        return _history(raw, k.snaps, oldest)

    def scan_jobs(self, *, partition_key: str | None = None) -> list[dict[str, Any]]:
        """Every job record (SCAN under our prefix only, on every primary), optionally of one
        partition. Costs a pass over the keyspace: for counts use :meth:`overview`."""
        pattern = self.schema.job_pattern(partition_key)
        keys: list[str] = []
        for node in self.transport.primaries():
            keys += [
                _s(k) for k in self._with_retry(lambda n=node: list(n.scan_iter(match=pattern, count=1000)))
            ]
        raws = self.commands([Cmd(k, ("HGETALL", k)) for k in keys]) if keys else []
        return [parse_job(_pairs(raw)) for raw in raws if raw]

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
        key = self.schema.workers()
        ids = [_s(w) for w in self.commands([Cmd(key, ("ZRANGE", key, 0, -1))])[0]]
        raws = (
            self.commands([Cmd(self.schema.worker(w), ("HGETALL", self.schema.worker(w))) for w in ids])
            if ids
            else []
        )
        return [_pairs(raw) | {"id": w} for w, raw in zip(ids, raws, strict=True) if raw]

    def queues(self) -> list[str]:
        key = self.schema.queues()
        names = {_s(n) for n in self.commands([Cmd(key, ("SMEMBERS", key))])[0]}
        return sorted(names | {DEFAULT_QUEUE})

    def server_time_ms(self) -> int:
        key = self.schema.workers()
        sec, usec = self.commands([Cmd(key, ("TIME",))])[0]
        return int(sec) * 1000 + int(usec) // 1000

    def overview(self) -> dict[str, Any]:
        """Counts by status (kept by the scripts: no scan), queue depth and oldest queued age,
        live workers. Costs the same with 10 apps or 10 million."""
        counts = self.read_counts(self.commands(self.counts_cmds()))
        now_ms = self.server_time_ms()
        queues = {name: self.read_queue_stats(self.commands(self.queue_stat_cmds(name)), now_ms)
                  for name in self.queues()}  # fmt: skip
        return {"apps": counts, "queues": queues, "workers": len(self.workers())}

    def reconcile(self) -> int:
        """Re-add queued records that no queue lists (a client crashed mid-enqueue). Returns count."""
        fixed = 0
        for job in self.scan_jobs():
            if job.get("status") != "queued":
                continue
            queue = job.get("queue") or DEFAULT_QUEUE
            member = self.schema.member(job["partition_key"], job["app_id"])
            q = self.schema.queue_for(queue, member)
            listed = self.commands([Cmd(k, ("ZSCORE", k, member)) for k in (q.ready, q.scheduled, q.active)])
            if all(score is None for score in listed):
                call = self.ready_call(queue, job["partition_key"], job["app_id"], job.get("run_at", 0))
                fixed += int(self.commands([call.cmd()], durable=True)[0])
        return fixed


def _show(job: dict[str, Any], meta_raw: Any, holder: Any, pttl: Any) -> dict[str, Any]:
    meta = _pairs(meta_raw)
    job.update(
        sequence_id=int(meta["head"]) if "head" in meta else None,
        position=meta.get("pos"),
        step_status=meta.get("status"),
        lease_holder=_s(holder) if holder else None,
        lease_ttl_ms=int(pttl) if holder else None,
    )
    return job


def _history(raw: dict[Any, Any], snaps_key: str, oldest: Any) -> list[dict[str, Any]]:
    from datetime import datetime, timezone

    from burr.core.state import State

    from burr_dist.store import codec

    low = int(oldest) if oldest is not None else 0
    out = []
    for seq, doc in sorted(codec.stored_steps(raw, key=snaps_key).items()):
        if seq < low:
            continue  # kept only as the base of a retained step's delta chain
        state = State.deserialize(doc["state"]).get_all()
        at = datetime.fromtimestamp(int(doc["at"]) / 1000, tz=timezone.utc).isoformat()
        out.append({"sequence_id": seq, "action": doc["pos"], "status": doc["status"],
                    "created_at": at, "state": state})  # fmt: skip
    return out


class AsyncFleetClient(FleetCore, AsyncRedisStore):
    """Async enqueue, resume, cancel and retry; same calls (and argument order) as FleetClient."""

    def __init__(self, client: Any, config: StoreConfig | None = None) -> None:
        AsyncRedisStore.__init__(self, client, config)

    async def enqueue(
        self, name: str, app_id: str | None = None, *, partition_key: str | None = None, **kw: Any
    ) -> Enqueued:
        return (await self.enqueue_many([EnqueueRequest(name, app_id, partition_key=partition_key, **kw)]))[0]

    async def enqueue_many(self, requests: Sequence[EnqueueRequest]) -> list[Enqueued]:
        calls, ids = self.enqueue_plan(requests)
        if not calls:
            return []
        replies = (
            await self.commands(
                [self.queue_name_cmd(q for _, _, q in ids), *(c.cmd() for c in calls)], durable=True
            )
        )[1:]
        results = [self.read_enqueue(r, *i) for r, i in zip(replies, ids, strict=True)]
        followup = self.requeue_calls(results)
        if followup:
            cmds = [c.cmd() for c in followup] + self.bell_cmds((r.queue for r in results), len(followup))
            await self.commands(cmds, durable=True)
        return results

    async def _control(self, op: str, app_id: str, partition_key: str | None, inputs: bytes = b"") -> str:
        reply = await self.run(self.control_call(op, partition_key, app_id, inputs))
        code, status, run_at, queue = self.read_control(reply, op, partition_key, app_id)
        followup = self.control_followup(status, run_at, queue, partition_key, app_id)
        if followup:
            await self.commands([c.cmd() for c in followup] + self.bell_cmds([queue], 1), durable=True)
        return "cancel_requested" if code == 2 else status

    async def resume(
        self, app_id: str, inputs: dict[str, Any] | None = None, *, partition_key: str | None = None
    ) -> str:
        return await self._control("resume", app_id, partition_key, json_object(inputs or {}, "inputs"))

    async def cancel(self, app_id: str, *, partition_key: str | None = None) -> str:
        return await self._control("cancel", app_id, partition_key)

    async def retry(self, app_id: str, *, partition_key: str | None = None) -> str:
        return await self._control("retry", app_id, partition_key)

    async def server_time_ms(self) -> int:
        key = self.schema.workers()
        sec, usec = (await self.commands([Cmd(key, ("TIME",))]))[0]
        return int(sec) * 1000 + int(usec) // 1000

    async def stream(
        self, app_id: str, *, partition_key: str | None = None, from_start: bool = True,
        timeout: float | None = None,
    ) -> AsyncIterator[StreamEvent]:  # fmt: skip
        """FleetClient.stream, async. The blocking XREAD goes on a connection of its own (the
        client's pool), not through the transport's shared round trips."""
        key = self.stream_key(partition_key, app_id)
        status = self.stream_status_cmd(partition_key, app_id)
        first = "0-0" if from_start else start_id((await self.commands([self.stream_newest_cmd(key)]))[0])
        follower = Follower(first, timeout, time.monotonic())
        while True:
            now = self.read_stream_status((await self.commands([status]))[0], app_id, partition_key)
            read = functools.partial(
                self.client.xread, {key: follower.last_id}, COUNT, follower.block_ms(time.monotonic())
            )
            events, stop = follower.after(now, await self._with_retry(read), time.monotonic())
            for event in events:
                yield event
            if stop:
                return
