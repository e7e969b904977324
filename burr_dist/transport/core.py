"""How burr_dist's own commands reach Redis: routed by hash slot, pipelined per node, confirmed.

A batch of commands is split by the node that owns each command's routing key; each node's part
goes out on one connection as one pipeline. When writes must be confirmed (``wait_replicas`` >
0), the pipeline ends with ``INCR <prefix>:{tag}:sync`` and ``WAIT n timeout`` **on the same
connection**: WAIT only covers the writes of the connection it is sent on (redis-py would route a
bare WAIT to any node: a false confirmation). The INCR is a write in the same slot, so WAIT's
offset covers it and therefore everything the batch read or wrote, including state another
client wrote earlier that a script only read (an acquire that returns a head, a commit retry
that finds its own write). A WAIT that counts fewer replicas raises :class:`NotDurable`.

Errors: NOSCRIPT (a restarted or failed-over node) loads the script and re-sends just the
commands that hit it. ASK (the slot is migrating and the keys already left) re-sends the command
at once to the node named, after ``ASKING``; the write WAIT confirms there is a fresh key that
expires (``SET <prefix>:{tag}:sync:<random> PX``), not the slot's sync key: creating that one on
the target while the source still holds its own would make the migration's next MIGRATE fail
with BUSYKEY.
MOVED/TRYAGAIN/CLUSTERDOWN, READONLY, NOREPLICAS, LOADING and lost connections are transient:
the topology is refreshed and the unresolved commands are sent again, within the
:class:`~burr_dist.transport.connect.RetryPolicy`. Every command burr_dist sends through here
is safe to send twice (scripts recognise their own earlier effect; see each script's header).

The logic is sans-IO (:class:`BatchCore`, here); :class:`~burr_dist.transport.sync.Transport` and
:class:`~burr_dist.transport.aio.AsyncTransport` only move bytes.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import redis
from redis.crc import key_slot

from burr_dist.errors import NotDurable, RedisUnavailable
from burr_dist.keys import sync_key
from burr_dist.scripts import LuaScript
from burr_dist.transport.connect import RetryPolicy, is_transient

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Cmd:
    """One command. ``key`` routes it (its hash slot picks the node); ``script`` is set for an
    EVALSHA so that NOSCRIPT can be answered by loading it."""

    key: str
    args: tuple[Any, ...]
    script: LuaScript | None = None

    @property
    def name(self) -> str:
        return self.script.name if self.script is not None else str(self.args[0])


def hash_tag(key: str) -> str:
    """What Redis Cluster hashes: the text inside the first ``{...}`` when non-empty."""
    start = key.find("{")
    if start >= 0:
        end = key.find("}", start + 1)
        if end > start + 1:
            return key[start + 1 : end]
    return key


@dataclass(frozen=True)
class Durability:
    """How writes are confirmed: by ``replicas`` replicas, or by ``"all"`` of those the node has.

    With ``"all"`` the WAIT is followed by ROLE in the same pipeline: a write counts as confirmed
    only when WAIT's count reaches the most replicas ROLE has listed on that node in this process
    (``seen``, at least one). It never goes down: a replica promoted away or cut off leaves the
    count as it was, so writes fail as not durable rather than being confirmed by fewer (after a
    replica is removed for good, restart the workers). When ROLE shows more than WAIT asked for,
    the part is sent again (each command is idempotent) with the new count."""

    replicas: int | Literal["all"] = 0
    timeout_ms: int = 1000
    prefix: str = "burr"
    seen: dict[str, int] = field(default_factory=dict, compare=False, repr=False)  # node -> ROLE's count

    @property
    def active(self) -> bool:
        return self.replicas == "all" or self.replicas > 0

    def wanted(self, node: str) -> int:
        return max(1, self.seen.get(node, 1)) if self.replicas == "all" else int(self.replicas)

    def tail(self, cmds: Sequence[Cmd], asking: bool = False, node: str = "") -> list[tuple[Any, ...]]:
        """The commands that confirm a node's part of a batch (none when not asked to)."""
        if not self.active or not cmds:
            return []
        sync = sync_key(self.prefix, hash_tag(cmds[0].key))
        wait: list[tuple[Any, ...]] = [("WAIT", self.wanted(node), self.timeout_ms)]
        if self.replicas == "all":
            wait.append(("ROLE",))
        if asking:  # see the module's docstring
            return [("ASKING",), ("SET", f"{sync}:{os.urandom(8).hex()}", "1", "PX", 10_000), *wait]
        return [("INCR", sync), *wait]


