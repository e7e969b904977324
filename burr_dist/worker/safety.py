"""Checks that the Redis a fleet runs on can keep burr_dist's promises.

* :func:`check_eviction_policy`: an evicting ``maxmemory-policy`` can drop a live lease (two
  workers then run one app) or a snapshot; workers refuse to start on one unless allowed.
* :class:`EpochWatch`: every heartbeat bumps an epoch hash on every primary (epoch.lua). A worker
  that sees another epoch id (Redis came back empty) or a counter at or below the highest it saw
  (an old backup, a lagging replica) knows Redis lost acknowledged writes.
"""

from __future__ import annotations

import logging

import redis
import redis.asyncio as aioredis

from burr_dist.errors import ConfigurationError, StoreRewound

log = logging.getLogger(__name__)


async def check_eviction_policy(primaries: list[aioredis.Redis], *, allow: bool) -> None:
    """Check every primary: raise ConfigurationError on an evicting policy (a warning when
    ``allow``); warn when a server hides CONFIG, as some managed services do."""
    for client in primaries:
        await _check_one(client, allow)


async def _check_one(client: aioredis.Redis, allow: bool) -> None:
    where = _name(client)
    try:
        policy = (await client.config_get("maxmemory-policy")).get("maxmemory-policy")
    except redis.ResponseError as e:
        log.warning(
            "cannot read maxmemory-policy on %s (%s): make sure it is noeviction; eviction can drop "
            "a live lease and let two workers run one app", where, e,
        )  # fmt: skip
        return
    if policy in (None, "noeviction"):
        return
    message = (
        f"Redis maxmemory-policy is {policy!r} on {where}: under memory pressure Redis would evict keys, "
        "including live leases and snapshots, letting two workers run one app or losing state. "
        "Set maxmemory-policy noeviction (redis-cli CONFIG SET maxmemory-policy noeviction)"
    )
    if not allow:
        raise ConfigurationError(message + ", or start the worker with --allow-evicting-redis", policy=policy)
    log.warning("%s; starting anyway (allow_evicting_redis)", message)


async def check_replicas(primaries: list[aioredis.Redis], wanted: int | str) -> list[str]:
    """Warn for every primary with fewer connected replicas than ``wait_replicas`` (``"all"``:
    none): each write there would wait ``wait_timeout_ms`` and fail as not durable. Returns the
    warnings."""
    if wanted == "all":
        wanted = 1
    if not isinstance(wanted, int) or wanted <= 0:
        return []
    warnings = []
    for client in primaries:
        try:
            # ROLE, not INFO: the ACL rules grant it (INFO would show a restricted user far more).
            role = await client.execute_command("ROLE")  # type: ignore[no-untyped-call,unused-ignore]
        except redis.ResponseError as e:
            warnings.append(f"cannot read ROLE on {_name(client)} ({e})")
            continue
        have = len(role[2]) if len(role) > 2 and isinstance(role[2], list) else 0
        if have < wanted:
            warnings.append(
                f"{_name(client)} has {have} connected replica(s) but wait_replicas={wanted}: writes there "
                "will fail as not durable until enough replicas are connected"
            )
    for w in warnings:
        log.warning("%s", w)
    return warnings


def _name(client: aioredis.Redis) -> str:
    pool = client.connection_pool
    service = getattr(pool, "service_name", None)
    if service is not None:  # a Sentinel-managed pool: the master's address may change
        return f"the master of Sentinel service {service!r}"
    kw = pool.connection_kwargs
    return str(kw.get("path") or f"{kw.get('host', '?')}:{kw.get('port', '?')}")


class EpochWatch:
    """The store epoch one worker has seen; :meth:`observe` each heartbeat's reply."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.id: str | None = None
        self.n = 0

    def observe(self, epoch_id: str, n: int) -> StoreRewound | None:
        """None while the store only moves forward; else the error to stop with."""
        if self.id is not None and epoch_id != self.id:
            problem = f"the store's epoch id ({self.key}) changed from {self.id} to {epoch_id}"
        elif n <= self.n:
            problem = f"the store's epoch counter ({self.key}) went back from {self.n} to {n}"
        else:
            self.id, self.n = epoch_id, n
            return None
        return StoreRewound(
            f"{problem}: Redis lost data (restarted without persistence, restored an old backup, or "
            "failed over to a lagging replica). Committing now could run apps again from older state; "
            "check Redis persistence (appendonly yes) and restart the workers once the data is right",
            key=self.key, seen=self.n, actual=n,
        )  # fmt: skip
