"""A worker's settings in one object: :class:`WorkerConfig` (the worker's own) holding a
:class:`~burr_dist.store.core.StoreConfig` (the store's: prefix, snapshot format, retention,
size limit, replica confirmation...). ``Worker(registry, config)`` and ``burr-dist worker``
build the same object; ``Worker(registry, url=..., concurrency=...)`` still works.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from burr_dist.errors import ConfigurationError
from burr_dist.fleet.core import DEFAULT_QUEUE
from burr_dist.store.core import StoreConfig
from burr_dist.transport.urls import RedisTarget

# Keyword arguments of Worker that are the store's settings (kept for callers of before the config).
STORE_KEYWORDS = ("prefix", "finished_ttl", "wait_replicas", "wait_timeout_ms")
_URL_OPTIONS = ("wait_replicas", "wait_timeout_ms")


@dataclass(frozen=True)
class WorkerConfig:
    """Settings of one worker process.

    ``url``: Redis (any topology; None: ``REDIS_URL`` or localhost). ``queues``: claimed in this
    order. ``concurrency``: apps run at once; ``threads``: the pool for sync actions (default:
    concurrency). ``lease_ttl``: seconds an unrenewed claim lasts. ``max_steps_per_claim`` /
    ``max_seconds_per_claim``: when an app goes back to its queue. ``inline_ms``: sync actions
    seen faster than this run on the event loop (0: never; burr_dist/worker/inline.py).
    ``track``: commit Burr tracking records with each step. ``store``: the store's settings; the
    URL's ``wait_replicas`` / ``wait_timeout_ms`` query options fill those it leaves at their
    defaults."""

    url: str | None = None
    queues: tuple[str, ...] = (DEFAULT_QUEUE,)
    concurrency: int = 8
    threads: int | None = None
    lease_ttl: float = 10.0
    sweep_interval: float = 1.0
    max_steps_per_claim: int = 100
    max_seconds_per_claim: float = 30.0
    poll_interval: float = 0.1
    worker_id: str | None = None
    allow_evicting_redis: bool = False
    track: bool = True
    inline_ms: float = 2.0
    store: StoreConfig = field(default_factory=StoreConfig)

    def __post_init__(self) -> None:
        if isinstance(self.queues, str):
            raise ConfigurationError(f"queues must be a list of names, got the string {self.queues!r}")
        object.__setattr__(self, "queues", tuple(self.queues))
        if not self.queues:
            raise ConfigurationError("queues must name at least one queue")
        if self.concurrency < 1:
            raise ConfigurationError("concurrency must be >= 1", concurrency=self.concurrency)
        if self.threads is not None and self.threads < 1:
            raise ConfigurationError("threads must be >= 1", threads=self.threads)
        if not self.lease_ttl > 0.3:
            raise ConfigurationError("lease_ttl must be > 0.3 s", lease_ttl=self.lease_ttl)
        for name in ("poll_interval", "sweep_interval", "max_seconds_per_claim"):
            value = getattr(self, name)
            if not value > 0:  # also refuses NaN
                raise ConfigurationError(f"{name} must be > 0 s, got {value!r}", **{name: value})
        if self.max_steps_per_claim < 1:
            raise ConfigurationError(
                "max_steps_per_claim must be >= 1", max_steps_per_claim=self.max_steps_per_claim
            )
        if not self.inline_ms >= 0:
            raise ConfigurationError(
                f"inline_ms must be >= 0, got {self.inline_ms!r}", inline_ms=self.inline_ms
            )

    @classmethod
    def from_keywords(cls, base: WorkerConfig | None = None, **kw: Any) -> WorkerConfig:
        """``base`` (or the defaults) with Worker's keyword arguments applied; the store's
        (``prefix``, ``finished_ttl``, ``wait_replicas``, ``wait_timeout_ms``) go to ``store``."""
        base = base or cls()
        names = {f.name for f in dataclasses.fields(cls)}
        for name in kw:
            if name not in names and name not in STORE_KEYWORDS:
                raise TypeError(f"Worker() got an unexpected keyword argument {name!r}")
        store = {k: kw.pop(k) for k in STORE_KEYWORDS if k in kw and kw[k] is not None}
        if "queues" in kw and not isinstance(kw["queues"], str):
            kw["queues"] = tuple(kw["queues"])
        config = dataclasses.replace(base, **kw)
        return (
            dataclasses.replace(config, store=dataclasses.replace(config.store, **store)) if store else config
        )

    def store_for(self, target: RedisTarget) -> StoreConfig:
        """``store`` with the URL's replication options where it keeps the defaults."""
        defaults = StoreConfig()
        fill: dict[str, Any] = {}
        for name in _URL_OPTIONS:
            value = target.options.get(name)
            if value is not None and getattr(self.store, name) == getattr(defaults, name):
                fill[name] = value
        return dataclasses.replace(self.store, **fill) if fill else self.store