# How many times in a row one batch follows ASK redirections without a backoff.
ASK_HOPS = 5


class BatchCore:
    """Sans-IO state of one batch: which commands are resolved, what to send next."""

    def __init__(self, cmds: Sequence[Cmd], durability: Durability, durable: bool) -> None:
        self.cmds = list(cmds)
        self.durability = durability if durable else Durability(0)
        self.replies: list[Any] = [None] * len(cmds)
        self.pending = set(range(len(cmds)))
        self.error: BaseException | None = None  # the last transient error, for the final message
        self.asked: dict[int, tuple[str, int]] = {}  # command -> the node an ASK sent it to
        self.only_asked = False  # this round's only setbacks were ASKs: re-send without a backoff

    def packed(self, idx: Sequence[int], asking: bool = False, node: str = "") -> list[tuple[Any, ...]]:
        part = [self.cmds[i] for i in idx]
        args = [c.args for c in part]
        if asking:  # ASKING covers the next command only
            args = [a for cmd in args for a in (("ASKING",), cmd)]
        return args + self.durability.tail(part, asking, node)

    @staticmethod
    def unpack(idx: Sequence[int], replies: Sequence[Any], asking: bool) -> Sequence[Any]:
        """The replies of ``packed(idx, asking)`` without those to ASKING."""
        if not asking:
            return replies
        n = 2 * len(idx)
        return [*replies[1:n:2], *replies[n:]]

    def take(self, idx: Sequence[int], replies: Sequence[Any], node: str) -> list[LuaScript]:
        """Record a node's replies. Returns scripts to load before re-sending (NOSCRIPT)."""
        n = len(idx)
        missing: dict[str, LuaScript] = {}
        resolved = False
        refused = False  # a command got a transient error reply (NOREPLICAS, READONLY, TRYAGAIN...)
        for i, reply in zip(idx, replies[:n], strict=True):
            if isinstance(reply, redis.exceptions.NoScriptError) and self.cmds[i].script is not None:
                script = self.cmds[i].script
                assert script is not None
                missing[script.sha] = script
            elif isinstance(reply, redis.exceptions.AskError):
                self.asked[i] = (reply.host, reply.port)
                self.error = reply
            elif isinstance(reply, BaseException) and is_transient(reply):
                COUNTS.count(COUNTS.retries, reply)  # one reply of the batch: sent again
                if isinstance(reply, redis.exceptions.MovedError):
                    self.asked.pop(i, None)  # the migration is over: follow the slot map
                self.error = reply
                self.only_asked = False
                refused = True
            elif isinstance(reply, BaseException):
                raise reply
            else:
                self.replies[i] = reply
                self.pending.discard(i)
                resolved = True
        tail = replies[n:]
        if tail and not missing and resolved:
            self._confirm(idx, tail, node, refused)
        return list(missing.values())

    def _confirm(self, idx: Sequence[int], tail: Sequence[Any], node: str, refused: bool) -> None:
        """Read the replies that confirm a node's part (INCR or SET, WAIT, and ROLE with "all")."""
        d = self.durability
        role = tail[-1] if d.replicas == "all" else None
        wait = tail[-2] if role is not None else tail[-1]
        failed = next((r for r in tail if isinstance(r, BaseException)), None)
        if failed is not None:
            # The INCR or the WAIT was refused (MOVED, a node that became a replica...): the
            # batch is unconfirmed, even where WAIT counted replicas for earlier writes.
            if not is_transient(failed):
                raise failed
            COUNTS.count(COUNTS.retries, failed)
            self.error = failed
            self.pending.update(idx)  # unconfirmed: send again (each command is idempotent)
        elif refused:
            # The node refused writes for now (min-replicas-to-write: NOREPLICAS, a demoted
            # master: READONLY): WAIT's count says nothing about a write that did not run.
            # Transient like the refusal itself: the whole part is sent again.
            self.pending.update(idx)
        else:
            self._check_count(idx, int(wait), node, role)

    def _check_count(self, idx: Sequence[int], acked: int, node: str, role: Any) -> None:
        d = self.durability
        wanted = d.wanted(node)
        if role is not None:  # "all": the most replicas ROLE has listed on this node (at least one)
            online = len(role[2]) if len(role) > 2 and isinstance(role[2], list) else 0
            # Never fewer than seen before: a replica that leaves (promoted by a failover, cut
            # off) must not lower the count, or the replicas still following a demoted master
            # would confirm writes the failover then throws away.
            most = d.seen[node] = max(d.seen.get(node, 0), online)
            if max(1, most) > wanted:  # a replica joined since: WAIT asked for too few
                self.error = NotDurable(f"{node} has {online} replicas now, WAIT asked for {wanted}")
                self.pending.update(idx)
                return
            wanted = max(1, most)
        if acked < wanted:
            names = sorted({self.cmds[i].name for i in idx})
            raise NotDurable(
                f"WAIT on {node or 'the master'} confirmed {acked} of {wanted} replicas "
                f"within {d.timeout_ms} ms for {', '.join(names)}: "
                "the writes may be lost if this master fails now",
                node=node, acked=acked, wanted=wanted, commands=names,
            )  # fmt: skip


