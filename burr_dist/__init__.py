"""burr_dist: run Apache Burr applications on a fleet of workers coordinated through Redis."""

from burr_dist.errors import (
    BurrDistError,
    ConfigurationError,
    CorruptSnapshot,
    LeaseError,
    LeaseLost,
    LeaseNotHeld,
    RedisUnavailable,
    SequenceConflict,
    SerializationError,
    SnapshotNotFound,
    StoreError,
)
from burr_dist.keys import DEFAULT_PARTITION, KeySchema
from burr_dist.lease import AsyncLease, Lease
from burr_dist.persister import AsyncRedisPersister, RedisPersister
from burr_dist.queue import AsyncFleetClient, Enqueued, EnqueueRequest, FleetClient
from burr_dist.registry import AppContext, FleetEvent, Registry, RetryPolicy
from burr_dist.runner import Outcome, arun_app, run_app
from burr_dist.store import AsyncRedisStore, RedisStore, StoreConfig

__all__ = [
    "DEFAULT_PARTITION",
    "AppContext",
    "AsyncFleetClient",
    "AsyncLease",
    "AsyncRedisPersister",
    "AsyncRedisStore",
    "BurrDistError",
    "ConfigurationError",
    "CorruptSnapshot",
    "EnqueueRequest",
    "Enqueued",
    "FleetClient",
    "FleetEvent",
    "KeySchema",
    "Lease",
    "LeaseError",
    "LeaseLost",
    "LeaseNotHeld",
    "Outcome",
    "RedisPersister",
    "RedisStore",
    "RedisUnavailable",
    "Registry",
    "RetryPolicy",
    "SequenceConflict",
    "SerializationError",
    "SnapshotNotFound",
    "StoreConfig",
    "StoreError",
    "arun_app",
    "run_app",
]
