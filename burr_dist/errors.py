"""One error tree for burr_dist. Every error carries its context as attributes."""

from __future__ import annotations

from typing import Any


class BurrDistError(Exception):
    """Root of every error burr_dist raises on purpose."""

    def __init__(self, message: str, **context: Any) -> None:
        super().__init__(message)
        self.context = context
        for name, value in context.items():
            setattr(self, name, value)


class ConfigurationError(BurrDistError, ValueError):
    """A setting or argument is invalid (bad prefix, unknown app name, bad id...)."""


class InputsRefused(ConfigurationError):
    """A resume named inputs no action of the parked app declares; nothing was stored.
    ``unknown`` and ``accepted`` list the names."""

    unknown: list[str]
    accepted: list[str]


class RedisUnavailable(BurrDistError, ConnectionError):
    """Redis could not be reached after bounded retries."""


class StoreError(BurrDistError):
    """Base for errors about what is (or is not) stored for an app."""


class SequenceConflict(StoreError):
    """A commit was refused because the stored head is not ``sequence_id - 1``."""

    app_id: str
    partition_key: str | None
    expected: int | None
    actual: int | None


class BaseMoved(StoreError):
    """A delta commit was refused because the stored head is not the step it was computed from
    (another writer committed that sequence). The persisters answer it by sending a full keyframe;
    it reaches callers only of the raw store."""

    def __init__(self, **context: Any) -> None:
        super().__init__(
            f"delta commit of app {context.get('app_id')!r} at sequence {context.get('sequence_id')} "
            "refused: the stored head is not the step it was computed from",
            **context,
        )


class SnapshotNotFound(StoreError, LookupError):
    """A snapshot that was asked for by sequence id is not retained (or the app is unknown)."""


class CorruptSnapshot(StoreError):
    """A stored snapshot cannot be parsed (hand-edited, or written by an incompatible version)."""


class AppNotFound(StoreError, LookupError):
    """No app (fleet record) with this id exists."""


class AppNotRunnable(StoreError):
    """The app's status does not allow what was asked (resume of an app that is not waiting...)."""

    status: str
    run_at_ms: int | None


class StoreRewound(StoreError):
    """The store holds less than this worker knows was committed: Redis lost data."""


class NotDurable(StoreError):
    """Fewer replicas than ``wait_replicas`` confirmed a write within ``wait_timeout_ms``: it may
    be lost if the master fails now. Commands are idempotent, so the same call may be sent again;
    a lease whose write was not confirmed is treated as lost."""

    node: str
    acked: int
    wanted: int


class SerializationError(BurrDistError, ValueError):
    """A state cannot be stored as JSON without loss, or is larger than the configured limit."""


class LeaseError(BurrDistError):
    """Base for lease errors."""


class LeaseNotHeld(LeaseError):
    """The lease is held by someone else, or this object never held it."""

    holder: str
    pttl_ms: int


class LeaseLost(LeaseError):
    """The lease was held but is no longer: expired, taken over, or renewal failed."""