def evalsha(script: LuaScript, keys: Sequence[str], args: Sequence[Any]) -> Cmd:
    return Cmd(keys[0], ("EVALSHA", script.sha, len(keys), *keys, *args), script)


class _Retry:
    """Full-jitter backoff within a RetryPolicy (attempts and a deadline)."""

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy
        self.attempt = 0
        self.give_up = time.monotonic() + policy.deadline

    def next_wait(self) -> float | None:
        self.attempt += 1
        if self.attempt >= self.policy.attempts or time.monotonic() >= self.give_up:
            return None
        return random.uniform(0, min(self.policy.maximum, self.policy.initial * 2**self.attempt))


class RedisCounts:
    """Process-wide counts of the transports' transient failures (each followed by a retry) and
    of the errors they raised, by exception type: plain integers under a lock, cheap and
    dependency-free, read at scrape time by :mod:`burr_dist.observability.metrics`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.retries: dict[str, int] = {}
        self.errors: dict[str, int] = {}

    def count(self, table: dict[str, int], error: BaseException | str) -> None:
        name = error if isinstance(error, str) else type(error).__name__
        with self._lock:
            table[name] = table.get(name, 0) + 1

    def snapshot(self) -> tuple[dict[str, int], dict[str, int]]:
        with self._lock:
            return dict(self.retries), dict(self.errors)


COUNTS = RedisCounts()


def _count_error(error: BaseException) -> None:
    """A Redis error reply or client error (not a cancellation, not one of ours)."""
    if isinstance(error, redis.RedisError):
        COUNTS.count(COUNTS.errors, error)


# Transient replies that mean "not now" from the right node: the slot map did not change, so the
# transport resends without asking the cluster again (a refresh costs round trips, and redis-py
# may ask an unresponsive node first and wait socket_timeout for it).
_SAME_TOPOLOGY = ("NOREPLICAS", "TRYAGAIN", "LOADING", "MASTERDOWN")


def topology_may_have_changed(error: BaseException | None) -> bool:
    """False for errors after which the same node will serve the retry."""
    if isinstance(error, (redis.exceptions.TryAgainError, redis.exceptions.BusyLoadingError)):
        return False
    return not (isinstance(error, redis.ResponseError) and str(error).startswith(_SAME_TOPOLOGY))


def _unavailable(batch: BatchCore, error: BaseException | None) -> RedisUnavailable:
    names = sorted({batch.cmds[i].name for i in batch.pending})
    return RedisUnavailable(f"Redis unreachable running {', '.join(names)}: {error}", commands=names)


def slot_of(key: str) -> int:
    return int(key_slot(key.encode()))
