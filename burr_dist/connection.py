"""Redis clients and the bounded, jittered retry policy shared by sync and async code."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.retry import Retry

from burr_dist.errors import ConfigurationError

DEFAULT_URL = "redis://127.0.0.1:6379/0"
# What a retry may follow: the command may or may not have run on the server.
TRANSIENT = (redis.ConnectionError, redis.TimeoutError, ConnectionError, TimeoutError, OSError)


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded exponential backoff with jitter for connection errors."""

    attempts: int = 6
    initial: float = 0.05
    maximum: float = 1.0
    deadline: float = 10.0


def redact(url: str) -> str:
    """The URL with any password replaced, for messages and logs."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def resolve_url(url: str | None) -> str:
    return url or os.environ.get("REDIS_URL") or DEFAULT_URL


def _client_kwargs(socket_timeout: float) -> dict[str, Any]:
    # Retries are ours (tenacity, with commit read-back), so the client itself retries nothing.
    return {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": min(socket_timeout, 2.0),
        "retry": Retry(NoBackoff(), 0),
        "health_check_interval": 30,
    }


def connect(url: str | None = None, *, socket_timeout: float = 5.0) -> redis.Redis:
    target = resolve_url(url)
    try:
        return redis.Redis.from_url(target, **_client_kwargs(socket_timeout))
    except ValueError as e:
        raise ConfigurationError(f"invalid Redis URL {redact(target)!r}: {e}", url=redact(target)) from e


def aconnect(url: str | None = None, *, socket_timeout: float = 5.0) -> aioredis.Redis:
    target = resolve_url(url)
    try:
        return aioredis.Redis.from_url(target, **_client_kwargs(socket_timeout))
    except ValueError as e:
        raise ConfigurationError(f"invalid Redis URL {redact(target)!r}: {e}", url=redact(target)) from e
