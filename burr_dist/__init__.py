"""burr_dist: run Apache Burr applications on a fleet of workers coordinated through Redis."""

from burr_dist import _moved
from burr_dist.errors import (
    AppNotFound,
    AppNotRunnable,
    BaseMoved,
    BurrDistError,
    ConfigurationError,
    CorruptSnapshot,
    InputsRefused,
    LeaseError,
    LeaseLost,
    LeaseNotHeld,
    NotDurable,
    RedisUnavailable,
    SequenceConflict,
    SerializationError,
    SnapshotNotFound,
    StoreError,
    StoreRewound,
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
from burr_dist.worker.config import WorkerConfig
from burr_dist.worker.process import Worker

_moved.install()

__all__ = [
    "DEFAULT_PARTITION",
    "AppContext",
    "AppNotFound",
    "AppNotRunnable",
    "AsyncFleetClient",
    "AsyncLease",
    "AsyncRedisPersister",
    "AsyncRedisStore",
    "BaseMoved",
    "BurrDistError",
    "ConfigurationError",
    "CorruptSnapshot",
    "EnqueueRequest",
    "Enqueued",
    "FleetClient",
    "FleetEvent",
    "InputsRefused",
    "KeySchema",
    "Lease",
    "LeaseError",
    "LeaseLost",
    "LeaseNotHeld",
    "NotDurable",
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
    "StoreRewound",
    "Worker",
    "WorkerConfig",
    "arun_app",
    "run_app",
]
