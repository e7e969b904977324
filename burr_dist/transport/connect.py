"""Redis clients for the three topologies, and what counts as a transient error.

:func:`connect` / :func:`aconnect` take any URL of :mod:`burr_dist.transport.urls` and return redis-py's
client for it: ``Redis`` (one server, or the master a Sentinel names) or ``RedisCluster``.
burr_dist's own per-step path does not go through the client's command wrappers; it uses
:mod:`burr_dist.transport.core`, which routes by hash slot and confirms writes with WAIT.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio as aioredis
import redis.asyncio.cluster as aiocluster
import redis.asyncio.sentinel as aiosentinel
import redis.cluster
import redis.sentinel
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry

from burr_dist.errors import ConfigurationError, RedisUnavailable
from burr_dist.transport.urls import RedisTarget, parse_url, redact

__all__ = ["DEFAULT_URL", "TRANSIENT", "RetryPolicy", "aconnect", "connect", "is_transient", "redact"]

DEFAULT_URL = "redis://127.0.0.1:6379/0"
# What a retry may follow: the command may or may not have run on the server, or the topology
# is changing under us (a failover, a slot migration) and the command did not run.
TRANSIENT: tuple[type[BaseException], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
    ConnectionError,
    TimeoutError,
    OSError,
    redis.exceptions.ReadOnlyError,  # we reached a replica: the master moved
    redis.exceptions.TryAgainError,  # multi-key op during slot migration
    redis.exceptions.ClusterDownError,
    redis.exceptions.MovedError,
    redis.exceptions.AskError,
    redis.exceptions.BusyLoadingError,
    redis.exceptions.SlotNotCoveredError,  # a failover in progress: the slot map is being rebuilt
)
# Error replies without their own class in redis-py that mean "not now", never "never".
_TRANSIENT_REPLIES = (
    "NOREPLICAS", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN", "LOADING", "READONLY",
    "WAIT cannot be used with replica",  # WAIT reached a node that is a replica now: the master moved
)  # fmt: skip


def is_transient(exc: BaseException) -> bool:
    """True for errors after which the same call may be sent again."""
    if isinstance(exc, TRANSIENT):
        return True
    return isinstance(exc, redis.ResponseError) and str(exc).startswith(_TRANSIENT_REPLIES)


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded exponential backoff with jitter for transient errors."""

    attempts: int = 6
    initial: float = 0.05
    maximum: float = 1.0
    deadline: float = 10.0


def resolve_url(url: str | None) -> str:
    return url or os.environ.get("REDIS_URL") or DEFAULT_URL


def resolve_target(url: str | RedisTarget | None) -> RedisTarget:
    return url if isinstance(url, RedisTarget) else parse_url(resolve_url(url))


def _base_kwargs(target: RedisTarget, socket_timeout: float) -> dict[str, Any]:
    timeout = float(target.options.get("socket_timeout", socket_timeout))
    # Retries are ours (tenacity, with commit read-back), so the client itself retries nothing.
    return {
        "socket_timeout": timeout,
        "socket_connect_timeout": min(timeout, 2.0),
        "retry": Retry(NoBackoff(), 0),
        "health_check_interval": 30,
        **target.connection_kwargs(),
    }


def _sentinel_kwargs(target: RedisTarget, kw: dict[str, Any]) -> dict[str, Any]:
    # Sentinels speak TLS when the data nodes do; they have their own credentials, if any.
    skw = {k: v for k, v in kw.items() if k not in ("username", "password", "retry")}
    if "sentinel_username" in target.options:
        skw["username"] = target.options["sentinel_username"]
    if "sentinel_password" in target.options:
        skw["password"] = target.options["sentinel_password"]
    return skw


def connect(url: str | RedisTarget | None = None, *, socket_timeout: float = 5.0) -> Any:
    """A redis-py client for ``url`` (``REDIS_URL`` or the local default when None)."""
    target = resolve_target(url)
    kw = _base_kwargs(target, socket_timeout)
    try:
        if target.topology == "cluster":
            nodes = [redis.cluster.ClusterNode(h, p) for h, p in target.hosts]  # type: ignore[no-untyped-call,unused-ignore]
            kw.pop("health_check_interval")
            return redis.RedisCluster(startup_nodes=nodes, **kw)
        if target.topology == "sentinel":
            assert target.service is not None
            sentinel = redis.sentinel.Sentinel(  # type: ignore[no-untyped-call,unused-ignore]
                list(target.hosts), sentinel_kwargs=_sentinel_kwargs(target, kw), **kw
            )
            return sentinel.master_for(target.service, db=target.db)  # type: ignore[no-untyped-call,unused-ignore]
        if target.path is not None:
            return redis.Redis(unix_socket_path=target.path, db=target.db, **kw)
        (host, port) = target.hosts[0]
        return redis.Redis(host=host, port=port, db=target.db, **kw)
    except (redis.ConnectionError, redis.TimeoutError, redis.exceptions.RedisClusterException) as e:
        raise RedisUnavailable(f"cannot reach Redis at {target.redacted}: {e}", url=target.redacted) from e
    except redis.RedisError as e:
        raise ConfigurationError(f"cannot connect to {target.redacted}: {e}", url=target.redacted) from e


def aconnect(url: str | RedisTarget | None = None, *, socket_timeout: float = 5.0) -> Any:
    """The asyncio twin of :func:`connect`."""
    target = resolve_target(url)
    kw = _base_kwargs(target, socket_timeout)
    # The asyncio client's own Retry class: redis-py 8 converts a sync one, with a warning on stderr.
    kw["retry"] = AsyncRetry(NoBackoff(), 0)
    try:
        if target.topology == "cluster":
            nodes = [aiocluster.ClusterNode(h, p) for h, p in target.hosts]
            kw.pop("health_check_interval")
            kw.pop("retry")
            return aiocluster.RedisCluster(startup_nodes=nodes, **kw)
        if target.topology == "sentinel":
            assert target.service is not None
            sentinel = aiosentinel.Sentinel(  # type: ignore[no-untyped-call,unused-ignore]
                list(target.hosts), sentinel_kwargs=_sentinel_kwargs(target, kw), **kw
            )
            return sentinel.master_for(target.service, db=target.db)
        if target.path is not None:
            return aioredis.Redis(unix_socket_path=target.path, db=target.db, **kw)
        (host, port) = target.hosts[0]
        return aioredis.Redis(host=host, port=port, db=target.db, **kw)
    except redis.RedisError as e:
        raise ConfigurationError(f"cannot connect to {target.redacted}: {e}", url=target.redacted) from e
