"""Finding work for one worker: which apps to claim, their leases, and waking up for new ones.

A claim round costs, for any number of apps: claim.lua on the shards with the fairest heads, and
one batch of acquire.lua calls for everything claimed (each acquire also checks the job record and
loads the head). Which shard is fairest comes from a read of every shard's head (one round trip
per node) kept up to date by the claims' replies, read again only when it runs dry or after
``PEEK_EVERY`` seconds. An idle worker
blocks on the queues' bells (``BLPOP``; every enqueue, resume and retry rings them) with the poll
interval as its timeout, so a new app starts without waiting for a poll tick, and delayed apps
(retry backoff, ``delay=``) still start within one poll interval.

Crash points (the queue shard and the app bucket are different slots):

1. claim.lua moved apps from ``ready`` to ``active`` (deadline = now + lease TTL), then the worker
   died: the deadline passes and sweep.lua (any worker) puts them back in ``ready``.
2. acquire.lua took a lease and marked the record running, then the worker died: the lease
   expires on the server's clock and so does the active deadline (extended together with it);
   the sweep requeues the app and the next claim finds the lease free and the record running,
   which is runnable.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from burr_dist.errors import AppNotRunnable, CorruptSnapshot, LeaseNotHeld
from burr_dist.store.core import JOB_FIELDS, _s
from burr_dist.store.lease import AsyncLease
from burr_dist.transport.core import Cmd

if TYPE_CHECKING:
    from burr_dist.fleet.client import AsyncFleetClient

log = logging.getLogger(__name__)

# Seconds a peek's picture of the shards is reused: how long the fair order across shards may lag.
PEEK_EVERY = 0.5


@dataclass
class Claim:
    """One app this worker claimed: its queue entry and, once acquired, its lease."""

    queue: str
    member: str
    deadline: int  # the active entry's deadline this worker last set (claim or touch), server ms
    lease: AsyncLease | None = None
    # The claim was settled and its queue ack sent (or put in the outbox, which goes out ahead of
    # any later claim): the app may be claimed again, by this worker too, while this claim's
    # last hooks still run.
    acked: bool = False
    # The lease was granted but the head cannot be read: the runner records the error on the app
    # and retries it under its RetryPolicy (burr_dist/worker/failures.py), releasing the lease.
    unreadable: CorruptSnapshot | None = None


@dataclass(frozen=True)
class Refused:
    """A claimed app whose lease was not granted: ``run_at_ms`` says when to try again (None:
    drop the queue entry, the app is not runnable)."""

    claim: Claim
    reason: str
    run_at_ms: int | None


class Outbox:
    """The queue side of settled claims (ack.lua, and the expiry of a finished app's keys), sent
    with the worker's next claim round trip instead of one of their own. Only what follows a
    successful settle goes in here (an ack must never follow a refused one: burr_dist/worker/claim_runner.py).
    A claim round follows every settle (the finished claim freed a slot), and a stopping worker
    flushes what is left; if it dies first, the entries expire and are swept, as for a crash."""

    def __init__(self) -> None:
        self.cmds: list[Cmd] = []
        self.claims = 0  # settled claims whose commands are waiting

    def put(self, cmds: list[Cmd]) -> None:
        self.cmds += cmds
        self.claims += 1

    def take(self) -> tuple[list[Cmd], int]:
        out, n = self.cmds, self.claims
        self.cmds, self.claims = [], 0
        return out, n


class Claimer:
    def __init__(
        self, fleet: AsyncFleetClient, worker_id: str, lease_ttl: float, poll_interval: float
    ) -> None:
        self.fleet = fleet
        self.outbox = Outbox()
        self.worker_id = worker_id
        self.lease_ttl = lease_ttl
        self.poll_interval = poll_interval
        self._ring: asyncio.Future[None] | None = None
        self._heads: dict[str, tuple[float, dict[int, float]]] = {}  # queue -> (peeked at, shard -> head)

    @property
    def claim_ms(self) -> int:
        return int(self.lease_ttl * 1000)

    async def claim(self, queue: str, free: int) -> list[Claim]:
        """Claim up to ``free`` apps of ``queue``, always from the shard whose head is fairest.

        Shards are known by the fair time of their head: a peek reads every shard's head (two
        entries per shard), and each claim reports its shard's new head, so a busy worker claims
        again without reading every shard. The picture is refreshed by a new peek once it runs dry
        or is ``PEEK_EVERY`` seconds old (apps queued since, in other shards, wait that long)."""
        known = self._heads.get(queue)
        if known is None or not known[1] or time.monotonic() - known[0] > PEEK_EVERY:
            peek = await self._send(self.fleet.peek_cmds(queue))
            known = self._heads[queue] = (time.monotonic(), self.fleet.read_peek(peek))
        heads = known[1]
        out: list[Claim] = []
        while len(out) < free and heads:
            shard = min(heads, key=heads.__getitem__)
            want = free - len(out)
            (reply,) = await self._send([self.fleet.claim_call(queue, shard, want, self.claim_ms).cmd()])
            deadline, head, members = self.fleet.read_claim(reply)
            out += [Claim(queue, m, deadline) for m in members]
            if head is None:
                del heads[shard]
            else:
                heads[shard] = head
            if not members:
                break  # the picture is stale (another worker was faster): peek next time
        return out

    async def _send(self, cmds: list[Cmd]) -> list[Any]:
        """``cmds``' replies; the outbox goes out in the same round trip (per node)."""
        acks, n = self.outbox.take()
        if not acks:
            return await self.fleet.commands(cmds)
        try:
            replies = await self.fleet.commands([*acks, *cmds], durable=True)
        except Exception as e:
            log.warning("queue ack of %d settled apps failed (the sweep requeues them): %s", n, e)
            raise
        return replies[len(acks) :]

    async def flush(self) -> None:
        """Send what the outbox holds in a round trip of its own: before the worker waits (for
        work, or for a running claim to end), and when it stops."""
        acks, n = self.outbox.take()
        if not acks:
            return
        try:
            await self.fleet.commands(acks, durable=True)
        except Exception as e:  # settled: the entries expire, the sweep requeues them, the claim drops them
            log.warning("queue ack of %d settled apps failed (the sweep requeues them): %s", n, e)

    async def acquire(self, claims: list[Claim]) -> list[Claim | Refused]:
        """Lease every claimed app in one batch (one round trip per node)."""
        leases = []
        for c in claims:
            pk, app_id = self.fleet.schema.parse_member(c.member)
            leases.append(AsyncLease(self.fleet, pk, app_id, self.lease_ttl, worker=self.worker_id))
        sent = time.monotonic()
        replies = await self.fleet.run_many([lease.acquire_call() for lease in leases])
        now_ms: int | None = None
        out: list[Claim | Refused] = []
        for c, lease, reply in zip(claims, leases, replies, strict=True):
            try:
                lease.adopt(reply, sent)
                c.lease = lease
                out.append(c)
            except AppNotRunnable as e:
                # Terminal, waiting, cancelled or missing: the entry is stale. Not due yet: put back.
                out.append(Refused(c, e.status, e.run_at_ms if e.status == "scheduled" else None))
            except LeaseNotHeld as e:
                # Someone still holds it (a slow worker): try again once its lease would have expired.
                if now_ms is None:
                    now_ms = await self.fleet.server_time_ms()
                out.append(Refused(c, "held", now_ms + max(e.pttl_ms, 100)))
            except CorruptSnapshot as e:
                # Unreadable state (hand-edited, or a format this version does not know): it must
                # not sink the other apps of the batch, nor loop; the lease is ours (acquire.lua
                # took it before the head was decoded), so the runner can settle it at once.
                log.error("app %s has an unreadable snapshot: %s", c.member, e,
                          extra={"event": "corrupt_snapshot", "key": e.context.get("key")})  # fmt: skip
                _adopt_unreadable(lease, reply, sent)
                c.lease, c.unreadable = lease, e
                out.append(c)
        return out

    async def wait_for_work(self, queues: tuple[str, ...], stop: asyncio.Event, busy: set[Any]) -> None:
        """Until a bell rings, a running app finishes, ``stop`` is set, or the poll interval passes.
        A BLPOP still waiting when something else woke us stays in flight for the next wait
        (cancelling it would cost a reconnect)."""
        if self._ring is None or self._ring.done():
            bells = [self.fleet.schema.bell(q) for q in queues]
            self._ring = asyncio.ensure_future(self._blpop(bells))
        stopped = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait(
                {self._ring, stopped, *busy},
                timeout=self.poll_interval + 0.5,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            if not stopped.done():
                stopped.cancel()

    async def _blpop(self, bells: list[str]) -> None:
        # Fleet keys share one slot, so one BLPOP covers every queue's bell, on Cluster too.
        try:
            await self.fleet.client.blpop(bells, timeout=self.poll_interval)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # polling still finds the work
            log.debug("bell wait failed: %s", e)
            await asyncio.sleep(self.poll_interval)

    async def close(self) -> None:
        if self._ring is not None and not self._ring.done():
            self._ring.cancel()
            await asyncio.gather(self._ring, return_exceptions=True)


def _adopt_unreadable(lease: AsyncLease, reply: Any, sent_at: float) -> None:
    """The lease (token, fence, job record) of a granted acquire whose head did not decode, so
    that it can be settled. A granted reply is {1, token, fence, head, chain, values}."""
    _, token, fence, _head, _chain, values = reply
    lease.token, lease.fence, lease.head, lease.head_fresh = _s(token), int(fence), None, False
    pairs = zip(JOB_FIELDS, values, strict=True) if values else ()
    lease.job = {f: _s(v) for f, v in pairs if v is not None and v is not False}
    lease.deadline = sent_at + lease.ttl


def new_nonce() -> str:
    return os.urandom(8).hex()
