"""burr_dist: run Apache Burr applications on a fleet of workers coordinated through Redis."""

from burr_dist import _moved
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
from burr_dist.fleet.client import AsyncFleetClient, FleetClient
from burr_dist.fleet.core import Enqueued, EnqueueRequest
from burr_dist.fleet.registry import AppContext, FleetEvent, Registry, RetryPolicy
from burr_dist.keys import DEFAULT_PARTITION, KeySchema
from burr_dist.store.clients import AsyncRedisStore, RedisStore
from burr_dist.store.core import StoreConfig
from burr_dist.store.lease import AsyncLease, Lease
from burr_dist.store.persister import AsyncRedisPersister, RedisPersister
from burr_dist.store.standalone import Outcome, arun_app, run_app

_moved.install()

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
