"""Where the worker reports what a :class:`~burr_dist.fleet.registry.FleetEvent` does not carry: commit
latency, claims per queue, action failures, sequence conflicts. The base class does nothing (a
worker without ``--metrics-port`` pays one no-op call per step and never imports
``prometheus_client``); :class:`burr_dist.observability.metrics.WorkerMetrics` fills it in. And
:class:`Recorder`: the lease operations of chaos runs, for their history checker.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from burr_dist.observability.history import app_key, state_digest

if TYPE_CHECKING:
    from burr_dist.observability.history import HistorySink
    from burr_dist.store.lease import AsyncLease


class Observer:
    """No-op hooks; called from the event loop and from the step pool's threads."""

    def claimed(self, queue: str, n: int) -> None:
        """``n`` apps of ``queue`` were claimed and leased by this worker."""

    def committed(self, name: str, status: str, seconds: float) -> None:
        """One step of an app named ``name`` committed (``status``: completed or failed, as Burr
        saves it), its commit round trip(s) took ``seconds``."""

    def action_failed(self, name: str) -> None:
        """An action raised (the step is saved as failed; a retry or a failure follows)."""

    def claim_ended_by(self, name: str, error: BaseException) -> None:
        """A claim stopped without a settle (lost lease, sequence conflict, Redis trouble)."""


NOOP = Observer()


class Recorder:
    """Chaos-run histories of lease operations (a no-op without a history sink)."""

    def __init__(self, history: HistorySink | None) -> None:
        self.history = history

    def invoke(self, op: str, lease: AsyncLease) -> str | None:
        return self.invoke_app(op, lease.partition_key, lease.app_id)

    def invoke_app(self, op: str, partition_key: str | None, app_id: str) -> str | None:
        if self.history is None:
            return None
        return self.history.invoke(op, app_key(partition_key, app_id))

    def complete(self, op_id: str | None, outcome: Any, lease: AsyncLease | None = None) -> None:
        if self.history is None or op_id is None:
            return
        head = lease.head if lease is not None else None
        if head is None:
            self.history.complete(op_id, outcome)
        else:
            self.history.complete(op_id, outcome, head["sequence_id"], state_digest(head["state"].get_all()))
